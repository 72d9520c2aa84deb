"""What the peer adapters share: the NFE counter, the Karras grid and the sampler record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CountingDenoiser", "PeerSampler", "Unavailable", "karras_sigmas"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CountingDenoiser:
    """D(x_hat; sigma) that counts its calls: the true number of function evaluations (NFE) of a sampler."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: object) -> torch.Tensor:
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.denoiser(x, sigma)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N, then 0 (Eq. 5).

    float64, N + 1 values; N = 1 gives [sigma_max, 0].
    """
    fraction = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return torch.cat([(top + fraction * (bottom - top)) ** rho, torch.zeros(1, dtype=torch.float64)])


SigmaGrid = Callable[[int], torch.Tensor]
"""steps N -> sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (float64)."""


@dataclass(frozen=True)
class PeerSampler:
    """A peer's sampler.

    Attributes:
        library: "k-diffusion" or "diffusers".
        name: the sampler's name there, with the settings used.
        evaluations: NFE of a run of N steps (the expected count; the benchmark reports the counted one).
        run: (counting denoiser, standard normal noise (B, D) float64, sigma grid) -> x at sigma = 0.
        accepts_grid: whether ``run`` follows an arbitrary sigma grid (False: the peer builds its own).
    """

    library: str
    name: str
    evaluations: Callable[[int], int]
    run: Callable[[CountingDenoiser, torch.Tensor, torch.Tensor], torch.Tensor]
    accepts_grid: bool = True


@dataclass(frozen=True)
class Unavailable:
    """A peer that cannot run here, and why."""

    library: str
    name: str
    reason: str
