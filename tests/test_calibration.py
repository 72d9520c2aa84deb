"""Rank histogram flatness and the binned spread-error relation against closed forms.

Gaussian cases: truth y ~ N(mu_k, sigma_k^2), members x_m ~ N(mu_k, (k sigma_k)^2), independent, sigma_k varying
over the cases. The rank of y among M members then has a law that depends on k only (not on mu_k, sigma_k):

    P(rank = r) = C(M, r) int Phi(z / k)^r (1 - Phi(z / k))^(M - r) phi(z) dz,

uniform 1 / (M + 1) for k = 1. With the held-out sorting every bin of the spread-error relation has
spread_b / RMSE_b = k sqrt((M + 1) / (M + k^2)). Tolerances come from the sampling error: exact binomial or
chi-square tails, or the scatter of independent replicates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from diffscale.evaluation.calibration import (
    expected_reliability_index,
    rank_histogram_flatness,
    spread_error_bins,
)
from diffscale.evaluation.scores import ensemble_ranks

EQUAL_WEIGHT_LATITUDE = np.array([30.0, -30.0] * 4)  # cos(phi) alike in every row: ranks exactly multinomial
MEMBERS = 10


def rank_law(members: int, k: float) -> np.ndarray:
    """P(rank = r), r = 0..M, of y ~ N(0, 1) among M members ~ N(0, k^2) (closed form, by quadrature)."""

    def density(z: float, r: int) -> float:
        below = stats.norm.cdf(z / k)
        return special.comb(members, r) * below**r * (1 - below) ** (members - r) * stats.norm.pdf(z)

    return np.array([integrate.quad(density, -np.inf, np.inf, args=(r,))[0] for r in range(members + 1)])


def gaussian_cases(
    rng: np.random.Generator, k: float, shape: tuple[int, int, int], members: int = MEMBERS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ensemble, truth, sigma): sigma log-uniform on [0.5, 2] per case, mu standard normal."""
    sigma = np.exp(rng.uniform(math.log(0.5), math.log(2.0), size=shape))
    mu = rng.normal(size=shape)
    truth = mu + sigma * rng.normal(size=shape)
    return mu + k * sigma * rng.normal(size=(members, *shape)), truth, sigma


def test_rank_law_closed_form_is_uniform_when_calibrated() -> None:
    assert rank_law(MEMBERS, 1.0) == pytest.approx(np.full(MEMBERS + 1, 1 / (MEMBERS + 1)), abs=1e-9)
    assert rank_law(MEMBERS, 0.5).sum() == pytest.approx(1.0, abs=1e-9)


def test_expected_reliability_index_matches_multinomial_sampling() -> None:
    # E[sum_r |f_r - p|] for f the frequencies of n uniform draws on M + 1 ranks: sqrt(2 M / (pi n))
    rng = np.random.default_rng(10)
    cases, replicates = 5000, 20_000
    frequency = rng.multinomial(cases, np.full(MEMBERS + 1, 1 / (MEMBERS + 1)), size=replicates) / cases
    index = np.abs(frequency - 1 / (MEMBERS + 1)).sum(axis=1)
    standard_error = index.std() / math.sqrt(replicates)
    assert expected_reliability_index(MEMBERS, cases) == pytest.approx(index.mean(), abs=5 * standard_error)
    with pytest.raises(ValueError, match="effective_cases"):
        expected_reliability_index(MEMBERS, 0.0)


