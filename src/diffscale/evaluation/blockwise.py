"""The scores of :func:`~diffscale.evaluation.climate_report.evaluate_variable` accumulated over blocks of times.

A long record does not fit in memory at once; its scores are sums over times, merged exactly block after block
(:class:`VariableScores`: feed it blocks ``add(ensemble, truth, baseline)`` in time order, then ``result()``).
With w_i the area weights (mean 1 over the H rows) every grid mean is S / (T H W), S = sum_b sum_{t in b} sum_ij
w_i x_tij the sum of the blocks' sums, so the RMSE, MAE, bias, fair CRPS and spread are those of the whole record
to float rounding. The rest:

- rank histogram: the counts and weighted frequencies are sums; the ranks' random tie-breaking draws come from
  one generator seeded once, in time order, so each block gets the draws the whole record would give its times;
  the flatness needs the per-time frequencies f_{r,t} only through their mean and variance over t, merged as
  (n, mean, M2) (Chan, Golub & LeVeque 1983, as :class:`~diffscale.data.climate.transforms.Moments`);
- spectra: the periodogram is a mean over fields, so its sum and count are merged and the radial average taken
  at the end;
- percentiles: numpy's linear interpolation needs the order statistics x_(i) and x_(i+1) at i = floor((N-1) p),
  so :class:`OrderStatistics` keeps at each cell only the i + 2 smallest values seen (p <= 1/2) or the N - i
  largest (p > 1/2), merging each block by a partial sort: about 1 % of N per cell for the 1st and 99th
  percentiles;
- spread-error relation: its bins of equal area are cut in the order of every case's variance, so each case's
  sorting variance, variance and squared error (three float64 numbers a case) are kept until the end, up to
  :data:`SPREAD_ERROR_EXACT_CASES` cases; a longer record is binned on a fixed fine grid of the sorting variance
  instead (:class:`SpreadErrorCases`: 200 bins a decade, so a bin edge sits within 1.2 % of where the exact sort
  would put it), whose per-bin sums are merged into the bins of equal area at the end: bounded memory, and the
  same bins to that resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffscale.evaluation.calibration import (
    DEFAULT_SPREAD_ERROR_BINS,
    binned_spread_error,
    flatness_figures,
    spread_error_from_bin_sums,
    spread_error_variances,
)
from diffscale.evaluation.climate_report import Spectrum, VariableEvaluation
from diffscale.evaluation.scores import DEFAULT_PERCENTILES, area_weights, fair_crps, percentile_error
from diffscale.evaluation.spectra import (
    coarse_nyquist_wavenumber,
    latlon_periodogram,
    radial_average,
    spectral_ratio,
)

__all__ = [
    "SPREAD_ERROR_EXACT_CASES",
    "OrderStatistics",
    "PeriodogramSum",
    "SpreadErrorCases",
    "VariableScores",
    "VectorMoments",
    "percentile_positions",
]

SPREAD_ERROR_EXACT_CASES = 2**22
"""Cases (time x cell) of the spread-error relation kept exactly (96 MiB); beyond, the fine-grid binning."""

_FINE_BINS_PER_DECADE = 200
_FINE_LOG10_RANGE = (-40.0, 40.0)


def percentile_positions(total: int, percentile: float) -> tuple[int, int, float]:
    """(i, j, g) of numpy's linear percentile of ``total`` samples: h = (N - 1) p / 100, i = floor(h),
    j = min(i + 1, N - 1), g = h - i; the percentile is x_(i) + g (x_(j) - x_(i))."""
    position = (percentile / 100.0) * (total - 1)
    below = min(math.floor(position), total - 1)
    return below, min(below + 1, total - 1), position - below


def _lerp(low: np.ndarray, high: np.ndarray, fraction: float) -> np.ndarray:
    """numpy's interpolation between two order statistics (from the nearer end, as ``np.percentile`` does)."""
    difference = high - low
    return high - difference * (1.0 - fraction) if fraction >= 0.5 else low + difference * fraction


