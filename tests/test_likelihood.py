"""Probability-flow log-likelihood against closed forms: Gaussian mixtures (exact denoiser and density), a single
Gaussian (trajectory, divergence integral and density all closed form), Hutchinson's estimator against the
exact trace, and the four formulations."""

from __future__ import annotations

import math

import pytest
import torch

import diffscale
from diffscale.data import GaussianMixture, ring_2d, two_gaussians_1d
from diffscale.evaluation.likelihood import (
    basis_probes,
    bits_per_dim,
    gaussian_prior_log_prob,
    hutchinson_probes,
    log_likelihood,
    number_of_evaluations,
)
from tests.conftest import FORMULATION_NAMES

ODE_TOLERANCE = 1e-3
"""|ODE log-likelihood - exact log p(x; sigma_0)| with the exact prior, rk4, 64 steps (measured: <= 4e-4)."""

EDM = diffscale.formulation("EDM")


def exact_prior(mixture: GaussianMixture):
    """The exact p(.; sigma_max) of the mixture, so that only the ODE's error remains."""
    return lambda x_hat, sigma_max: mixture.log_prob(x_hat, sigma_max)


def data(mixture: GaussianMixture, n: int, seed: int = 0) -> torch.Tensor:
    return mixture.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- Gaussian mixtures: exact denoiser, exact density ----------------------------------------------------------
@pytest.mark.parametrize("mixture", [two_gaussians_1d(), ring_2d()], ids=["1d", "ring2d"])
def test_exact_trace_matches_the_mixture_density(mixture: GaussianMixture) -> None:
    x = data(mixture, 64)
    result = log_likelihood(
        mixture.ideal_denoiser, x, EDM, steps=64, exact_trace=True, prior_log_prob=exact_prior(mixture)
    )
    exact = mixture.log_prob(x, EDM.sigma_min)
    assert (result.log_likelihood - exact).abs().max() < ODE_TOLERANCE
    assert result.sigma_start == EDM.sigma_min and result.sigma_end == EDM.sigma_max
    assert result.evaluations == 4 * 64 == number_of_evaluations(64, "rk4")
    # The usual prior N(0, sigma_max^2 I) adds little at sigma_max = 80 for these zero-mean mixtures.
    gaussian = log_likelihood(mixture.ideal_denoiser, x, EDM, steps=64, exact_trace=True)
    assert (gaussian.log_likelihood - exact).abs().max() < 2 * ODE_TOLERANCE
    assert torch.allclose(gaussian.bits_per_dim, -gaussian.log_likelihood / (mixture.dims * math.log(2.0)))


def test_error_falls_with_steps_at_fourth_order() -> None:
    mixture = two_gaussians_1d()
    x = data(mixture, 32)
    exact = mixture.log_prob(x, EDM.sigma_min)

    def error(steps: int, solver: str) -> float:
        result = log_likelihood(
            mixture.ideal_denoiser,
            x,
            EDM,
            steps=steps,
            solver=solver,
            exact_trace=True,
            prior_log_prob=exact_prior(mixture),
        )
        return float((result.log_likelihood - exact).abs().mean())

    assert error(64, "rk4") < error(32, "rk4") / 8  # O(h^4): a factor 16 when converged
    assert error(64, "heun") < error(32, "heun") / 2.5  # O(h^2): a factor 4
    assert error(32, "rk4") < error(64, "heun")