def test_calibrated_gaussian_ensemble_has_a_flat_rank_histogram() -> None:
    rng = np.random.default_rng(11)
    shape = (100, 8, 64)
    cases = math.prod(shape)
    ensemble, truth, _ = gaussian_cases(rng, 1.0, shape)
    flatness = rank_histogram_flatness(ensemble, truth, EQUAL_WEIGHT_LATITUDE)
    # equal weights: Kish's n is the number of cases and X^2 is Pearson's statistic of the counts
    counts = np.bincount(ensemble_ranks(ensemble, truth).ravel(), minlength=MEMBERS + 1)
    assert flatness["effective_cases"] == pytest.approx(cases)
    assert flatness["chi2"] == pytest.approx(stats.chisquare(counts).statistic)
    assert flatness["dof"] == MEMBERS
    assert flatness["p_value"] > 1e-4  # uniform under calibration: below 1e-4 with probability 1e-4
    # the RI of a calibrated ensemble is that of multinomial frequencies: within 5 s.d. of their mean
    null = rng.multinomial(cases, np.full(MEMBERS + 1, 1 / (MEMBERS + 1)), size=4000) / cases
    null_index = np.abs(null - 1 / (MEMBERS + 1)).sum(axis=1)
    assert abs(flatness["reliability_index"] - null_index.mean()) < 5 * null_index.std()
    assert flatness["reliability_index_calibrated"] == pytest.approx(null_index.mean(), rel=0.25)
    # truth outside the ensemble: binomial share 2 / (M + 1)
    outside = 2 / (MEMBERS + 1)
    assert flatness["outside_fraction_calibrated"] == pytest.approx(outside)
    assert abs(flatness["outside_fraction"] - outside) < 5 * math.sqrt(outside * (1 - outside) / cases)
    # independent times: the design effect is 1 up to the noise of variances from T = 100 clusters
    assert abs(flatness["design_effect"] - 1.0) < 5 * design_effect_sd(1.0, shape[0], MEMBERS, 8 * 64)


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_mis_dispersed_gaussian_ensemble_has_the_closed_form_rank_histogram(k: float) -> None:
    rng = np.random.default_rng(12)
    shape = (50, 8, 64)
    cases = math.prod(shape)
    ensemble, truth, _ = gaussian_cases(rng, k, shape)
    law = rank_law(MEMBERS, k)
    counts = np.bincount(ensemble_ranks(ensemble, truth).ravel(), minlength=MEMBERS + 1)
    assert stats.chisquare(counts, cases * law).pvalue > 1e-4  # the counts follow the closed form
    level = 1 / (MEMBERS + 1)
    middle = MEMBERS // 2
    if k < 1:  # under-dispersed: U-shaped
        assert law[0] > 2 * level and law[-1] > 2 * level and law[middle] < 0.7 * level
    else:  # over-dispersed: dome
        assert law[0] < 0.5 * level and law[-1] < 0.5 * level and law[middle] > 1.3 * level
    flatness = rank_histogram_flatness(ensemble, truth, EQUAL_WEIGHT_LATITUDE)
    assert flatness["p_value"] < 1e-100 and flatness["p_value_time_clustered"] < 1e-100
    # sum_r |f_r - law_r| <= sqrt(X^2 / N) (Cauchy-Schwarz), X^2 against the law below its 1 - 1e-6 quantile
    bound = math.sqrt(stats.chi2.isf(1e-6, MEMBERS) / cases)
    assert flatness["reliability_index"] == pytest.approx(np.abs(law - level).sum(), abs=bound)
    assert flatness["outside_fraction"] == pytest.approx(law[0] + law[-1], abs=bound)
    assert flatness["reliability_index"] > 20 * flatness["reliability_index_calibrated"]


def design_effect_sd(design: float, times: int, members: int, independent_per_time: int) -> float:
    """S.d. of dbar = mean_r d_r for a calibrated ensemble, B independent cases per time, each counted D times.

    Per time the frequencies f_{r,t} have Var = p (1 - p) / B and Cov = -p^2 / B (multinomial), and
    d_r = D B var_t(f_{r,t}) / (p (1 - p)). Gaussian theory, Cov(s_r^2, s_q^2) = 2 Cov(f_r, f_q)^2 / (T - 1),
    gives Var(dbar) = D^2 2 / ((T - 1) M) after summing over r, q (p / (1 - p) = 1 / M); the binomial's excess
    kurtosis (1 - 6 p q) / (B p q) adds at most D^2 kappa / T.
    """
    p = 1 / (members + 1)
    kurtosis = (1 - 6 * p * (1 - p)) / (independent_per_time * p * (1 - p))
    return design * math.sqrt(2 / ((times - 1) * members) + kurtosis / times)


def test_design_effect_of_ranks_shared_by_blocks_of_sixteen_points() -> None:
    # every 4 x 4 block of points carries one case: the ranks are 16-fold copies, n' = n / 16
    rng = np.random.default_rng(13)
    times, members, coarse_shape = 1000, 7, (4, 16)
    coarse_truth = rng.normal(size=(times, *coarse_shape))
    coarse_members = rng.normal(size=(members, times, *coarse_shape))

    def blocks(field: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(field, 4, axis=-2), 4, axis=-1)

    latitude = np.array([20.0, -20.0] * 8)
    flatness = rank_histogram_flatness(blocks(coarse_members), blocks(coarse_truth), latitude)
    tolerance = 5 * design_effect_sd(16.0, times, members, math.prod(coarse_shape))
    assert abs(flatness["design_effect"] - 16.0) < tolerance
    assert flatness["effective_cases_time_clustered"] == pytest.approx(
        flatness["effective_cases"] / flatness["design_effect"]
    )
    assert flatness["p_value_time_clustered"] > 1e-4  # X^2 / dbar is again chi-square with M d.o.f.
    assert flatness["reliability_index_calibrated"] == pytest.approx(
        math.sqrt(2 * members * flatness["design_effect"] / (math.pi * flatness["effective_cases"]))
    )


