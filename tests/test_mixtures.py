"""Gaussian mixtures: densities against scipy, the ideal denoiser against Tweedie's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffscale.data import GaussianMixture, ring_2d, two_gaussians_1d

MIXTURE = GaussianMixture(means=[[-1.0], [0.5], [2.0]], stds=[0.3, 0.5, 0.2], weights=[0.2, 0.5, 0.3])


def scipy_density(x: np.ndarray, sigma: float) -> np.ndarray:
    return sum(
        w * stats.norm(m, math.sqrt(s * s + sigma * sigma)).pdf(x)
        for w, m, s in zip((0.2, 0.5, 0.3), (-1.0, 0.5, 2.0), (0.3, 0.5, 0.2), strict=True)
    )


@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0, 10.0])
def test_log_prob_and_cdf_match_scipy(sigma: float) -> None:
    x = np.linspace(-4, 4, 41)
    log_p = MIXTURE.log_prob(torch.from_numpy(x)[:, None], sigma).numpy()
    np.testing.assert_allclose(np.exp(log_p), scipy_density(x, sigma), rtol=1e-10)
    cdf = MIXTURE.cdf(torch.from_numpy(x), sigma).numpy()
    expected = [integrate.quad(lambda u: scipy_density(np.array(u), sigma), -np.inf, v)[0] for v in x[::8]]
    np.testing.assert_allclose(cdf[::8], expected, atol=1e-8)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 40.0])
def test_ideal_denoiser_is_tweedies_formula(sigma: float) -> None:
    """E[y | x] = x + sigma^2 grad_x log p(x; sigma), the gradient taken by autograd of log_prob."""
    for mixture in (MIXTURE, ring_2d(modes=5, radius=2.0, std=0.3)):
        x = (torch.randn(64, mixture.dims, dtype=torch.float64) * (1 + sigma)).requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture.log_prob(x, sigma).sum(), x)
        torch.testing.assert_close(mixture.ideal_denoiser(x.detach(), sigma), x.detach() + sigma**2 * grad)


def test_ideal_denoiser_accepts_per_sample_sigma() -> None:
    x = torch.randn(5, 1, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    rows = torch.cat([MIXTURE.ideal_denoiser(x[i : i + 1], float(sigma[i])) for i in range(5)])
    torch.testing.assert_close(MIXTURE.ideal_denoiser(x, sigma), rows)


def test_samples_have_the_mixture_moments() -> None:
    samples = MIXTURE.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64).ravel()
    assert float(samples.mean()) == pytest.approx(float(MIXTURE.mean), abs=0.01)
    assert float(samples.std()) == pytest.approx(MIXTURE.std, rel=0.01)
    assert stats.kstest(samples.numpy(), lambda v: MIXTURE.cdf(torch.from_numpy(v)).numpy()).pvalue > 1e-3


def test_presets() -> None:
    two = two_gaussians_1d()
    assert two.dims == 1 and two.std == pytest.approx(math.sqrt(1 + 0.25**2))
    ring = ring_2d(modes=4, radius=2.0, std=0.1)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((4,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(ring.mean, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"means": [[0.0], [1.0]], "stds": [0.1]}, r"stds: expected shape \(2,\)"),
        ({"means": [[0.0]], "stds": [-0.1]}, "every standard deviation must be > 0"),
        ({"means": [[0.0], [1.0]], "stds": [0.1, 0.1], "weights": [1.0]}, r"weights: expected shape \(2,\)"),
        ({"means": [[0.0], [1.0]], "stds": [0.1, 0.1], "weights": [0.0, 0.0]}, "not all zero"),
        ({"means": [[float("nan")]], "stds": [0.1]}, "means: values must be finite"),
    ],
)
def test_bad_mixtures_are_refused(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        GaussianMixture(**kwargs)


def test_wrong_sample_shape_is_reported() -> None:
    with pytest.raises(ValueError, match=r"expected samples of shape \(batch, 1\), got \(3, 2\)"):
        MIXTURE.ideal_denoiser(torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError, match="1-D mixtures"):
        ring_2d().cdf(torch.zeros(3))
