"""Building blocks shared by the U-Nets: initialised linear and convolution layers (with FIR resampling
and an optional periodic x axis), group normalisation, multi-head self-attention and the residual U-Net block.

The blocks follow the layer designs of Song et al. 2021 (DDPM++/NCSN++, arXiv 2011.13456), Dhariwal &
Nichol 2021 (ADM, arXiv 2105.05233) and their restatement in Karras et al. 2022 (EDM, arXiv 2206.00364,
Appendix F). Everything is plain PyTorch (no custom autograd), so it runs under autocast, channels_last
and torch.compile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from diffscale.networks.padding import circular_pad_longitude

__all__ = ["Conv2d", "GroupNorm", "Init", "Linear", "SelfAttention2d", "UNetBlock", "attention_heads", "group_count"]

InitMode = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]


@dataclass(frozen=True)
class Init:
    """Initialisation of a layer: weights drawn by ``mode`` (fan-in/fan-out scaled) times ``weight``,
    biases drawn the same way times ``bias`` (0: zero biases)."""

    mode: InitMode = "xavier_uniform"
    weight: float = 1.0
    bias: float = 0.0

    def draw(self, tensor: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
        """Fill ``tensor`` in place: U(-a, a) or N(0, s^2) with the mode's a or s, times ``gain``."""
        with torch.no_grad():
            if gain == 0:
                tensor.zero_()
                return
            if self.mode == "xavier_uniform":
                tensor.uniform_(-1.0, 1.0).mul_(gain * math.sqrt(6.0 / (fan_in + fan_out)))
            elif self.mode == "xavier_normal":
                tensor.normal_().mul_(gain * math.sqrt(2.0 / (fan_in + fan_out)))
            elif self.mode == "kaiming_uniform":
                tensor.uniform_(-1.0, 1.0).mul_(gain * math.sqrt(3.0 / fan_in))
            elif self.mode == "kaiming_normal":
                tensor.normal_().mul_(gain * math.sqrt(1.0 / fan_in))
            else:
                raise ValueError(f"init mode {self.mode!r}: must be one of {InitMode.__args__}")


class Linear(nn.Linear):
    """y = W x + b with W (out, in) initialised by ``init`` (fan_in = in, fan_out = out)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, init: Init = Init()) -> None:
        super().__init__(in_features, out_features, bias=bias)
        init.draw(self.weight, in_features, out_features, init.weight)
        if self.bias is not None:
            init.draw(self.bias, in_features, out_features, init.bias)


def _normalised_filter(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D FIR filter f f^T / (sum f)^2 of the 1-D taps f."""
    taps = [float(tap) for tap in taps]
    if not taps or sum(taps) == 0:
        raise ValueError(f"resample_filter = {taps}: must be a non-empty list of taps with a non-zero sum")
    f = torch.tensor(taps, dtype=torch.float32) / sum(taps)
    return torch.outer(f, f)


