"""Temporal scores of a downscaled ensemble: are its members coherent time series, like the truth?

A user of time series (hydrology, crops, energy) aggregates each member over time: daily maxima and minima of
hourly fields, daily totals of precipitation, lengths of heat waves and dry spells. Members drawn independently
at every time are fields with the right distribution at each time but without the truth's persistence: their
residuals jump from one step to the next, so a day's maximum over independent draws is too high (the maximum of
24 independent draws lies further in the tail than that of 24 correlated ones), its minimum too low, and spells
above a threshold are too short and too many. These functions measure that, for the ensemble and for the truth
side by side.

Arrays are numpy: an ensemble ``(M, T, H, W)``, a truth or baseline ``(T, H, W)``, latitudes ``(H,)`` in
degrees; time is axis -3 throughout. Grid means are area-weighted by w_i = cos(phi_i)
(:func:`~diffscale.evaluation.scores.area_weights`). Times are any array of datetimes with differences, either
``numpy.datetime64`` or ``cftime`` dates of any calendar: only differences of times are used
(:func:`time_positions`), and days are counted from the midnight before the first time (every calendar has
86 400 s days).

* residual: r = x - U(x_c), the field minus the bilinear upsampling of its coarse input (the part the
  downscaling adds);
* lag-k autocorrelation of a series a_t = r_t - mean_t(r) at one cell over the pairs P_k = {(s, t): t is k steps
  after s} (gaps in the times leave pairs out):

      rho_k = [ (1/|P_k|) sum_{(s,t) in P_k} a_s a_t ] / [ (1/T) sum_t a_t^2 ],

  averaged over cells with weights w_i (cells whose residual does not vary are left out), for k = 1 .. K with K
  one day of steps; per member, then averaged over members (:func:`lag_autocorrelation`);
* daily aggregates of each series over the whole days (those with all 86 400 / dt steps): max, min, mean, and
  for precipitation the sum (:func:`whole_days`, :func:`daily_aggregates`), scored by the fair CRPS
  (:func:`~diffscale.evaluation.scores.fair_crps`) and the bias <mean_m A(x_m) - A(y)> of the members' aggregates;
* spells: runs of consecutive steps where a condition holds (above the truth's 90th percentile at the cell; for
  precipitation wet, >= 1 mm/day, and dry); their count per cell <N> and mean length
  sum_c w_c L_c / sum_c w_c N_c (L_c steps in spells at cell c), in hours (:func:`spell_statistics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffscale.data.climate.units import UNITS, normalise_units
from diffscale.evaluation.scores import area_mean, area_weights, fair_crps

__all__ = [
    "DAILY_STATISTICS",
    "DAY_SECONDS",
    "SPELL_PERCENTILE",
    "WET_DAY_MM",
    "TemporalPlan",
    "daily_aggregates",
    "daily_scores",
    "is_precipitation",
    "lag_autocorrelation",
    "spell_statistics",
    "temporal_plan",
    "temporal_report",
    "time_positions",
    "wet_threshold",
    "whole_days",
]

DAY_SECONDS = 86_400.0
DAILY_STATISTICS = ("max", "min", "mean")
"""The daily aggregates of every variable; precipitation adds ``sum``."""
SPELL_PERCENTILE = 90.0
"""Spells are runs above the truth's 90th percentile at each cell."""
WET_DAY_MM = 1.0
"""A wet day has at least 1 mm of precipitation; a step of dt seconds is wet from 1 mm x dt / 86 400 s."""
PRECIPITATION_NAMES = ("tp", "pr", "precip", "precipitation", "total_precipitation")


def _seconds(differences: np.ndarray) -> np.ndarray:
    """Time differences (numpy timedelta64 or datetime.timedelta objects) in seconds, as float64."""
    if np.issubdtype(differences.dtype, np.timedelta64):
        return differences / np.timedelta64(1, "s")
    return np.array([item.total_seconds() for item in differences.ravel()], dtype=np.float64).reshape(differences.shape)


def time_positions(times: Any) -> tuple[float, np.ndarray]:
    """(dt, n): the time step dt in seconds, the smallest difference of successive ``times``, and each time's
    position n_t = (t - t_0) / dt in whole steps, so that a gap in the times is a jump in n.

    ``times`` are increasing datetimes of any kind that subtracts (numpy ``datetime64``, ``cftime`` dates).
    Raises ValueError for fewer than two times, times that do not increase or that are not on one grid of step dt.
    """
    values = np.asarray(times)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"a time series needs at least two times, got {values.size}")
    offsets = _seconds(values - values[0])
    steps = np.diff(offsets)
    if (steps <= 0).any():
        raise ValueError("the times do not increase")
    step = float(steps.min())
    positions = offsets / step
    rounded = np.rint(positions)
    if np.abs(positions - rounded).max() > 1e-6:
        raise ValueError(f"the times are not on a regular grid of step {step:g} s (the smallest difference)")
    return step, rounded.astype(np.int64)


