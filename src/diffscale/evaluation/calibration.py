"""Calibration of an ensemble: flatness of the rank histogram and the binned spread-error relation.

Arrays as in :mod:`diffscale.evaluation.scores`: an ensemble (M, T, H, W), a truth (T, H, W), latitudes (H,) in
degrees. A case is one (time, grid point); case k has the area weight w_k = cos(phi_k) (normalised to mean 1 over
the rows), so every figure below is the same whatever the grid's spacing in latitude.

Rank histogram flatness (ranks r_k in 0..M from :func:`~diffscale.evaluation.scores.ensemble_ranks`, weighted
frequencies f_r = sum_k w_k [r_k = r] / sum_k w_k, calibrated level p = 1 / (M + 1)):

- n = (sum_k w_k)^2 / sum_k w_k^2, Kish's effective number of cases: for independent cases Cov(f) =
  (diag(p) - p p^T) / n, the covariance of multinomial frequencies from n draws; n = T H W for equal weights;
- Pearson's statistic X^2 = n (M + 1) sum_r (f_r - p)^2, chi-square with M degrees of freedom for a calibrated
  ensemble and independent cases (with equal weights it is the textbook sum_r (N_r - N p)^2 / (N p) of the counts);
  the p-value P(chi2_M > X^2);
- the reliability index RI = sum_r |f_r - p| (Delle Monache et al. 2006, J. Geophys. Res. 111, D24307): 0 for
  a flat histogram; sampling noise alone gives a calibrated ensemble E[RI] = sqrt(2 M / (pi n)), since each
  f_r - p is close to N(0, p (1 - p) / n) and E|N(0, v)| = sqrt(2 v / pi), (M + 1) sqrt(p (1 - p)) = sqrt(M);
- the share of truths outside the ensemble's range, f_0 + f_M, against 2 / (M + 1): above it for an
  under-dispersed (U-shaped) histogram, below it for an over-dispersed (dome-shaped) one.

Neighbouring grid points (and close times) have correlated ranks, so the independence p-value is a screening
figure: with 10^5 or more correlated cases it flags departures far too small to matter. The times are taken as
independent clusters (the spatial correlation within a time may be anything) for a second p-value: the design
effect d_r = Var_T(f_r) n / (p (1 - p)), Var_T(f_r) = var_t(f_{r,t}) / T the variance of the mean of the
per-time frequencies f_{r,t}, its mean over the ranks dbar, and X^2 / max(dbar, 1) against chi2_M, the first-order
Rao-Scott correction (Rao & Scott 1981, J. Am. Stat. Assoc. 76, 221-230); n / max(dbar, 1) is the effective
number of independent cases. It needs T >= 2 (and many more for a steady estimate of dbar) and still counts
close times (hourly fields) as independent: a larger p-value, but not an exact one.

Binned spread-error relation (Leutbecher & Palmer 2008, J. Comput. Phys. 227, 3515-3539; Fortin et al. 2014,
J. Hydrometeorol. 15, 1708-1713): for a calibrated ensemble the truth y and the members x_m of case k are
independent draws of one law of variance sigma_k^2, so the error e = xbar - y of the mean of the M members has
E[e^2] = sigma_k^2 + sigma_k^2 / M = ((M + 1) / M) sigma_k^2, while the unbiased (ddof = 1) variance s^2 of any
two or more members has E[s^2] = sigma_k^2. In any set of cases selected independently of the errors, then,
RMSE = sqrt(<e^2>) equals the spread sqrt(((M + 1) / M) <s^2>): the factor multiplies the ensemble variance and
its M is the number of members averaged into xbar. The cases are sorted by a variance and cut into K bins of
equal area weight (each holds 1/K of sum_k w_k, up to one case: area, not case count, is what the weighted
means average over); each bin gives the pair (spread_b, RMSE_b) of weighted means over its cases.

Sorting by the same s^2 that gives spread_b selects the cases whose s^2 came out low (bottom bins) or high (top
bins) by sampling noise, which has relative standard deviation sqrt(2 / (M - 1)) for Gaussian members, so even a
calibrated ensemble lies on a line flatter than the diagonal (slope attenuation; Spaeth & Roberts 2026,
arXiv:2604.05946). The default here sorts by a held-out half: the variance s_A^2 of the members x_1, x_3, ...
picks the bins and the variance s_B^2 of x_2, x_4, ... gives spread_b. Given the case, s_B^2 is independent of
s_A^2, so E[s_B^2 | bin] = E[sigma^2 | bin]; for Gaussian members xbar is also independent of s_A^2, so
E[e^2 | bin] = ((M + 1) / M) E[sigma^2 | bin]: a calibrated ensemble lies on the diagonal in every bin, whatever M
>= 4 and however sigma varies over the cases (for other laws to O(1/M)). Members of law N(mu, k^2 sigma^2) and
a truth of law N(mu, sigma^2) give E[s_B^2 | bin] = k^2 E[sigma^2 | bin] and E[e^2 | bin] = (1 + k^2 / M)
E[sigma^2 | bin], so spread_b / RMSE_b = k sqrt((M + 1) / (M + k^2)) in every bin: below 1 (under-dispersed)
for k < 1, above it for k > 1. Summaries: the weighted mean over bins of |ln(spread_b / RMSE_b)| (0 on the
diagonal; ln(1/k) for a uniform dispersion error) and the weighted least-squares slope of ln RMSE_b on
ln spread_b (1 when the error grows in proportion to the spread, whatever the level; the level is the
spread-skill ratio).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from scipy import stats

from diffscale.evaluation.scores import _array, _check_shapes, area_weights, ensemble_ranks

__all__ = [
    "DEFAULT_SPREAD_ERROR_BINS",
    "binned_spread_error",
    "expected_reliability_index",
    "flatness_figures",
    "rank_histogram_flatness",
    "spread_error_bins",
    "spread_error_from_bin_sums",
    "spread_error_variances",
]

DEFAULT_SPREAD_ERROR_BINS = 10
SortBy = Literal["held_out", "ensemble"]
_SORTED_BY = {
    "held_out": "variance of members 1, 3, 5, ...; spread from members 2, 4, 6, ...",
    "ensemble": "variance of all members (attenuated by sampling noise)",
}


def expected_reliability_index(members: int, effective_cases: float) -> float:
    """E[RI] = sqrt(2 M / (pi n)) of a calibrated ensemble of M members over n independent cases (large n)."""
    if members < 1 or not effective_cases > 0:
        raise ValueError(f"need members >= 1 and effective_cases > 0, got {members} and {effective_cases}")
    return math.sqrt(2.0 * members / (math.pi * effective_cases))


def _case_weights(latitude: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Area weight w_k of every case of a (T, H, W) field: cos(phi) of its row, normalised to mean 1."""
    return np.broadcast_to(area_weights(latitude)[:, None], shape)


