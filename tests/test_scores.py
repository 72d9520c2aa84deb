"""Ensemble and deterministic scores against closed forms: area weights, CRPS, spread-skill ratio, ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from diffscale.evaluation.scores import (
    area_mean,
    area_weights,
    deterministic_scores,
    ensemble_ranks,
    ensemble_scores,
    ensemble_spread,
    fair_crps,
    percentile_errors,
    rank_histogram,
)

LATITUDE = np.linspace(50.0, 58.0, 8)


def gaussian_crps(mu: np.ndarray, sigma: float, y: np.ndarray) -> np.ndarray:
    """CRPS(N(mu, sigma^2), y) = sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - mu) / sigma."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


def test_area_weights_are_cosines_normalised_to_mean_one() -> None:
    weights = area_weights([0.0, 60.0, 90.0])
    assert weights == pytest.approx(np.array([1.0, 0.5, 0.0]) / 0.5)


def test_area_mean_of_sin_squared_latitude_is_one_third_on_the_sphere() -> None:
    # the mean of sin^2(phi) over the sphere is 1/3; cell centres of a 0.25 degree global grid
    latitude = np.arange(-90 + 0.125, 90, 0.25)
    field = np.broadcast_to(np.sin(np.deg2rad(latitude))[:, None] ** 2, (latitude.size, 7))
    assert float(area_mean(field, latitude)) == pytest.approx(1 / 3, abs=1e-5)
    assert float(field.mean()) == pytest.approx(0.5, abs=1e-3)  # unweighted would be wrong


def test_deterministic_scores_of_an_error_in_one_row() -> None:
    truth = np.zeros((3, 8, 5))
    pred = truth.copy()
    pred[:, 2, :] = 2.0  # error 2 in row 2 only: mean error = 2 w_2 / (H mean(w)) with weights w = cos(lat)
    cosines = np.cos(np.deg2rad(LATITUDE))
    share = cosines[2] / cosines.sum()
    scores = deterministic_scores(pred, truth, LATITUDE)
    assert scores["bias"] == pytest.approx(2 * share)
    assert scores["mae"] == pytest.approx(2 * share)
    assert scores["crps"] == scores["mae"]
    assert scores["rmse"] == pytest.approx(math.sqrt(4 * share))


def test_shifted_prediction_has_that_bias_in_every_score_and_percentile() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(50, 8, 6))
    scores = deterministic_scores(truth - 0.3, truth, LATITUDE)
    assert scores["bias"] == pytest.approx(-0.3) and scores["rmse"] == pytest.approx(0.3)
    for key in ("p01", "p99"):
        assert scores["percentile_errors"][key]["bias"] == pytest.approx(-0.3)
        assert scores["percentile_errors"][key]["mae"] == pytest.approx(0.3)


def test_percentile_error_of_a_scaled_gaussian() -> None:
    # pred = 2 truth: q_99(pred) - q_99(truth) = q_99(truth) exactly, per grid point
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(400, 8, 3))
    errors = percentile_errors(2 * truth, truth, LATITUDE)
    assert errors["p99"]["bias"] == pytest.approx(errors["p99"]["truth"])
    assert errors["p99"]["truth"] == pytest.approx(stats.norm.ppf(0.99), abs=0.25)


def test_crps_of_one_member_is_the_absolute_error() -> None:
    rng = np.random.default_rng(3)
    member, truth = rng.normal(size=(1, 4, 8, 5)), rng.normal(size=(4, 8, 5))
    assert fair_crps(member, truth) == pytest.approx(np.abs(member[0] - truth))
    scores = ensemble_scores(member, truth, LATITUDE)
    assert scores["crps"] == pytest.approx(float(area_mean(np.abs(member[0] - truth), LATITUDE).mean()))
    assert math.isnan(scores["spread_skill_ratio"]) and math.isnan(scores["spread"])


def test_fair_crps_of_two_members_by_hand() -> None:
    ensemble = np.array([[1.0, -2.0], [3.0, 0.5]])  # (M = 2, points = 2)
    truth = np.array([2.0, 0.0])
    # (|x1 - y| + |x2 - y|) / 2 - |x1 - x2| / 2   (fair: 1 / (2 M (M-1)) sum_{m,n} = |x1 - x2| / 2)
    expected = [(1 + 1) / 2 - 2 / 2, (2 + 0.5) / 2 - 2.5 / 2]
    assert fair_crps(ensemble, truth) == pytest.approx(expected)


