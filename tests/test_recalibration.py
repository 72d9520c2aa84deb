"""Spread inflation (diffscale.downscaling.recalibration) on synthetic Gaussian ensembles whose dispersion error is
known: members of law N(mu, c^2 sigma^2) around a truth of law N(mu, sigma^2) are fixed by k = 1 / c."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffscale.downscaling.recalibration import (
    fit_dispersion,
    fit_spread_inflation,
    inflate,
    inflation_for,
    spread_moments,
)
from diffscale.evaluation.scores import ensemble_scores

LATITUDE = np.array([50.0, 52.0, 54.0, 56.0])


def gaussian_case(rng: np.random.Generator, members: int, c: float, times: int = 60) -> tuple[np.ndarray, ...]:
    """Truth y and members x_m independent given the case's centre mu and scale sigma (both varying over cases):
    y ~ N(mu, sigma^2), x_m ~ N(mu, c^2 sigma^2)."""
    shape = (times, LATITUDE.size, 6)
    mu = rng.normal(280.0, 3.0, size=shape)
    sigma = rng.uniform(0.2, 1.0, size=shape)
    truth = mu + sigma * rng.standard_normal(shape)
    ensemble = mu + c * sigma * rng.standard_normal((members, *shape))
    return ensemble, truth, LATITUDE


def test_the_fitted_factor_restores_a_spread_skill_ratio_of_exactly_one_on_its_cases() -> None:
    ensemble, truth, latitude = gaussian_case(np.random.default_rng(0), members=8, c=0.5)
    before = ensemble_scores(ensemble, truth, latitude)["spread_skill_ratio"]
    factor = fit_spread_inflation([(ensemble, truth, latitude)], members=8)
    assert factor == pytest.approx(1.0 / before, rel=1e-12)  # k = 1 / SSR at the fitted M, the closed form
    after = ensemble_scores(inflate(ensemble, factor), truth, latitude)
    assert after["spread_skill_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert after["rmse"] == pytest.approx(ensemble_scores(ensemble, truth, latitude)["rmse"], rel=1e-12)


@pytest.mark.parametrize("c", [0.5, 1.0, 1.6])
def test_the_dispersion_is_one_over_c_squared_and_the_factor_calibrates_new_cases(c: float) -> None:
    """rho = 1 / c^2; k^2 = (M rho + 1) / (M + 1) = (M / c^2 + 1) / (M + 1); an ensemble of new cases inflated by
    it has SSR 1 (E[(xbar - y)^2] = sigma^2 (1 + c^2 / M) = ((M + 1) / M) k^2 c^2 sigma^2)."""
    rng = np.random.default_rng(1)
    fitted = [gaussian_case(rng, members=8, c=c, times=1500)]
    assert fit_dispersion(fitted) == pytest.approx(1.0 / c**2, rel=0.04)  # 36,000 cases: about 1.3 % noise
    factor = fit_spread_inflation(fitted, members=8)
    assert factor == pytest.approx(math.sqrt((8 / c**2 + 1) / 9), rel=0.025)
    ensemble, truth, latitude = gaussian_case(rng, members=8, c=c, times=200)
    ssr = ensemble_scores(inflate(ensemble, factor), truth, latitude)["spread_skill_ratio"]
    assert ssr == pytest.approx(1.0, abs=0.03)


def test_ensembles_of_different_sizes_pool_and_the_factor_follows_the_size_to_inflate() -> None:
    """E[(xbar - y)^2 - s^2 / M] = sigma^2 and E[s^2] = c^2 sigma^2 whatever M: a 4-member and a 16-member
    ensemble of the same law pool to rho = 1 / c^2; a 32-member ensemble inflated by k(32) has SSR 1."""
    rng = np.random.default_rng(2)
    cases = [gaussian_case(rng, members=4, c=0.6, times=800), gaussian_case(rng, members=16, c=0.6, times=800)]
    assert fit_dispersion(cases) == pytest.approx(1.0 / 0.36, rel=0.03)
    error, variance, weight = spread_moments(*cases[0])
    assert error / variance == pytest.approx((1 + 0.36 / 4) / 0.36, rel=0.03)
    assert weight == pytest.approx(800 * LATITUDE.size * 6)  # weights of mean 1 over the rows
    factor = fit_spread_inflation(cases, members=32)
    ensemble, truth, latitude = gaussian_case(rng, members=32, c=0.6, times=100)
    assert ensemble_scores(inflate(ensemble, factor), truth, latitude)["spread_skill_ratio"] == pytest.approx(
        1.0, abs=0.03
    )
    assert inflation_for(1.0, 7) == 1.0 and inflation_for(4.0, 1) == pytest.approx(math.sqrt(2.5))


def test_inflation_keeps_the_mean_and_scales_every_deviation() -> None:
    ensemble = np.random.default_rng(3).normal(size=(5, 2, 3, 4)).astype(np.float32)
    inflated = inflate(ensemble, 1.5)
    assert inflated.dtype == np.float32
    mean = ensemble.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(inflated.mean(axis=0), mean, atol=1e-6)
    np.testing.assert_allclose(inflated - inflated.mean(axis=0), 1.5 * (ensemble - mean), atol=1e-5)
    assert np.array_equal(inflate(ensemble, 1.0), ensemble)
    np.testing.assert_allclose(inflate(ensemble, 0.0), np.broadcast_to(mean, ensemble.shape), atol=1e-6)
    on_axis = inflate(np.moveaxis(ensemble, 0, 1), 1.5, axis=1)
    np.testing.assert_allclose(np.moveaxis(on_axis, 1, 0), inflated, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_dispersion([]), "no cases"),
        (lambda: fit_dispersion([(np.zeros((1, 2, 4, 3)), np.zeros((2, 4, 3)), LATITUDE)]), "M >= 2"),
        (lambda: fit_dispersion([(np.zeros((3, 2, 4, 3)), np.ones((2, 4, 3)), LATITUDE)]), "no spread"),
        (lambda: fit_dispersion([(np.zeros((3, 2, 4, 3)), np.zeros((2, 3, 3)), LATITUDE)]), "expected"),
        (lambda: fit_dispersion([(np.zeros((3, 2, 4, 3)), np.zeros((2, 4, 3)), LATITUDE[:3])]), "one value"),
        (lambda: inflation_for(2.0, 0), "members = 0"),
        (lambda: inflate(np.zeros((3, 2)), -1.0), "finite number >= 0"),
        (lambda: inflate(np.zeros((3, 2)), float("nan")), "finite number >= 0"),
    ],
)
def test_bad_input_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