def _midnight(time: Any) -> Any:
    if isinstance(time, np.datetime64):
        return time.astype("datetime64[D]").astype(time.dtype)
    return time.replace(hour=0, minute=0, second=0, microsecond=0)


def whole_days(times: Any, step_seconds: float) -> list[np.ndarray]:
    """The indices of the times of each whole day, in order: a day (counted from the midnight before the first
    time, 00:00 to 24:00) is whole when all its 86 400 / dt steps are present. Empty when dt does not divide a day
    or is a day or more (daily data have nothing to aggregate)."""
    steps_per_day = DAY_SECONDS / step_seconds
    if step_seconds >= DAY_SECONDS or abs(steps_per_day - round(steps_per_day)) > 1e-9:
        return []
    values = np.asarray(times)
    start = _midnight(values[0])
    day = np.floor(_seconds(np.asarray(values - start)) / DAY_SECONDS + 1e-9).astype(np.int64)
    groups = []
    for label in np.unique(day):
        members = np.nonzero(day == label)[0]
        if members.size == round(steps_per_day):
            groups.append(members)
    return groups


def daily_aggregates(
    series: Any, days: Sequence[np.ndarray], statistics: Sequence[str] = DAILY_STATISTICS
) -> dict[str, np.ndarray]:
    """A_d(x) over the times of each day d (``days`` from :func:`whole_days`) of ``series`` (..., T, H, W):
    ``max``, ``min``, ``mean`` or ``sum`` of the day's values at each cell; each (..., D, H, W)."""
    values = np.asarray(series, dtype=np.float64)
    functions = {"max": np.max, "min": np.min, "mean": np.mean, "sum": np.sum}
    unknown = [name for name in statistics if name not in functions]
    if unknown:
        raise ValueError(f"unknown daily statistics {unknown}; known: {', '.join(functions)}")
    if not days:
        raise ValueError("no whole day to aggregate")
    return {
        name: np.stack([functions[name](values[..., index, :, :], axis=-3) for index in days], axis=-3)
        for name in statistics
    }


