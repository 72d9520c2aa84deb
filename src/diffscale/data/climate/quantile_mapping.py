"""Empirical quantile mapping (QM) and quantile delta mapping (QDM), cell by cell, on quantiles at fixed levels.

Every distribution here is an empirical quantile function Q known at the levels p_0 = 0 < p_1 < ... < p_{K-1} = 1
(:func:`empirical_quantiles`: the sample quantiles with linear interpolation between order statistics, Hyndman & Fan
type 7, so that Q(0) and Q(1) are the sample's minimum and maximum) and linear in p between them
(:func:`quantile_at`). Its inverse, the non-exceedance probability F(x) (:func:`cdf_at`), is the piecewise-linear
inverse; where Q is flat (a value taken by several levels, e.g. the zeros of precipitation) F(x) is the middle of
those levels.

For a cell, with Q_o the observed climatology (the run's training inputs), Q_m the model over a reference period and
Q_p the model over the period being adjusted (all for the same calendar month):

* QM (Panofsky & Brier 1968; Themessl et al. 2011, Int. J. Climatol. 31, 1530):
  x_adj = Q_o(F_m(x)). Outside the reference range [Q_m(0), Q_m(1)] the correction at the nearest end is carried on
  ("constant extrapolation"): x_adj = x + Q_o(1) - Q_m(1) above (additive), x Q_o(1) / Q_m(1) (multiplicative).
* QDM (Cannon, Sobie & Murdock 2015, J. Climate 28, 6938, eqs. 2-6): tau = F_p(x),
  additive        x_adj = Q_o(tau) + (x - Q_m(tau)),
  multiplicative  x_adj = Q_o(tau) * x / Q_m(tau),
  so the model's change between the reference and the adjusted period at every quantile, x - Q_m(tau) or
  x / Q_m(tau), is kept. A future equal to the reference shifted by delta (scaled by lambda) gives
  Q_o(tau) + delta (Q_o(tau) lambda): the observed climatology carrying the model's change.

Multiplicative variables (amounts such as precipitation, >= 0): negative inputs (the -1e-10 of accumulated fields)
and climatology quantiles count as 0; a zero stays zero (both methods correct the amounts of wet times, not how many
times are dry); where the reference quantile Q_m(tau) is 0 but x > 0 (the model's reference is dry at a rank where
the adjusted period is wet) the ratio is undefined and the change is taken additively, x_adj = Q_o(tau) + x;
every output is >= 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "ADDITIVE",
    "KINDS",
    "MULTIPLICATIVE",
    "AdjustmentKind",
    "cdf_at",
    "empirical_quantiles",
    "quantile_at",
    "quantile_delta_mapping",
    "quantile_levels",
    "quantile_mapping",
]

AdjustmentKind = Literal["additive", "multiplicative"]
ADDITIVE: AdjustmentKind = "additive"
MULTIPLICATIVE: AdjustmentKind = "multiplicative"
KINDS: tuple[str, ...] = (ADDITIVE, MULTIPLICATIVE)
_COMPARISONS = 2**24
"""Values x knots compared at once when locating values among knots (memory: this many bytes)."""


def quantile_levels(count: int) -> np.ndarray:
    """``count`` evenly spaced levels p_k = k / (count - 1), from 0 to 1 (float64); count >= 2."""
    if count < 2:
        raise ValueError(f"quantile levels: {count}; at least 2 (the minimum and the maximum)")
    return np.linspace(0.0, 1.0, count)


def empirical_quantiles(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Q(p_k) of ``values`` (T, ...) along the first axis, (K, ...) float64: type 7 sample quantiles (linear
    interpolation between the order statistics x_(1) <= ... <= x_(T) at position 1 + p (T - 1))."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 1:
        raise ValueError("empirical quantiles of no values")
    return np.quantile(values, levels, axis=0, method="linear")


def _flat(values: np.ndarray, quantiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``values`` (T, ...) as (T, N) float64 and ``quantiles`` (K, ...) as (K, N), with the trailing shape."""
    values = np.asarray(values, dtype=np.float64)
    quantiles = np.asarray(quantiles, dtype=np.float64)
    trailing = quantiles.shape[1:]
    if values.shape[1:] != trailing:
        raise ValueError(f"values of shape {values.shape} for quantiles of shape {quantiles.shape}")
    cells = int(np.prod(trailing, dtype=np.int64))
    return values.reshape(values.shape[0], cells), quantiles.reshape(quantiles.shape[0], cells), trailing