def test_gaussian_prior_error_at_sigma_max_is_small_and_matches_the_kl_estimate() -> None:
    # A mixture with mean mu = 1: E[log p(z; sigma_max) - log N(z; 0, sigma_max^2)] over z ~ p(.; sigma_max)
    # is KL ~ (mu^2 + v^2 / (2 sigma_max^2)) / (2 sigma_max^2) ~ 7.8e-5 nats at sigma_max = 80.
    mixture = GaussianMixture(means=[[0.5], [1.5]], stds=[0.25, 0.25])
    sigma_max = 80.0
    z = mixture.sample(200_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    z = z + sigma_max * torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gap = mixture.log_prob(z, sigma_max) - gaussian_prior_log_prob(z, sigma_max)
    mean, variance = float(mixture.mean), mixture.std**2
    kl = (mean**2 + variance**2 / (2 * sigma_max**2)) / (2 * sigma_max**2)
    assert abs(float(gap.mean()) - kl) < 2e-5
    assert float(gap.abs().max()) < 0.06  # pointwise ~ |mu| |z| / sigma_max^2


def test_zero_noise_correction_recovers_the_data_density() -> None:
    mixture = ring_2d()  # component std 0.1: at VE's sigma_0 = 0.02 the blur costs ~ d sigma_0^2 / (2 s^2)
    ve = diffscale.formulation("VE")
    x = data(mixture, 64)
    exact = mixture.log_prob(x, 0.0)
    kwargs = {"steps": 64, "exact_trace": True, "prior_log_prob": exact_prior(mixture)}
    plain = log_likelihood(mixture.ideal_denoiser, x, ve, **kwargs)
    corrected = log_likelihood(mixture.ideal_denoiser, x, ve, zero_noise_correction=True, **kwargs)
    plain_error = float((plain.log_likelihood - exact).abs().mean())
    corrected_error = float((corrected.log_likelihood - exact).abs().mean())
    assert plain_error > 0.01
    assert corrected_error < plain_error / 10
    assert corrected.zero_noise_correction is not None and plain.zero_noise_correction is None


# -- a single Gaussian: everything closed form ------------------------------------------------------------------
def test_single_gaussian_trajectory_divergence_and_density_are_closed_form() -> None:
    # y ~ N(mu, diag(s^2)): D = mu + s^2 / (s^2 + sigma^2) (x - mu), tr J = sum s^2 / (s^2 + sigma^2),
    # x_hat(sigma) - mu = (x - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)),
    # integral (d - tr J) / sigma dsigma = sum 1/2 ln((s^2 + sigma_max^2) / (s^2 + sigma_0^2)).
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    s = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    gaussian = GaussianMixture(means=mu[None], stds=s[None])
    sigma_0, sigma_max = 0.01, 50.0
    x = data(gaussian, 16)
    for exact_trace in (True, False):  # J is diagonal: Rademacher probes give the trace exactly
        result = log_likelihood(
            gaussian.ideal_denoiser, x, EDM, steps=64, exact_trace=exact_trace, sigma_start=sigma_0, sigma_end=sigma_max
        )
        latent = mu + (x - mu) * ((s**2 + sigma_max**2) / (s**2 + sigma_0**2)).sqrt()
        delta = 0.5 * ((s**2 + sigma_max**2) / (s**2 + sigma_0**2)).log().sum()
        assert torch.allclose(result.latent - mu, latent - mu, rtol=5e-5, atol=0)  # RK4, h = 0.13: measured 1e-5
        assert torch.allclose(result.delta_log_prob, delta.expand(16), rtol=0, atol=1e-6)
        assert torch.allclose(result.prior_log_prob, gaussian_prior_log_prob(result.latent, sigma_max))
        # with the exact prior N(mu, s^2 + sigma_max^2) the total is log N(x; mu, s^2 + sigma_0^2)
        total = gaussian.log_prob(result.latent, sigma_max) + result.delta_log_prob
        assert torch.allclose(total, gaussian.log_prob(x, sigma_0), atol=3e-4, rtol=0)  # measured 7e-5


def test_gridded_data_shapes_are_supported() -> None:
    # Data of shape (B, C, H) with an isotropic Gaussian N(mu, s^2 I) per value.
    mu, s, sigma_0, sigma_max = 0.3, 0.7, 0.002, 80.0

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        gain = s**2 / (s**2 + sigma.reshape(-1, 1, 1) ** 2)
        return mu + gain * (x - mu)

    def log_normal(z: torch.Tensor, variance: float) -> torch.Tensor:
        return (-0.5 * ((z - mu) ** 2 / variance + math.log(2 * math.pi * variance))).flatten(1).sum(1)

    x = mu + s * torch.randn((5, 2, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = log_likelihood(denoiser, x, EDM, steps=64, num_probes=2, sigma_start=sigma_0, sigma_end=sigma_max)
    assert result.dims == 6 and result.latent.shape == x.shape
    total = log_normal(result.latent, s**2 + sigma_max**2) + result.delta_log_prob  # the exact prior
    assert torch.allclose(total, log_normal(x, s**2 + sigma_0**2), atol=5e-4, rtol=0)  # measured 1e-4


def test_a_denoiser_that_ignores_x_has_zero_trace() -> None:
    x = torch.zeros((3, 2), dtype=torch.float64)
    result = log_likelihood(lambda x, sigma: torch.zeros_like(x), x, EDM, steps=8, sigma_start=0.1, sigma_end=10.0)
    assert torch.allclose(result.delta_log_prob, torch.full((3,), 2 * math.log(100.0), dtype=torch.float64))


# -- Hutchinson ---------------------------------------------------------------------------------------------------
def test_probes_have_identity_second_moment() -> None:
    generator = torch.Generator().manual_seed(0)
    for kind in ("rademacher", "gaussian"):
        probes = hutchinson_probes(50_000, (1, 3), kind=kind, generator=generator)[:, 0]
        second_moment = probes.T @ probes / probes.shape[0]
        assert torch.allclose(second_moment, torch.eye(3, dtype=torch.float64), atol=0.03)
    rademacher = hutchinson_probes(4, (2, 3), generator=generator)
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0}
    basis = basis_probes((2, 3))
    assert basis.shape == (3, 2, 3) and torch.equal(basis.sum(0), torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_over_probe_draws(kind: str) -> None:
    # 6 ring points, each repeated 300 times: every copy gets its own probe, fixed along its trajectory.
    mixture = ring_2d()
    points, copies = data(mixture, 6), 300
    x = points.repeat_interleave(copies, dim=0)
    kwargs = {"steps": 32, "sigma_end": 20.0}
    exact = log_likelihood(mixture.ideal_denoiser, points, EDM, exact_trace=True, **kwargs).log_likelihood
    generator = torch.Generator().manual_seed(5)
    estimates = log_likelihood(mixture.ideal_denoiser, x, EDM, probe=kind, generator=generator, **kwargs)
    per_point = estimates.log_likelihood.reshape(6, copies)
    stderr = per_point.std(dim=1) / math.sqrt(copies)
    assert (per_point.std(dim=1) > 1e-3).all(), "the estimator should be random in 2-D"
    assert ((per_point.mean(dim=1) - exact).abs() < 4.5 * stderr + 1e-6).all()


def test_more_probes_reduce_the_variance_and_stay_unbiased() -> None:
    # With probes fixed along a trajectory the off-diagonal terms of J add up coherently, so one Rademacher
    # probe can be off by ~1 nat for a single ring point; averaging over K probes divides the variance by K.
    mixture = ring_2d()
    copies = 100
    x = data(mixture, 4).repeat_interleave(copies, dim=0)
    kwargs = {"steps": 32, "sigma_end": 20.0, "generator": torch.Generator().manual_seed(7)}
    one = log_likelihood(mixture.ideal_denoiser, x, EDM, num_probes=1, **kwargs).log_likelihood.reshape(4, copies)
    many = log_likelihood(mixture.ideal_denoiser, x, EDM, num_probes=16, **kwargs).log_likelihood.reshape(4, copies)
    exact = log_likelihood(mixture.ideal_denoiser, x[::copies], EDM, exact_trace=True, steps=32, sigma_end=20.0)
    ratio = many.std(dim=1) / one.std(dim=1)
    assert (ratio < 0.4).all()  # 1 / sqrt(16) = 0.25
    stderr = many.std(dim=1) / math.sqrt(copies)
    assert ((many.mean(dim=1) - exact.log_likelihood).abs() < 4.5 * stderr + 1e-6).all()


# -- formulations -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_every_formulation_matches_the_exact_density_over_its_own_range(name: str) -> None:
    mixture = two_gaussians_1d()
    f = diffscale.formulation(name)
    x = data(mixture, 32)
    result = log_likelihood(
        mixture.ideal_denoiser, x, f, steps=64, exact_trace=True, prior_log_prob=exact_prior(mixture)
    )
    assert result.sigma_start == f.sigma_min and result.sigma_end == f.sigma_max
    assert (result.log_likelihood - mixture.log_prob(x, f.sigma_min)).abs().max() < ODE_TOLERANCE


def test_formulations_agree_up_to_their_sigma_ranges() -> None:
    mixture = two_gaussians_1d()
    x = data(mixture, 32)
    exact = mixture.log_prob(x, 0.0)
    values = {}
    for name in FORMULATION_NAMES:
        f = diffscale.formulation(name)
        result = log_likelihood(mixture.ideal_denoiser, x, f, steps=64, exact_trace=True, zero_noise_correction=True)
        values[name] = result.log_likelihood
        assert (result.log_likelihood - exact).abs().max() < 2 * ODE_TOLERANCE, name
    # over a common range the formulation no longer matters at all (the ODE in sigma is the same)
    common = [
        log_likelihood(
            mixture.ideal_denoiser,
            x,
            diffscale.formulation(name),
            steps=16,
            num_probes=1,
            sigma_start=0.01,
            sigma_end=50.0,
        ).log_likelihood
        for name in FORMULATION_NAMES
    ]
    assert all(torch.equal(common[0], other) for other in common[1:])


# -- interface ----------------------------------------------------------------------------------------------------
def test_runs_under_no_grad_and_in_float32() -> None:
    mixture = two_gaussians_1d()
    x = data(mixture, 8)
    with torch.no_grad():
        result = log_likelihood(mixture.ideal_denoiser, x.float(), EDM, steps=32, exact_trace=True)
    assert result.log_likelihood.dtype == torch.float32 and not result.log_likelihood.requires_grad
    assert (result.log_likelihood.double() - mixture.log_prob(x, EDM.sigma_min)).abs().max() < 0.02


def test_bits_per_dim() -> None:
    assert bits_per_dim(-2 * math.log(2.0), 2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"solver": "euler"}, "solver"),
        ({"sigma_start": 1.0, "sigma_end": 0.5}, "sigma_start"),
        ({"sigma_start": 0.0}, "sigma_start"),
        ({"num_probes": 0}, "num_probes"),
        ({"probe": "uniform"}, "probe"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    x = torch.zeros((2, 1), dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        log_likelihood(two_gaussians_1d().ideal_denoiser, x, EDM, **kwargs)
    with pytest.raises(ValueError, match="batch"):
        log_likelihood(two_gaussians_1d().ideal_denoiser, torch.zeros(3, dtype=torch.float64), EDM)