class OrderStatistics:
    """Percentiles over axis 0 of ``total`` samples at each cell, fed in blocks (module docstring).

    Holds the ``low_kept`` smallest and the ``high_kept`` largest samples seen at each cell: what the
    ``percentiles`` need of a record of ``total`` samples, whatever the blocks.
    """

    def __init__(self, total: int, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        if total < 1:
            raise ValueError(f"total = {total}: need at least one sample")
        self.total = int(total)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.low_kept = max([percentile_positions(total, p)[1] + 1 for p in self.percentiles if p <= 50] + [0])
        self.high_kept = max([total - percentile_positions(total, p)[0] for p in self.percentiles if p > 50] + [0])
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.seen = 0

    def add(self, samples: np.ndarray) -> None:
        """Merge a block of samples (n, ...)."""
        samples = np.asarray(samples, dtype=np.float64)
        self.seen += samples.shape[0]
        if self.seen > self.total:
            raise ValueError(f"{self.seen} samples fed to order statistics of {self.total}")
        if self.low_kept:
            self.low = _kept(self.low, samples, self.low_kept, smallest=True)
        if self.high_kept:
            self.high = _kept(self.high, samples, self.high_kept, smallest=False)

    def percentile(self, percentile: float) -> np.ndarray:
        """The ``percentile`` (one of those given) over every sample fed (all ``total`` of them)."""
        if self.seen != self.total:
            raise ValueError(f"{self.seen} of {self.total} samples fed")
        below, above, fraction = percentile_positions(self.total, percentile)
        if percentile <= 50:
            ordered, offset = np.sort(self.low, axis=0), 0
        else:
            ordered, offset = np.sort(self.high, axis=0), self.total - self.high.shape[0]
        return _lerp(ordered[below - offset], ordered[above - offset], fraction)


def _kept(carried: np.ndarray | None, samples: np.ndarray, kept: int, smallest: bool) -> np.ndarray:
    """The ``kept`` smallest (or largest) values along axis 0 of ``carried`` and ``samples`` together."""
    values = samples.copy() if carried is None else np.concatenate([carried, samples], axis=0)
    if values.shape[0] <= kept:
        return values
    values.partition(kept - 1 if smallest else values.shape[0] - kept, axis=0)  # in place: values is our copy
    return values[:kept].copy() if smallest else values[values.shape[0] - kept :].copy()


class VectorMoments:
    """Count n, mean and M2 = sum (x - mean)^2 of vectors (one per row), merged block by block (Chan et al.:
    delta = m_b - m_a, m = m_a + delta n_b / n, M2 = M2_a + M2_b + delta^2 n_a n_b / n)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        """Merge the rows (n, K) of a block."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.shape[0] == 0:
            return
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = rows.shape[0], mean, m2
            return
        count = self.count + rows.shape[0]
        delta = mean - self.mean
        self.mean = self.mean + delta * (rows.shape[0] / count)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * rows.shape[0] / count)
        self.count = count

    def variance(self, ddof: int = 0) -> np.ndarray:
        """M2 / (n - ddof)."""
        return self.m2 / (self.count - ddof)


class PeriodogramSum:
    """The sum and count of the windowed periodograms of fields (:func:`latlon_periodogram`), fed in blocks; its
    ``spectrum()`` is :func:`~diffscale.evaluation.spectra.latlon_power_spectrum` of all the fields."""

    def __init__(self, latitude: np.ndarray, longitude: np.ndarray) -> None:
        self.latitude, self.longitude = latitude, longitude
        self.total: np.ndarray | None = None
        self.count = 0
        self.ky: np.ndarray | None = None
        self.kx: np.ndarray | None = None

    def add(self, fields: np.ndarray) -> None:
        """Add the periodograms of ``fields`` (n, H, W)."""
        if fields.shape[0] == 0:
            return
        self.ky, self.kx, power = latlon_periodogram(fields, self.latitude, self.longitude)
        power = power * fields.shape[0]
        self.total = power if self.total is None else self.total + power
        self.count += fields.shape[0]

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """(wavenumber [1/km], power): the radially averaged mean periodogram."""
        return radial_average(self.ky, self.kx, self.total / self.count, self.latitude, self.longitude)