def rank_histogram_flatness(ensemble: Any, truth: Any, latitude: Any, seed: int = 0) -> dict[str, Any]:
    """Flatness figures of the area-weighted rank histogram of ``truth`` (T, H, W) among ``ensemble`` (M, T, H, W).

    The ranks are those of :func:`~diffscale.evaluation.scores.rank_histogram` with the same ``seed`` (ties broken
    at random). Returns (module docstring for the formulas): ``chi2`` (X^2), ``dof`` (M), ``p_value`` (cases
    taken as independent: a screening figure), ``effective_cases`` (Kish's n), ``design_effect`` (dbar, NaN for
    T < 2), ``effective_cases_time_clustered`` (n / max(dbar, 1)) and ``p_value_time_clustered`` (Rao-Scott,
    times as independent clusters; NaN for T < 2), ``reliability_index`` with ``reliability_index_calibrated``
    (sqrt(2 M / (pi n')) at the time-clustered n', or n for T < 2: what noise alone gives a calibrated ensemble),
    and ``outside_fraction`` (f_0 + f_M) with ``outside_fraction_calibrated`` (2 / (M + 1)).
    """
    truth = _array(truth, "truth", 3)
    members = _array(ensemble, "ensemble", 4)
    _check_shapes(members, truth, latitude, "ensemble")
    count, times = members.shape[0], truth.shape[0]
    ranks = ensemble_ranks(members, truth, seed)
    categories = count + 1
    weights = _case_weights(latitude, truth.shape)
    # per-time weighted frequencies f_{r,t}: every time has the same weights, so f_r is their mean over t
    keys = (np.arange(times)[:, None, None] * categories + ranks).ravel()
    per_time = np.bincount(keys, weights=weights.ravel(), minlength=times * categories).reshape(times, categories)
    per_time /= per_time.sum(axis=1, keepdims=True)
    effective = float(weights.sum() ** 2 / (weights**2).sum())
    between_times = per_time.var(axis=0, ddof=1) / times if times >= 2 else None
    return flatness_figures(count, times, per_time.mean(axis=0), between_times, effective)