def test_single_time_has_no_time_clustered_figures() -> None:
    rng = np.random.default_rng(14)
    flatness = rank_histogram_flatness(rng.normal(size=(5, 1, 8, 10)), rng.normal(size=(1, 8, 10)), np.zeros(8))
    assert math.isnan(flatness["design_effect"]) and math.isnan(flatness["p_value_time_clustered"])
    assert flatness["reliability_index_calibrated"] == pytest.approx(math.sqrt(2 * 5 / (math.pi * 80)))


def _replicated_bins(k: float, sort_by: str, replicates: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20 + int(10 * k))
    runs = [
        spread_error_bins(*gaussian_cases(rng, k, (40, 8, 64))[:2], EQUAL_WEIGHT_LATITUDE, sort_by=sort_by)
        for _ in range(replicates)
    ]
    return {
        key: np.array([run[key] for run in runs])
        for key in ("spread_skill_ratio", "mean_abs_log_ratio", "log_slope", "counts")
    }


@pytest.mark.parametrize("k", [1.0, 0.5, 2.0])
def test_held_out_spread_error_bins_lie_on_the_closed_form_line(k: float) -> None:
    runs = _replicated_bins(k, "held_out")
    ratio = runs["spread_skill_ratio"]  # (replicates, bins)
    replicates = ratio.shape[0]
    assert ratio.shape[1] == 10 and (runs["counts"] == 40 * 8 * 64 // 10).all()  # equal weights: equal counts
    expected = k * math.sqrt((MEMBERS + 1) / (MEMBERS + k**2))
    standard_error = ratio.std(axis=0, ddof=1) / math.sqrt(replicates)
    assert np.abs(ratio.mean(axis=0) - expected).max() < 6 * standard_error.max()
    slope = runs["log_slope"]
    assert slope.mean() == pytest.approx(1.0, abs=6 * slope.std(ddof=1) / math.sqrt(replicates))
    log_ratio_sd = np.log(ratio).std(axis=0, ddof=1).max()
    if k == 1.0:  # E|ln ratio_b| <= its s.d. when its mean is 0
        assert runs["mean_abs_log_ratio"].mean() < 2 * log_ratio_sd
    else:
        assert runs["mean_abs_log_ratio"].mean() == pytest.approx(abs(math.log(expected)), abs=2 * log_ratio_sd)


def attenuated_ratios(members: int, bins: int = 10, low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """spread_b / RMSE_b of a calibrated Gaussian ensemble binned by the variance s^2 of all its members.

    sigma^2 = e^u, u uniform on [2 ln low, 2 ln high]; s^2 = sigma^2 X / (M - 1), X ~ chi2_{M-1}. xbar is
    independent of s^2, so E[e^2; bin] = ((M + 1) / M) E[sigma^2; bin] and the factor cancels:
    ratio_b = sqrt(E[s^2; bin] / E[sigma^2; bin]), with E[X; c < X < d] = (M - 1) (F_{M+1}(d) - F_{M+1}(c)).
    The bin edges are the deciles of the mixture law of s^2.
    """
    dof = members - 1
    a, b = 2 * math.log(low), 2 * math.log(high)

    def expectation(g: Callable[[float], float]) -> float:
        return integrate.quad(lambda u: g(math.exp(u)), a, b, epsabs=1e-13, epsrel=1e-11, limit=200)[0] / (b - a)

    def cdf(t: float) -> float:
        return expectation(lambda v: stats.chi2.cdf(dof * t / v, dof))

    inner = [optimize.brentq(lambda t, j=j: cdf(t) - j / bins, 1e-8, 1e3, xtol=1e-14) for j in range(1, bins)]
    edges = [0.0, *inner, math.inf]

    def mass(lo: float, hi: float, df: int) -> Callable[[float], float]:
        return lambda v: v * (stats.chi2.cdf(dof * hi / v, df) - stats.chi2.cdf(dof * lo / v, df))

    return np.array(
        [
            math.sqrt(expectation(mass(lo, hi, members + 1)) / expectation(mass(lo, hi, dof)))
            for lo, hi in itertools.pairwise(edges)
        ]
    )


def test_sorting_by_the_full_ensemble_variance_flattens_a_calibrated_ensemble() -> None:
    # the variance that gives the spread also picks the bin: low bins look over-dispersed, high ones under
    runs = _replicated_bins(1.0, "ensemble")
    ratio = runs["spread_skill_ratio"]
    expected = attenuated_ratios(MEMBERS)
    standard_error = ratio.std(axis=0, ddof=1) / math.sqrt(ratio.shape[0])
    assert np.abs(ratio.mean(axis=0) - expected).max() < 6 * standard_error.max()
    assert expected[0] < 0.75 and expected[-1] > 1.15  # far from the diagonal at both ends


def test_spread_error_bins_hold_equal_area_and_weighted_means() -> None:
    # rows at 0 and 60 degrees: weights 4/3 and 2/3 (mean 1). M = 4: members 1, 3 sort, members 2, 4 spread.
    latitude = np.array([0.0, 60.0])
    sort_half = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 11.0, 12.0, 13.0, 14.0]])  # row 0 sorts first
    rng = np.random.default_rng(30)
    spread_half = rng.uniform(0.5, 3.0, size=(2, 5))
    error = rng.normal(size=(2, 5))
    centre = rng.normal(size=(2, 5))
    ensemble = np.stack(
        [centre - sort_half, centre - spread_half, centre + sort_half, centre + spread_half]
    )  # mean = centre; variance (ddof 1) of +-a is 2 a^2
    result = spread_error_bins(ensemble[:, None], (centre + error)[None], latitude, bins=2)
    # total weight 10: row 0's cumulative weights 4/3 .. 20/3 have mid-points 2/3, 2, 10/3, 14/3, 6, so the
    # first bin (half the weight, 5) holds row 0's first four cases and the second its fifth and all of row 1
    weight = np.array([4 / 3, 2 / 3])[:, None] * np.ones((2, 5))
    first = np.zeros((2, 5), dtype=bool)
    first[0, :4] = True
    assert result["counts"] == [4, 6]
    assert result["weight_share"] == pytest.approx([16 / 3 / 10, 14 / 3 / 10])
    for index, chosen in enumerate([first, ~first]):
        variance = np.average(2 * spread_half[chosen] ** 2, weights=weight[chosen])
        assert result["spread"][index] == pytest.approx(math.sqrt(5 / 4 * variance))
        assert result["rmse"][index] == pytest.approx(math.sqrt(np.average(error[chosen] ** 2, weights=weight[chosen])))
    ratio = np.array(result["spread"]) / np.array(result["rmse"])
    assert result["spread_skill_ratio"] == pytest.approx(ratio)
    assert result["mean_abs_log_ratio"] == pytest.approx(np.average(np.abs(np.log(ratio)), weights=[16, 14]))
    assert result["log_slope"] == pytest.approx(
        math.log(result["rmse"][1] / result["rmse"][0]) / math.log(result["spread"][1] / result["spread"][0])
    )


