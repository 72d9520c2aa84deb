"""DhariwalUNet: the ADM U-Net of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image
Synthesis", arXiv 2105.05233), as configured for ImageNet-64 in Karras et al. 2022 (EDM, Appendix F.3).

Structure (m = model_channels):

* mapping: emb = SiLU(W_1 SiLU(W_0 (E(c_noise) + W_a a)) + W_l l), E the positional embedding of c_noise
  with m channels, emb with m channel_mult_emb channels;
* encoder: a 3x3 stem to m channel_mult[0]; per level a downsampling block (level > 0) and ``num_blocks``
  blocks of m channel_mult[level] channels; decoder: two blocks at the coarsest level (the first with
  attention), then per level an upsampling block (level < L-1) and ``num_blocks + 1`` blocks on the
  concatenated skips; output conv(SiLU(GroupNorm(h))).

Blocks use scale-shift ("adaptive group norm") conditioning h = GroupNorm(h)(1 + s) + b, no skip scaling,
box-filter resampling without a skip projection, and attention with ``channels_per_head`` channels per
head at every resolution (relative to ``img_resolution``) in ``attn_resolutions``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from diffscale.networks.embeddings import PositionalEmbedding
from diffscale.networks.layers import Conv2d, GroupNorm, Init, Linear, UNetBlock
from diffscale.networks.padding import PadMode
from diffscale.networks.unet_base import GridUNet

__all__ = ["DhariwalUNet"]


class DhariwalUNet(GridUNet):
    """ADM U-Net F(x, c_noise; cond) (Dhariwal & Nichol 2021; EDM Appendix F.3).

    Args:
        in_channels, out_channels, cond_channels, label_dim, augment_dim, label_dropout, learned_variance: see
            :class:`~diffscale.networks.unet_base.GridUNet`.
        pad_mode, periodic_longitude: see :class:`~diffscale.networks.unet_base.GridUNet`.
        img_resolution: reference resolution that places the attention layers.
        model_channels: m, the base channel count.
        channel_mult: channels of level l are m channel_mult[l]; its length is the number of levels.
        channel_mult_emb: emb has m channel_mult_emb channels.
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (relative to ``img_resolution``) with self-attention.
        channels_per_head: channels per attention head.
        dropout: dropout probability inside the blocks.
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
        img_resolution: int = 64,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        channels_per_head: int = 64,
        dropout: float = 0.10,
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
        emb_channels = model_channels * channel_mult_emb
        init = Init("kaiming_uniform", weight=math.sqrt(1 / 3), bias=math.sqrt(1 / 3))
        init_zero = Init("kaiming_uniform", weight=0.0, bias=0.0)
        periodic = periodic_longitude
        block = {
            "emb_channels": emb_channels,
            "channels_per_head": channels_per_head,
            "dropout": dropout,
            "adaptive_scale": True,
            "periodic": periodic,
            "init": init,
            "init_zero": init_zero,
        }

        # Mapping of c_noise and the labels to emb.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (
            Linear(augment_dim, model_channels, bias=False, init=Init("kaiming_normal")) if augment_dim else None
        )
        self.map_layer0 = Linear(model_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)
        self.map_label = (
            Linear(label_dim, emb_channels, bias=False, init=Init("kaiming_normal", weight=math.sqrt(label_dim)))
            if label_dim
            else None
        )

        # Encoder.
        levels = len(channel_mult)
        channels = model_channels * channel_mult[0]
        self.stem = Conv2d(in_channels + cond_channels, channels, kernel=3, periodic=periodic, init=init)
        skip_channels = [channels]
        self.down = nn.ModuleList([nn.Identity()])
        self.encoder = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            attention = (img_resolution >> level) in attn_resolutions
            if level > 0:
                self.down.append(UNetBlock(channels, channels, down=True, **block))
                skip_channels.append(channels)
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(UNetBlock(channels, model_channels * mult, attention=attention, **block))
                channels = model_channels * mult
                skip_channels.append(channels)
            self.encoder.append(blocks)

        # Decoder, from the coarsest level up.
        self.middle = nn.ModuleList(
            [UNetBlock(channels, channels, attention=True, **block), UNetBlock(channels, channels, **block)]
        )
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(levels)):
            attention = (img_resolution >> level) in attn_resolutions
            self.up.append(UNetBlock(channels, channels, up=True, **block) if level < levels - 1 else nn.Identity())
            blocks = nn.ModuleList()
            for _ in range(num_blocks + 1):
                cin = channels + skip_channels.pop()
                channels = model_channels * channel_mult[level]
                blocks.append(UNetBlock(cin, channels, attention=attention, **block))
            self.decoder.append(blocks)
        self.out_norm = GroupNorm(channels)
        self.out_conv = Conv2d(channels, self.out_channels, kernel=3, periodic=periodic, init=init_zero)

    def embedding(
        self, c_noise: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None
    ) -> torch.Tensor:
        emb = self.map_noise(c_noise)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = self.map_layer1(functional.silu(self.map_layer0(emb)))
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        return functional.silu(emb)

    def backbone(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.stem(h)
        skips = [x]
        for level, blocks in enumerate(self.encoder):
            if level > 0:
                x = self.down[level](x, emb)
                skips.append(x)
            for block in blocks:
                x = block(x, emb)
                skips.append(x)
        for block in self.middle:
            x = block(x, emb)
        for index, blocks in enumerate(self.decoder):
            if index > 0:
                x = self.up[index](x, emb)
            for block in blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.out_conv(functional.silu(self.out_norm(x)))
