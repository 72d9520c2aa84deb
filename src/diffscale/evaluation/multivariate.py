"""Scores of several variables together: the energy score of the joint ensemble, the order of ordered pairs, and
the seam of a global grid.

Arrays as in :mod:`diffscale.evaluation.scores`: per variable an ensemble (M, T, H, W), a deterministic
prediction or truth (T, H, W), rows at latitudes phi_i with area weights w_i = cos(phi_i) (0 on a pole row).

**Energy score** (Gneiting and Raftery 2007). At each time and grid point the V variables form one vector,
each divided by a scale s_v so that units do not decide which variable counts:

    z_v = x_v / s_v,   s_v = the truth's area-weighted standard deviation over the scored times and points,

and the ensemble's score is the fair estimator (scoringrules ``es_ensemble(estimator="fair")``)

    ES = (1/M) sum_m ||z_m - z_y|| - 1/(2 M (M-1)) sum_{m,n} ||z_m - z_n||,

unbiased for the distribution the members are drawn from whatever M (the energy-score analogue of the fair
CRPS); a deterministic prediction (the bilinear baseline) scores ||z - z_y||. The reported number is the
area-weighted mean over points and times. For V = 1 it is the CRPS of z. Why the variables at a point and not
a whole field as the vector: over a field of 10^4 - 10^5 points the energy score is known to be nearly blind to
the dependence between components (its value is dominated by the marginal errors, Pinson and Tastu 2013), while
at a point the few variables' joint behaviour (the wind components together, tasmin with tasmax) is what a
multivariate model adds over independent univariate ones; spatial structure is scored by the spectra. The
scale makes ES a sum of standardised errors: with the truth's spatial standard deviation (e.g. 22 K for global
t2m, 1.2 kPa for msl) the relative error of each variable counts equally.

**Order violations** (:mod:`diffscale.data.climate.relations`): for each ordered pair (low, high) the
area-weighted fraction of (member, time, point) where a member has low > high, and the same fraction for the
truth (0 for consistent data) and the baseline.

**Seam** of a global longitude axis: the area-weighted mean |x(lon_{W-1}) - x(lon_0)| across the wrap-around
pair of columns of the model's grid (179 and -180 deg once harmonised: where the upsampling, the padding and
the patches wrap), over members, times and rows, beside the truth's and the mean |difference| of the other
W - 1 pairs of neighbouring columns; any other pair can be measured too (``column``, e.g. the 359/0 deg pair of
a file stored 0 .. 359). ``ratio`` = ensemble seam / truth seam is within 10 % of 1 when the seam does not show
and the ensemble's small scales are right. An ensemble whose small scales are stronger or weaker than the
truth's has a ratio away from 1 at every pair, not only at the seam: the same ratio over the 4 pairs on either
side of the seam (``nearby_ratio``) shows that level, and ``excess`` = ratio / nearby_ratio is what the seam
itself adds (1: no seam).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scoringrules

from diffscale.data.climate.relations import order_violations, ordered_pairs
from diffscale.evaluation.scores import area_mean, area_weights

__all__ = [
    "energy_score",
    "energy_scores",
    "neighbour_differences",
    "order_report",
    "seam_difference",
    "seam_report",
    "seam_report_of_differences",
    "truth_scales",
]

_ES_CHUNK_BYTES = 64 * 2**20  # the fair estimator holds (points, M, M, V) pairwise differences
NEARBY_PAIRS = 4
"""Pairs of neighbouring columns on either side of the seam that show the ensemble's small scales there."""


def truth_scales(truth: Mapping[str, np.ndarray], latitude: Any) -> dict[str, float]:
    """s_v: the area-weighted standard deviation of each truth (T, H, W) over times and points (1 where it is 0)."""
    scales = {}
    for name, values in truth.items():
        values = np.asarray(values, dtype=np.float64)
        mean = float(area_mean(values, latitude).mean())
        std = math.sqrt(float(area_mean((values - mean) ** 2, latitude).mean()))
        scales[name] = std if std > 0 else 1.0
    return scales


