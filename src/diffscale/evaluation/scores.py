"""Scores of ensemble and deterministic fields on a latitude/longitude grid, area-weighted by cos(latitude).

Arrays are numpy (or anything ``np.asarray`` takes: xarray, torch CPU tensors): an ensemble of shape
(M, T, H, W) (members, times, latitudes, longitudes), a prediction or truth of shape (T, H, W), latitudes in
degrees of shape (H,). Every grid mean is the area-weighted mean

    <x> = sum_{t,i,j} w_i x_{tij} / (T W sum_i w_i),    w_i = cos(phi_i),

so a score is the same whatever the grid's spacing in latitude. The scores (y: truth, x_m: member m,
xbar = (1/M) sum_m x_m: ensemble mean):

- RMSE = sqrt(<(xbar - y)^2>), MAE = <|xbar - y|>, bias = <xbar - y>;
- fair CRPS (Ferro 2014; Zamo & Naveau 2018) = < (1/M) sum_m |x_m - y| - 1/(2 M (M-1)) sum_{m,n} |x_m - x_n| >,
  an unbiased estimate of the CRPS of the distribution the members are drawn from, whatever M; for M = 1 it is
  undefined and the CRPS of the single member, |x_1 - y| (the MAE), is reported instead;
- spread = sqrt(<s^2>) with s^2 = 1/(M-1) sum_m (x_m - xbar)^2, and the spread-skill ratio
  SSR = sqrt((M+1)/M) spread / RMSE (Fortin et al. 2014): for members and truth drawn from one distribution
  E[(xbar - y)^2] = (1 + 1/M) sigma^2 and E[s^2] = sigma^2, so SSR -> 1; SSR < 1 is an under-dispersed ensemble;
- rank histogram: the rank of y among the members, #{m: x_m < y} plus a uniform draw from 0..#{m: x_m = y}
  (ties broken at random), in 0..M; flat for a calibrated ensemble, U-shaped for an under-dispersed one (its
  flatness, and the binned spread-error relation: :mod:`diffscale.evaluation.calibration`);
- 1st/99th percentile errors: the p-th percentile over all samples (times, and members of an ensemble) at each
  grid point, prediction minus truth, summarised by its area-weighted mean (bias) and mean absolute value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scoringrules

from diffscale.data.climate.grid import area_weights as cell_area_weights

__all__ = [
    "area_mean",
    "area_weights",
    "deterministic_scores",
    "ensemble_ranks",
    "ensemble_scores",
    "ensemble_spread",
    "fair_crps",
    "percentile_error",
    "percentile_errors",
    "rank_histogram",
]

DEFAULT_PERCENTILES: tuple[float, ...] = (1.0, 99.0)
_CRPS_CHUNK_BYTES = 64 * 2**20  # the fair estimator holds (points, M, M) pairwise differences


def _array(values: Any, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite values")
    return array


def area_weights(latitude: Any) -> np.ndarray:
    """Weights w_i = cos(phi_i) of the grid rows at latitudes phi_i (degrees), normalised to mean 1, shape (H,)."""
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise ValueError(f"latitude must be a non-empty 1-D array, got shape {lat.shape}")
    if not (np.isfinite(lat).all() and (np.abs(lat) <= 90.0).all()):
        raise ValueError("latitude must hold finite degrees in [-90, 90]")
    weights = np.clip(cell_area_weights(lat), 0.0, None)
    if weights.sum() <= 0:
        raise ValueError("latitude: every row is at a pole, the area weights are all zero")
    return weights / weights.mean()


def area_mean(field: Any, latitude: Any) -> np.ndarray:
    """Area-weighted mean over the last two axes (latitude, longitude): sum_ij w_i x_ij / (W sum_i w_i)."""
    values = np.asarray(field, dtype=np.float64)
    weights = area_weights(latitude)
    if values.ndim < 2 or values.shape[-2] != weights.size:
        raise ValueError(f"field of shape {values.shape} does not have {weights.size} latitudes in axis -2")
    return np.einsum("...ij,i->...", values, weights) / (weights.size * values.shape[-1])


def _check_shapes(pred: np.ndarray, truth: np.ndarray, latitude: Any, what: str) -> None:
    if pred.shape[-3:] != truth.shape:
        raise ValueError(f"{what} of shape {pred.shape} does not match truth of shape {truth.shape}")
    if np.asarray(latitude).shape != (truth.shape[-2],):
        raise ValueError(f"latitude of shape {np.asarray(latitude).shape} does not match {truth.shape[-2]} rows")


def percentile_errors(
    pred: Any, truth: Any, latitude: Any, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, dict[str, float]]:
    """Errors of the p-th percentiles at each grid point: q_p(pred) - q_p(truth) over the samples (axis 0).

    ``pred`` (N, H, W) and ``truth`` (T, H, W) may hold different numbers of samples (an ensemble's members and
    times pooled against the true times). Returns, per percentile (key ``p01``, ``p99``, ...), the area-weighted
    mean of the error map (``bias``) and of its absolute value (``mae``), and the truth's area mean percentile.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.ndim != 3 or truth.ndim != 3 or pred.shape[1:] != truth.shape[1:]:
        raise ValueError(f"percentile errors need (N, H, W) arrays on one grid, got {pred.shape} and {truth.shape}")
    result = {}
    for p in percentiles:
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile {p} is not in [0, 100]")
        predicted, true = np.percentile(pred, p, axis=0), np.percentile(truth, p, axis=0)
        result[f"p{p:02g}"] = percentile_error(predicted, true, latitude)
    return result