class Conv2d(nn.Module):
    """k x k convolution, optionally preceded by 2x FIR up- or downsampling (Song et al. 2021, Sec. H).

    Downsampling convolves each channel with the normalised filter f f^T at stride 2; upsampling is the
    transposed convolution with 4 f f^T at stride 2. The filter [1, 1] (DDPM++, ADM) is the 2x2 box, done
    as average pooling and nearest-neighbour repetition; [1, 3, 3, 1] (NCSN++) is a smooth bilinear-like
    filter. ``kernel = 0`` gives a parameter-free resampling layer. With ``periodic`` the x axis (W) is
    padded circularly (the y axis with zeros), so the layer commutes with rolls along W by multiples of 2
    (down), any roll (kernel only) or rolls of the input by r mapping to output rolls by 2r (up).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        periodic: bool = False,
        init: Init = Init(),
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a Conv2d cannot both upsample and downsample")
        if kernel == 0 and in_channels != out_channels:
            raise ValueError(
                f"kernel = 0 (resampling only) needs in_channels == out_channels, got {in_channels} and {out_channels}"
            )
        if kernel < 0 or (kernel and kernel % 2 == 0):
            raise ValueError(f"kernel = {kernel}: must be 0 or an odd number")
        self.in_channels, self.out_channels, self.kernel = in_channels, out_channels, kernel
        self.up, self.down, self.periodic = up, down, periodic
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        if self.weight is not None:
            init.draw(self.weight, fan_in, fan_out, init.weight)
        if self.bias is not None:
            init.draw(self.bias, fan_in, fan_out, init.bias)
        taps = list(resample_filter)
        self.box_filter = len(taps) == 2 and taps[0] == taps[1] != 0
        self.register_buffer("resample_filter", _normalised_filter(taps) if up or down else None, persistent=False)

    def _filter(self, x: torch.Tensor, gain: float) -> torch.Tensor:
        f = self.resample_filter.to(dtype=x.dtype) * gain
        return f.expand(x.shape[1], 1, *f.shape)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.box_filter:
            return functional.interpolate(x, scale_factor=2.0, mode="nearest")
        size = self.resample_filter.shape[-1]
        pad = (size - 1) // 2
        if not self.periodic:
            return functional.conv_transpose2d(x, self._filter(x, 4.0), stride=2, padding=pad, groups=x.shape[1])
        # Wrap `pad` columns around, transpose-convolve without x padding, keep the 2W columns of the circle.
        width = x.shape[-1]
        y = functional.conv_transpose2d(
            circular_pad_longitude(x, pad), self._filter(x, 4.0), stride=2, padding=(pad, 0), groups=x.shape[1]
        )
        return y[..., 3 * pad : 3 * pad + 2 * width]

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.box_filter:
            return functional.avg_pool2d(x, 2)
        pad = (self.resample_filter.shape[-1] - 1) // 2
        if not self.periodic:
            return functional.conv2d(x, self._filter(x, 1.0), stride=2, padding=pad, groups=x.shape[1])
        x = circular_pad_longitude(x, pad)
        return functional.conv2d(x, self._filter(x, 1.0), stride=2, padding=(pad, 0), groups=x.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = self._upsample(x)
        if self.down:
            x = self._downsample(x)
        if self.weight is None:
            return x
        pad = self.kernel // 2
        if self.periodic:
            return functional.conv2d(circular_pad_longitude(x, pad), self.weight, self.bias, padding=(pad, 0))
        return functional.conv2d(x, self.weight, self.bias, padding=pad)


def group_count(num_channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """The largest number of groups G <= min(max_groups, C / min_channels_per_group) that divides C."""
    groups = max(1, min(max_groups, num_channels // min_channels_per_group))
    while num_channels % groups:
        groups -= 1
    return groups


def attention_heads(channels: int, channels_per_head: int) -> int:
    """Heads of about ``channels_per_head`` channels each: the largest divisor of C not above C / channels_per_head."""
    heads = max(1, channels // channels_per_head)
    while channels % heads:
        heads -= 1
    return heads


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) with G = min(32, C/4) groups (fewer when C/4 does not divide C).

    The affine parameters are cast to the input's dtype so the layer runs in bf16/fp16 under autocast.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups, self.eps = group_count(num_channels), eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H W positions of a feature map (Vaswani et al. 2017):
    q, k, v = W_qkv GroupNorm(h), a = softmax(q k^T / sqrt(d)) v per head, returns W_proj a
    (the caller adds the residual). Uses torch's fused scaled_dot_product_attention."""

    def __init__(
        self, channels: int, num_heads: int, *, eps: float, periodic: bool, init: Init, init_zero: Init
    ) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"attention over {channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm(channels, eps=eps)
        self.qkv = Conv2d(channels, 3 * channels, kernel=1, periodic=periodic, init=init)
        self.proj = Conv2d(channels, channels, kernel=1, periodic=periodic, init=init_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.num_heads, head_dim, height * width)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        a = functional.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(-1, -2).reshape(batch, channels, height, width))


class UNetBlock(nn.Module):
    """Residual block with noise-embedding conditioning, optional 2x resampling and self-attention.

    h = conv0(SiLU(GroupNorm(x))) (resampled when up/down), then with e = affine(emb):
    * additive (DDPM++/NCSN++): h = SiLU(GroupNorm(h + e));
    * scale-shift (ADM, ``adaptive_scale``): (s, b) = e, h = SiLU(GroupNorm(h) (1 + s) + b);
    y = (conv1(dropout(h)) + skip(x)) * skip_scale, and with attention y = (y + Attn(y)) * skip_scale.
    The skip is the identity, or a 1x1 projection / resampling when the shape changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        periodic: bool = False,
        init: Init = Init(),
        init_zero: Init = Init(weight=0.0),
        init_attn: Init | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        conv = {"periodic": periodic, "resample_filter": resample_filter}
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, init=init, **conv)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), init=init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, init=init_zero, **conv)
        self.skip: Conv2d | None = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, init=init, **conv)
        self.attention: SelfAttention2d | None = None
        if attention:
            heads = num_heads if num_heads is not None else attention_heads(out_channels, channels_per_head)
            self.attention = SelfAttention2d(
                out_channels,
                heads,
                eps=eps,
                periodic=periodic,
                init=init_attn if init_attn is not None else init,
                init_zero=init_zero,
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(functional.silu(self.norm0(x)))
        e = self.affine(emb).to(h.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = e.chunk(2, dim=1)
            h = functional.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = functional.silu(self.norm1(h + e))
        h = self.conv1(functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.attention is not None:
            h = (h + self.attention(h)) * self.skip_scale
        return h
