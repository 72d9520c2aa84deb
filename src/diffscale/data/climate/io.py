"""Reading climate fields (netCDF, zarr, GRIB) lazily and bringing them to one canonical layout.

Canonical layout (what :func:`harmonise` returns, whatever the file looked like):

* dimensions ``time``, ``latitude``, ``longitude`` (``time`` absent for time-invariant fields); another
  dimension (e.g. a pressure level) sits between ``time`` and ``latitude``;
* ``latitude`` ascending (south -> north);
* ``longitude`` ascending in [-180, 180), or in [0, 360) when a regional domain would otherwise be split at
  +-180 (e.g. the Pacific); a duplicated wrap-around column (0 and 360) is dropped;
* variables under canonical short names (:data:`CANONICAL_NAMES`): ``t2m``, ``tp``, ``u10``, ``v10``,
  ``msl``, ``orography`` [m] (geopotential Phi / g0 with g0 = 9.80665 m s-2), ``lsm`` [fraction];
* ``time`` holds the validity time (cfgrib's ``valid_time``), other non-dimension coordinates (cfgrib's
  ``number``, ``step``, ``surface``, ...) are dropped, so a GRIB file and its netCDF conversion harmonise to
  identical datasets.

Data stay lazy (dask) until a caller loads them.
"""

from __future__ import annotations

import glob
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffscale.data.climate.calendars import calendar_of, is_cftime, parse_time_bound, within
from diffscale.validation import ConfigError

__all__ = [
    "CANONICAL_NAMES",
    "DATA_SUFFIXES",
    "STANDARD_GRAVITY",
    "VARIABLE_ALIASES",
    "canonical_variable",
    "expand_paths",
    "find_axis",
    "harmonise",
    "open_dataset",
    "open_fields",
    "select_fields",
    "time_chunks",
]

STANDARD_GRAVITY = 9.80665
"""g0 [m s-2]: orography [m] = surface geopotential Phi [m2 s-2] / g0 (WMO standard gravity)."""

VARIABLE_ALIASES: dict[str, tuple[str, ...]] = {
    "t2m": ("t2m", "2t", "2m_temperature", "VAR_2T", "tas", "temperature_2m", "T2", "var167"),
    "tp": ("tp", "total_precipitation", "pr", "precip", "precipitation", "VAR_TP", "var228"),
    "u10": ("u10", "10u", "10m_u_component_of_wind", "VAR_10U", "uas", "U10", "var165"),
    "v10": ("v10", "10v", "10m_v_component_of_wind", "VAR_10V", "vas", "V10", "var166"),
    "msl": ("msl", "mean_sea_level_pressure", "VAR_MSL", "psl", "mslp", "var151"),
    "orography": ("orography", "orog", "z", "geopotential", "surface_geopotential", "VAR_Z", "zs", "var129"),
    "lsm": ("lsm", "land_sea_mask", "sftlf", "VAR_LSM", "LSM", "var172"),
}
"""Canonical short name -> names the same variable goes by in ERA5 (netCDF, GRIB, CDS API), CMIP and WRF files
(matched case-insensitively)."""

CANONICAL_NAMES: tuple[str, ...] = tuple(VARIABLE_ALIASES)

_ALIAS_TO_CANONICAL: dict[str, str] = {
    alias.lower(): canonical for canonical, aliases in VARIABLE_ALIASES.items() for alias in aliases
}
_GEOPOTENTIAL_NAMES = {"z", "geopotential", "surface_geopotential", "var_z", "var129"}
_GEOPOTENTIAL_UNITS = {"m**2 s**-2", "m2 s-2", "m^2 s^-2", "m^2/s^2", "m2/s2", "m**2/s**2"}

_TIME_NAMES = ("time", "valid_time", "t", "Time", "date", "times")
_LATITUDE_NAMES = ("latitude", "lat", "nav_lat", "Latitude", "LAT", "XLAT")
_LONGITUDE_NAMES = ("longitude", "lon", "nav_lon", "Longitude", "LON", "XLONG")
_CARTESIAN_NAMES = {"latitude": ("y", "Y"), "longitude": ("x", "X")}
_AXIS_UNITS = {
    "latitude": ("degrees_north", "degree_north", "degree_N", "degrees_N"),
    "longitude": ("degrees_east", "degree_east", "degree_E", "degrees_E"),
}