class _ErrorSums:
    """Area-weighted sums of e, e^2 and |e| of a prediction's error e = x - y, and its percentiles."""

    def __init__(self, weights: np.ndarray, total: int, percentiles: Sequence[float]) -> None:
        self.weights = weights
        self.error = self.squared = self.absolute = 0.0
        self.order = OrderStatistics(total, percentiles)

    def add(self, prediction: np.ndarray, error: np.ndarray) -> None:
        self.error += _weighted_sum(error, self.weights)
        self.squared += _weighted_sum(error**2, self.weights)
        self.absolute += _weighted_sum(np.abs(error), self.weights)
        self.order.add(prediction)

    def scores(self, cases: float, truth: OrderStatistics, latitude: np.ndarray) -> dict[str, Any]:
        """:func:`~diffscale.evaluation.scores.deterministic_scores` of the whole record."""
        mae = self.absolute / cases
        return {
            "rmse": float(np.sqrt(self.squared / cases)),
            "mae": mae,
            "bias": self.error / cases,
            "crps": mae,
            "percentile_errors": _percentile_errors(self.order, truth, latitude),
        }


def _weighted_sum(values: np.ndarray, weights: np.ndarray) -> float:
    """sum over every axis of w_i x_{..., i, j} (weights on axis -2)."""
    return float(np.einsum("...ij,i->...", values, weights).sum())


def _percentile_errors(predicted: OrderStatistics, truth: OrderStatistics, latitude: np.ndarray) -> dict[str, Any]:
    return {
        f"p{p:02g}": percentile_error(predicted.percentile(p), truth.percentile(p), latitude)
        for p in predicted.percentiles
    }


class SpreadErrorCases:
    """The cases of the spread-error relation (:func:`~diffscale.evaluation.calibration.binned_spread_error`),
    fed block by block: each case's sorting variance, variance s_k^2, squared error (xbar_k - y_k)^2 and area
    weight w_k. Up to ``exact_cases`` cases are kept and binned exactly at the end; past that they are folded
    into sums over a fixed fine grid of log10 of the sorting variance (200 bins a decade over 1e-40 .. 1e40, zero
    variances in the lowest), so memory stays bounded whatever the record's length, and the fine bins, in order,
    are cut into the equal-area bins by the same rule as single cases."""

    def __init__(self, exact_cases: int = SPREAD_ERROR_EXACT_CASES) -> None:
        self.exact_cases = int(exact_cases)
        self.kept: list[tuple[np.ndarray, ...]] = []
        self.kept_count = 0
        self.fine: np.ndarray | None = None  # rows: weight, cases, weighted variance, weighted squared error

    def add(
        self, sort_variance: np.ndarray, variance: np.ndarray, squared_error: np.ndarray, weights: np.ndarray
    ) -> None:
        """Add cases (arrays of one shape; ``weights`` broadcast to it)."""
        sort_variance = np.asarray(sort_variance, dtype=np.float64)
        arrays = tuple(
            np.ravel(np.broadcast_to(np.asarray(array, dtype=np.float64), sort_variance.shape))
            for array in (sort_variance, variance, squared_error, weights)
        )
        if self.fine is None and self.kept_count + arrays[0].size <= self.exact_cases:
            self.kept.append(arrays)
            self.kept_count += arrays[0].size
            return
        for kept in self.kept:
            self._fold(*kept)
        self.kept, self.kept_count = [], 0
        self._fold(*arrays)

    def _fold(
        self, sort_variance: np.ndarray, variance: np.ndarray, squared_error: np.ndarray, weights: np.ndarray
    ) -> None:
        low, high = _FINE_LOG10_RANGE
        size = int((high - low) * _FINE_BINS_PER_DECADE) + 1
        if self.fine is None:
            self.fine = np.zeros((4, size))
        with np.errstate(divide="ignore"):
            position = (np.log10(sort_variance) - low) * _FINE_BINS_PER_DECADE
        index = np.clip(np.floor(np.nan_to_num(position, neginf=-1.0)) + 1, 0, size - 1).astype(np.int64)
        for row, values in enumerate((weights, None, weights * variance, weights * squared_error)):
            self.fine[row] += np.bincount(index, weights=values, minlength=size)

    def result(self, count: int, bins: int, sort_by: Any) -> dict[str, Any]:
        """The binned relation (:func:`~diffscale.evaluation.calibration.binned_spread_error`'s result)."""
        if self.fine is None:
            sort_variance, variance, squared_error, weights = (
                np.concatenate([kept[index] for kept in self.kept]) for index in range(4)
            )
            return binned_spread_error(sort_variance, variance, squared_error, weights, count, bins, sort_by)
        weight, cases, weighted_variance, weighted_squared_error = self.fine
        cumulative = np.cumsum(weight)
        position = (cumulative - 0.5 * weight) / cumulative[-1]
        bin_of_fine = np.minimum((bins * position).astype(np.int64), bins - 1)

        def per_bin(values: np.ndarray) -> np.ndarray:
            return np.bincount(bin_of_fine, weights=values, minlength=bins)

        merged = (per_bin(weight), per_bin(cases).round().astype(np.int64), per_bin(weighted_variance))
        return spread_error_from_bin_sums(*merged, per_bin(weighted_squared_error), count, sort_by)