def test_rank_flatness_weights_each_case_by_its_area() -> None:
    # row at 0 degrees (weight 1) calibrated, row at 80 degrees (weight 0.17) far under-dispersed
    rng = np.random.default_rng(31)
    members, shape = 6, (200, 2, 50)
    truth = rng.normal(size=shape)
    ensemble = rng.normal(size=(members, *shape))
    ensemble[:, :, 1] *= 0.2
    latitude = np.array([0.0, 80.0])
    flatness = rank_histogram_flatness(ensemble, truth, latitude)
    ranks = ensemble_ranks(ensemble, truth)
    weight = np.broadcast_to(np.cos(np.deg2rad(latitude))[:, None], shape)
    frequency = np.array([np.average(ranks == r, weights=weight) for r in range(members + 1)])
    kish = weight.sum() ** 2 / (weight**2).sum()
    level = 1 / (members + 1)
    assert flatness["effective_cases"] == pytest.approx(kish)
    assert flatness["chi2"] == pytest.approx(stats.chisquare(kish * frequency, np.full(members + 1, kish * level))[0])
    assert flatness["reliability_index"] == pytest.approx(np.abs(frequency - level).sum())
    assert flatness["outside_fraction"] == pytest.approx(frequency[0] + frequency[-1])
    unweighted = np.bincount(ranks.ravel(), minlength=members + 1) / ranks.size
    assert abs(flatness["outside_fraction"] - unweighted[0] - unweighted[-1]) > 0.05  # the weights matter


def test_bad_input_is_refused_and_bins_never_outnumber_cases() -> None:
    rng = np.random.default_rng(32)
    truth = rng.normal(size=(1, 2, 5))
    with pytest.raises(ValueError, match="M >= 4"):
        spread_error_bins(rng.normal(size=(3, 1, 2, 5)), truth, np.zeros(2))
    with pytest.raises(ValueError, match="M >= 2"):
        spread_error_bins(rng.normal(size=(1, 1, 2, 5)), truth, np.zeros(2), sort_by="ensemble")
    with pytest.raises(ValueError, match="sort_by"):
        spread_error_bins(rng.normal(size=(4, 1, 2, 5)), truth, np.zeros(2), sort_by="spread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bins"):
        spread_error_bins(rng.normal(size=(4, 1, 2, 5)), truth, np.zeros(2), bins=0)
    with pytest.raises(ValueError, match="does not match"):
        rank_histogram_flatness(rng.normal(size=(4, 1, 3, 5)), truth, np.zeros(2))
    many = spread_error_bins(rng.normal(size=(4, 1, 2, 5)), truth, np.zeros(2), bins=100)
    assert many["bins"] == 10 and many["counts"] == [1] * 10