def percentile_error(predicted: np.ndarray, true: np.ndarray, latitude: Any) -> dict[str, float]:
    """``bias``, ``mae`` and ``truth`` of :func:`percentile_errors` from the maps (H, W) of one percentile of the
    prediction and of the truth."""
    error = predicted - true
    return {
        "bias": float(area_mean(error, latitude)),
        "mae": float(area_mean(np.abs(error), latitude)),
        "truth": float(area_mean(true, latitude)),
    }


def deterministic_scores(
    pred: Any, truth: Any, latitude: Any, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, Any]:
    """Area-weighted scores of a single prediction ``pred`` (T, H, W) against ``truth`` (T, H, W).

    RMSE = sqrt(<(x - y)^2>), MAE = <|x - y|>, bias = <x - y>, CRPS = MAE (the CRPS of a point forecast),
    and the 1st/99th percentile errors (:func:`percentile_errors`).
    """
    truth = _array(truth, "truth", 3)
    pred = _array(pred, "prediction", 3)
    _check_shapes(pred, truth, latitude, "prediction")
    error = pred - truth
    mae = float(area_mean(np.abs(error), latitude).mean())
    return {
        "rmse": float(np.sqrt(area_mean(error**2, latitude).mean())),
        "mae": mae,
        "bias": float(area_mean(error, latitude).mean()),
        "crps": mae,
        "percentile_errors": percentile_errors(pred, truth, latitude, percentiles),
    }