class VariableScores:
    """:func:`~diffscale.evaluation.climate_report.evaluate_variable` of ``times`` times of one variable, fed in
    blocks of times in order: ``add(ensemble (M, t, H, W), truth (t, H, W), baseline (t, H, W))``, then
    ``result()``. The same arguments as that function, with the record's length ``times`` in place of the
    arrays."""

    def __init__(
        self,
        name: str,
        members: int,
        times: int,
        latitude: np.ndarray,
        longitude: np.ndarray,
        factor: int,
        units: str = "",
        seed: int = 0,
        spread_error_bin_count: int = DEFAULT_SPREAD_ERROR_BINS,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    ) -> None:
        self.name, self.units, self.members, self.times = name, units, int(members), int(times)
        self.latitude = np.asarray(latitude, dtype=np.float64)
        self.longitude = np.asarray(longitude, dtype=np.float64)
        self.factor, self.bins = factor, spread_error_bin_count
        self.weights = area_weights(self.latitude)
        self.generator = np.random.default_rng(seed)
        self.ensemble_mean = _ErrorSums(self.weights, self.times, percentiles)
        self.baseline = _ErrorSums(self.weights, self.times, percentiles)
        self.truth_order = OrderStatistics(self.times, percentiles)
        self.pooled_order = OrderStatistics(self.members * self.times, percentiles)
        self.crps = self.variance = 0.0
        self.rank_counts = np.zeros(self.members + 1, dtype=np.int64)
        self.rank_weights = np.zeros(self.members + 1)
        self.per_time_frequency = VectorMoments()
        self.spectra = {
            label: PeriodogramSum(self.latitude, self.longitude)
            for label in ("truth", "ensemble members", "ensemble mean", "bilinear")
        }
        self.sort_by = "held_out" if self.members >= 4 else "ensemble"
        self.spread_error_cases = SpreadErrorCases()
        self.seen = 0

    def add(self, ensemble: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> None:
        """Merge the next block of times: ``ensemble`` (M, t, H, W), ``truth`` and ``baseline`` (t, H, W)."""
        members = np.asarray(ensemble, dtype=np.float64)
        truth = np.asarray(truth, dtype=np.float64)
        baseline = np.asarray(baseline, dtype=np.float64)
        if members.shape[0] != self.members or members.shape[1:] != truth.shape or baseline.shape != truth.shape:
            raise ValueError(f"blocks of shapes {members.shape}, {truth.shape}, {baseline.shape} do not match")
        self.seen += truth.shape[0]
        if self.seen > self.times:
            raise ValueError(f"{self.seen} times fed to the scores of {self.times}")
        mean = members.mean(axis=0)
        self.ensemble_mean.add(mean, mean - truth)
        self.baseline.add(baseline, baseline - truth)
        self.truth_order.add(truth)
        self.pooled_order.add(members.reshape(-1, *truth.shape[1:]))
        self.crps += _weighted_sum(fair_crps(members, truth), self.weights)
        if self.members > 1:
            self.variance += _weighted_sum(members.var(axis=0, ddof=1), self.weights)
            sort_variance, variance = spread_error_variances(members, self.sort_by)
            self.spread_error_cases.add(sort_variance, variance, (mean - truth) ** 2, self.weights[:, None])
        self._ranks(members, truth)
        self.spectra["truth"].add(truth)
        self.spectra["ensemble members"].add(members.reshape(-1, *truth.shape[1:]))
        self.spectra["ensemble mean"].add(mean)
        self.spectra["bilinear"].add(baseline)

    def _ranks(self, members: np.ndarray, truth: np.ndarray) -> None:
        """The ranks of :func:`~diffscale.evaluation.scores.ensemble_ranks`, their draws continuing the stream."""
        below = (members < truth).sum(axis=0)
        ties = (members == truth).sum(axis=0)
        ranks = below + np.floor(self.generator.random(truth.shape) * (ties + 1)).astype(below.dtype)
        categories = self.members + 1
        cell_weights = np.broadcast_to(self.weights[:, None], truth.shape)
        self.rank_counts += np.bincount(ranks.ravel(), minlength=categories)
        self.rank_weights += np.bincount(ranks.ravel(), weights=cell_weights.ravel(), minlength=categories)
        keys = (np.arange(truth.shape[0])[:, None, None] * categories + ranks).ravel()
        per_time = np.bincount(keys, weights=cell_weights.ravel(), minlength=truth.shape[0] * categories)
        per_time = per_time.reshape(truth.shape[0], categories)
        self.per_time_frequency.add(per_time / per_time.sum(axis=1, keepdims=True))

    def result(self) -> VariableEvaluation:
        """The scores of the whole record (every time fed)."""
        if self.seen != self.times:
            raise ValueError(f"{self.seen} of {self.times} times fed")
        height, width = self.weights.size, self.longitude.size
        cases = float(self.times * height * width)
        mean_scores = self.ensemble_mean.scores(cases, self.truth_order, self.latitude)
        count = self.members
        spread = float(np.sqrt(self.variance / cases)) if count > 1 else math.nan
        rmse = mean_scores["rmse"]
        ssr = math.sqrt((count + 1) / count) * spread / rmse if count > 1 and rmse > 0 else math.nan
        ensemble_result: dict[str, Any] = {
            "members": count,
            "rmse": rmse,
            "mae": mean_scores["mae"],
            "bias": mean_scores["bias"],
            "crps": self.crps / cases,
            "crps_estimator": "fair" if count > 1 else "single member |x - y|",
            "spread": spread,
            "spread_skill_ratio": ssr,
            "rank_histogram": {
                "counts": self.rank_counts.tolist(),
                "frequency": (self.rank_weights / self.rank_weights.sum()).tolist(),
            },
            "ensemble_mean": mean_scores,
            "percentile_errors": _percentile_errors(self.pooled_order, self.truth_order, self.latitude),
        }
        cell_weights = np.broadcast_to(self.weights[:, None], (height, width))
        effective = float(self.times * cell_weights.sum() ** 2 / (cell_weights**2).sum())
        between_times = self.per_time_frequency.variance(ddof=1) / self.times if self.times >= 2 else None
        ensemble_result["rank_flatness"] = flatness_figures(
            count, self.times, self.per_time_frequency.mean, between_times, effective
        )
        ensemble_result["spread_error"] = self._spread_error() if count >= 2 else None
        baseline_result = self.baseline.scores(cases, self.truth_order, self.latitude)
        spectra = {label: total.spectrum() for label, total in self.spectra.items()}
        k_nyquist = coarse_nyquist_wavenumber(self.latitude, self.longitude, self.factor)
        k, truth_power = spectra["truth"]
        ensemble_result["spectral_ratio"] = spectral_ratio(k, spectra["ensemble members"][1], truth_power, k_nyquist)
        ensemble_result["ensemble_mean"]["spectral_ratio"] = spectral_ratio(
            k, spectra["ensemble mean"][1], truth_power, k_nyquist
        )
        baseline_result["spectral_ratio"] = spectral_ratio(k, spectra["bilinear"][1], truth_power, k_nyquist)
        scores = {
            "units": self.units,
            "ensemble": ensemble_result,
            "bilinear": baseline_result,
            "spectra": {
                "k_nyquist_coarse_per_km": k_nyquist,
                "wavenumber_per_km": k.tolist(),
                **{label: power.tolist() for label, (_, power) in spectra.items()},
            },
        }
        return VariableEvaluation(
            name=self.name,
            units=self.units,
            members=count,
            k_nyquist_coarse=k_nyquist,
            scores=scores,
            spectra={label: Spectrum(wavenumber, power) for label, (wavenumber, power) in spectra.items()},
        )

    def _spread_error(self) -> dict[str, Any]:
        return self.spread_error_cases.result(self.members, self.bins, self.sort_by)
