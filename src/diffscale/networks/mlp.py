"""A small residual MLP F(x; c_noise) for toy (vector) data."""

from __future__ import annotations

import torch
from torch import nn

from diffscale.networks.embeddings import PositionalEmbedding

__all__ = ["MLP"]


class _ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(LayerNorm(h)) + E(emb)): the noise embedding enters every block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.embedding = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        inner = self.inner(nn.functional.silu(self.norm(h))) + self.embedding(emb)
        return h + self.outer(nn.functional.silu(inner))


class MLP(nn.Module):
    """F(x, c_noise) for data of shape (batch, data_dim), conditioned on c_noise (and optional labels).

    Args:
        data_dim: dimension D of the data.
        width: hidden width.
        depth: number of residual blocks.
        embedding_dim: channels of the sinusoidal c_noise embedding.
        label_dim: width of an optional label vector (0: unconditional).
        out_dim: output width (default: data_dim; 2 data_dim for a learned variance).
    """

    def __init__(
        self,
        data_dim: int,
        width: int = 128,
        depth: int = 3,
        embedding_dim: int = 32,
        label_dim: int = 0,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("data_dim", data_dim), ("width", width), ("depth", depth)):
            if value < 1:
                raise ValueError(f"{name} = {value}: must be >= 1")
        self.data_dim, self.label_dim = data_dim, label_dim
        self.noise_embedding = nn.Sequential(
            PositionalEmbedding(embedding_dim), nn.Linear(embedding_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.label_embedding = nn.Linear(label_dim, width, bias=False) if label_dim else None
        self.input = nn.Linear(data_dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width) for _ in range(depth))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim or data_dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"MLP expects x of shape (batch, {self.data_dim}), got {tuple(x.shape)}")
        emb = self.noise_embedding(c_noise.reshape(-1))
        if self.label_embedding is not None:
            if labels is None or labels.shape != (x.shape[0], self.label_dim):
                given = None if labels is None else tuple(labels.shape)
                raise ValueError(f"labels: expected shape ({x.shape[0]}, {self.label_dim}), got {given}")
            emb = emb + self.label_embedding(labels.to(emb.dtype))
        elif labels is not None:
            raise ValueError("labels given to an MLP built with label_dim = 0")
        emb = nn.functional.silu(emb)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(h)
