"""Embeddings of the scalar noise conditioning c_noise into feature vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FourierEmbedding", "PositionalEmbedding"]


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017) of c_noise: [cos(c f_k), sin(c f_k)],
    f_k = (1 / max_positions)^(k / (C/2)), k = 0..C/2-1 (used by DDPM++ and ADM)."""

    def __init__(self, num_channels: int, max_positions: int = 10_000) -> None:
        super().__init__()
        if num_channels < 2 or num_channels % 2:
            raise ValueError(f"num_channels = {num_channels}: must be an even number >= 2")
        half = num_channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).float() * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1).to(c_noise.dtype)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020) of c_noise: [cos(2 pi c f_k), sin(2 pi c f_k)],
    f_k ~ N(0, scale^2) fixed at construction (used by NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if num_channels < 2 or num_channels % 2:
            raise ValueError(f"num_channels = {num_channels}: must be an even number >= 2")
        generator = torch.Generator().manual_seed(seed)
        freqs = torch.randn(num_channels // 2, generator=generator) * scale
        self.register_buffer("freqs", freqs)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = (2 * math.pi) * c_noise.reshape(-1, 1).float() * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1).to(c_noise.dtype)
