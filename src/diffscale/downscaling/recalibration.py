"""Post-hoc spread recalibration of an ensemble: inflating the members' deviations from their mean.

An ensemble x_1 .. x_M of a case (one time and grid point) is inflated by a factor k about its mean xbar:

    x'_m = xbar + k (x_m - xbar),

which keeps xbar (so the ensemble-mean RMSE, the bias and anything else computed from xbar) and multiplies every
member variance s^2 by k^2.

Model: given the case, the truth y has variance sigma^2 about a centre mu and the members have variance
c^2 sigma^2 about the same centre (c < 1: under-dispersed). Then E[s^2] = c^2 sigma^2 and the error of the mean of M
members has E[(xbar - y)^2] = sigma^2 + c^2 sigma^2 / M, so with area weights w (cos(latitude), normalised to mean 1
over each field's rows), summed over held-out cases,

    sigma^2-sum = sum_k w_k ((xbar_k - y_k)^2 - s_k^2 / M_k)    and    V = sum_k w_k s_k^2

estimate sum w sigma^2 and c^2 sum w sigma^2 whatever each ensemble's size M_k: rho = sigma^2-sum / V = 1 / c^2.
(A mean error beyond the members' spread, e.g. a regime the model did not learn, enters sigma^2 too.) An inflated
ensemble of M members is calibrated in the sense that the truth's error about xbar has (M + 1) / M times the
members' variance, E[(xbar - y)^2] = ((M + 1) / M) k^2 E[s^2] (see :mod:`diffscale.evaluation.calibration`):

    k^2 = (1 + c^2 / M) M / (c^2 (M + 1)) = (M rho + 1) / (M + 1),

which is 1 for c = 1 and tends to 1 / c^2 for large M. On the cases it was fitted on, with their own M, this is
k = 1 / SSR (the spread-skill ratio sqrt((M + 1) / M) spread / RMSE): the inflated ensemble has SSR exactly 1
there. Ensembles of any size can be pooled to fit rho, and k follows for the size of the ensemble to inflate
(Leutbecher & Palmer 2008, J. Comput. Phys. 227, 3515-3539, for the spread-error relation; Gneiting et al. 2005,
Mon. Weather Rev. 133, 1098-1118, for fitting a spread correction on held-out forecasts).

Fit k only on cases the model did not see in training (validation folds of a blocked cross-validation): on its
training cases an ensemble is close to calibrated and k would be near 1 whatever its error elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "fit_dispersion",
    "fit_spread_inflation",
    "inflate",
    "inflate_channels",
    "inflation_for",
    "spread_moments",
]


def _row_weights(latitude: Any, height: int) -> np.ndarray:
    """cos(latitude) of the rows, normalised to mean 1 (0 at a pole)."""
    latitude = np.asarray(latitude, dtype=np.float64)
    if latitude.shape != (height,):
        raise ValueError(f"latitude has shape {latitude.shape}; expected ({height},) (one value per row)")
    weights = np.clip(np.cos(np.deg2rad(latitude)), 0.0, None)
    if not weights.sum() > 0:
        raise ValueError("latitude: every row lies at a pole (all area weights are 0)")
    return weights / weights.mean()


def spread_moments(ensemble: Any, truth: Any, latitude: Any) -> tuple[float, float, float]:
    """(sum_k w_k (xbar_k - y_k)^2, sum_k w_k s_k^2, sum_k w_k) of ``ensemble`` (M, T, H, W) against ``truth``
    (T, H, W): the pieces :func:`fit_spread_inflation` pools (s^2 the unbiased member variance, M >= 2). Computed in
    float64 by torch, on its intra-op threads (:func:`diffscale.threads.thread_policy` sets how many)."""
    members = torch.as_tensor(np.asarray(ensemble, dtype=np.float64))
    truth = torch.as_tensor(np.asarray(truth, dtype=np.float64))
    if members.ndim != 4 or truth.shape != members.shape[1:]:
        raise ValueError(
            f"ensemble {tuple(members.shape)} and truth {tuple(truth.shape)}: expected (M, T, H, W) and (T, H, W)"
        )
    if members.shape[0] < 2:
        raise ValueError(f"a spread needs M >= 2 members, got {members.shape[0]}")
    weights = torch.from_numpy(_row_weights(latitude, truth.shape[1]))[:, None]
    squared_error = ((members.mean(dim=0) - truth) ** 2 * weights).sum()
    variance = (members.var(dim=0, correction=1) * weights).sum()
    return float(squared_error), float(variance), float(weights.sum()) * truth.shape[0] * truth.shape[2]


def fit_dispersion(cases: Iterable[tuple[Any, Any, Any]]) -> float:
    """rho = 1 / c^2 (module docstring) pooled over ``cases``, an iterable of (ensemble (M, T, H, W), truth (T, H, W),
    latitude (H,)) triples (M >= 2, and may differ between them): the truth's variance about the members' centre over
    the members' variance; 1 for a calibrated ensemble, above 1 for an under-dispersed one.

    Raises:
        ValueError: no cases, shapes that do not fit, fewer than 2 members, non-finite values, or no spread.
    """
    truth_variance, member_variance, count = 0.0, 0.0, 0
    for ensemble, truth, latitude in cases:
        members = np.shape(ensemble)[0]
        squared_error, variance, _ = spread_moments(ensemble, truth, latitude)
        truth_variance += squared_error - variance / members
        member_variance += variance
        count += 1
    if count == 0:
        raise ValueError("fit_spread_inflation: no cases given")
    if not (math.isfinite(truth_variance) and math.isfinite(member_variance)):
        raise ValueError("fit_spread_inflation: the ensembles or truths hold non-finite values")
    if member_variance <= 0:
        raise ValueError("fit_spread_inflation: the ensembles have no spread (every member is the same)")
    return truth_variance / member_variance


def inflation_for(dispersion: float, members: int) -> float:
    """k = sqrt((M rho + 1) / (M + 1)) for an ensemble of M = ``members`` members and rho = ``dispersion``
    (:func:`fit_dispersion`); 0 when rho <= -1 / M (no spread wanted at all)."""
    if isinstance(members, bool) or not isinstance(members, int | np.integer) or members < 1:
        raise ValueError(f"members = {members!r}: must be an integer >= 1")
    return math.sqrt(max(members * dispersion + 1.0, 0.0) / (members + 1))


def fit_spread_inflation(cases: Iterable[tuple[Any, Any, Any]], members: int) -> float:
    """The factor k that calibrates ensembles of ``members`` members (module docstring), fitted on ``cases``
    (:func:`fit_dispersion`: ensembles of any sizes against their truths, held out from the model's training)."""
    return inflation_for(fit_dispersion(cases), members)


def inflate(ensemble: Any, factor: float, axis: int = 0) -> np.ndarray:
    """x'_m = xbar + k (x_m - xbar) along the member ``axis`` (computed in float64, returned in the input's
    floating dtype, float64 for integers). ``factor`` k must be finite and >= 0 (1 returns the values unchanged)."""
    if not (isinstance(factor, int | float | np.floating | np.integer) and math.isfinite(factor) and factor >= 0):
        raise ValueError(f"factor = {factor!r}: must be a finite number >= 0")
    values = np.asarray(ensemble)
    dtype = values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)
    if factor == 1:
        return values.astype(dtype, copy=True)
    members = values.astype(np.float64)
    mean = members.mean(axis=axis, keepdims=True)
    return (mean + float(factor) * (members - mean)).astype(dtype)


def inflate_channels(members: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """:func:`inflate` of a block of all M members of one time, (M, C, H, W), by one factor per channel (computed in
    float64, returned in the block's dtype)."""
    if members.ndim != 4 or members.shape[1] != len(factors):
        raise ValueError(f"members {tuple(members.shape)}: expected (M, {len(factors)}, H, W)")
    values = members.to(torch.float64)
    mean = values.mean(dim=0, keepdim=True)
    scale = torch.tensor([float(k) for k in factors], dtype=torch.float64, device=members.device)[None, :, None, None]
    return (mean + scale * (values - mean)).to(members.dtype)