def fair_crps(ensemble: Any, truth: Any) -> np.ndarray:
    """Pointwise fair CRPS of ``ensemble`` (M, ...) against ``truth`` (...), by scoringrules' ``fair`` estimator:

        CRPS_fair = (1/M) sum_m |x_m - y| - 1/(2 M (M-1)) sum_{m,n} |x_m - x_n|.

    For M = 1 the fair estimator is undefined; the CRPS of one member, |x_1 - y|, is returned.
    """
    members = np.asarray(ensemble, dtype=np.float64)
    obs = np.asarray(truth, dtype=np.float64)
    if members.shape[1:] != obs.shape:
        raise ValueError(f"ensemble of shape {members.shape} does not match truth of shape {obs.shape}")
    count = members.shape[0]
    if count == 1:
        return np.abs(members[0] - obs)
    flat_members = np.moveaxis(members.reshape(count, -1), 0, -1)  # (points, M), members on the last axis
    flat_obs = obs.reshape(-1)
    chunk = max(1, _CRPS_CHUNK_BYTES // (8 * count * count))
    out = np.empty(flat_obs.size)
    for start in range(0, flat_obs.size, chunk):
        stop = start + chunk
        out[start:stop] = scoringrules.crps_ensemble(
            flat_obs[start:stop], flat_members[start:stop], m_axis=-1, estimator="fair", backend="numpy"
        )
    return out.reshape(obs.shape)


def ensemble_spread(ensemble: Any, latitude: Any) -> float:
    """sqrt(<s^2>), s^2 the unbiased (ddof = 1) member variance at each point; NaN for a single member."""
    members = np.asarray(ensemble, dtype=np.float64)
    if members.shape[0] < 2:
        return math.nan
    variance = members.var(axis=0, ddof=1)
    return float(np.sqrt(area_mean(variance, latitude).mean()))


def ensemble_ranks(ensemble: Any, truth: Any, seed: int = 0) -> np.ndarray:
    """Rank of ``truth`` (...) among the members of ``ensemble`` (M, ...), in 0..M.

    rank = #{m: x_m < y} + U, U uniform on 0..#{m: x_m = y} (ties broken at random by a generator seeded with
    ``seed``, so a constant ensemble that equals the truth gives a flat histogram, not a spike).
    """
    members = np.asarray(ensemble, dtype=np.float64)
    obs = np.asarray(truth, dtype=np.float64)
    below = (members < obs).sum(axis=0)
    ties = (members == obs).sum(axis=0)
    generator = np.random.default_rng(seed)
    return below + np.floor(generator.random(obs.shape) * (ties + 1)).astype(below.dtype)


def rank_histogram(ensemble: Any, truth: Any, latitude: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rank histogram of ``truth`` (T, H, W) among ``ensemble`` (M, T, H, W): (counts, area-weighted frequency).

    ``counts[r]`` is the number of points of rank r (0..M); ``frequency[r]`` the area-weighted share of the
    points of rank r (sums to 1; 1/(M+1) each for a calibrated ensemble).
    """
    members = np.asarray(ensemble)
    ranks = ensemble_ranks(members, truth, seed)
    bins = members.shape[0] + 1
    counts = np.bincount(ranks.ravel(), minlength=bins)
    weights = np.broadcast_to(area_weights(latitude)[:, None], ranks.shape[-2:])
    weights = np.broadcast_to(weights, ranks.shape)
    frequency = np.bincount(ranks.ravel(), weights=weights.ravel(), minlength=bins)
    return counts, frequency / frequency.sum()


def ensemble_scores(
    ensemble: Any,
    truth: Any,
    latitude: Any,
    seed: int = 0,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
    """Area-weighted scores of ``ensemble`` (M, T, H, W) against ``truth`` (T, H, W) on rows at ``latitude`` (H,).

    Returns ``members`` (M), ``ensemble_mean`` (:func:`deterministic_scores` of xbar: rmse, mae, bias, ...),
    ``rmse``/``mae``/``bias`` (the same, at top level), ``crps`` (fair CRPS, area-weighted mean),
    ``crps_estimator``, ``spread``, ``spread_skill_ratio`` (sqrt((M+1)/M) spread / RMSE; NaN for M = 1),
    ``rank_histogram`` (``counts`` and area-weighted ``frequency`` over ranks 0..M) and ``percentile_errors``
    of the members pooled over members and times.
    """
    truth = _array(truth, "truth", 3)
    members = _array(ensemble, "ensemble", 4)
    _check_shapes(members, truth, latitude, "ensemble")
    count = members.shape[0]
    mean_scores = deterministic_scores(members.mean(axis=0), truth, latitude, percentiles)
    spread = ensemble_spread(members, latitude)
    rmse = mean_scores["rmse"]
    ssr = math.sqrt((count + 1) / count) * spread / rmse if count > 1 and rmse > 0 else math.nan
    counts, frequency = rank_histogram(members, truth, latitude, seed)
    pooled = members.reshape(-1, *truth.shape[1:])
    return {
        "members": count,
        "rmse": rmse,
        "mae": mean_scores["mae"],
        "bias": mean_scores["bias"],
        "crps": float(area_mean(fair_crps(members, truth), latitude).mean()),
        "crps_estimator": "fair" if count > 1 else "single member |x - y|",
        "spread": spread,
        "spread_skill_ratio": ssr,
        "rank_histogram": {"counts": counts.tolist(), "frequency": frequency.tolist()},
        "ensemble_mean": mean_scores,
        "percentile_errors": percentile_errors(pooled, truth, latitude, percentiles),
    }
