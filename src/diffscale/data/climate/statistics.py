"""The statistics of a climate run: per-variable transform statistics fitted on the train split (one streaming
pass, block by block with a bounded number of blocks in memory, optionally on evenly spaced times) and the statics'
standardisation over the fine grid."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from diffscale.data.climate.conditioning import load_statics, statics_on_grid
from diffscale.data.climate.io import time_chunks
from diffscale.data.climate.plausibility import check_extremes, time_extremes
from diffscale.data.climate.series import FieldSeries, format_time
from diffscale.data.climate.splits import open_fine_series
from diffscale.data.climate.transforms import Moments, fit_stats, stats_entry, transform_spec
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData

__all__ = [
    "STATS_CHUNK_BYTES",
    "STATS_THREADS",
    "StatisticsPass",
    "fit_climate_stats",
    "stats_time_indices",
    "streaming_variable_stats",
    "time_blocks",
]

STATS_CHUNK_BYTES = 16 * 2**20
"""Values of one variable (as stored) in one block of times of the statistics pass, about: four global 0.25 degree
fields of float32."""
STATS_THREADS = 2
"""Threads that read and reduce blocks of the statistics pass (each holds one block)."""


def fit_climate_stats(
    section: ClimateData,
    fine: xr.Dataset | None = None,
    *,
    series: FieldSeries | None = None,
    report: list[StatisticsPass] | None = None,
) -> dict[str, dict[str, Any]]:
    """Statistics of the train split (variables with their transforms, statics standardised over the fine
    domain): a JSON-able dict for :class:`~diffscale.data.climate.transforms.Transforms`. Each entry also
    records the field's ``units`` attribute when it has one (later fields are converted to those units).

    The variables' statistics are one streaming pass over the files (:func:`streaming_variable_stats`: block by
    block, on ``data.stats_times`` evenly spaced times when that is set) unless ``fine``, the loaded fine fields,
    is given (then computed from them in memory).

    Args:
        fine: the train split's fine fields when already loaded.
        series: the train split's lazily read fine fields (:func:`open_fine_series`; opened here when None).
        report: a list that receives the streaming pass's :class:`StatisticsPass` (none with ``fine``).
    """
    if fine is not None:
        data: dict[str, Any] = {name: fine[name].values for name in section.variables}
        stats = fit_stats(data, section.transforms)
        units = {name: fine[name].attrs.get("units") for name in section.variables}
        latitude, longitude = fine["latitude"].values, fine["longitude"].values
    else:
        if series is None:
            series = open_fine_series(section, "train")[0]
        stats = streaming_variable_stats(series, section.transforms, section.stats_times, report=report)
        units = series.units
        latitude, longitude = series.latitude, series.longitude
    statics = load_statics(section.static_paths, section.static_variables)
    if statics is not None:
        matched = statics_on_grid(statics, section.static_variables, latitude, longitude, section.static_interpolation)
        stats.update(fit_stats({name: matched[name].values for name in section.static_variables}))
        units.update({name: matched[name].attrs.get("units") for name in section.static_variables})
    for name, entry in stats.items():
        if units.get(name) is not None and str(units[name]).strip():
            entry["units"] = str(units[name])
    return stats


def stats_time_indices(count: int, limit: int | None) -> np.ndarray:
    """The times the statistics are fitted on: all ``count``, or ``limit`` of them evenly spaced from the first
    to the last (index round(k (count - 1) / (limit - 1)), k = 0 .. limit - 1)."""
    if limit is None or limit >= count:
        return np.arange(count)
    if limit == 1:
        return np.array([0])
    return np.unique(np.round(np.arange(limit) * (count - 1) / (limit - 1)).astype(np.int64))


@dataclass(frozen=True)
class StatisticsPass:
    """What one streaming statistics pass did: ``times`` read (``nbytes`` of field values, as stored) in
    ``seconds``, as ``blocks`` blocks of times with at most ``most_in_flight`` of them read or reduced at once."""

    times: int
    nbytes: int
    seconds: float
    blocks: int
    most_in_flight: int

    def describe(self) -> str:
        """One line: ``statistics of T times (N MB) in S s: R times/s, M MB/s``."""
        seconds = max(self.seconds, 1e-9)
        return (
            f"statistics of {self.times} times ({self.nbytes / 1e6:,.0f} MB) in {self.seconds:.1f} s: "
            f"{self.times / seconds:,.1f} times/s, {self.nbytes / 1e6 / seconds:,.0f} MB/s "
            f"({self.blocks} blocks, at most {self.most_in_flight} in memory at once)"
        )


def time_blocks(series: FieldSeries, indices: np.ndarray, chunk_bytes: int | None = None) -> Iterator[np.ndarray]:
    """``indices`` (increasing series indices) cut into blocks of one file each, of about ``chunk_bytes`` of
    values of one variable at most (:data:`STATS_CHUNK_BYTES` when None): a whole number of the file's own time
    chunks (:func:`~diffscale.data.climate.io.time_chunks`, so no stored chunk is decompressed twice), at least
    one; made one at a time, in the order of the times."""
    chunk_bytes = STATS_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    numbers = series.file_number[indices]
    edges = np.flatnonzero(np.diff(numbers)) + 1
    for start, stop in zip(np.r_[0, edges], np.r_[edges, indices.size], strict=True):
        mine = indices[start:stop]
        path = series.files[int(numbers[start])].path
        length = max(1, next(iter(time_chunks(path, series.variables, chunk_bytes).values()), 1))
        groups = series.position[mine] // length
        cuts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1, mine.size]
        for first, last in itertools.pairwise(cuts):
            yield mine[first:last]


def _block_moments(
    series: FieldSeries, block: np.ndarray, transforms: Mapping[str, Any]
) -> tuple[list[Moments], list[np.ndarray], list[tuple[np.ndarray, np.ndarray]], int]:
    """Per variable: the moments of g(x) over a block of times (float64), whether each time holds a value that is
    not finite, and each time's (minimum, maximum) ignoring NaNs; with the bytes read."""
    fields = series.read_times(block)
    moments, bad, extremes = [], [], []
    for name, values in zip(series.variables, fields, strict=True):
        finite = np.isfinite(values).reshape(block.size, -1).all(axis=1)
        bad.append(~finite)
        extremes.append(time_extremes(values.reshape(block.size, -1), ("time", "point")))
        if finite.all():
            moments.append(Moments.of(values, transforms.get(name, "standardize")))
        else:
            moments.append(Moments())
    return moments, bad, extremes, sum(int(values.nbytes) for values in fields)