def flatness_figures(
    count: int, times: int, frequency: np.ndarray, between_times: np.ndarray | None, effective: float
) -> dict[str, Any]:
    """The figures of :func:`rank_histogram_flatness` from the mean per-time frequencies f_r (``frequency``),
    Var_T(f_r) = var_t(f_{r,t}) / T (``between_times``, None for T < 2) and Kish's n (``effective``)."""
    categories = count + 1
    level = 1.0 / categories
    chi2 = effective * categories * float(((frequency - level) ** 2).sum())
    if times >= 2 and between_times is not None:
        design_effect = float((between_times * effective / (level * (1.0 - level))).mean())
        clustered = effective / max(design_effect, 1.0)
        p_clustered = float(stats.chi2.sf(chi2 / max(design_effect, 1.0), count))
    else:
        design_effect, clustered, p_clustered = math.nan, math.nan, math.nan
    return {
        "chi2": chi2,
        "dof": count,
        "p_value": float(stats.chi2.sf(chi2, count)),
        "effective_cases": effective,
        "design_effect": design_effect,
        "effective_cases_time_clustered": clustered,
        "p_value_time_clustered": p_clustered,
        "reliability_index": float(np.abs(frequency - level).sum()),
        "reliability_index_calibrated": expected_reliability_index(
            count, clustered if math.isfinite(clustered) else effective
        ),
        "outside_fraction": float(frequency[0] + frequency[-1]),
        "outside_fraction_calibrated": 2.0 * level,
    }