def _knots_below(values: np.ndarray, quantiles: np.ndarray, strict: bool) -> np.ndarray:
    """Per (t, n): the number of knots q_{k, n} < x_{t, n} (``strict``) or <= x_{t, n}, (T, N) int64, counted in
    chunks of times (memory bounded by :data:`_COMPARISONS`)."""
    count, cells = values.shape
    knots = quantiles.T[None]  # (1, N, K)
    step = max(1, _COMPARISONS // max(1, cells * quantiles.shape[0]))
    out = np.empty((count, cells), dtype=np.int64)
    for start in range(0, count, step):
        chunk = values[start : start + step, :, None]
        out[start : start + step] = (knots < chunk if strict else knots <= chunk).sum(axis=-1)
    return out


def cdf_at(values: np.ndarray, quantiles: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """F(x): the probability p at which the piecewise-linear quantile function through (p_k, q_k) reaches x, per
    cell; ``values`` (T, ...), ``quantiles`` (K, ...) non-decreasing along the first axis, ``levels`` (K,).

    0 below q_0 and 1 above q_{K-1}; where the quantile function is flat at x (q_a = ... = q_b = x) the middle
    (p_a + p_b) / 2: the mean of the left-continuous and the right-continuous inverse."""
    levels = np.asarray(levels, dtype=np.float64)
    x, q, trailing = _flat(values, quantiles)
    last = q.shape[0] - 1
    columns = np.arange(q.shape[1])[None, :]
    # right inverse: from the last knot <= x towards the next (strictly greater) one
    upper = _knots_below(x, q, strict=False) - 1
    k = np.clip(upper, 0, last - 1)
    q0, q1 = q[k, columns], q[k + 1, columns]
    span = np.where(q1 > q0, q1 - q0, 1.0)
    right = levels[k] + np.clip((x - q0) / span, 0.0, 1.0) * (levels[k + 1] - levels[k])
    right = np.where(upper < 0, 0.0, np.where(upper >= last, 1.0, right))
    # left inverse: from the last knot < x towards the first knot >= x
    lower = _knots_below(x, q, strict=True)
    k = np.clip(lower, 1, last)
    q0, q1 = q[k - 1, columns], q[k, columns]
    span = np.where(q1 > q0, q1 - q0, 1.0)
    left = levels[k - 1] + np.clip((x - q0) / span, 0.0, 1.0) * (levels[k] - levels[k - 1])
    left = np.where(lower <= 0, 0.0, np.where(lower > last, 1.0, left))
    return (0.5 * (left + right)).reshape(x.shape[0], *trailing)


def quantile_at(probabilities: np.ndarray, quantiles: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Q(tau) per cell: linear in p between the knots (p_k, q_k); ``probabilities`` (T, ...) in [0, 1] (clipped),
    ``quantiles`` (K, ...), ``levels`` (K,) increasing from 0 to 1."""
    levels = np.asarray(levels, dtype=np.float64)
    tau, q, trailing = _flat(np.clip(probabilities, 0.0, 1.0), quantiles)
    k = np.clip(np.searchsorted(levels, tau, side="right") - 1, 0, levels.size - 2)
    columns = np.arange(q.shape[1])[None, :]
    weight = (tau - levels[k]) / (levels[k + 1] - levels[k])
    q0, q1 = q[k, columns], q[k + 1, columns]
    return (q0 + weight * (q1 - q0)).reshape(tau.shape[0], *trailing)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"adjustment kind {kind!r}: allowed: {', '.join(KINDS)}")


def _ratio_or_sum(target: np.ndarray, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """target * numerator / denominator where denominator > 0, else target + numerator (multiplicative change,
    additive where the ratio is undefined)."""
    positive = denominator > 0
    ratio = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=positive)
    return np.where(positive, target * ratio, target + numerator)


def _at_an_end(values: np.ndarray, model_end: np.ndarray, observed_end: np.ndarray) -> np.ndarray:
    """The multiplicative correction of one end of the reference range carried on: x Q_o / Q_m (x + Q_o - Q_m
    where Q_m = 0)."""
    positive = model_end > 0
    ratio = np.divide(observed_end, model_end, out=np.ones_like(observed_end), where=positive)
    return np.where(positive, values * ratio, values + observed_end - model_end)


def quantile_mapping(
    values: np.ndarray, model: np.ndarray, observed: np.ndarray, levels: np.ndarray, kind: str = ADDITIVE
) -> np.ndarray:
    """QM of ``values`` (T, ...): Q_o(F_m(x)), with the correction of the nearest end carried on outside the
    reference range (module docstring). ``model`` Q_m and ``observed`` Q_o: (K, ...) at ``levels`` (K,).
    Returns float64 (T, ...)."""
    _check_kind(kind)
    x = np.asarray(values, dtype=np.float64)
    model = np.asarray(model, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if kind == MULTIPLICATIVE:
        x, model, observed = np.maximum(x, 0.0), np.maximum(model, 0.0), np.maximum(observed, 0.0)
    adjusted = quantile_at(cdf_at(x, model, levels), observed, levels)
    low, high = x < model[0], x > model[-1]
    if kind == ADDITIVE:
        adjusted = np.where(low, x + observed[0] - model[0], adjusted)
        adjusted = np.where(high, x + observed[-1] - model[-1], adjusted)
        return adjusted
    below = _at_an_end(x, model[0], observed[0])
    above = _at_an_end(x, model[-1], observed[-1])
    adjusted = np.where(low, below, np.where(high, above, adjusted))
    return np.where(x == 0, 0.0, np.maximum(adjusted, 0.0))


def quantile_delta_mapping(
    values: np.ndarray,
    projected: np.ndarray,
    model: np.ndarray,
    observed: np.ndarray,
    levels: np.ndarray,
    kind: str = ADDITIVE,
) -> np.ndarray:
    """QDM of ``values`` (T, ...) (Cannon et al. 2015): tau = F_p(x), then Q_o(tau) + x - Q_m(tau) (additive) or
    Q_o(tau) x / Q_m(tau) (multiplicative; module docstring for zeros). ``projected`` Q_p (the distribution of the
    period being adjusted), ``model`` Q_m (the reference period) and ``observed`` Q_o: (K, ...) at ``levels``.
    Returns float64 (T, ...)."""
    _check_kind(kind)
    x = np.asarray(values, dtype=np.float64)
    projected = np.asarray(projected, dtype=np.float64)
    model = np.asarray(model, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if kind == MULTIPLICATIVE:
        x, projected = np.maximum(x, 0.0), np.maximum(projected, 0.0)
        model, observed = np.maximum(model, 0.0), np.maximum(observed, 0.0)
    tau = cdf_at(x, projected, levels)
    reference = quantile_at(tau, model, levels)
    climatology = quantile_at(tau, observed, levels)
    if kind == ADDITIVE:
        return climatology + (x - reference)
    adjusted = _ratio_or_sum(climatology, x, reference)
    return np.where(x == 0, 0.0, np.maximum(adjusted, 0.0))
