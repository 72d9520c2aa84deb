"""Tests of diffscale.evaluation.reference against the closed-form flow of a single Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from diffscale.data import GaussianMixture
from diffscale.evaluation.reference import reference_ode_solution


def test_single_gaussian_flow_is_an_affine_map() -> None:
    # For y ~ N(mu, s^2), D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the flow of
    # dx/dsigma = (x - D) / sigma is x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) (x(sigma_max) - mu).
    mu, s, sigma_max = 0.7, 0.3, 50.0
    gaussian = GaussianMixture(means=[[mu]], stds=[s])
    noise = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    result = reference_ode_solution(gaussian.ideal_denoiser, noise, sigma_max)
    expected = mu + s / math.sqrt(s**2 + sigma_max**2) * (sigma_max * noise - mu)
    assert result.dtype == torch.float64 and result.shape == noise.shape
    assert torch.allclose(result, expected, atol=1e-8, rtol=0)


def test_two_dimensional_shape_and_bad_range() -> None:
    gaussian = GaussianMixture(means=[[0.0, 1.0]], stds=[[0.5, 0.2]])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = reference_ode_solution(gaussian.ideal_denoiser, noise, 10.0)
    expected = gaussian.means + gaussian.stds / (gaussian.stds**2 + 100.0).sqrt() * (10.0 * noise - gaussian.means)
    assert torch.allclose(result, expected, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="sigma_end"):
        reference_ode_solution(gaussian.ideal_denoiser, noise, 1e-12)
