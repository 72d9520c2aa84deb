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
a file stored 0 .. 359). A prediction with a visible seam has
a seam difference well above its interior one; ``ratio`` = ensemble seam / truth seam is within 10 % of 1 when
the seam does not show (for an ensemble whose small scales are right).
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
    "order_report",
    "seam_difference",
    "seam_report",
    "truth_scales",
]

_ES_CHUNK_BYTES = 64 * 2**20  # the fair estimator holds (points, M, M, V) pairwise differences


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
) -> dict[str, Any]:
    """The energy score of the joint ``ensemble`` (name -> (M, T, H, W)) and of the ``baseline`` (name -> (T, H, W))
    over ``variables``, each scaled by the truth's standard deviation (:func:`truth_scales`). Returns
    ``variables``, ``scales``, ``ensemble``, ``bilinear``, ``estimator`` and ``vector`` (what one vector is)."""
    names = list(variables)
    scales = truth_scales({name: truth[name] for name in names}, latitude)
    truth_stack = _stack(truth, names, scales, axis=1)
    members = _stack(ensemble, names, scales, axis=2)
    deterministic = _stack(baseline, names, scales, axis=1)[None]
    return {
        "variables": names,
        "scales": scales,
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


def seam_difference(fields: Any, latitude: Any, column: int = 0) -> tuple[float, float]:
    """(seam, interior) of ``fields`` (..., H, W) on a periodic longitude axis: the area-weighted mean
    |x[..., column] - x[..., column - 1]| across the seam before ``column`` (default 0: the wrap-around pair
    W - 1, 0 of the array), and the mean |difference| over the W - 1 other pairs of neighbouring columns, each
    averaged over every leading axis (members, times) and the rows with weights cos(latitude)."""
    values = np.asarray(fields, dtype=np.float64)
    weights = area_weights(latitude)
    if values.ndim < 2 or values.shape[-2] != weights.size or values.shape[-1] < 3:
        raise ValueError(f"fields of shape {values.shape}: need (..., {weights.size}, W >= 3)")
    values = np.roll(values, -int(column), axis=-1)  # the seam's two columns become the last and the first
    seam = np.abs(values[..., -1] - values[..., 0])  # (..., H)
    interior = np.abs(np.diff(values, axis=-1)).mean(axis=-1)  # (..., H)
    return (
        float((seam * weights).mean(axis=-1).mean() / weights.mean()),
        float((interior * weights).mean(axis=-1).mean() / weights.mean()),
    )


def seam_report(
    ensemble: np.ndarray, truth: np.ndarray, baseline: np.ndarray, latitude: Any, column: int = 0
) -> dict[str, float]:
    """The seam of one variable before ``column`` (:func:`seam_difference`): ``ensemble``, ``truth`` and
    ``bilinear`` seam differences, ``ratio`` = ensemble / truth (1 when the ensemble's seam is like the truth's),
    and the interior differences of each (``*_interior``) for scale."""
    report: dict[str, float] = {}
    for label, values in (("ensemble", ensemble), ("truth", truth), ("bilinear", baseline)):
        report[label], report[f"{label}_interior"] = seam_difference(values, latitude, column)
    report["ratio"] = report["ensemble"] / report["truth"] if report["truth"] > 0 else math.nan
    return report