def streaming_variable_stats(
    series: FieldSeries,
    transforms: Mapping[str, Any] | None = None,
    limit: int | None = None,
    *,
    chunk_bytes: int | None = None,
    threads: int | None = None,
    report: list[StatisticsPass] | None = None,
) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation of g_v(x) for each variable of ``series``, in one streaming pass.

    The selected times (every one, or ``limit`` of them evenly spaced, :func:`stats_time_indices`) are read in
    blocks of about ``chunk_bytes`` (:func:`time_blocks`) by ``threads`` threads (default
    :data:`STATS_THREADS`), with at most ``threads`` blocks read but not yet merged at any moment: the memory
    is that of a few blocks whatever the number of times, and the time is linear in it. Each block gives the
    count n_b, mean m_b and sum of squared deviations M2_b of g(x) in float64, merged in the order of the times
    (so the result does not depend on the thread count) by Chan, Golub & LeVeque's (1983) parallel update
    (:class:`~diffscale.data.climate.transforms.Moments`), which equals the two-pass statistics to rounding.
    Each value is also checked to be finite, and each time's minimum and maximum to lie within the variable's
    physical range (:func:`~diffscale.data.climate.plausibility.check_extremes`).

    Args:
        report: a list that receives the pass's :class:`StatisticsPass` (its rate and block count).

    Raises:
        ConfigError: an unknown transform, a non-finite value (naming the file, the variable, the first
            time with one and how many of the file's times have one; the pass stops at the end of that file), or a
            value outside the variable's physical range (naming the file, the variable and the time).
    """
    transforms = dict(transforms or {})
    for name in series.variables:
        transform_spec(transforms.get(name, "standardize"), name)  # ConfigError for an unknown one
    threads = STATS_THREADS if threads is None else max(1, int(threads))
    started = time.perf_counter()
    blocks = time_blocks(series, stats_time_indices(len(series), limit), chunk_bytes)
    totals = [Moments() for _ in series.variables]
    checks = _NonFiniteTimes(series)
    nbytes, most_in_flight, count, block_count = 0, 0, 0, 0

    def merge(block: np.ndarray, future: Future) -> None:
        nonlocal nbytes
        moments, bad, extremes, read = future.result()
        checks.add(block, bad)
        where, units = series.path_of(int(block[0])), series.read_units(int(block[0]))
        for name, (minima, maxima) in zip(series.variables, extremes, strict=True):
            check_extremes(name, {"units": units[name]}, series.times[block], minima, maxima, where)
        nbytes += read
        for v, block_moments in enumerate(moments):
            totals[v] = totals[v].merge(block_moments)

    # a pool of our own (dask's shared one does not survive a fork), fed one block per finished one: never more
    # than `threads` blocks in memory
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[tuple[np.ndarray, Future]] = deque()
        for block in blocks:
            count, block_count = count + int(block.size), block_count + 1
            pending.append((block, pool.submit(_block_moments, series, block, transforms)))
            most_in_flight = max(most_in_flight, len(pending))
            if len(pending) >= threads:
                merge(*pending.popleft())
        while pending:
            merge(*pending.popleft())
    checks.raise_if_any()
    if report is not None:
        report.append(StatisticsPass(count, nbytes, time.perf_counter() - started, block_count, most_in_flight))
    return {
        name: stats_entry(name, transforms.get(name, "standardize"), total.mean, total.variance, count)
        for name, total in zip(series.variables, totals, strict=True)
    }


class _NonFiniteTimes:
    """The times of the file being merged that hold a non-finite value, per variable (the first one and how many);
    a ConfigError once that file is done."""

    def __init__(self, series: FieldSeries) -> None:
        self.series = series
        self.number = -1
        self.count = 0
        self.first: dict[str, int] = {}
        self.bad: dict[str, int] = {}

    def add(self, block: np.ndarray, bad: Sequence[np.ndarray]) -> None:
        number = int(self.series.file_number[block[0]])
        if number != self.number:
            self.raise_if_any()
            self.number, self.count = number, 0
        self.count += int(block.size)
        for name, flags in zip(self.series.variables, bad, strict=True):
            if flags.any():
                self.first.setdefault(name, int(block[int(np.argmax(flags))]))
                self.bad[name] = self.bad.get(name, 0) + int(flags.sum())

    def raise_if_any(self) -> None:
        for name, first in self.first.items():
            raise ConfigError(
                f"{self.series.path_of(first)}: variable {name!r} has NaN/inf values at time "
                f"{format_time(self.series.times[first])} ({self.bad[name]} of {self.count} times affected)"
            )