_STORAGE_CHUNKS: Mapping[str, int] = {}
"""open_dataset's default: dask chunks as the file stores them."""

_ENGINES = {
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".netcdf": "netcdf",
    ".cdf": "netcdf",
    ".h5": "netcdf",
    ".zarr": "zarr",
    ".grib": "cfgrib",
    ".grib1": "cfgrib",
    ".grib2": "cfgrib",
    ".grb": "cfgrib",
    ".grb2": "cfgrib",
}
DATA_SUFFIXES: tuple[str, ...] = tuple(_ENGINES)
"""The file suffixes read as data (netCDF, Zarr, GRIB)."""


def canonical_variable(name: str) -> str:
    """The canonical short name of ``name`` (``2m_temperature`` -> ``t2m``); unknown names are returned as given."""
    return _ALIAS_TO_CANONICAL.get(name.lower(), name)


# -- reading -------------------------------------------------------------------------------------------------
def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths``: one path, a list, or glob patterns (``era5_*.nc``), each expanded and sorted.

    Raises ConfigError naming a path that does not exist or a pattern that matches nothing.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise ConfigError("no data files given (an empty list of paths)")
    found: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise ConfigError(f"no file matches {text!r}")
            found.extend(Path(match) for match in matches)
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise ConfigError(f"data file not found: {text}")
            found.append(path)
    return found


def _engine(path: Path) -> str:
    engine = _ENGINES.get(path.suffix.lower())
    if engine is None:
        allowed = ", ".join(_ENGINES)
        raise ConfigError(f"{path}: unknown file type {path.suffix or '(no suffix)'!r}; allowed suffixes: {allowed}")
    return engine


def _codecs(encoding: Mapping[str, Any]) -> list[Any]:
    """Every codec named in a zarr variable's encoding (zarr 2: compressor, filters; zarr 3: serializer,
    compressors, filters)."""
    found: list[Any] = []
    for key in ("compressor", "compressors", "filters", "serializer"):
        value = encoding.get(key)
        if value is None:
            continue
        found.extend(value if isinstance(value, list | tuple) else [value])
    return found


def _without_pickled_arrays(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """Refuse a zarr store with an array decoded by unpickling (the pickle codec): reading it could run code
    that the store carries. Numeric climate fields never need it (strings use the vlen codecs, which are safe)."""
    for name, variable in ds.variables.items():
        if any("pickle" in f"{type(codec).__name__} {codec}".lower() for codec in _codecs(variable.encoding)):
            raise ConfigError(
                f"{path}: variable {name!r} is stored with the pickle codec; diffscale never unpickles data "
                "(store it as numbers or strings)"
            )
    return ds


def open_dataset(path: str | Path, chunks: Mapping[str, int] | None = _STORAGE_CHUNKS) -> xr.Dataset:
    """One file as a lazy xarray Dataset, the engine chosen by the suffix (not yet harmonised).

    ``chunks``: dask chunks (the default ``{}``: the file's own chunks; ``{"time": n}``: n times per dask chunk),
    or None for no dask at all: the variables are then lazily indexed arrays that read only what is selected
    from them (``ds.isel(...).values``) and cache nothing, what reading one training sample at a time needs.
    GRIB files are read through cfgrib without writing an index file beside them (data directories may be
    read-only).
    """
    path = Path(path)
    engine = _engine(path)
    chunks = None if chunks is None else dict(chunks)
    options: dict[str, Any] = {"chunks": chunks} if chunks is not None else {"chunks": None, "cache": False}
    try:
        if engine == "zarr":
            with warnings.catch_warnings():  # stores without consolidated metadata are fine (read a bit slower)
                warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated metadata")
                warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
                return _without_pickled_arrays(xr.open_dataset(path, engine="zarr", **options), path)
        if engine == "cfgrib":
            return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""}, **options)
        return xr.open_dataset(path, **options)
    except ConfigError:
        raise
    except Exception as error:  # the readers raise many types; the user needs the file and the reason
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"cannot read {path} as {engine}: {reason}") from None


