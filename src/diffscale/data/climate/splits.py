"""The fine fields of a split (train, validation, test) on the model's grid: the files' grid cropped
(``data.crop``) and trimmed to a multiple of the coarsening factor (``data.remainder``,
:func:`~diffscale.data.climate.grid.trim_to_factor`), the times of the split's periods, read lazily as one time
axis (:class:`~diffscale.data.climate.series.FieldSeries`) or loaded (small data, tests)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from diffscale.data.climate.assembly import CoarseFiles
from diffscale.data.climate.calendars import calendar_of, same_calendar, time_text, within
from diffscale.data.climate.conditioning import check_finite
from diffscale.data.climate.grid import (
    GridTrim,
    block_centres,
    check_factor,
    grid_indices,
    grid_spacing,
    trim_to_factor,
)
from diffscale.data.climate.io import expand_paths, open_dataset, open_fields, select_fields
from diffscale.data.climate.plausibility import check_plausible
from diffscale.data.climate.series import FieldSeries, GridWindow, check_field_dims, format_time
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData

__all__ = [
    "coarse_files",
    "describe_crop",
    "load_fine",
    "load_fine_grid",
    "log_grid_changes",
    "model_grid",
    "open_fine_series",
    "target_shape",
]

logger = logging.getLogger(__name__)


# -- reading a split -----------------------------------------------------------------------------------------
def _time_selection(section: ClimateData, split: str) -> tuple[slice | None, list[tuple[Any, Any]]]:
    try:
        period = section.period(split)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return (None if period is None else slice(*period)), section.excluded_periods(split)


def _crop(ds: xr.Dataset, section: ClimateData) -> xr.Dataset:
    crop = section.crop
    if crop is None:
        return ds
    selection = {}
    for key, axis in (("lat", "latitude"), ("lon", "longitude")):
        window = getattr(crop, key)
        if window is None:
            continue
        if window[1] > ds.sizes[axis]:
            raise ConfigError(
                f"data.crop.{key} = {list(window)} exceeds the fine grid's {ds.sizes[axis]} {axis} points"
            )
        selection[axis] = slice(*window)
    return ds.isel(selection)


def _dropped_range(noun: str, axis: str, values: np.ndarray, side: str) -> str:
    count = values.size
    where = f"{values[0]:g}" if count == 1 else f"{values[0]:g} to {values[-1]:g}"
    return f"{count} {noun}{'' if count == 1 else 's'} at {axis} {where} ({side})"


def describe_crop(ds: xr.Dataset, section: ClimateData) -> str | None:
    """One line: what ``data.crop`` removes from the harmonised grid of ``ds`` (latitude ascending), e.g. ``data.crop
    {lat: [1, 33], lon: [0, 48]} dropped 1 row at latitude 49.5 (south) and 3 rows at latitude 57.75 to 58.25
    (north): 36 x 48 -> 32 x 48``; None without a crop or when it keeps the whole grid."""
    crop = section.crop
    if crop is None:
        return None
    parts, kept, windows = [], [], []
    for key, noun, axis, first, last in (
        ("lat", "row", "latitude", "south", "north"),
        ("lon", "column", "longitude", "west", "east"),
    ):
        values = np.asarray(ds[axis].values)
        window = getattr(crop, key)
        start, stop = (0, values.size) if window is None else (window[0], min(window[1], values.size))
        windows.append(f"{key}: {'null' if window is None else list(window)}")
        kept.append(stop - start)
        for dropped, side in ((values[:start], first), (values[stop:], last)):
            if dropped.size:
                parts.append(_dropped_range(noun, axis, dropped, side))
    if not parts:
        return None
    return (
        f"data.crop {{{', '.join(windows)}}} dropped {' and '.join(parts)}: "
        f"{ds.sizes['latitude']} x {ds.sizes['longitude']} -> {kept[0]} x {kept[1]}"
    )


def log_grid_changes(ds: xr.Dataset, section: ClimateData, trim: GridTrim, where: str) -> None:
    """Log (WARNING, one line each) what the crop and the trimming of :func:`model_grid` removed from the grid of
    ``ds`` (the files' fields before them); ``where`` names the step, e.g. ``data (train split)``."""
    cropped = describe_crop(ds, section)
    if cropped is not None:
        logger.warning("%s: %s", where, cropped)
    if trim.dropped:
        logger.warning("%s: %s (data.remainder: trim)", where, trim.describe())


def model_grid(ds: xr.Dataset, section: ClimateData) -> tuple[xr.Dataset, GridTrim]:
    """The files' grid cropped (``data.crop``) and trimmed to a multiple of the factor (``data.remainder``); what
    they removed is logged by :func:`log_grid_changes`."""
    return trim_to_factor(
        _crop(ds, section),
        section.coarsen_factor,
        section.remainder,
        section.periodic_longitude,
        what="fine grid" if section.crop is None else "cropped fine grid",
    )


def load_fine(section: ClimateData, split: str) -> xr.Dataset:
    """The fine fields of ``split`` on the model's grid (:func:`load_fine_grid`)."""
    return load_fine_grid(section, split)[0]


def load_fine_grid(section: ClimateData, split: str) -> tuple[xr.Dataset, GridTrim]:
    """The fine fields of ``split`` (harmonised, cropped, trimmed to the factor, loaded, checked for NaNs) and
    what the trimming dropped (logged when it dropped anything)."""
    period, excluded = _time_selection(section, split)
    fine = open_fields(section.paths, section.variables, time_slice=period)
    check_field_dims(fine, section.variables, ", ".join(section.paths))
    for start, end in excluded:
        fine = fine.isel(time=np.flatnonzero(~within(fine["time"].values, start, end)))
    if fine.sizes["time"] == 0:
        everything = open_fields(section.paths, section.variables)["time"].values
        span = (
            f"the files cover {time_text(everything.min(), unit='h')} .. {time_text(everything.max(), unit='h')}"
            if everything.size
            else "the files have no times"
        )
        raise ConfigError(f"no fields in the {split} split (data.{split}_period); {span}")
    whole = fine
    fine, trim = model_grid(whole, section)
    log_grid_changes(whole, section, trim, f"data ({split} split)")
    fine = fine.load()
    check_finite(fine, section.variables, ", ".join(section.paths))
    check_plausible(fine, section.variables, ", ".join(section.paths))
    return fine, trim


def open_fine_series(section: ClimateData, split: str) -> tuple[FieldSeries, GridTrim]:
    """The fine fields of ``split`` read lazily (:class:`~diffscale.data.climate.series.FieldSeries`) on the model's
    grid (cropped, trimmed to the factor: what the trimming dropped is logged), and the trimming.

    Raises:
        ConfigError: the files' problems (:class:`FieldSeries`), a crop outside the grid, no time in the split.
    """
    period, excluded = _period_bounds(section, split)
    paths = expand_paths(section.paths)
    first = select_fields(open_dataset(paths[0], chunks=None), section.variables, source=str(paths[0]))
    _, trim = model_grid(first, section)
    window = _grid_window(section, trim)
    series = FieldSeries(
        section.paths,
        section.variables,
        period=period,
        excluded=excluded,
        window=window,
        dims_source=", ".join(section.paths),
    )
    if len(series) == 0:
        span = (
            f"the files cover {time_text(series.all_times_range[0], unit='h')} .. "
            f"{time_text(series.all_times_range[1], unit='h')}"
            if series.all_times_range is not None
            else "the files have no times"
        )
        raise ConfigError(f"no fields in the {split} split (data.{split}_period); {span}")
    log_grid_changes(first, section, trim, f"data ({split} split)")
    return series, trim


def _period_bounds(section: ClimateData, split: str) -> tuple[tuple[Any, Any] | None, list[tuple[Any, Any]]]:
    try:
        period = section.period(split)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return period, section.excluded_periods(split)


def _grid_window(section: ClimateData, trim: GridTrim) -> GridWindow:
    """The index window of the harmonised file grid that the crop and the trimming keep."""
    height, width = trim.shape
    windows = []
    for key, dropped in (("lat", trim.latitude_start), ("lon", trim.longitude_start)):
        crop = getattr(section.crop, key) if section.crop is not None else None
        start = (crop[0] if crop is not None else 0) + len(dropped)
        windows.append(start)
    return GridWindow(latitude=(windows[0], windows[0] + height), longitude=(windows[1], windows[1] + width))


def coarse_files(
    section: ClimateData, fine: FieldSeries, split: str, expected_units: Mapping[str, str | None]
) -> CoarseFiles:
    """The coarse files matching ``fine``: for every fine time its coarse time, for every coarse cell of the
    model grid its row and column in the files (the cells whose centres are the fine blocks' centres)."""
    assert section.coarse_paths is not None
    factor = section.coarsen_factor
    source = ", ".join(section.coarse_paths)
    period, _ = _period_bounds(section, split)
    coarse = FieldSeries(section.coarse_paths, section.variables, period=period, dims_source="coarse fields")
    coarse_lat, coarse_lon = coarse.file_grid
    for axis, values, fine_values in (
        ("latitude", coarse_lat, fine.latitude),
        ("longitude", coarse_lon, fine.longitude),
    ):
        ratio = grid_spacing(values, f"{source} {axis}") / grid_spacing(fine_values, axis)
        if abs(abs(ratio) - factor) > 1e-3 * factor:
            raise ConfigError(
                f"{source}: the coarse {axis} step is {abs(ratio):g} x the fine one, not data.coarsen_factor = {factor}"
            )
    if len(coarse) and len(fine) and not same_calendar(calendar_of(coarse.times), calendar_of(fine.times)):
        raise ConfigError(
            f"{source}: the coarse times are in the {calendar_of(coarse.times)} calendar, the fine ones in the "
            f"{calendar_of(fine.times)} calendar; convert one to the other's (xarray's Dataset.convert_calendar)"
        )
    position = np.searchsorted(coarse.times, fine.times)
    found = (position < len(coarse)) & (coarse.times[np.minimum(position, len(coarse) - 1)] == fine.times)
    if not found.all():
        missing = fine.times[~found]
        raise ConfigError(f"{source}: no coarse fields at {missing.size} fine time(s), first {format_time(missing[0])}")
    expected_lat = block_centres(fine.latitude, factor)
    expected_lon = block_centres(fine.longitude, factor)
    grid = xr.Dataset(coords={"latitude": coarse_lat, "longitude": coarse_lon})
    rows, columns = grid_indices(grid, expected_lat, expected_lon, f"coarse grid of {source}")
    check_factor(
        xr.Dataset(coords={"latitude": expected_lat, "longitude": expected_lon}),
        xr.Dataset(coords={"latitude": fine.latitude, "longitude": fine.longitude}),
        factor,
    )
    coarse.convert_to(expected_units, source="coarse fields")
    return CoarseFiles(coarse, position.astype(np.int64), rows.astype(np.int64), columns.astype(np.int64))


def target_shape(section: ClimateData) -> tuple[int, int, int]:
    """(C, h, w) of one training target: the patch, or the (cropped, trimmed) fine grid, read from the first
    file's metadata only (no data are loaded)."""
    shape = section.sample_shape()
    if shape is not None:
        return shape
    fine, _ = model_grid(open_fields(section.paths[:1], section.variables), section)
    return (len(section.variables), fine.sizes["latitude"], fine.sizes["longitude"])
