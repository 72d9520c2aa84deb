"""Networks with learned variance (iDDPM, Nichol & Dhariwal 2021): F emits 2 C channels, the mean part F
(the first C, which the preconditioner and every sampler use) and the variance interpolation v (the last
C, log Sigma = v log beta + (1 - v) log beta_tilde, Eq. 15 of the iDDPM paper).

With ``diffscale.formulation("iDDPM", learned_variance=True)`` the PreconditionedDenoiser splits the 2C
channels itself (D from the first C, v returned by ``denoise_with_variance``). For a formulation that does
not learn the variance, wrap the network in :class:`MeanOutput`, which keeps only F:
``PreconditionedDenoiser(MeanOutput(net), diffscale.formulation("iDDPM"))``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MeanOutput", "split_learned_variance"]


def split_learned_variance(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, v): the first and the last C channels of a (B, 2C, ...) output."""
    if output.ndim < 2 or output.shape[1] % 2:
        raise ValueError(f"a learned-variance output needs an even channel count, got shape {tuple(output.shape)}")
    mean, variance = output.chunk(2, dim=1)
    return mean, variance


class MeanOutput(nn.Module):
    """Wraps a network emitting (F, v) and returns only F, the first C channels."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **cond: Any) -> torch.Tensor:
        return split_learned_variance(self.network(x, c_noise, **cond))[0]
