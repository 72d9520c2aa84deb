"""EDM2UNet: the magnitude-preserving U-Net of Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of
Diffusion Models", arXiv 2312.02696), configuration G of its Table 1, on the grid-U-Net call convention.

Every layer keeps unit-variance activations at unit variance (:mod:`diffscale.networks.mp_layers`): weights are
force-normalised and carry no biases, SiLU is divided by 0.596, residual and skip joins are magnitude-preserving sums
and concatenations, group normalisation is replaced by pixel normalisation of the encoder's activations, and the
network's output is scaled by a learned gain g_out that starts at 0 (so F = 0 and D = c_skip x at initialisation).

Structure (L = len(channel_mult) levels, m = model_channels):

* embedding: emb = MP-SiLU(W_n MPFourier(c_noise)), with labels l (and augmentation labels a)
  emb = MP-SiLU(mp_sum(W_n MPFourier(c_noise), W_l sqrt(label_dim) l, t = label_balance));
* input: the data and conditioning channels plus a constant channel of ones (what a bias would give), a 3x3 MPConv
  to m channel_mult[0] channels;
* encoder block ("enc"): [downsample (2x2 average)], [1x1 MPConv when the width changes], x = pixel_norm(x),
  y = W_1 MP-SiLU(MP-SiLU(W_0 MP-SiLU(x)) * (1 + g_e W_e emb)) (dropout before W_1), x = mp_sum(x, y, res_balance);
* decoder block ("dec"): [upsample (nearest)], the same residual branch on x, the skip 1x1 MPConv (width change)
  applied to x after it, no pixel norm; decoder inputs are mp_cat(x, skip, t = concat_balance);
* attention (levels whose reference resolution img_resolution / 2^l is in ``attn_resolutions``, and the first
  block of the coarsest level): q, k, v pixel-normalised per head, x = mp_sum(x, W_p softmax(q k^T / sqrt(d)) v,
  attn_balance);
* activations are clipped to +-clip_act after each block; output: W_out (3x3) scaled by the learned gain g_out.

g_e (per block) and g_out are learned scalars initialised at 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from diffscale.networks.mp_layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, pixel_norm
from diffscale.networks.padding import PadMode
from diffscale.networks.unet_base import GridUNet

__all__ = ["EDM2Block", "EDM2UNet", "MPAttention2d"]


class MPAttention2d(nn.Module):
    """Self-attention over the H W positions with cosine (pixel-normalised) queries, keys and values; returns
    W_proj a (the caller joins it with mp_sum)."""

    def __init__(self, channels: int, num_heads: int, *, periodic: bool) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"attention over {channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = MPConv(channels, 3 * channels, kernel=1, periodic=periodic)
        self.proj = MPConv(channels, channels, kernel=1, periodic=periodic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(x).reshape(batch, self.num_heads, head_dim, 3, height * width)
        q, k, v = pixel_norm(qkv, dim=2).permute(3, 0, 1, 4, 2).unbind(0)  # each (B, heads, HW, d)
        a = functional.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(-1, -2).reshape(batch, channels, height, width))


class EDM2Block(nn.Module):
    """Magnitude-preserving residual block ("enc" or "dec" flavour), optionally resampling and with attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        flavor: str = "enc",
        resample: str = "keep",
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256.0,
        periodic: bool = False,
    ) -> None:
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"flavor = {flavor!r}: must be 'enc' or 'dec'")
        if resample not in ("keep", "up", "down"):
            raise ValueError(f"resample = {resample!r}: must be 'keep', 'up' or 'down'")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.flavor, self.resample, self.dropout = flavor, resample, dropout
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        residual_in = out_channels if flavor == "enc" else in_channels
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(residual_in, out_channels, kernel=3, periodic=periodic)
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=0)
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=3, periodic=periodic)
        self.conv_skip = MPConv(in_channels, out_channels, kernel=1) if in_channels != out_channels else None
        self.attention: MPAttention2d | None = None
        if attention:
            heads = max(1, out_channels // channels_per_head)
            while out_channels % heads:
                heads -= 1
            self.attention = MPAttention2d(out_channels, heads, periodic=periodic)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            x = functional.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = pixel_norm(x)
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale.to(y.dtype)[:, :, None, None])
        y = functional.dropout(y, p=self.dropout, training=self.training)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.res_balance)
        if self.attention is not None:
            x = mp_sum(x, self.attention(x), self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class EDM2UNet(GridUNet):
    """The magnitude-preserving U-Net F(x, c_noise; cond) of EDM2 (Karras et al. 2024, configuration G).

    Args:
        in_channels, out_channels, cond_channels, label_dim, augment_dim, label_dropout, learned_variance: see
            :class:`~diffscale.networks.unet_base.GridUNet`.
        pad_mode, periodic_longitude: see :class:`~diffscale.networks.unet_base.GridUNet`.
        img_resolution: reference resolution that places the attention layers.
        model_channels: m, the base channel count.
        channel_mult: channels of level l are m channel_mult[l]; its length is the number of levels.
        channel_mult_emb: emb has m channel_mult_emb channels.
        channel_mult_noise: the Fourier features of c_noise have m channel_mult_noise channels.
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (relative to ``img_resolution``) with self-attention.
        channels_per_head: channels per attention head.
        dropout: dropout probability inside the blocks.
        label_balance: t of the mp_sum of the noise and label embeddings.
        concat_balance: t of the mp_cat of the decoder input and its encoder skip.
        res_balance: t of the mp_sum of a block's input and residual branch.
        attn_balance: t of the mp_sum of a block's output and its attention.
        clip_act: activations clipped to +-clip_act after each block (None: off).
        fourier_bandwidth: standard deviation of the Fourier features' frequencies.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        cond_channels: int = 0,
        label_dim: int = 0,
        augment_dim: int = 0,
        label_dropout: float = 0.0,
        learned_variance: bool = False,
        img_resolution: int = 32,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2),
        channel_mult_emb: int = 4,
        channel_mult_noise: int = 1,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        channels_per_head: int = 64,
        dropout: float = 0.0,
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256.0,
        fourier_bandwidth: float = 1.0,
        pad_mode: PadMode = "reflect",
        periodic_longitude: bool = False,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            cond_channels=cond_channels,
            label_dim=label_dim,
            augment_dim=augment_dim,
            label_dropout=label_dropout,
            learned_variance=learned_variance,
            levels=len(channel_mult),
            pad_mode=pad_mode,
            periodic_longitude=periodic_longitude,
        )
        for name, value in (
            ("label_balance", label_balance),
            ("concat_balance", concat_balance),
            ("res_balance", res_balance),
            ("attn_balance", attn_balance),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value}: must be in [0, 1]")
        self.label_balance, self.concat_balance = label_balance, concat_balance
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        periodic = periodic_longitude
        block = {
            "emb_channels": emb_channels,
            "channels_per_head": channels_per_head,
            "dropout": dropout,
            "res_balance": res_balance,
            "attn_balance": attn_balance,
            "clip_act": clip_act,
            "periodic": periodic,
        }

        # Embedding of c_noise and the labels.
        self.emb_fourier = MPFourier(noise_channels, bandwidth=fourier_bandwidth)
        self.emb_noise = MPConv(noise_channels, emb_channels, kernel=0)
        self.emb_label = MPConv(label_dim, emb_channels, kernel=0) if label_dim else None
        self.emb_augment = MPConv(augment_dim, emb_channels, kernel=0) if augment_dim else None

        # Encoder: the input gets a constant channel of ones (the bias a bias-free network lacks).
        levels = len(channel_mult)
        channels = model_channels * channel_mult[0]
        self.conv_in = MPConv(in_channels + cond_channels + 1, channels, kernel=3, periodic=periodic)
        self.encoder = nn.ModuleList()
        skip_channels = [channels]
        for level, mult in enumerate(channel_mult):
            attention = (img_resolution >> level) in attn_resolutions
            blocks = nn.ModuleList()
            if level > 0:
                blocks.append(EDM2Block(channels, channels, flavor="enc", resample="down", **block))
                skip_channels.append(channels)
            for _ in range(num_blocks):
                width = model_channels * mult
                blocks.append(EDM2Block(channels, width, flavor="enc", attention=attention, **block))
                channels = width
                skip_channels.append(channels)
            self.encoder.append(blocks)

        # Decoder, from the coarsest level up; blocks that take an encoder skip are flagged.
        self.decoder = nn.ModuleList()
        self._takes_skip: list[list[bool]] = []
        for level in reversed(range(levels)):
            mult = channel_mult[level]
            attention = (img_resolution >> level) in attn_resolutions
            blocks = nn.ModuleList()
            takes_skip = []
            if level == levels - 1:
                blocks.append(EDM2Block(channels, channels, flavor="dec", attention=True, **block))
                blocks.append(EDM2Block(channels, channels, flavor="dec", **block))
            else:
                blocks.append(EDM2Block(channels, channels, flavor="dec", resample="up", **block))
            takes_skip += [False] * len(blocks)
            for _ in range(num_blocks + 1):
                width = model_channels * mult
                blocks.append(
                    EDM2Block(channels + skip_channels.pop(), width, flavor="dec", attention=attention, **block)
                )
                takes_skip.append(True)
                channels = width
            self.decoder.append(blocks)
            self._takes_skip.append(takes_skip)
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.conv_out = MPConv(channels, self.out_channels, kernel=3, periodic=periodic)

    def embedding(
        self, c_noise: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None
    ) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(c_noise))
        if self.emb_label is not None and class_labels is not None:
            labels = self.emb_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
            emb = mp_sum(emb, labels, self.label_balance)
        if self.emb_augment is not None and augment_labels is not None:
            emb = mp_sum(emb, self.emb_augment(augment_labels.to(emb.dtype)), self.label_balance)
        return mp_silu(emb)

    def backbone(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
        x = self.conv_in(x)
        skips = [x]
        for blocks in self.encoder:
            for block in blocks:
                x = block(x, emb)
                skips.append(x)
        for blocks, takes_skip in zip(self.decoder, self._takes_skip, strict=True):
            for block, skip in zip(blocks, takes_skip, strict=True):
                if skip:
                    x = mp_cat(x, skips.pop(), t=self.concat_balance)
                x = block(x, emb)
        return self.conv_out(x, gain=self.out_gain)