def daily_scores(members: Any, truth: Any, latitude: Any) -> dict[str, float]:
    """Fair CRPS <CRPS_fair(A(x_1..M), A(y))> and bias <mean_m A(x_m) - A(y)> of the members' daily aggregates
    ``members`` (M, D, H, W) against the truth's ``truth`` (D, H, W), area-weighted over cells and days."""
    members = np.asarray(members, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    return {
        "crps": float(area_mean(fair_crps(members, truth), latitude).mean()),
        "bias": float(area_mean(members.mean(axis=0) - truth, latitude).mean()),
    }


def lag_autocorrelation(series: Any, positions: Any, latitude: Any, max_lag: int) -> np.ndarray:
    """Area-weighted lag-k autocorrelation rho_k, k = 1 .. ``max_lag``, of each series of ``series``
    (..., T, H, W) whose times sit at step positions ``positions`` (T,) (:func:`time_positions`); shape
    (..., max_lag).

    At each cell a_t = x_t - mean_t(x) and rho_k = [(1/|P_k|) sum_{P_k} a_s a_t] / [(1/T) sum_t a_t^2] over the
    pairs P_k of times k steps apart; then sum_c w_c rho_k(c) / sum_c w_c over the cells whose series varies.
    NaN for a lag without pairs or when no cell varies.
    """
    values = np.asarray(series, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    if values.ndim < 3 or values.shape[-3] != positions.size:
        raise ValueError(f"series of shape {values.shape} does not have {positions.size} times on axis -3")
    if max_lag < 1:
        raise ValueError(f"max_lag = {max_lag}: must be >= 1")
    anomaly = values - values.mean(axis=-3, keepdims=True)
    variance = np.einsum("...thw,...thw->...hw", anomaly, anomaly) / positions.size
    scale = np.abs(values).max(axis=-3) + 1e-300
    varies = variance > (1e-12 * scale) ** 2
    weights = np.broadcast_to(area_weights(latitude)[:, None], values.shape[-2:]) * varies
    total = weights.sum(axis=(-2, -1))
    index = {int(position): i for i, position in enumerate(positions)}
    result = np.full((*values.shape[:-3], max_lag), np.nan)
    safe_variance = np.where(varies, variance, 1.0)
    unbroken = bool((np.diff(positions) == 1).all())
    for lag in range(1, max_lag + 1):
        if unbroken:  # no gap: the pairs are two slices (views, no copy)
            count = max(positions.size - lag, 0)
            earlier, later = anomaly[..., : positions.size - lag, :, :], anomaly[..., lag:, :, :]
        else:
            pairs = [(i, index[int(p) + lag]) for i, p in enumerate(positions) if int(p) + lag in index]
            count = len(pairs)
            if count:
                first, second = (np.array(side) for side in zip(*pairs, strict=True))
                earlier, later = anomaly[..., first, :, :], anomaly[..., second, :, :]
        if not count:
            continue
        covariance = np.einsum("...thw,...thw->...hw", earlier, later)
        rho = covariance / count / safe_variance
        with np.errstate(invalid="ignore", divide="ignore"):
            result[..., lag - 1] = (rho * weights).sum(axis=(-2, -1)) / total
    return result


def spell_statistics(condition: Any, positions: Any, latitude: Any, step_hours: float) -> dict[str, np.ndarray]:
    """Runs of consecutive steps where ``condition`` (..., T, H, W) holds, at each cell; times at step positions
    ``positions`` (T,), so a gap in the times ends a run.

    Returns ``count``, the area-weighted mean number of runs per cell <N_c>, and ``mean_length_hours``,
    step_hours sum_c w_c L_c / sum_c w_c N_c with L_c the steps in runs at cell c (NaN without any run); each of
    shape (...).
    """
    held = np.asarray(condition, dtype=bool)
    positions = np.asarray(positions, dtype=np.int64)
    if held.ndim < 3 or held.shape[-3] != positions.size:
        raise ValueError(f"condition of shape {held.shape} does not have {positions.size} times on axis -3")
    previous = np.zeros_like(held)
    follows = np.diff(positions) == 1
    previous[..., 1:, :, :] = held[..., :-1, :, :] & follows[:, None, None]
    starts = (held & ~previous).sum(axis=-3)
    steps = held.sum(axis=-3)
    count = area_mean(starts, latitude)
    with np.errstate(invalid="ignore", divide="ignore"):
        length = np.where(count > 0, step_hours * area_mean(steps, latitude) / np.where(count > 0, count, 1), np.nan)
    return {"count": np.asarray(count), "mean_length_hours": np.asarray(length)}


def is_precipitation(name: str) -> bool:
    """Whether variable ``name`` is precipitation (ERA5's ``tp``, CMIP's ``pr`` and their long names)."""
    return name.lower() in PRECIPITATION_NAMES


def wet_threshold(units: str, step_seconds: float) -> tuple[float, bool]:
    """(threshold, accumulated): the value from which a step of dt = ``step_seconds`` is wet, 1 mm/day in
    ``units``, and whether the units are an accumulation over the step (m, mm, kg m-2: threshold 1 mm x dt / 1 day,
    and a daily total is the sum of the steps) rather than a rate (mm s-1, m h-1, kg m-2 s-1, ...: threshold
    1 mm/day in that rate). ValueError for units that are not a depth of water or a rate of one."""
    normalised = normalise_units(units)
    if normalised not in UNITS:
        raise ValueError(f"precipitation in unknown units {units!r}")
    quantity, scale, _ = UNITS[normalised]
    metres_per_day = WET_DAY_MM * 1e-3
    if quantity == "length":
        return metres_per_day * step_seconds / DAY_SECONDS / scale, True
    per = {"length per second": 1.0, "length per hour": 3600.0, "length per day": DAY_SECONDS}
    if quantity not in per:
        raise ValueError(f"precipitation in {units!r}, which is not a depth of water or a rate of one")
    return metres_per_day * per[quantity] / DAY_SECONDS / scale, False


def _member_mean(values: np.ndarray) -> np.ndarray:
    """The mean over members (axis 0) of the finite values; NaN where none is."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    total = np.where(finite, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _spells(condition: dict[str, np.ndarray], positions: np.ndarray, latitude: Any, hours: float) -> dict[str, Any]:
    """Spell statistics of the truth, the ensemble (per member, then the mean) and the baseline."""
    result: dict[str, Any] = {}
    for label, held in condition.items():
        statistics = spell_statistics(held, positions, latitude, hours)
        if label == "ensemble":
            result[label] = {key: float(_member_mean(value)) for key, value in statistics.items()}
            result[label]["per_member_mean_length_hours"] = statistics["mean_length_hours"].tolist()
        else:
            result[label] = {key: float(value) for key, value in statistics.items()}
    return result


@dataclass
class TemporalPlan:
    """What a variable's temporal report computes: the wet ``threshold`` (None: no wet/dry spells), the whole
    ``days`` and the daily ``statistics`` (empty: none), the ``daily`` entry so far (``whole_days``, and ``note``
    when there is no day to aggregate) and the ``notes`` of what is skipped."""

    threshold: float | None
    days: list[np.ndarray]
    statistics: list[str]
    daily: dict[str, Any]
    notes: list[str]


def temporal_plan(name: str, units: str, times: Any, step: float) -> TemporalPlan:
    """The :class:`TemporalPlan` of variable ``name`` in ``units`` at ``times`` of step ``step`` seconds."""
    hours = step / 3600.0
    notes: list[str] = []
    precipitation = is_precipitation(name)
    threshold: float | None = None
    accumulated = False
    if precipitation:
        try:
            threshold, accumulated = wet_threshold(units, step)
        except ValueError as error:
            notes.append(f"wet/dry spells and daily sums skipped: {error}")
    days = whole_days(times, step)
    daily: dict[str, Any] = {"whole_days": len(days), "statistics": {}}
    statistics: list[str] = []
    if step >= DAY_SECONDS:
        daily["note"] = "daily or coarser data: no daily aggregates"
    elif not days:
        daily["note"] = (
            "no whole day (all steps from 00:00 to 24:00)"
            if abs(DAY_SECONDS / step - round(DAY_SECONDS / step)) < 1e-9
            else f"a step of {hours:g} h does not divide a day"
        )
    else:
        statistics = list(DAILY_STATISTICS) + (["sum"] if precipitation and accumulated else [])
        if precipitation and threshold is not None and not accumulated:
            notes.append("daily sums skipped: precipitation is a rate (the daily mean is the day's mean rate)")
    return TemporalPlan(threshold, days, statistics, daily, notes)


def temporal_report(
    name: str,
    ensemble: Any,
    truth: Any,
    baseline: Any,
    latitude: Any,
    times: Any,
    units: str = "",
) -> dict[str, Any]:
    """The temporal scores of variable ``name``: ``ensemble`` (M, T, H, W) and the bilinear ``baseline`` (T, H, W)
    against ``truth`` (T, H, W) at ``times`` (T,), as a JSON-ready dict.

    ``step_hours``; ``lag_hours`` (K = one day of steps, at least 1); ``autocorrelation`` of the residuals x - U
    (``truth``, ``ensemble`` the mean over members, ``members`` each); ``daily`` (``whole_days``, per statistic
    the ``ensemble`` and ``bilinear`` fair CRPS and bias and the truth's area mean; ``note`` when there is no whole
    day); ``spells``: ``above_p90`` and, for precipitation, ``wet``/``dry`` (``wet_threshold`` in ``units``), each
    with ``truth``, ``ensemble``, ``bilinear`` count and mean length; ``notes`` lists what was skipped and why.
    Raises ValueError for fewer than two times or times off a regular grid.
    """
    members = np.asarray(ensemble, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    step, positions = time_positions(times)
    hours = step / 3600.0
    max_lag = max(1, math.floor(DAY_SECONDS / step + 1e-9))
    truth_acf = lag_autocorrelation(truth - baseline, positions, latitude, max_lag)
    member_acf = lag_autocorrelation(members - baseline, positions, latitude, max_lag)
    report: dict[str, Any] = {
        "step_hours": hours,
        "lag_hours": [hours * lag for lag in range(1, max_lag + 1)],
        "autocorrelation": {
            "truth": truth_acf.tolist(),
            "ensemble": _member_mean(member_acf).tolist(),
            "members": member_acf.tolist(),
        },
    }
    plan = temporal_plan(name, units, times, step)
    notes, daily, days, statistics = plan.notes, plan.daily, plan.days, plan.statistics
    threshold = plan.threshold
    if statistics:
        member_daily = daily_aggregates(members, days, statistics)
        truth_daily = daily_aggregates(truth, days, statistics)
        baseline_daily = daily_aggregates(baseline, days, statistics)
        for statistic in statistics:
            daily["statistics"][statistic] = {
                "ensemble": daily_scores(member_daily[statistic], truth_daily[statistic], latitude),
                "bilinear": daily_scores(baseline_daily[statistic][None], truth_daily[statistic], latitude),
                "truth_mean": float(area_mean(truth_daily[statistic], latitude).mean()),
            }
    if "note" in daily:
        notes.append(daily["note"])
    report["daily"] = daily
    cut = np.percentile(truth, SPELL_PERCENTILE, axis=0)
    fields = {"truth": truth, "ensemble": members, "bilinear": baseline}
    spells: dict[str, Any] = {
        "above_p90": _spells({key: value > cut for key, value in fields.items()}, positions, latitude, hours)
    }
    if threshold is not None:
        spells["wet_threshold"] = threshold
        spells["wet"] = _spells({key: value >= threshold for key, value in fields.items()}, positions, latitude, hours)
        spells["dry"] = _spells({key: value < threshold for key, value in fields.items()}, positions, latitude, hours)
    report["spells"] = spells
    report["notes"] = notes
    return report