def _weighted_log_summaries(spread: np.ndarray, rmse: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """(weighted mean of |ln(spread_b / RMSE_b)|, weighted least-squares slope of ln RMSE_b on ln spread_b)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(spread / rmse)
    defined = ~np.isnan(log_ratio)  # 0 / 0 bins are left out; a bin of zero spread and some error counts as inf
    mean_abs = float(np.average(np.abs(log_ratio[defined]), weights=weight[defined])) if defined.any() else math.nan
    positive = (spread > 0) & (rmse > 0)
    if positive.sum() < 2:
        return mean_abs, math.nan
    x, y, w = np.log(spread[positive]), np.log(rmse[positive]), weight[positive]
    dx = x - np.average(x, weights=w)
    spread_of_x = float(np.average(dx**2, weights=w))
    if spread_of_x <= 1e-12 * max(1.0, float(np.average(x**2, weights=w))):
        return mean_abs, math.nan
    return mean_abs, float(np.average(dx * (y - np.average(y, weights=w)), weights=w) / spread_of_x)


def spread_error_bins(
    ensemble: Any,
    truth: Any,
    latitude: Any,
    bins: int = DEFAULT_SPREAD_ERROR_BINS,
    sort_by: SortBy = "held_out",
) -> dict[str, Any]:
    """Binned spread-error relation of ``ensemble`` (M, T, H, W) against ``truth`` (T, H, W), area-weighted.

    The T H W cases are sorted by a member variance and cut into ``bins`` bins of equal area weight (case k goes
    to bin floor(K (W_k - w_k / 2) / W), W_k the cumulative weight in sorted order, W the total); in each

        spread_b = sqrt(((M + 1) / M) sum_{k in b} w_k s_k^2 / sum_{k in b} w_k),
        RMSE_b = sqrt(sum_{k in b} w_k (xbar_k - y_k)^2 / sum_{k in b} w_k),

    xbar the mean of all M members. ``sort_by="held_out"`` (needs M >= 4) sorts by the variance of members
    1, 3, 5, ... and takes s_k^2 from members 2, 4, 6, ...: a calibrated ensemble then lies on the diagonal in
    every bin (module docstring); ``"ensemble"`` sorts by and takes s_k^2 from all members (M >= 2), the usual
    recipe, whose bins a finite ensemble flattens towards the overall mean.

    Returns ``members``, ``sorted_by`` (a sentence), ``bins`` (non-empty bins), per bin (lists, lowest spread
    first) ``spread``, ``rmse``, ``spread_skill_ratio`` (spread_b / RMSE_b, NaN where RMSE_b = 0), ``counts``
    (cases) and ``weight_share`` (share of the area weight), and the summaries ``mean_abs_log_ratio`` and
    ``log_slope`` (NaN with fewer than two bins of positive spread and error, or no spread between them).
    """
    truth = _array(truth, "truth", 3)
    members = _array(ensemble, "ensemble", 4)
    _check_shapes(members, truth, latitude, "ensemble")
    count = members.shape[0]
    if not isinstance(bins, int | np.integer) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins = {bins!r}: must be an integer >= 1")
    sort_variance, variance = spread_error_variances(members, sort_by)
    squared_error = (members.mean(axis=0) - truth) ** 2
    weights = _case_weights(latitude, truth.shape)
    return binned_spread_error(sort_variance, variance, squared_error, weights, count, bins, sort_by)


def spread_error_variances(members: np.ndarray, sort_by: SortBy) -> tuple[np.ndarray, np.ndarray]:
    """(the variance the cases are sorted by, the variance s^2 of the spread) of ``members`` (M, ...) for
    ``sort_by`` (:func:`spread_error_bins`); ValueError for too few members or an unknown ``sort_by``."""
    count = members.shape[0]
    if sort_by == "held_out":
        if count < 4:
            raise ValueError(f"sort_by='held_out' needs M >= 4 members (two per half), got {count}")
        return members[0::2].var(axis=0, ddof=1), members[1::2].var(axis=0, ddof=1)
    if sort_by == "ensemble":
        if count < 2:
            raise ValueError(f"the spread-error relation needs M >= 2 members, got {count}")
        variance = members.var(axis=0, ddof=1)
        return variance, variance
    raise ValueError(f"sort_by = {sort_by!r}: must be 'held_out' or 'ensemble'")


def binned_spread_error(
    sort_variance: np.ndarray,
    variance: np.ndarray,
    squared_error: np.ndarray,
    weights: np.ndarray,
    count: int,
    bins: int,
    sort_by: SortBy,
) -> dict[str, Any]:
    """What :func:`spread_error_bins` returns, from each case's sorting variance, variance s_k^2, squared error
    (xbar_k - y_k)^2 and area weight w_k (arrays of one shape, in the cases' order: ties keep it) for ``count``
    members."""
    sort_variance, variance = np.ravel(sort_variance), np.ravel(variance)
    squared_error, weights = np.ravel(squared_error), np.ravel(weights)
    order = np.argsort(sort_variance, kind="stable")
    sorted_weights = weights[order]
    cumulative = np.cumsum(sorted_weights)
    position = (cumulative - 0.5 * sorted_weights) / cumulative[-1]
    bin_of_case = np.empty(weights.size, dtype=np.int64)
    bin_of_case[order] = np.minimum((bins * position).astype(np.int64), bins - 1)
    return spread_error_from_bin_sums(
        np.bincount(bin_of_case, weights=weights, minlength=bins),
        np.bincount(bin_of_case, minlength=bins),
        np.bincount(bin_of_case, weights=weights * variance, minlength=bins),
        np.bincount(bin_of_case, weights=weights * squared_error, minlength=bins),
        count,
        sort_by,
    )


def spread_error_from_bin_sums(
    weight: np.ndarray,
    cases: np.ndarray,
    weighted_variance: np.ndarray,
    weighted_squared_error: np.ndarray,
    count: int,
    sort_by: SortBy,
) -> dict[str, Any]:
    """What :func:`spread_error_bins` returns, from the per-bin sums sum_k w_k, the case counts, sum_k w_k s_k^2
    and sum_k w_k (xbar_k - y_k)^2 (bins in order of spread; empty bins are dropped) for ``count`` members."""
    kept = weight > 0
    weight, cases = weight[kept], cases[kept]
    mean_variance = weighted_variance[kept] / weight
    mean_squared_error = weighted_squared_error[kept] / weight
    spread = np.sqrt((count + 1) / count * mean_variance)
    rmse = np.sqrt(mean_squared_error)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rmse > 0, spread / rmse, math.nan)
    mean_abs_log_ratio, log_slope = _weighted_log_summaries(spread, rmse, weight)
    return {
        "members": count,
        "sorted_by": _SORTED_BY[sort_by],
        "bins": int(kept.sum()),
        "spread": spread.tolist(),
        "rmse": rmse.tolist(),
        "spread_skill_ratio": ratio.tolist(),
        "counts": cases.tolist(),
        "weight_share": (weight / weight.sum()).tolist(),
        "mean_abs_log_ratio": mean_abs_log_ratio,
        "log_slope": log_slope,
    }
