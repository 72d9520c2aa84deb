"""The statistics of a climate run: per-variable transform statistics fitted on the train split (one streaming
pass of dask reductions, optionally on evenly spaced times) and the statics' standardisation over the fine grid."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from diffscale.data.climate.conditioning import load_statics, statics_on_grid
from diffscale.data.climate.plausibility import check_extremes, time_extremes
from diffscale.data.climate.series import FieldSeries, format_time
from diffscale.data.climate.splits import open_fine_series
from diffscale.data.climate.transforms import fit_stats, lazy_moments, stats_entry, transform_spec
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData

__all__ = ["fit_climate_stats", "stats_time_indices", "streaming_variable_stats"]


def fit_climate_stats(
    section: ClimateData, fine: xr.Dataset | None = None, *, series: FieldSeries | None = None
) -> dict[str, dict[str, Any]]:
    """Statistics of the train split (variables with their transforms, statics standardised over the fine
    domain): a JSON-able dict for :class:`~diffscale.data.climate.transforms.Transforms`. Each entry also
    records the field's ``units`` attribute when it has one (later fields are converted to those units).

    The variables' statistics are one streaming pass over the files (:func:`streaming_variable_stats`: dask
    reductions chunk by chunk, on ``data.stats_times`` evenly spaced times when that is set) unless ``fine``, the
    loaded fine fields, is given (then computed from them in memory).

    Args:
        fine: the train split's fine fields when already loaded.
        series: the train split's lazily read fine fields (:func:`open_fine_series`; opened here when None).
    """
    if fine is not None:
        data: dict[str, Any] = {name: fine[name].values for name in section.variables}
        stats = fit_stats(data, section.transforms)
        units = {name: fine[name].attrs.get("units") for name in section.variables}
        latitude, longitude = fine["latitude"].values, fine["longitude"].values
    else:
        if series is None:
            series = open_fine_series(section, "train")[0]
        stats = streaming_variable_stats(series, section.transforms, section.stats_times)
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


def streaming_variable_stats(
    series: FieldSeries, transforms: Mapping[str, Any] | None = None, limit: int | None = None
) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation of g_v(x) for each variable of ``series``, in one streaming pass.

    Every file's selected times (or ``limit`` of them evenly spaced, :func:`stats_time_indices`) are read as dask
    chunks of a few tens of MB and reduced (:func:`~diffscale.data.climate.transforms.lazy_moments`) together
    with a per-time check for non-finite values and for values outside the variable's physical range
    (:func:`~diffscale.data.climate.plausibility.check_extremes`), so each chunk is read once and memory stays
    bounded whatever the number of times.

    Raises:
        ConfigError: an unknown transform, a non-finite value or one outside the variable's physical range (naming
            the file, the variable and the first time with one).
    """
    import dask
    import dask.array as da

    transforms = dict(transforms or {})
    for name in series.variables:
        transform_spec(transforms.get(name, "standardize"), name)  # ConfigError for an unknown one
    parts = series.lazy_parts(stats_time_indices(len(series), limit))
    moments, flags, extremes = [], [], []
    for name in series.variables:
        arrays = [ds[name].data for _, ds, _ in parts]
        joined = arrays[0] if len(arrays) == 1 else da.concatenate(arrays, axis=0)
        moments.append(lazy_moments(joined, transforms.get(name, "standardize")))
        flags.append([(~da.isfinite(array)).any(axis=tuple(range(1, array.ndim))) for array in arrays])
        extremes.append([time_extremes(ds[name].data, ds[name].dims) for _, ds, _ in parts])
    # a pool of our own: dask's shared default pool does not survive a fork (its threads stay in the parent)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: reported as non-finite below
        computed_moments, computed_flags, computed_extremes = dask.compute(
            moments, flags, extremes, scheduler="threads", pool=pool
        )
    for name, per_file in zip(series.variables, computed_flags, strict=True):
        for (path, _, indices), bad in zip(parts, per_file, strict=True):
            if np.any(bad):
                when = format_time(series.times[indices[int(np.argmax(bad))]])
                raise ConfigError(
                    f"{path}: variable {name!r} has NaN/inf values at time {when} "
                    f"({int(np.sum(bad))} of {bad.size} times affected)"
                )
    for name, per_file in zip(series.variables, computed_extremes, strict=True):
        for (path, ds, indices), (minima, maxima) in zip(parts, per_file, strict=True):
            check_extremes(name, ds[name].attrs, series.times[indices], minima, maxima, path)
    count = sum(int(indices.size) for _, _, indices in parts)
    return {
        name: stats_entry(name, transforms.get(name, "standardize"), float(mean), float(variance), count)
        for name, (mean, variance) in zip(series.variables, computed_moments, strict=True)
    }
