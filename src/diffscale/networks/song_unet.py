"""SongUNet: the DDPM++ and NCSN++ U-Nets of Song et al. 2021 ("Score-Based Generative Modeling through
Stochastic Differential Equations", arXiv 2011.13456), as configured in Karras et al. 2022 (EDM,
Appendix F.2).

Structure (L = len(channel_mult) levels, m = model_channels):

* noise mapping: emb = SiLU(W_1 SiLU(W_0 (E(c_noise) + W_l sqrt(label_dim) l + W_a a))), with E the
  positional (DDPM++) or random Fourier (NCSN++) embedding of c_noise;
* encoder: a 3x3 stem to m channels; per level, a downsampling block (level > 0) then ``num_blocks``
  residual blocks of m channel_mult[level] channels, with self-attention at the resolutions in
  ``attn_resolutions``. The NCSN++ "residual" encoder adds a strided 3x3 projection of the previous
  level's input at each downsampling, (h + P(aux)) / sqrt(2); the "skip" encoder adds a projection of the
  downsampled input image;
* decoder: two blocks at the coarsest level (the first with attention); per level, an upsampling block
  (level < L-1) and ``num_blocks + 1`` blocks fed with the concatenated encoder skips; the output is
  conv(SiLU(GroupNorm(h))) at the finest level ("standard"), or the sum of such outputs of every level,
  each upsampled ("skip" decoder).

Every block is additive-conditioned, skip-scaled by 1/sqrt(2), with GroupNorm eps 1e-6 and one attention
head. ``img_resolution`` is the reference resolution that places the attention: level l has attention
when img_resolution / 2^l is in ``attn_resolutions``; the actual grid can be any size (see GridUNet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from diffscale.networks.embeddings import FourierEmbedding, PositionalEmbedding
from diffscale.networks.layers import Conv2d, GroupNorm, Init, Linear, UNetBlock
from diffscale.networks.padding import PadMode
from diffscale.networks.unet_base import GridUNet

__all__ = ["SongUNet"]


class SongUNet(GridUNet):
    """DDPM++ / NCSN++ U-Net F(x, c_noise; cond) (Song et al. 2021; EDM Appendix F.2).

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
        dropout: dropout probability inside the blocks.
        embedding_type: "positional" (DDPM++) or "fourier" (NCSN++) embedding of c_noise.
        channel_mult_noise: the c_noise embedding has m channel_mult_noise channels.
        encoder_type: "standard" (DDPM++), "residual" (NCSN++) or "skip".
        decoder_type: "standard" or "skip".
        resample_filter: 1-D taps of the up/downsampling filter: [1, 1] (DDPM++) or [1, 3, 3, 1] (NCSN++).
        fourier_scale: standard deviation of the Fourier embedding's frequencies.
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
        channel_mult: Sequence[int] = (2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        embedding_type: Literal["positional", "fourier"] = "positional",
        channel_mult_noise: int = 1,
        encoder_type: Literal["standard", "skip", "residual"] = "standard",
        decoder_type: Literal["standard", "skip"] = "standard",
        resample_filter: Sequence[float] = (1, 1),
        fourier_scale: float = 16.0,
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
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type = {embedding_type!r}: must be 'positional' or 'fourier'")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type = {encoder_type!r}: must be 'standard', 'skip' or 'residual'")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type = {decoder_type!r}: must be 'standard' or 'skip'")
        self.encoder_type, self.decoder_type = encoder_type, decoder_type
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = Init("xavier_uniform")
        init_zero = Init("xavier_uniform", weight=1e-5)
        init_attn = Init("xavier_uniform", weight=math.sqrt(0.2))
        periodic = periodic_longitude
        block = {
            "emb_channels": emb_channels,
            "num_heads": 1,
            "dropout": dropout,
            "skip_scale": math.sqrt(0.5),
            "eps": 1e-6,
            "resample_filter": resample_filter,
            "resample_proj": True,
            "adaptive_scale": False,
            "periodic": periodic,
            "init": init,
            "init_zero": init_zero,
            "init_attn": init_attn,
        }
        resample = {"resample_filter": resample_filter, "periodic": periodic}

        # Mapping of c_noise and the labels to emb.
        if embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(noise_channels)
        else:
            self.map_noise = FourierEmbedding(noise_channels, scale=fourier_scale)
        self.map_label = Linear(label_dim, noise_channels, init=init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, init=init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)

        # Encoder.
        levels = len(channel_mult)
        channels = model_channels
        input_channels = in_channels + cond_channels
        self.stem = Conv2d(input_channels, channels, kernel=3, periodic=periodic, init=init)
        skip_channels = [channels]
        self.down = nn.ModuleList([nn.Identity()])
        self.aux_down = nn.ModuleList([nn.Identity()])
        self.aux_proj = nn.ModuleList([nn.Identity()])
        self.encoder = nn.ModuleList()
        aux_channels = input_channels
        for level, mult in enumerate(channel_mult):
            attention = (img_resolution >> level) in attn_resolutions
            if level > 0:
                self.down.append(UNetBlock(channels, channels, down=True, **block))
                if encoder_type == "skip":
                    self.aux_down.append(Conv2d(aux_channels, aux_channels, kernel=0, down=True, **resample))
                    self.aux_proj.append(Conv2d(aux_channels, channels, kernel=1, periodic=periodic, init=init))
                elif encoder_type == "residual":
                    self.aux_down.append(nn.Identity())
                    self.aux_proj.append(Conv2d(aux_channels, channels, kernel=3, down=True, init=init, **resample))
                    aux_channels = channels
                skip_channels.append(channels)
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(UNetBlock(channels, model_channels * mult, attention=attention, **block))
                channels = model_channels * mult
                skip_channels.append(channels)
            self.encoder.append(blocks)

        # Decoder (built from the coarsest level up; stored in that order).
        self.middle = nn.ModuleList(
            [UNetBlock(channels, channels, attention=True, **block), UNetBlock(channels, channels, **block)]
        )
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.aux_up = nn.ModuleList()
        self.out_norm = nn.ModuleList()
        self.out_conv = nn.ModuleList()
        self._has_output: list[bool] = []
        for level in reversed(range(levels)):
            mult = channel_mult[level]
            attention = (img_resolution >> level) in attn_resolutions
            self.up.append(UNetBlock(channels, channels, up=True, **block) if level < levels - 1 else nn.Identity())
            blocks = nn.ModuleList()
            for index in range(num_blocks + 1):
                cin = channels + skip_channels.pop()
                channels = model_channels * mult
                blocks.append(UNetBlock(cin, channels, attention=attention and index == num_blocks, **block))
            self.decoder.append(blocks)
            has_output = decoder_type == "skip" or level == 0
            self._has_output.append(has_output)
            if decoder_type == "skip" and level < levels - 1:
                self.aux_up.append(Conv2d(self.out_channels, self.out_channels, kernel=0, up=True, **resample))
            else:
                self.aux_up.append(nn.Identity())
            self.out_norm.append(GroupNorm(channels, eps=1e-6) if has_output else nn.Identity())
            self.out_conv.append(
                Conv2d(channels, self.out_channels, kernel=3, periodic=periodic, init=init_zero)
                if has_output
                else nn.Identity()
            )

    def embedding(
        self, c_noise: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None
    ) -> torch.Tensor:
        emb = self.map_noise(c_noise)
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = functional.silu(self.map_layer0(emb))
        return functional.silu(self.map_layer1(emb))

    def backbone(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        aux = h
        x = self.stem(h)
        skips = [x]
        for level, blocks in enumerate(self.encoder):
            if level > 0:
                x = self.down[level](x, emb)
                if self.encoder_type == "skip":
                    aux = self.aux_down[level](aux)
                    x = x + self.aux_proj[level](aux)
                elif self.encoder_type == "residual":
                    x = aux = (x + self.aux_proj[level](aux)) * math.sqrt(0.5)
                skips.append(x)
            for block in blocks:
                x = block(x, emb)
                skips.append(x)
        for block in self.middle:
            x = block(x, emb)
        out: torch.Tensor | None = None
        for index, blocks in enumerate(self.decoder):
            if index > 0:
                x = self.up[index](x, emb)
            for block in blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
            if self._has_output[index]:
                if out is not None:
                    out = self.aux_up[index](out)
                level_out = self.out_conv[index](functional.silu(self.out_norm[index](x)))
                out = level_out if out is None else out + level_out
        assert out is not None
        return out
