"""The temporal scores of :func:`~diffscale.evaluation.temporal.temporal_report` accumulated over blocks of times.

:class:`TemporalScores` takes blocks of (ensemble, truth, baseline) in time order, twice: ``add`` (the first
pass) and ``add_spells`` (the second: a spell above the truth's 90th percentile at a cell needs that percentile,
which the first pass finds); ``result()`` is the report of the whole record, to float rounding. What is kept
between blocks does not grow with the record, except the time index and the truth's upper tenth at each cell:

- autocorrelation (:class:`LagSums`): with y = x - x_0 (each cell's series less its first value, which leaves
  every anomaly a = x - mean_t(x) unchanged), the sums sum_t y, sum_t y^2 and, per lag k over the pairs P_k,
  sum y_s y_t, sum y_s, sum y_t and |P_k|; then, with ybar = sum_t y / T,

      sum_{P_k} a_s a_t = sum y_s y_t - ybar (sum y_s + sum y_t) + |P_k| ybar^2,
      sum_t a_t^2 = sum_t y^2 - T ybar^2;

  a block's pairs reach back into the last K steps of the one before (carried, K one day of steps);
- daily aggregates (:class:`DailySums`): a day is aggregated when its last time has been read (the times of an
  unfinished day are carried to the next block), its scores summed over the days;
- spells (:class:`SpellSums`): the number of spell starts and of steps in spells at each cell, a block's first
  step continuing the last block's spell when the two are one step apart;
- the truth's 90th percentile: :class:`~diffscale.evaluation.blockwise.OrderStatistics` (its upper tenth).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffscale.evaluation.blockwise import OrderStatistics
from diffscale.evaluation.scores import area_mean, area_weights, fair_crps
from diffscale.evaluation.temporal import (
    DAY_SECONDS,
    SPELL_PERCENTILE,
    _member_mean,
    daily_aggregates,
    temporal_plan,
    time_positions,
)

__all__ = ["DailySums", "LagSums", "SpellSums", "TemporalScores"]


class LagSums:
    """:func:`~diffscale.evaluation.temporal.lag_autocorrelation` of series (..., T, H, W) at step ``positions``
    (T,), fed in blocks of times in order (module docstring)."""

    def __init__(self, positions: np.ndarray, latitude: np.ndarray, max_lag: int) -> None:
        self.positions = np.asarray(positions, dtype=np.int64)
        self.latitude, self.max_lag = latitude, int(max_lag)
        self.seen = 0
        self.reference: np.ndarray | None = None
        self.carry: np.ndarray | None = None
        self.carry_positions = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(self.max_lag, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        """Merge the next block (..., t, H, W) of the series."""
        values = np.asarray(values, dtype=np.float64)
        steps = values.shape[-3]
        block_positions = self.positions[self.seen : self.seen + steps]
        self.seen += steps
        if self.reference is None:
            self.reference = values[..., 0, :, :].copy()
            cells = self.reference.shape
            lagged = (*cells[:-2], self.max_lag, *cells[-2:])
            self.total, self.squares = np.zeros(cells), np.zeros(cells)
            self.scale = np.zeros(cells)
            self.products, self.earlier, self.later = np.zeros(lagged), np.zeros(lagged), np.zeros(lagged)
            self.carry = values[..., :0, :, :].copy()
        shifted = values - self.reference[..., None, :, :]
        self.total += shifted.sum(axis=-3)
        self.squares += np.einsum("...thw,...thw->...hw", shifted, shifted)
        self.scale = np.maximum(self.scale, np.abs(values).max(axis=-3))
        window = np.concatenate([self.carry, shifted], axis=-3)
        positions = np.concatenate([self.carry_positions, block_positions])
        carried = self.carry_positions.size
        later = np.arange(carried, positions.size)
        for lag in range(1, self.max_lag + 1):
            target = positions[later] - lag
            index = np.minimum(np.searchsorted(positions, target), positions.size - 1)
            found = positions[index] == target
            if not found.any():
                continue
            first, second = window[..., index[found], :, :], window[..., later[found], :, :]
            self.products[..., lag - 1, :, :] += np.einsum("...thw,...thw->...hw", first, second)
            self.earlier[..., lag - 1, :, :] += first.sum(axis=-3)
            self.later[..., lag - 1, :, :] += second.sum(axis=-3)
            self.count[lag - 1] += int(found.sum())
        kept = positions >= positions[-1] + 1 - self.max_lag
        self.carry, self.carry_positions = window[..., kept, :, :].copy(), positions[kept]

    def result(self) -> np.ndarray:
        """rho_k, k = 1 .. K, of each series (..., K) (NaN for a lag without pairs or when no cell varies)."""
        if self.seen != self.positions.size:
            raise ValueError(f"{self.seen} of {self.positions.size} times fed")
        times = self.positions.size
        mean = self.total / times
        variance = (self.squares - times * mean * mean) / times
        varies = variance > (1e-12 * (self.scale + 1e-300)) ** 2
        weights = np.broadcast_to(area_weights(self.latitude)[:, None], variance.shape[-2:]) * varies
        total = weights.sum(axis=(-2, -1))
        safe_variance = np.where(varies, variance, 1.0)
        result = np.full((*variance.shape[:-2], self.max_lag), np.nan)
        for lag in range(1, self.max_lag + 1):
            count = int(self.count[lag - 1])
            if not count:
                continue
            index = (..., lag - 1, slice(None), slice(None))
            covariance = self.products[index] - mean * (self.earlier[index] + self.later[index]) + count * mean * mean
            rho = covariance / count / safe_variance
            with np.errstate(invalid="ignore", divide="ignore"):
                result[..., lag - 1] = (rho * weights).sum(axis=(-2, -1)) / total
        return result


class DailySums:
    """The daily scores of :func:`~diffscale.evaluation.temporal.temporal_report` (per statistic, the ensemble's
    and the baseline's fair CRPS and bias against the truth's daily aggregates, and the truth's mean), fed in
    blocks of times in order; ``days`` the index arrays of the whole days (:func:`whole_days`)."""

    def __init__(self, days: list[np.ndarray], statistics: list[str], latitude: np.ndarray) -> None:
        self.days, self.statistics, self.latitude = days, statistics, latitude
        self.next_day = 0
        self.seen = 0
        self.start = 0
        self.buffer: dict[str, np.ndarray] = {}
        self.sums = {
            statistic: {key: 0.0 for key in ("crps", "bias", "bilinear_crps", "bilinear_bias", "truth")}
            for statistic in statistics
        }

    def add(self, members: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> None:
        """Merge the next block: ``members`` (M, t, H, W), ``truth`` and ``baseline`` (t, H, W)."""
        fields = {"members": members, "truth": truth, "baseline": baseline}
        for label, values in fields.items():
            previous = self.buffer.get(label)
            self.buffer[label] = values if previous is None else np.concatenate([previous, values], axis=-3)
        self.seen += truth.shape[0]
        while self.next_day < len(self.days) and self.days[self.next_day][-1] < self.seen:
            self._day(self.days[self.next_day] - self.start)
            self.next_day += 1
        keep_from = int(self.days[self.next_day][0]) if self.next_day < len(self.days) else self.seen
        drop = max(0, min(keep_from, self.seen) - self.start)
        if drop:
            self.buffer = {label: values[..., drop:, :, :] for label, values in self.buffer.items()}
            self.start += drop

    def _day(self, index: np.ndarray) -> None:
        aggregates = {
            label: daily_aggregates(values, [index], self.statistics) for label, values in self.buffer.items()
        }
        for statistic, sums in self.sums.items():
            members = aggregates["members"][statistic]  # (M, 1, H, W)
            truth = aggregates["truth"][statistic]  # (1, H, W)
            baseline = aggregates["baseline"][statistic]
            sums["crps"] += float(area_mean(fair_crps(members, truth), self.latitude).sum())
            sums["bias"] += float(area_mean(members.mean(axis=0) - truth, self.latitude).sum())
            sums["bilinear_crps"] += float(area_mean(fair_crps(baseline[None], truth), self.latitude).sum())
            sums["bilinear_bias"] += float(area_mean(baseline - truth, self.latitude).sum())
            sums["truth"] += float(area_mean(truth, self.latitude).sum())

    def result(self) -> dict[str, Any]:
        """Per statistic: ``ensemble`` and ``bilinear`` (``crps``, ``bias``) and ``truth_mean``."""
        if self.next_day != len(self.days):
            raise ValueError(f"{self.next_day} of {len(self.days)} days aggregated")
        days = len(self.days)
        return {
            statistic: {
                "ensemble": {"crps": sums["crps"] / days, "bias": sums["bias"] / days},
                "bilinear": {"crps": sums["bilinear_crps"] / days, "bias": sums["bilinear_bias"] / days},
                "truth_mean": sums["truth"] / days,
            }
            for statistic, sums in self.sums.items()
        }


class SpellSums:
    """:func:`~diffscale.evaluation.temporal.spell_statistics` of a condition (..., T, H, W) at step
    ``positions`` (T,), fed in blocks of times in order."""

    def __init__(self, positions: np.ndarray, latitude: np.ndarray, step_hours: float) -> None:
        self.positions = np.asarray(positions, dtype=np.int64)
        self.latitude, self.step_hours = latitude, step_hours
        self.seen = 0
        self.last: np.ndarray | None = None
        self.starts: np.ndarray | Any = 0
        self.steps: np.ndarray | Any = 0

    def add(self, held: np.ndarray) -> None:
        """Merge the next block (..., t, H, W) of the condition."""
        held = np.asarray(held, dtype=bool)
        count = held.shape[-3]
        positions = self.positions[self.seen : self.seen + count]
        previous = np.zeros_like(held)
        follows = np.diff(positions) == 1
        previous[..., 1:, :, :] = held[..., :-1, :, :] & follows[:, None, None]
        if self.last is not None and positions[0] - self.positions[self.seen - 1] == 1:
            previous[..., 0, :, :] = self.last
        self.starts = self.starts + (held & ~previous).sum(axis=-3)
        self.steps = self.steps + held.sum(axis=-3)
        self.last = held[..., -1, :, :].copy()
        self.seen += count

    def result(self) -> dict[str, np.ndarray]:
        """``count`` and ``mean_length_hours``, as :func:`spell_statistics` returns them."""
        count = area_mean(self.starts, self.latitude)
        with np.errstate(invalid="ignore", divide="ignore"):
            length = np.where(
                count > 0,
                self.step_hours * area_mean(self.steps, self.latitude) / np.where(count > 0, count, 1),
                np.nan,
            )
        return {"count": np.asarray(count), "mean_length_hours": np.asarray(length)}


def _spell_entry(statistics: dict[str, SpellSums]) -> dict[str, Any]:
    """The report's entry of one kind of spell (as :func:`~diffscale.evaluation.temporal.temporal_report`)."""
    result: dict[str, Any] = {}
    for label, sums in statistics.items():
        values = sums.result()
        if label == "ensemble":
            result[label] = {key: float(_member_mean(value)) for key, value in values.items()}
            result[label]["per_member_mean_length_hours"] = values["mean_length_hours"].tolist()
        else:
            result[label] = {key: float(value) for key, value in values.items()}
    return result


class TemporalScores:
    """:func:`~diffscale.evaluation.temporal.temporal_report` of variable ``name`` at ``times`` fed in blocks of
    times: every block through ``add``, then every block again through ``add_spells``, then ``result()``.
    Raises ValueError (as that function) for fewer than two times or times off a regular grid."""

    _LABELS = ("truth", "ensemble", "bilinear")

    def __init__(self, name: str, times: Any, latitude: np.ndarray, units: str = "") -> None:
        self.step, self.positions = time_positions(times)
        self.hours = self.step / 3600.0
        self.latitude = np.asarray(latitude, dtype=np.float64)
        self.max_lag = max(1, math.floor(DAY_SECONDS / self.step + 1e-9))
        self.plan = temporal_plan(name, units, times, self.step)
        self.truth_lags = LagSums(self.positions, self.latitude, self.max_lag)
        self.member_lags = LagSums(self.positions, self.latitude, self.max_lag)
        self.daily = DailySums(self.plan.days, self.plan.statistics, self.latitude) if self.plan.statistics else None
        self.truth_order = OrderStatistics(self.positions.size, (SPELL_PERCENTILE,))
        kinds = ["above_p90"] + (["wet", "dry"] if self.plan.threshold is not None else [])
        self.spells = {
            kind: {label: SpellSums(self.positions, self.latitude, self.hours) for label in self._LABELS}
            for kind in kinds
        }
        self.cut: np.ndarray | None = None

    def add(self, members: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> None:
        """First pass: the next block, ``members`` (M, t, H, W), ``truth`` and ``baseline`` (t, H, W)."""
        members, truth = np.asarray(members, dtype=np.float64), np.asarray(truth, dtype=np.float64)
        baseline = np.asarray(baseline, dtype=np.float64)
        self.truth_lags.add(truth - baseline)
        self.member_lags.add(members - baseline)
        if self.daily is not None:
            self.daily.add(members, truth, baseline)
        self.truth_order.add(truth)

    def add_spells(self, members: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> None:
        """Second pass (after every block went through ``add``): the next block, as ``add`` takes it."""
        if self.cut is None:
            self.cut = self.truth_order.percentile(SPELL_PERCENTILE)
        fields = {"truth": truth, "ensemble": members, "bilinear": baseline}
        for kind, sums in self.spells.items():
            for label, values in fields.items():
                values = np.asarray(values, dtype=np.float64)
                if kind == "above_p90":
                    held = values > self.cut
                elif kind == "wet":
                    held = values >= self.plan.threshold
                else:
                    held = values < self.plan.threshold
                sums[label].add(held)

    def result(self) -> dict[str, Any]:
        """The report of the whole record (``temporal_report``'s keys and values)."""
        member_acf = self.member_lags.result()
        report: dict[str, Any] = {
            "step_hours": self.hours,
            "lag_hours": [self.hours * lag for lag in range(1, self.max_lag + 1)],
            "autocorrelation": {
                "truth": self.truth_lags.result().tolist(),
                "ensemble": _member_mean(member_acf).tolist(),
                "members": member_acf.tolist(),
            },
        }
        daily = {**self.plan.daily, "statistics": self.daily.result() if self.daily is not None else {}}
        notes = list(self.plan.notes)
        if "note" in daily:
            notes.append(daily["note"])
        report["daily"] = daily
        spells: dict[str, Any] = {"above_p90": _spell_entry(self.spells["above_p90"])}
        if self.plan.threshold is not None:
            spells["wet_threshold"] = self.plan.threshold
            spells["wet"] = _spell_entry(self.spells["wet"])
            spells["dry"] = _spell_entry(self.spells["dry"])
        report["spells"] = spells
        report["notes"] = notes
        return report
