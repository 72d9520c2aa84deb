"""Many climate files as one time axis, read lazily: what training on decades of fields needs.

:class:`FieldSeries` opens each file once to learn its grid, variables, units and times (metadata only), and
keeps the *time index*: for each of the T selected times, its timestamp, the file that holds it and its
position there (20 bytes per time). Nothing else proportional to T is held. A read of one time (and of a window
of rows and columns) opens the file lazily in the reading process (netCDF/HDF5 handles are not fork-safe: a
worker process opens its own) and reads only that hyperslab, through xarray's lazily indexed arrays (no dask,
no cache). :meth:`FieldSeries.read_times` reads a block of times of one file at once, for streaming reductions
(statistics) block by block.

The files must share one grid and hold the variables; a time may appear in one file only, and each file's times
must increase. Violations are one-line :class:`~diffscale.validation.ConfigError` s naming the file (and time);
so is a read that fails (a truncated file, a damaged chunk) or a value that is not finite.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffscale.data.climate.calendars import calendar_of, check_times, is_cftime, same_calendar, time_text, within
from diffscale.data.climate.io import expand_paths, open_dataset, select_fields
from diffscale.data.climate.units import units_conversion
from diffscale.validation import ConfigError

__all__ = ["DASK_CHUNK_BYTES", "FieldSeries", "GridWindow", "check_field_dims", "format_time"]

OPEN_FILES = 32
"""Files a process keeps open at once (least recently read closed first)."""
DASK_CHUNK_BYTES = 64 * 2**20
"""Target size of one dask chunk along time when a long file is opened with dask (a whole number of the file's own
chunks)."""


def format_time(value: Any) -> str:
    """A timestamp as ``2019-03-02T06:00`` (minutes), in its own calendar (datetime64 or cftime)."""
    return time_text(value, unit="m")


def check_field_dims(ds: xr.Dataset, variables: Sequence[str], source: str) -> None:
    """Each variable must be a field over (time, latitude, longitude) alone (ConfigError naming it)."""
    for name in variables:
        extra = [f"{dim} ({ds.sizes[dim]})" for dim in ds[name].dims if dim not in ("time", "latitude", "longitude")]
        if extra or "time" not in ds[name].dims:
            what = f"extra dimension(s) {', '.join(extra)}" if extra else "no time dimension"
            raise ConfigError(
                f"{source}: variable {name!r} has {what}; it must be a field over (time, latitude, longitude) "
                "(select one level / step / member first)"
            )


@dataclass(frozen=True)
class GridWindow:
    """The rows [lat_start, lat_stop) and columns [lon_start, lon_stop) of the harmonised file grid that form
    the grid of a series (a crop and the trimming to the coarsening factor); None: the whole axis."""

    latitude: tuple[int, int] | None = None
    longitude: tuple[int, int] | None = None

    def apply(self, ds: xr.Dataset) -> xr.Dataset:
        selection = {
            axis: slice(*window)
            for axis, window in (("latitude", self.latitude), ("longitude", self.longitude))
            if window is not None
        }
        return ds.isel(selection) if selection else ds


@dataclass(frozen=True)
class _File:
    path: str
    units: dict[str, str | None]
    dtypes: dict[str, str]


class FieldSeries:
    """The fields ``variables`` of the files ``paths`` (netCDF, Zarr, GRIB; globs allowed) as one time axis.

    Args:
        paths: the files (any order: the times are sorted across them).
        variables: canonical names (or aliases) of the fields, in channel order.
        period: (first, last) datetime64, both inclusive; None: every time. The files' times stay as xarray
            decodes them (datetime64, or cftime dates of their calendar: one calendar for all the files); the
            bounds apply to a cftime axis by the dates' components
            (:func:`~diffscale.data.climate.calendars.within`).
        excluded: periods (first, last) whose times are left out.
        window: the part of the harmonised grid to read (the same in every file).
        dims_source: the name errors about a variable's dimensions give (default: the file).

    Raises:
        ConfigError: a file is missing or unreadable, lacks a variable, has another grid than the first, a
            variable is not a (time, latitude, longitude) field, a file's times do not increase, or a time is in
            two files.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        variables: Sequence[str],
        *,
        period: tuple[Any, Any] | None = None,
        excluded: Sequence[tuple[Any, Any]] = (),
        window: GridWindow | None = None,
        dims_source: str | None = None,
    ) -> None:
        self.variables = list(variables)
        self.window = window or GridWindow()
        files: list[_File] = []
        times, numbers, positions = [], [], []
        first: xr.Dataset | None = None
        self.all_times_range: tuple[np.datetime64, np.datetime64] | None = None
        for number, path in enumerate(expand_paths(paths)):
            ds = select_fields(open_dataset(path, chunks=None), self.variables, source=str(path))
            check_field_dims(ds, self.variables, dims_source or str(path))
            if first is None:
                first = ds
            else:
                _check_same_grid(ds, first, path, files[0].path)
            file_times = _file_times(ds["time"].values, path, times)
            _check_increasing(file_times, path)
            if file_times.size:
                low, high = file_times[0], file_times[-1]
                if self.all_times_range is not None:
                    low, high = min(low, self.all_times_range[0]), max(high, self.all_times_range[1])
                self.all_times_range = (low, high)
            keep = np.ones(file_times.size, dtype=bool)
            if period is not None:
                keep &= within(file_times, period[0], period[1])
            for start, end in excluded:
                keep &= ~within(file_times, start, end)
            selected = np.flatnonzero(keep)
            times.append(file_times[selected])
            numbers.append(np.full(selected.size, number, dtype=np.int32))
            positions.append(selected.astype(np.int64))
            files.append(
                _File(
                    str(path),
                    {name: _units_attribute(ds[name].attrs) for name in self.variables},
                    {name: str(ds[name].dtype) for name in self.variables},
                )
            )
        assert first is not None
        self.files = files
        all_times = np.concatenate(times)
        order = np.argsort(all_times, kind="stable")
        self.times: np.ndarray = all_times[order]
        self.file_number: np.ndarray = np.concatenate(numbers)[order]
        self.position: np.ndarray = np.concatenate(positions)[order]
        repeated = np.flatnonzero(self.times[1:] == self.times[:-1])
        if repeated.size:
            i = int(repeated[0])
            a, b = (self.files[self.file_number[j]].path for j in (i, i + 1))
            raise ConfigError(
                f"time {format_time(self.times[i])} is in both {a} and {b}; each time must be in one file"
            )
        windowed = self.window.apply(first)
        self.latitude: np.ndarray = windowed["latitude"].values
        self.longitude: np.ndarray = windowed["longitude"].values
        self.file_grid: tuple[np.ndarray, np.ndarray] = (first["latitude"].values, first["longitude"].values)
        self.first_attrs: dict[str, dict[str, Any]] = {name: dict(first[name].attrs) for name in self.variables}
        self._conversions: list[dict[str, tuple[float, float] | None]] = [{} for _ in files]
        self._target_units: dict[str, str | None] = {}
        self._open: OrderedDict[int, xr.Dataset] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards the open files when threads read (:meth:`read_times`)

    # -- description -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def units(self) -> dict[str, str | None]:
        """The units attribute of each variable in the first file."""
        return dict(self.files[0].units)

    def path_of(self, index: int) -> str:
        """The file that holds time ``index``."""
        return self.files[int(self.file_number[index])].path

    def describe_time(self, index: int) -> str:
        """``FILE at TIME`` for error messages."""
        return f"{self.path_of(index)} at {format_time(self.times[index])}"

    # -- units -------------------------------------------------------------------------------------------------
    def convert_to(self, expected: Mapping[str, str | None], source: str | None = None) -> None:
        """Convert every read into the units ``expected[name]`` (checked now for every file: a ConfigError
        names the file, the variable and both units when no conversion is known)."""
        for number, file in enumerate(self.files):
            conversions: dict[str, tuple[float, float] | None] = {}
            for name in self.variables:
                if expected.get(name) is None:
                    conversions[name] = None
                    continue
                try:
                    conversions[name] = units_conversion(name, file.units[name], expected[name])
                except ConfigError as error:
                    raise ConfigError(f"{source or file.path}: {error}") from None
            self._conversions[number] = conversions
        self._target_units = dict(expected)

    def read_units(self, index: int) -> dict[str, str | None]:
        """The units of the values read at time ``index``: those :meth:`convert_to` asked for, else its file's."""
        file = self.files[int(self.file_number[index])]
        return {name: self._target_units.get(name) or file.units[name] for name in self.variables}

    def _convert(self, values: np.ndarray, number: int, name: str) -> np.ndarray:
        """x_expected = a x + b in float64, then back to the field's floating dtype (as
        :func:`~diffscale.data.climate.units.convert_units` does)."""
        conversion = self._conversions[number].get(name)
        if conversion is None:
            return values
        scale, offset = conversion
        dtype = values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)
        return (values.astype(np.float64) * scale + offset).astype(dtype)

    # -- reading -----------------------------------------------------------------------------------------------
    def _dataset(self, number: int) -> xr.Dataset:
        """File ``number`` opened lazily (no dask) in this process, harmonised and windowed."""
        if self._pid != os.getpid():  # a forked process: never use the parent's handles
            self._open = OrderedDict()
            self._pid = os.getpid()
        ds = self._open.get(number)
        if ds is None:
            path = self.files[number].path
            ds = self.window.apply(select_fields(open_dataset(path, chunks=None), self.variables, source=path))
            self._open[number] = ds
            while len(self._open) > OPEN_FILES:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
        else:
            self._open.move_to_end(number)
        return ds

    def read(
        self,
        index: int,
        rows: slice | np.ndarray | None = None,
        columns: slice | np.ndarray | None = None,
        *,
        check_finite: bool = True,
    ) -> list[np.ndarray]:
        """The variables at time ``index`` on ``rows`` x ``columns`` of the series' grid (slices or index
        arrays; None: all), each (rows, columns) in the file's decoded dtype, in the units of :meth:`convert_to`.

        Raises:
            ConfigError: the read failed (naming the file, the variable and the time, with the reason), or a
                value is not finite (``check_finite``).
        """
        number = int(self.file_number[index])
        selection: dict[str, Any] = {"time": int(self.position[index])}
        if rows is not None:
            selection["latitude"] = rows
        if columns is not None:
            selection["longitude"] = columns
        out = []
        for name in self.variables:
            try:
                values = np.asarray(self._dataset(number)[name].isel(selection).values)
            except Exception as error:  # the readers raise many types; the user needs the file, time and reason
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ConfigError(f"cannot read {name!r} from {self.describe_time(index)}: {reason}") from None
            values = self._convert(values, number, name)
            if check_finite and values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ConfigError(f"variable {name!r} has NaN/inf values in {self.describe_time(index)}")
            out.append(values)
        return out

    def read_times(self, indices: np.ndarray) -> list[np.ndarray]:
        """The variables at the times ``indices`` (increasing, all in one file) on the series' grid, each (n, rows,
        columns) in the file's decoded dtype and the units of :meth:`convert_to`, read in one request per
        variable (a slice when the times are consecutive in the file); values are not checked here (a
        streaming reduction checks them itself).

        Raises:
            ValueError: the times are in more than one file.
            ConfigError: the read failed (naming the file, the variable and the first time, with the reason).
        """
        indices = np.asarray(indices, dtype=np.int64)
        numbers = np.unique(self.file_number[indices])
        if numbers.size != 1:
            raise ValueError(f"read_times: the times are in {numbers.size} files; give the times of one file")
        number = int(numbers[0])
        positions = self.position[indices]
        consecutive = positions.size > 0 and np.all(np.diff(positions) == 1)
        where: Any = slice(int(positions[0]), int(positions[-1]) + 1) if consecutive else positions
        with self._lock:
            ds = self._dataset(number)
        out = []
        for name in self.variables:
            try:
                values = np.asarray(ds[name].variable[where].values)
            except Exception as error:  # the readers raise many types; the user needs the file, time and reason
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                where_read = self.describe_time(int(indices[0]))
                raise ConfigError(f"cannot read {name!r} from {where_read}: {reason}") from None
            out.append(self._convert(values, number, name))
        return out

    # -- pickling (worker processes) ----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # open handles stay in the process that opened them
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the files this process has open."""
        for ds in self._open.values():
            ds.close()
        self._open.clear()


def _units_attribute(attrs: Mapping[str, Any]) -> str | None:
    units = attrs.get("units")
    return None if units is None or str(units).strip() == "" else str(units)


def _check_same_grid(ds: xr.Dataset, first: xr.Dataset, path: Path, first_path: str) -> None:
    for axis in ("latitude", "longitude"):
        a, b = first[axis].values, ds[axis].values
        if a.shape != b.shape or not np.allclose(a, b):
            raise ConfigError(f"{path} has a different {axis} grid than {first_path}; files must share one grid")


def _file_times(values: Any, path: Path, earlier: Sequence[np.ndarray]) -> np.ndarray:
    """A file's times as decoded (datetime64[ns], or cftime dates as they are); ConfigError when its calendar is
    not that of the files before it (one time axis holds one calendar)."""
    times = check_times(values, what=f"{path}: time")
    if not is_cftime(times):
        times = times.astype("datetime64[ns]")
    for previous in earlier:
        if previous.size and times.size and not same_calendar(calendar_of(previous), calendar_of(times)):
            raise ConfigError(
                f"{path}: its times are in the {calendar_of(times)} calendar, those of the files before it in the "
                f"{calendar_of(previous)} calendar; convert them to one (xarray's Dataset.convert_calendar)"
            )
    return times


def _check_increasing(times: np.ndarray, path: Path) -> None:
    steps = np.flatnonzero(times[1:] <= times[:-1])
    if steps.size:
        i = int(steps[0])
        what = "repeats" if times[i + 1] == times[i] else "comes after"
        raise ConfigError(
            f"{path}: its times must increase, but {format_time(times[i + 1])} {what} {format_time(times[i])} "
            f"(time index {i + 1})"
        )
