"""Shared fixtures: deterministic torch settings and the closed-form references used across tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffscale.data import GaussianMixture

FORMULATION_NAMES = ("VE", "VP", "EDM", "iDDPM")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


def probability_flow_reference(mixture: GaussianMixture, noise: torch.Tensor, sigma_start: float) -> torch.Tensor:
    """x(sigma = 0) of the probability-flow ODE, solved by scipy (DOP853, tight tolerances).

    With the scale removed (x_hat = x / s(t)), every formulation follows the same ODE in sigma
    (EDM paper, Eq. 4 with s = 1): d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma, from
    x_hat = sigma_start * noise. Since s(t_N) = 1 for all formulations, the end point is the sample.
    This reference shares no code with diffscale's samplers.
    """
    shape = noise.shape
    start = (noise.double() * sigma_start).numpy().ravel()

    def slope(sigma: float, flat: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(flat).reshape(shape)
        return ((x - mixture.ideal_denoiser(x, sigma)) / sigma).numpy().ravel()

    solution = solve_ivp(slope, (sigma_start, 1e-10), start, method="DOP853", rtol=1e-11, atol=1e-11)
    assert solution.success, solution.message
    return torch.from_numpy(solution.y[:, -1]).reshape(shape)


def wasserstein1_1d(samples: torch.Tensor, mixture: GaussianMixture) -> float:
    """W1 between 1-D samples and the exact mixture: the integral of |F_n - F| on a fine grid."""
    grid = torch.linspace(-6.0, 6.0, 12_001, dtype=torch.float64)
    ordered = samples.double().ravel().sort().values
    empirical = torch.searchsorted(ordered, grid, right=True).double() / ordered.numel()
    return float((empirical - mixture.cdf(grid)).abs().sum() * (grid[1] - grid[0]))