@pytest.mark.parametrize("members", [3, 10])
def test_fair_crps_is_unbiased_for_the_gaussian_closed_form(members: int) -> None:
    rng = np.random.default_rng(4)
    points = 40_000
    mu = rng.normal(size=points)
    truth = rng.normal(size=points) * 1.5  # y not from the forecast distribution: the CRPS is not minimal
    ensemble = mu + 0.7 * rng.normal(size=(members, points))
    estimate = fair_crps(ensemble, truth)
    exact = gaussian_crps(mu, 0.7, truth)
    standard_error = (estimate - exact).std() / math.sqrt(points)
    assert estimate.mean() == pytest.approx(exact.mean(), abs=4 * standard_error)
    # the plain (non-fair) estimator is biased low by E|X - X'| / (2M) = sigma / (sqrt(pi) M): fair is not it
    assert abs(estimate.mean() - exact.mean()) < 0.7 / (math.sqrt(math.pi) * members) / 3


def test_spread_is_the_unbiased_member_standard_deviation() -> None:
    ensemble = np.zeros((2, 1, 8, 4))
    ensemble[1] = 1.0  # two members 0 and 1: variance (ddof 1) = 1/2 everywhere
    assert ensemble_spread(ensemble, LATITUDE) == pytest.approx(math.sqrt(0.5))


def test_spread_skill_ratio_is_one_for_a_calibrated_ensemble_and_small_for_an_underdispersed_one() -> None:
    rng = np.random.default_rng(5)
    members, shape = 10, (40, 8, 32)
    centre = rng.normal(size=shape)
    truth = centre + rng.normal(size=shape)
    calibrated = centre + rng.normal(size=(members, *shape))
    assert ensemble_scores(calibrated, truth, LATITUDE)["spread_skill_ratio"] == pytest.approx(1.0, abs=0.03)
    narrow = centre + 0.5 * rng.normal(size=(members, *shape))
    # SSR = sqrt((M+1)/M) 0.5 / sqrt(1 + 0.25/M): 0.522 for M = 10
    expected = math.sqrt(1.1) * 0.5 / math.sqrt(1 + 0.25 / members)
    assert ensemble_scores(narrow, truth, LATITUDE)["spread_skill_ratio"] == pytest.approx(expected, abs=0.02)


def test_rank_histogram_is_flat_when_calibrated_and_u_shaped_when_underdispersed() -> None:
    rng = np.random.default_rng(6)
    members, shape = 7, (60, 8, 20)
    truth = rng.normal(size=shape)
    counts, frequency = rank_histogram(rng.normal(size=(members, *shape)), truth, LATITUDE)
    assert counts.sum() == truth.size and frequency.sum() == pytest.approx(1.0)
    assert np.abs(frequency - 1 / (members + 1)).max() < 0.01
    _, narrow = rank_histogram(0.4 * rng.normal(size=(members, *shape)), truth, LATITUDE)
    assert narrow[0] > 2 / (members + 1) and narrow[-1] > 2 / (members + 1)
    assert narrow[members // 2] < 0.5 / (members + 1)


def test_ties_are_broken_at_random_and_reproducibly() -> None:
    truth = np.zeros((50, 8, 25))
    ensemble = np.zeros((4, *truth.shape))  # every member equals the truth: each rank 0..4 equally likely
    counts, _ = rank_histogram(ensemble, truth, LATITUDE, seed=3)
    assert np.abs(counts / truth.size - 0.2).max() < 0.02
    assert (ensemble_ranks(ensemble, truth, seed=3) == ensemble_ranks(ensemble, truth, seed=3)).all()
    assert ensemble_ranks(np.array([[0.0], [1.0], [2.0]]), np.array([1.5]))[0] == 2


def test_bad_input_is_refused() -> None:
    truth = np.zeros((2, 8, 3))
    with pytest.raises(ValueError, match="non-finite"):
        ensemble_scores(np.full((2, 2, 8, 3), np.nan), truth, LATITUDE)
    with pytest.raises(ValueError, match="does not match"):
        ensemble_scores(np.zeros((2, 2, 8, 4)), truth, LATITUDE)
    with pytest.raises(ValueError, match="latitude"):
        area_weights([0.0, 95.0])


def test_pole_rows_weigh_exactly_nothing() -> None:
    latitude = np.arange(-90.0, 90.5, 1.0)  # a global grid with both poles
    weights = area_weights(latitude)
    assert weights[0] == 0.0 and weights[-1] == 0.0 and weights.mean() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(2, latitude.size, 6))
    ensemble = truth + rng.normal(size=(3, 2, latitude.size, 6))
    changed = ensemble.copy()
    changed[:, :, [0, -1], :] += 1e6  # only the pole rows: no score may move
    for key in ("rmse", "mae", "bias", "crps", "spread"):
        assert ensemble_scores(changed, truth, latitude)[key] == ensemble_scores(ensemble, truth, latitude)[key]
    with pytest.raises(ValueError, match="every row is at a pole"):
        area_weights([90.0, -90.0])
