"""Shared test settings and the closed-form references used across tests."""

from __future__ import annotations

import pytest
import torch

from diffscale.data import GaussianMixture
from diffscale.evaluation import reference_ode_solution, wasserstein1_to_cdf

FORMULATION_NAMES = ("VE", "VP", "EDM", "iDDPM")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


def probability_flow_reference(mixture: GaussianMixture, noise: torch.Tensor, sigma_start: float) -> torch.Tensor:
    """x(sigma = 0) of the probability-flow ODE from x_hat = sigma_start noise, solved by scipy's DOP853.

    This reference (diffscale.evaluation.reference, tested in test_reference.py) shares no code with
    diffscale's samplers.
    """
    return reference_ode_solution(mixture.ideal_denoiser, noise, sigma_start)


def wasserstein1_1d(samples: torch.Tensor, mixture: GaussianMixture) -> float:
    """W1 between 1-D samples and the exact mixture distribution."""
    return wasserstein1_to_cdf(samples.ravel(), mixture.cdf)