def open_fields(
    paths: str | Path | Sequence[str | Path],
    variables: Iterable[str] | None = None,
    time_slice: slice | tuple[Any, Any] | None = None,
    chunk_bytes: int | None = None,
    bound_names: tuple[str, str] = ("start", "end"),
) -> xr.Dataset:
    """Open, harmonise and combine climate files along time (lazily).

    Args:
        paths: a file, a list of files, or glob patterns; ``.nc/.nc4/.netcdf`` netCDF, ``.zarr`` directories,
            ``.grib/.grib2/.grb`` GRIB (cfgrib).
        variables: the variables to keep, by canonical name or any alias (``2m_temperature``); None keeps all.
        time_slice: ``slice(start, stop)`` or a ``(start, stop)`` pair of dates/times, both ends inclusive
            (xarray's label slicing); None keeps all times.
        chunk_bytes: dask chunks of about this size along time (:func:`time_chunks`); None: the files' own chunks.
        bound_names: what errors call the two ends of ``time_slice`` (e.g. the options that gave them).

    Returns:
        The harmonised Dataset (see the module docstring), times ascending.

    Raises:
        ConfigError: a file is missing or unreadable, a variable is missing (the message lists what the file
            has), the files' grids differ, or a time appears in more than one file.
    """
    files = expand_paths(paths)
    names = None if variables is None else list(variables)

    def opened(path: Path) -> xr.Dataset:
        if chunk_bytes is None or names is None:
            return open_dataset(path)
        return open_dataset(path, chunks=time_chunks(str(path), [canonical_variable(n) for n in names], chunk_bytes))

    parts = [(path, select_fields(opened(path), names, time_slice, str(path), bound_names)) for path in files]
    if len(parts) == 1:
        return parts[0][1]
    return _combine_along_time(parts)