def energy_score(ensemble: np.ndarray, truth: np.ndarray, latitude: Any) -> float:
    """Area-weighted mean energy score of ``ensemble`` (M, T, V, H, W) against ``truth`` (T, V, H, W), the vector
    being the V values at a point and time (module docstring): fair estimator for M > 1, ||x_1 - y|| for M = 1."""
    members = np.asarray(ensemble, dtype=np.float64)
    obs = np.asarray(truth, dtype=np.float64)
    if members.ndim != 5 or members.shape[1:] != obs.shape:
        raise ValueError(f"ensemble of shape {members.shape} does not match truth of shape {obs.shape} (+ members)")
    count, times, variables, height, width = members.shape
    # (T, H, W, M, V) and (T, H, W, V): one vector of V values per point, members on the axis before it
    fct = np.moveaxis(members, (0, 2), (-2, -1)).reshape(-1, count, variables)
    y = np.moveaxis(obs, 1, -1).reshape(-1, variables)
    if count == 1:
        scores = np.linalg.norm(fct[:, 0] - y, axis=-1)
    else:
        chunk = max(1, _ES_CHUNK_BYTES // (8 * count * count * variables))
        scores = np.empty(y.shape[0])
        for start in range(0, y.shape[0], chunk):
            stop = start + chunk
            scores[start:stop] = scoringrules.es_ensemble(
                y[start:stop], fct[start:stop], m_axis=-2, v_axis=-1, estimator="fair", backend="numpy"
            )
    return float(area_mean(scores.reshape(times, height, width), latitude).mean())


def _stack(
    fields: Mapping[str, np.ndarray], names: Sequence[str], scales: Mapping[str, float], axis: int
) -> np.ndarray:
    return np.stack([np.asarray(fields[name], dtype=np.float64) / scales[name] for name in names], axis=axis)


def energy_scores(
    ensemble: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    latitude: Any,
    variables: Sequence[str],
    scales: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The energy score of the joint ``ensemble`` (name -> (M, T, H, W)) and of the ``baseline`` (name -> (T, H, W))
    over ``variables``, each scaled by the truth's standard deviation (:func:`truth_scales`, or ``scales``). Returns
    ``variables``, ``scales``, ``ensemble``, ``bilinear``, ``estimator`` and ``vector`` (what one vector is)."""
    names = list(variables)
    if scales is None:
        scales = truth_scales({name: truth[name] for name in names}, latitude)
    truth_stack = _stack(truth, names, scales, axis=1)
    members = _stack(ensemble, names, scales, axis=2)
    deterministic = _stack(baseline, names, scales, axis=1)[None]
    return {
        "variables": names,
        "scales": dict(scales),
        "vector": "the variables at one grid point and time, each divided by its scale",
        "estimator": "fair" if members.shape[0] > 1 else "single member ||x - y||",
        "ensemble": energy_score(members, truth_stack, latitude),
        "bilinear": energy_score(deterministic, truth_stack, latitude),
    }


def order_report(
    ensemble: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    latitude: Any,
) -> list[dict[str, Any]]:
    """For each ordered pair among the variables (:func:`~diffscale.data.climate.relations.ordered_pairs`): the
    area-weighted fraction of points where low > high in the ensemble (over members, times and points), the truth
    and the baseline, and the ensemble's mean excess E[max(low - high, 0)] in the variables' units."""
    weights = area_weights(latitude)[:, None]
    report = []
    for low, high in ordered_pairs(list(ensemble)):
        excess = np.clip(np.asarray(ensemble[low]) - np.asarray(ensemble[high]), 0.0, None)
        report.append(
            {
                "low": low,
                "high": high,
                "ensemble": order_violations(ensemble[low], ensemble[high], weights),
                "truth": order_violations(truth[low], truth[high], weights),
                "bilinear": order_violations(baseline[low], baseline[high], weights),
                "ensemble_mean_excess": float(area_mean(excess, latitude).mean()),
            }
        )
    return report


def neighbour_differences(fields: Any, latitude: Any) -> np.ndarray:
    """d_j, j = 0 .. W-1: the mean |x[..., j] - x[..., j-1]| between each column and the one before it (d_0: the
    wrap-around pair W-1, 0), over every leading axis (members, times) and the rows with weights cos(latitude);
    ``fields`` (..., H, W) on a periodic longitude axis."""
    values = np.asarray(fields, dtype=np.float64)
    weights = area_weights(latitude)
    if values.ndim < 2 or values.shape[-2] != weights.size or values.shape[-1] < 3:
        raise ValueError(f"fields of shape {values.shape}: need (..., {weights.size}, W >= 3)")
    differences = np.abs(values - np.roll(values, 1, axis=-1))  # (..., H, W)
    per_row = differences.reshape(-1, *values.shape[-2:]).mean(axis=0)  # (H, W)
    return (per_row * weights[:, None]).mean(axis=0) / weights.mean()


def seam_difference(fields: Any, latitude: Any, column: int = 0) -> tuple[float, float]:
    """(seam, interior) of ``fields`` (..., H, W) on a periodic longitude axis: the area-weighted mean
    |x[..., column] - x[..., column - 1]| across the seam before ``column`` (default 0: the wrap-around pair
    W - 1, 0 of the array), and the mean |difference| over the W - 1 other pairs of neighbouring columns, each
    averaged over every leading axis (members, times) and the rows with weights cos(latitude)."""
    differences = neighbour_differences(fields, latitude)
    seam = differences[column]
    return float(seam), float((differences.sum() - seam) / (differences.size - 1))


def seam_report(
    ensemble: np.ndarray,
    truth: np.ndarray,
    baseline: np.ndarray,
    latitude: Any,
    column: int = 0,
    nearby: int = NEARBY_PAIRS,
) -> dict[str, float]:
    """The seam of one variable before ``column`` (:func:`neighbour_differences`): ``ensemble``, ``truth`` and
    ``bilinear`` seam differences, ``ratio`` = ensemble / truth (1 when the ensemble's seam is like the truth's),
    the interior differences of each (``*_interior``: every other pair), the same ratio over the ``nearby`` pairs
    on either side of the seam (``nearby_ratio``: what the ensemble's small scales give where there is no seam)
    and ``excess`` = ratio / nearby_ratio, the seam's own share (1: no seam)."""
    differences = {
        label: neighbour_differences(values, latitude)
        for label, values in (("ensemble", ensemble), ("truth", truth), ("bilinear", baseline))
    }
    return seam_report_of_differences(differences, column, nearby)


def seam_report_of_differences(
    neighbour: Mapping[str, np.ndarray], column: int = 0, nearby: int = NEARBY_PAIRS
) -> dict[str, float]:
    """:func:`seam_report` from the :func:`neighbour_differences` of the ``ensemble``, ``truth`` and
    ``bilinear`` fields."""
    report: dict[str, float] = {}
    for label in ("ensemble", "truth", "bilinear"):
        differences = neighbour[label]
        width = differences.size
        report[label] = float(differences[column])
        report[f"{label}_interior"] = float((differences.sum() - differences[column]) / (width - 1))
        around = [(column + offset) % width for offset in range(-nearby, nearby + 1) if offset != 0]
        report[f"{label}_nearby"] = float(differences[around].mean())
    report["ratio"] = report["ensemble"] / report["truth"] if report["truth"] > 0 else math.nan
    nearby_ratio = report["ensemble_nearby"] / report["truth_nearby"] if report["truth_nearby"] > 0 else math.nan
    report["nearby_ratio"] = nearby_ratio
    report["excess"] = report["ratio"] / nearby_ratio if nearby_ratio > 0 else math.nan
    return report