def select_fields(
    ds: xr.Dataset,
    variables: Iterable[str] | None = None,
    time_slice: slice | tuple[Any, Any] | None = None,
    source: str = "dataset",
    bound_names: tuple[str, str] = ("start", "end"),
) -> xr.Dataset:
    """One dataset harmonised (:func:`harmonise`), reduced to ``variables`` (canonical names or aliases; None keeps
    all) and to the times of ``time_slice`` (both ends inclusive; for a cftime axis, ISO text names dates of its
    calendar: ``2019-02-30`` in 360_day); ConfigError naming ``source`` for a missing variable or a bad time
    bound."""
    if variables is not None:
        wanted = [canonical_variable(name) for name in variables]
        # harmonise only the variables asked for (converting another one, e.g. a geopotential, could read it)
        others = [name for name in ds.data_vars if canonical_variable(str(name)) not in wanted]
        selected = harmonise(ds.drop_vars(others), source=source)
        missing = [name for name in wanted if name not in selected.data_vars]
        if missing:
            raise ConfigError(
                f"variable {', '.join(map(repr, missing))} not in {source}; it has: "
                f"{_describe_variables(harmonise(ds, source=source))}"
            )
        ds = selected[wanted]
    else:
        ds = harmonise(ds, source=source)
    if time_slice is not None and "time" in ds.dims:
        bounds = time_slice if isinstance(time_slice, slice) else slice(*time_slice)
        if is_cftime(ds["time"].values):  # a date of the axis' own calendar (2019-02-30 is one in 360_day)
            calendar = calendar_of(ds["time"].values)
            start = parse_time_bound(bounds.start, calendar, bound_names[0], source=source)
            end = parse_time_bound(bounds.stop, calendar, bound_names[1], end=True, source=source)
            return ds.isel(time=np.flatnonzero(within(ds["time"].values, start, end)))
        try:
            ds = ds.sel(time=bounds)
        except (TypeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"times {bounds.start} to {bounds.stop}: not ISO dates or times (e.g. 2019-03-25 or "
                f"2019-03-25T06:00): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
    return ds


def _describe_variables(ds: xr.Dataset) -> str:
    names = [
        f"{name} ({ds[name].attrs['source_name']})" if ds[name].attrs.get("source_name", name) != name else str(name)
        for name in ds.data_vars
    ]
    return ", ".join(names) or "no data variables"


def _combine_along_time(parts: list[tuple[Path, xr.Dataset]]) -> xr.Dataset:
    first_path, first = parts[0]
    for path, ds in parts[1:]:
        for axis in ("latitude", "longitude"):
            a, b = first.get(axis), ds.get(axis)
            if (a is None) != (b is None) or (
                a is not None and (a.shape != b.shape or not np.allclose(a.values, b.values))
            ):
                raise ConfigError(f"{path} has a different {axis} grid than {first_path}; files must share one grid")
        if "time" not in ds.dims:
            raise ConfigError(f"{path} has no time dimension; files combined along time need one")
    names = set(first.data_vars)
    for path, ds in parts[1:]:
        if set(ds.data_vars) != names:
            raise ConfigError(
                f"{path} has the variables {', '.join(map(str, ds.data_vars))}, {first_path} "
                f"{', '.join(map(str, first.data_vars))}; name the variables to read (data.variables)"
            )
    # The grids agree within rounding (checked above): give every part the first one's coordinates exactly.
    aligned = [
        ds.assign_coords({axis: first[axis] for axis in ("latitude", "longitude") if axis in ds.coords})
        for _, ds in parts
    ]
    combined = xr.concat(aligned, dim="time", data_vars="all", coords="minimal", join="exact")
    times = combined["time"].values
    unique, counts = np.unique(times, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"time {unique[counts > 1][0]} appears in more than one of the files {parts[0][0]}, ...")
    return combined.sortby("time")


# -- harmonising ---------------------------------------------------------------------------------------------
def _find_axis(ds: xr.Dataset, axis: str, names: Sequence[str]) -> str | None:
    """The name of the coordinate/dimension of ``ds`` that is ``axis`` (``latitude``/``longitude``)."""
    for name in names:
        if name in ds.coords or name in ds.dims:
            return name
    for name, coord in ds.coords.items():
        if coord.attrs.get("standard_name") == axis or coord.attrs.get("units") in _AXIS_UNITS[axis]:
            return str(name)
    for name in _CARTESIAN_NAMES[axis]:  # x/y only when they are in degrees
        if name in ds.coords and ds[name].attrs.get("units") in _AXIS_UNITS[axis]:
            return name
    return None


def find_axis(ds: xr.Dataset, axis: str) -> str | None:
    """The name under which ``ds`` (as read, not yet harmonised) holds its ``latitude`` or ``longitude``
    coordinate (any spelling :func:`harmonise` knows), or None."""
    return _find_axis(ds, axis, _LATITUDE_NAMES if axis == "latitude" else _LONGITUDE_NAMES)


def _find_time(ds: xr.Dataset) -> str | None:
    for name in _TIME_NAMES:
        if name in ds.dims:
            return name
    for name in _TIME_NAMES:
        if name in ds.coords and ds[name].ndim == 0:
            return name
    return None


def _harmonise_time(ds: xr.Dataset) -> xr.Dataset:
    name = _find_time(ds)
    if name is None:
        return ds
    if name not in ds.dims:  # one time as a scalar coordinate (a single GRIB message): make it a dimension
        ds = ds.expand_dims(name)
    # cfgrib: 'time' is the reference time, 'valid_time' (time + step) the time the field is valid at
    if name != "valid_time" and "valid_time" in ds.coords and ds["valid_time"].dims == (name,):
        ds = ds.assign_coords({name: ds["valid_time"].values})
    if name != "time":
        ds = ds.drop_vars("time", errors="ignore").rename({name: "time"})
    return ds


def _harmonise_axis(ds: xr.Dataset, axis: str, names: Sequence[str], source: str) -> xr.Dataset:
    name = _find_axis(ds, axis, names)
    if name is None:
        raise ConfigError(
            f"{source}: no {axis} coordinate (looked for {', '.join(names)}); it has: {', '.join(map(str, ds.coords))}"
        )
    if ds[name].ndim != 1:
        raise ConfigError(f"{source}: {axis} {name!r} is {ds[name].ndim}-D; only regular latitude-longitude grids")
    if name not in ds.dims:  # a 1-D coordinate along a differently named dimension
        ds = ds.swap_dims({ds[name].dims[0]: name})
    if name != axis:
        ds = ds.drop_vars(axis, errors="ignore").rename({name: axis})
    return ds.assign_coords({axis: ds[axis].values.astype(np.float64)})


def _wrapped_longitude(longitude: np.ndarray) -> np.ndarray:
    """Longitudes in [-180, 180), or in [0, 360) when the domain is regional and would be split at +-180."""
    west = ((longitude + 180.0) % 360.0) - 180.0
    east = longitude % 360.0
    if longitude.size < 2:
        return west
    unique_east = np.unique(east)
    gaps = np.diff(np.concatenate([unique_east, unique_east[:1] + 360.0]))
    spacing = float(np.min(gaps)) if gaps.size else 0.0
    if spacing > 0 and float(np.max(gaps)) <= 1.5 * spacing:  # global: every gap, the wrap included, is one step
        return west
    unique_west = np.unique(west)
    split_west = unique_west.size > 1 and float(np.max(np.diff(unique_west))) > 1.5 * spacing
    return east if split_west else west


def _orient(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.sortby("latitude")
    longitude = _wrapped_longitude(ds["longitude"].values)
    ds = ds.assign_coords(longitude=longitude).sortby("longitude")
    values = ds["longitude"].values
    keep = np.concatenate([[True], np.diff(values) > 1e-9])  # a column repeated at 0 and 360
    if not keep.all():
        ds = ds.isel(longitude=np.flatnonzero(keep))
    return ds


def _rename_variables(ds: xr.Dataset) -> xr.Dataset:
    renames: dict[str, str] = {}
    for name in ds.data_vars:
        canonical = canonical_variable(str(name))
        if canonical in renames.values() or (canonical != name and canonical in ds.data_vars):
            continue  # two aliases of one variable: keep the first, leave the other under its own name
        renames[str(name)] = canonical
    out = ds.rename({old: new for old, new in renames.items() if old != new})
    for old, new in renames.items():
        variable = out[new]
        attrs = dict(variable.attrs)
        if old != new:
            attrs["source_name"] = old
        units = str(attrs.get("units", "")).strip()
        if new == "orography" and (units in _GEOPOTENTIAL_UNITS or (not units and old.lower() in _GEOPOTENTIAL_NAMES)):
            out[new] = variable / STANDARD_GRAVITY
            attrs.update(
                units="m", long_name="orography (surface geopotential / 9.80665)", standard_name="surface_altitude"
            )
        elif new == "lsm" and units in ("%", "percent"):
            out[new] = variable / 100.0
            attrs.update(units="1")
        out[new].attrs = attrs
    return out


def harmonise(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """``ds`` in the canonical layout of this module (idempotent; lazy arrays stay lazy).

    Args:
        ds: a Dataset as read from a file (any of the coordinate and variable spellings listed in this module).
        source: what to call it in error messages (the file name).

    Raises:
        ConfigError: no latitude or longitude coordinate can be found, or they are 2-D (curvilinear grids).
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "field")
    ds = _harmonise_time(ds)
    ds = _harmonise_axis(ds, "latitude", _LATITUDE_NAMES, source)
    ds = _harmonise_axis(ds, "longitude", _LONGITUDE_NAMES, source)
    extra = [name for name in ds.coords if name not in ds.dims]
    ds = ds.drop_vars(extra)
    ds = _rename_variables(ds)
    ds = _orient(ds)
    time = ["time"] if "time" in ds.dims else []
    others = [dim for dim in ds.dims if dim not in ("time", "latitude", "longitude")]
    return ds.transpose(*time, *others, "latitude", "longitude")


def time_chunks(path: str, variables: Sequence[str], chunk_bytes: int) -> dict[str, int]:
    """Dask chunks of about ``chunk_bytes`` per variable along the file's time dimension, a whole number of the
    file's own time chunks ({} when the file has no time dimension): for reading a long file a few times at a
    time (a file stored without chunks would otherwise be one dask chunk, read whole for any time of it)."""
    raw = open_dataset(path, chunks=None)
    try:
        time_name = _find_time(raw)
        if time_name is None or time_name not in raw.dims:
            return {}
        variable = select_fields(raw, variables[:1], source=path)[variables[0]]
        per_time = variable.dtype.itemsize * int(
            np.prod([size for dim, size in variable.sizes.items() if dim != "time"], dtype=np.int64)
        )
        stored = variable.encoding.get("preferred_chunks") or {}
        stored_time = max(1, int(stored.get(time_name, 1) or 1))
        count = max(1, chunk_bytes // max(1, per_time * stored_time)) * stored_time
        return {time_name: int(min(count, raw.sizes[time_name]))}
    finally:
        raw.close()
