"""CF-netCDF ensemble files: the (member, time, latitude, longitude) output of a downscaling run.

:class:`EnsembleWriter` creates the file with netCDF4 (NETCDF4 format, float32 data compressed with zlib, one chunk
per (member, time) slab) under a temporary name in the target's directory, takes blocks of members as they are
sampled (memory stays bounded by one block, whatever the numbers of members and times) and renames the file into
place on :meth:`EnsembleWriter.close`; an exception inside its ``with`` block deletes it, so no partial output is
ever left under the target name.

CF-1.8 layout::

    dimensions: member = M, time = T, latitude = H, longitude = W
    int member(member)            standard_name = "realization"
    int64 time(time)              units and calendar: the input's (``time_encoding``), else "hours since
                                  1970-01-01" (or minutes/seconds when needed) in the times' own calendar
                                  (proleptic_gregorian for datetime64; noleap, 360_day, ... for cftime dates)
    double latitude(latitude)     standard_name = "latitude", units = "degrees_north", axis = "Y"
    double longitude(longitude)   standard_name = "longitude", units = "degrees_east", axis = "X"
    float <variable>(member, time, latitude, longitude)   units, standard_name, long_name, ...
    <type> <name>(time)           optional per-time variables (e.g. how far the input lies outside the training
                                  range), any numeric type, written as given

Distributed runs write one *part* per rank (``part=True``: the same layout plus, per variable, an int8
``diffscale_written_<variable>(member, time)`` mask of the slabs it holds); :func:`merge_parts` combines them into
the file that a single process would have written.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import netCDF4
import numpy as np
import xarray as xr

from diffscale.data.climate import calendars
from diffscale.data.climate.plausibility import (
    OUTSIDE_COUNT_ATTRIBUTE,
    OUTSIDE_FRACTION_ATTRIBUTE,
    RANGE_ATTRIBUTE,
)
from diffscale.validation import ConfigError

__all__ = ["EnsembleWriter", "merge_parts", "part_path"]

DIMENSIONS = ("member", "time", "latitude", "longitude")
CONVENTIONS = "CF-1.8"
FILL_VALUE = np.float32(netCDF4.default_fillvals["f4"])
WRITE_CHUNK_CACHE_BYTES = 2**20
"""HDF5 chunk cache of each variable of an ensemble file being written: a chunk is written once, whole, so the
cache holds at most this much, whatever the record's length (a chunk larger than it is written directly)."""
WRITE_CHUNK_CACHE_SLOTS = 521
"""Hash slots of that cache (a prime, as HDF5 advises)."""
WRITTEN_PREFIX = "diffscale_written_"
PART_RANK = "diffscale_part_rank"
PART_WORLD_SIZE = "diffscale_part_world_size"
_RESERVED_ATTRIBUTES = {"_FillValue", "missing_value", "scale_factor", "add_offset", "coordinates", "dimensions"}
AttributeValue = str | int | float | np.ndarray


def check_rank_pair(name: str, pair: tuple[int, int] | None) -> tuple[int, int] | None:
    """``pair`` unchanged if None or ``(rank, world_size)`` with 0 <= rank < world_size; else ConfigError naming it."""
    if pair is not None:
        rank, world_size = pair
        if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
            raise ConfigError(f"{name} = {pair!r}: must be (rank, world_size) with 0 <= rank < world_size")
    return pair


def part_path(out_path: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """The part file of rank ``rank`` for the output ``out_path``: a hidden file in the same directory,
    ``.NAME.part-RANK-of-WORLD.nc``."""
    out = Path(out_path)
    return out.with_name(f".{out.name}.part-{rank:05d}-of-{world_size:05d}.nc")


def _version() -> str:
    import diffscale  # the package imports this module's layer lazily; no cycle at import time

    return diffscale.__version__


def encode_times(
    times: np.ndarray, units: str | None = None, calendar: str | None = None
) -> tuple[np.ndarray, str, str]:
    """CF time values of ``times`` (datetime64 or cftime dates of any calendar) and their (units, calendar): in the
    given ``units`` and ``calendar`` (an input's time encoding, kept by the output), else int64 counts since
    1970-01-01 in the coarsest unit (hours, minutes, seconds) that holds every time exactly, in the times' own
    calendar (proleptic_gregorian for datetime64). See :func:`diffscale.data.climate.calendars.encode_times`."""
    return calendars.encode_times(times, units, calendar)


def decode_times(
    values: np.ndarray, units: str, calendar: str = calendars.DEFAULT_CALENDAR, use_cftime: bool = False
) -> np.ndarray:
    """The inverse of :func:`encode_times`: the dates ``xarray.open_dataset`` reads back (datetime64 for the
    standard and proleptic_gregorian calendars, cftime dates of the calendar otherwise; cftime dates of every
    calendar with ``use_cftime``)."""
    return calendars.decode_times(values, units, calendar, use_cftime)


def _attribute(key: str, value: Any) -> AttributeValue:
    """A netCDF attribute value: strings, numbers and 1-D numeric arrays; booleans and None become strings."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        if not -(2**63) <= int(value) < 2**63:
            raise ConfigError(f"global attribute {key} = {value}: integer out of the int64 range")
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.ndim == 1 and array.dtype.kind in "iuf" and array.size > 0:
            return array
        if array.ndim == 1 and all(isinstance(item, str) for item in array.tolist()):
            return ", ".join(array.tolist())
    raise ConfigError(f"attribute {key} = {value!r}: must be a string, number, boolean, None or 1-D list of numbers")


def flatten_attributes(attributes: Mapping[str, Any], prefix: str = "") -> dict[str, AttributeValue]:
    """Nested mappings flattened with ``_`` (``{"sampling": {"steps": 40}}`` -> ``sampling_steps = 40``), every
    value made a netCDF attribute value."""
    flat: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or key.startswith("_"):
            raise ConfigError(f"attribute name {prefix}{key!r}: must be a non-empty string not starting with '_'")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_attributes(value, prefix=f"{name}_"))
        else:
            flat[name] = _attribute(name, value)
    return flat


def _json_value(value: Any) -> Any:
    """An attribute value as Python holds it (numpy scalars and arrays become Python numbers and lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _coordinate(name: str, values: Any, limit: float | None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"{name}: must be a non-empty 1-D array of degrees, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{name}: has non-finite values")
    if limit is not None and np.any(np.abs(array) > limit):
        raise ConfigError(f"{name}: values must lie in [-{limit}, {limit}] degrees")
    steps = np.diff(array)
    if array.size > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        raise ConfigError(f"{name}: must be strictly monotonic")
    return array


def _times(values: Any) -> np.ndarray:
    array = calendars.check_times(values)
    if array.size == 0:
        raise ConfigError("times: must hold at least one date")
    if array.dtype.kind == "M" and np.any(np.isnat(array)):
        raise ConfigError("times: contains NaT")
    if np.unique(array).size != array.size:
        raise ConfigError("times: contains duplicates")
    return array


class EnsembleWriter:
    """Writes an ensemble (member, time, latitude, longitude) to a CF-netCDF file, block by block.

    Args:
        path: the output file; written as a temporary file in the same directory and renamed on :meth:`close`.
        latitude, longitude: 1-D coordinates in degrees (strictly monotonic).
        times: 1-D ``numpy.datetime64`` array or cftime dates of one calendar (distinct), written in their own
            calendar, never converted.
        num_members: M, the ensemble size; ``member`` runs 0 .. M-1.
        variables: ``{name: {"units": ..., "standard_name": ..., "long_name": ..., ...}}``; ``units`` is required.
        global_attributes: e.g. sampler settings (nested mappings are flattened with ``_``), ``seed``,
            ``checkpoint_sha256``, ``institution``, ``history``; the writer sets ``Conventions = "CF-1.8"`` and
            fills in ``source``, ``diffscale_version`` and ``history`` when absent.
        complevel: zlib level (1-9).
        overwrite: replace an existing ``path`` (else a :class:`ConfigError` now, before any work).
        part: ``(rank, world_size)`` to write a rank's part file for :func:`merge_parts` (it records which slabs
            it holds and may be incomplete; name it with :func:`part_path`).
        time_encoding: the ``units`` and ``calendar`` to store the times in (a
            :class:`~diffscale.data.climate.calendars.TimeEncoding` or a mapping; e.g. those of the input, which
            the output keeps); None: :func:`encode_times`' default. Checked now: every time must be held exactly.
        time_variables: ``{name: (values (T,), attributes)}``: variables over ``time`` alone, known before any
            member is sampled (e.g. the extrapolation measure of the input), written with the layout in the
            values' own numeric dtype (every value round-trips bitwise).
            A complete file (``part=False``) must have every (variable, member, time) slab written before close.

    A variable whose attributes hold ``plausible_range = [lo, hi]``
    (:data:`~diffscale.data.climate.plausibility.RANGE_ATTRIBUTE`) has the values written outside it counted per
    slab (a slab written again replaces its count); a complete output records the total and its share of the
    variable's values as the attributes ``outside_plausible_range_count`` and ``outside_plausible_range_fraction``
    (:attr:`outside_counts`), so that an implausible value is never written without saying so.

    Use as a context manager::

        with EnsembleWriter(path, latitude=lat, longitude=lon, times=times, num_members=M,
                            variables={"t2m": {"units": "K", "standard_name": "air_temperature"}},
                            global_attributes={"seed": 0}) as writer:
            writer.write("t2m", range(0, 8), 3, values)   # values (8, H, W): members 0..7 at time index 3
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        latitude: Any,
        longitude: Any,
        times: Any,
        num_members: int,
        variables: Mapping[str, Mapping[str, Any]],
        global_attributes: Mapping[str, Any] | None = None,
        complevel: int = 4,
        overwrite: bool = False,
        part: tuple[int, int] | None = None,
        time_variables: Mapping[str, tuple[Any, Mapping[str, Any]]] | None = None,
        time_encoding: calendars.TimeEncoding | Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.latitude = _coordinate("latitude", latitude, 90.0)
        self.longitude = _coordinate("longitude", longitude, 720.0)
        self.times = _times(times)
        units, calendar = calendars.encoding_attributes(time_encoding)
        self.time_values, self.time_units, self.calendar = encode_times(self.times, units, calendar)
        if isinstance(num_members, bool) or not isinstance(num_members, (int, np.integer)) or num_members < 1:
            raise ConfigError(f"num_members = {num_members!r}: must be a positive integer")
        self.num_members = int(num_members)
        if not isinstance(complevel, int) or not 1 <= complevel <= 9:
            raise ConfigError(f"complevel = {complevel!r}: must be an integer in [1, 9]")
        self.variables = self._variables(variables)
        self.plausible_ranges = {
            name: _plausible_range(name, attributes[RANGE_ATTRIBUTE])
            for name, attributes in self.variables.items()
            if RANGE_ATTRIBUTE in attributes
        }
        self._outside = {
            name: np.zeros((self.num_members, self.times.size), dtype=np.int64) for name in self.plausible_ranges
        }
        self.time_variables = self._time_variables(time_variables or {})
        self.global_attributes = self._global_attributes(global_attributes or {})
        self.part = check_rank_pair("part", part)
        self._check_target(overwrite)
        self._written = {name: np.zeros((self.num_members, self.times.size), dtype=bool) for name in self.variables}
        self._temporary = self._temporary_path()
        self._dataset: Any = None
        try:
            self._create(complevel)
        except BaseException:
            self.abort()
            raise

    # ----------------------------------------------------------------- the storage (netCDF; see ZarrEnsembleWriter)
    def _check_target(self, overwrite: bool) -> None:
        """ConfigError when the output cannot be created: a missing directory, or an existing output."""
        if not self.path.parent.is_dir():
            raise ConfigError(f"output {self.path}: directory {self.path.parent} does not exist")
        if self.path.exists() and not overwrite:
            raise ConfigError(f"output {self.path}: exists (choose another path or allow overwriting)")

    def _temporary_path(self) -> Path:
        """Where the output is written until :meth:`close`: a hidden name, unique per process, beside it."""
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        return self.path.with_name(f".{self.path.name}.{token}.tmp")

    def _create(self, complevel: int) -> None:
        """Create the (temporary) output and define its layout; sets ``self._dataset``."""
        # Created by netCDF (the umask's permissions, unlike mkstemp's 0600).
        self._dataset = netCDF4.Dataset(self._temporary, mode="w", clobber=False, format="NETCDF4")
        self._define(complevel)

    def _store(self, variable: str, members: slice, times: slice, block: np.ndarray) -> None:
        """Write a checked float32 block (members, times, H, W)."""
        dataset = self._require_open()
        dataset[variable][members, times] = block
        if self.part is not None:
            dataset[WRITTEN_PREFIX + variable][members, times] = np.int8(1)

    def _finish(self) -> None:
        """Close the temporary output and move it to ``self.path``."""
        self._require_open().close()
        self._dataset = None
        os.replace(self._temporary, self.path)

    def _discard(self) -> None:
        """Close and delete the temporary output."""
        if self._dataset is not None:
            with contextlib.suppress(Exception):
                self._dataset.close()
            self._dataset = None
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()

    # ----------------------------------------------------------------- definition
    def layout_dataset(self, arrays: Mapping[str, Any]) -> xr.Dataset:
        """The ensemble as an ``xarray.Dataset`` around ``arrays`` ({variable: (M, T, H, W) array}): the
        coordinates, variables' and global attributes as ``xarray.open_dataset`` reads them back from the file
        (time decoded as ``xarray.open_dataset`` decodes the file's: datetime64[ns] for the standard and
        proleptic_gregorian calendars, cftime dates otherwise, and cftime dates whenever the writer was given
        cftime dates, which are never converted; its units and calendar are its ``encoding``)."""
        data = {
            name: (DIMENSIONS, arrays[name], {key: _json_value(value) for key, value in attributes.items()})
            for name, attributes in self.variables.items()
        }
        coordinates = {
            "member": (
                "member",
                np.arange(self.num_members, dtype=np.int32),
                {"standard_name": "realization", "long_name": "ensemble member number", "units": "1"},
            ),
            "time": (
                "time",
                decode_times(self.time_values, self.time_units, self.calendar, calendars.is_cftime(self.times)),
                {"standard_name": "time", "long_name": "time", "axis": "T"},
            ),
            "latitude": (
                "latitude",
                self.latitude,
                {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"},
            ),
            "longitude": (
                "longitude",
                self.longitude,
                {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"},
            ),
        }
        for name, (values, extra) in self.time_variables.items():
            data[name] = (("time",), values.copy(), {key: _json_value(value) for key, value in extra.items()})
        attributes = {key: _json_value(value) for key, value in self.global_attributes.items()}
        dataset = xr.Dataset(data, coords=coordinates, attrs=attributes)
        dataset["time"].encoding.update(
            {"units": self.time_units, "calendar": self.calendar, "dtype": self.time_values.dtype}
        )
        return dataset

    def _variables(self, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, AttributeValue]]:
        if not isinstance(variables, Mapping) or not variables:
            raise ConfigError("variables: must be a non-empty mapping {name: {attribute: value}}")
        result: dict[str, dict[str, AttributeValue]] = {}
        for name, attributes in variables.items():
            if not isinstance(name, str) or not name or name in DIMENSIONS or name.startswith(WRITTEN_PREFIX):
                raise ConfigError(f"variable name {name!r}: must be a non-empty string, not a dimension name")
            if not isinstance(attributes, Mapping) or "units" not in attributes:
                raise ConfigError(f"variable {name}: needs its attributes as a mapping with 'units'")
            reserved = sorted(set(attributes) & _RESERVED_ATTRIBUTES)
            if reserved:
                raise ConfigError(f"variable {name}: attribute(s) {', '.join(reserved)} are set by the writer")
            result[name] = {key: _attribute(f"{name}.{key}", value) for key, value in attributes.items()}
        return result

    def _time_variables(
        self, time_variables: Mapping[str, tuple[Any, Mapping[str, Any]]]
    ) -> dict[str, tuple[np.ndarray, dict[str, AttributeValue]]]:
        if not isinstance(time_variables, Mapping):
            raise ConfigError("time_variables: must be a mapping {name: (values, attributes)}")
        result: dict[str, tuple[np.ndarray, dict[str, AttributeValue]]] = {}
        for name, entry in time_variables.items():
            if (
                not isinstance(name, str)
                or not name
                or name in DIMENSIONS
                or name in self.variables
                or name.startswith(WRITTEN_PREFIX)
            ):
                raise ConfigError(
                    f"time variable name {name!r}: must be a new non-empty name (not a dimension or field)"
                )
            if not isinstance(entry, tuple | list) or len(entry) != 2 or not isinstance(entry[1], Mapping):
                raise ConfigError(f"time variable {name}: give (values, attributes)")
            values = np.asarray(entry[0])
            if values.shape != (self.times.size,) or values.dtype.kind not in "iuf" or values.dtype.itemsize < 2:
                raise ConfigError(
                    f"time variable {name}: values of shape {values.shape} and dtype {values.dtype}; expected "
                    f"({self.times.size},) numbers (int16 or wider, or floats)"
                )
            reserved = sorted(set(entry[1]) & _RESERVED_ATTRIBUTES)
            if reserved:
                raise ConfigError(f"time variable {name}: attribute(s) {', '.join(reserved)} are set by the writer")
            attributes = {key: _attribute(f"{name}.{key}", value) for key, value in entry[1].items()}
            result[name] = (np.array(values, copy=True), attributes)
        return result

    def _global_attributes(self, attributes: Mapping[str, Any]) -> dict[str, AttributeValue]:
        flat = flatten_attributes(attributes)
        if flat.get("Conventions", CONVENTIONS) != CONVENTIONS:
            raise ConfigError(f"global attribute Conventions = {flat['Conventions']!r}: must be {CONVENTIONS}")
        version = _version()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        result: dict[str, AttributeValue] = {"Conventions": CONVENTIONS}
        result.update(flat)
        result.setdefault("source", f"diffscale {version}")
        result.setdefault("diffscale_version", version)
        result.setdefault("history", f"{now}: written by diffscale {version}")
        return result

    def _define(self, complevel: int) -> None:
        dataset = self._require_open()
        height, width = self.latitude.size, self.longitude.size
        for name, size in zip(DIMENSIONS, (self.num_members, self.times.size, height, width), strict=True):
            dataset.createDimension(name, size)
        member = dataset.createVariable("member", "i4", ("member",))
        member.setncatts({"standard_name": "realization", "long_name": "ensemble member number", "units": "1"})
        member[:] = np.arange(self.num_members, dtype=np.int32)
        time = dataset.createVariable("time", self.time_values.dtype, ("time",))
        time.setncatts({"standard_name": "time", "long_name": "time", "units": self.time_units})
        time.setncatts({"calendar": self.calendar, "axis": "T"})
        time[:] = self.time_values
        for name, units_, axis, coordinate in (
            ("latitude", "degrees_north", "Y", self.latitude),
            ("longitude", "degrees_east", "X", self.longitude),
        ):
            variable = dataset.createVariable(name, "f8", (name,))
            variable.setncatts({"standard_name": name, "long_name": name, "units": units_, "axis": axis})
            variable[:] = coordinate
        for name, attributes in self.variables.items():
            variable = dataset.createVariable(
                name,
                "f4",
                DIMENSIONS,
                zlib=True,
                complevel=complevel,
                shuffle=True,
                chunksizes=(1, 1, height, width),
                fill_value=FILL_VALUE,
            )
            # every chunk (one member, one time) is written once, whole: HDF5's chunk cache (64 MiB a variable by
            # default) would only keep the written chunks until the file closes, growing with the record up to it
            variable.set_var_chunk_cache(size=WRITE_CHUNK_CACHE_BYTES, nelems=WRITE_CHUNK_CACHE_SLOTS, preemption=1.0)
            variable.setncatts(attributes)
            if self.part is not None:
                written = dataset.createVariable(WRITTEN_PREFIX + name, "i1", ("member", "time"), fill_value=False)
                written.setncatts({"long_name": f"1 where this part holds the slab of {name}"})
                written[:] = np.zeros((self.num_members, self.times.size), dtype=np.int8)
        for name, (values, attributes) in self.time_variables.items():
            variable = dataset.createVariable(name, values.dtype, ("time",))
            variable.setncatts(attributes)
            variable[:] = values
        dataset.setncatts(self.global_attributes)
        if self.part is not None:
            rank, world_size = self.part
            dataset.setncatts({PART_RANK: np.int64(rank), PART_WORLD_SIZE: np.int64(world_size)})

    def _require_open(self) -> netCDF4.Dataset:
        if self._dataset is None:
            raise RuntimeError(f"output {self.path}: the writer is closed")
        return self._dataset

    # ----------------------------------------------------------------- writing
    def _time_label(self, index: int) -> str:
        return f"time {calendars.time_text(self.times[index])} (index {index})"

    def write(self, variable: str, members: slice | range, time_index: int | slice, values: Any) -> None:
        """Write ``values`` of ``variable`` for the members ``members`` (a step-1 slice or range) at
        ``time_index``: shape (len(members), H, W) for an integer time index, (len(members), len(times), H, W) for
        a slice. Values are physical (units restored), finite and cast to float32."""
        self._require_open()
        if variable not in self.variables:
            raise ConfigError(f"variable {variable!r}: not in the file; its variables: {', '.join(self.variables)}")
        member_range = _as_range("members", members, self.num_members)
        if isinstance(time_index, (int, np.integer)) and not isinstance(time_index, bool):
            if not 0 <= time_index < self.times.size:
                raise ConfigError(f"time_index = {time_index}: must lie in [0, {self.times.size - 1}]")
            time_range = range(int(time_index), int(time_index) + 1)
            expected: tuple[int, ...] = (len(member_range), self.latitude.size, self.longitude.size)
        else:
            time_range = _as_range("time_index", time_index, self.times.size)
            expected = (len(member_range), len(time_range), self.latitude.size, self.longitude.size)
        if hasattr(values, "detach"):  # a torch tensor, on any device
            values = values.detach().cpu().numpy()
        array = np.asarray(values)
        if array.shape != expected:
            raise ConfigError(
                f"variable {variable} at {self._time_label(time_range.start)}: block has shape {array.shape}, "
                f"expected {expected} (members, [times,] latitude, longitude)"
            )
        if array.dtype.kind not in "iuf":
            raise ConfigError(f"variable {variable} at {self._time_label(time_range.start)}: dtype {array.dtype}")
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
            block = array.astype(np.float32).reshape(len(member_range), len(time_range), *expected[-2:])
        finite = np.isfinite(block)
        if not finite.all():
            _, bad_time, _, _ = np.unravel_index(int(np.argmin(finite)), block.shape)
            raise ConfigError(
                f"variable {variable} at {self._time_label(time_range[bad_time])}: "
                f"{int(block.size - finite.sum())} non-finite value(s) (NaN/inf, or beyond float32)"
            )
        members_slice = slice(member_range.start, member_range.stop)
        times_slice = slice(time_range.start, time_range.stop)
        self._store(variable, members_slice, times_slice, block)
        self._written[variable][members_slice, times_slice] = True
        if variable in self.plausible_ranges:
            low, high = self.plausible_ranges[variable]
            self._outside[variable][members_slice, times_slice] = np.count_nonzero(
                (block < low) | (block > high), axis=(2, 3)
            )

    @property
    def outside_counts(self) -> dict[str, int]:
        """Per variable with a plausible range: how many of the values written so far lie outside it."""
        return {name: int(counts.sum()) for name, counts in self._outside.items()}

    def outside_slab_counts(self) -> dict[str, np.ndarray]:
        """Per variable with a plausible range: the (members, times) counts of values outside it (copies)."""
        return {name: counts.copy() for name, counts in self._outside.items()}

    def outside_attributes(self, counts: Mapping[str, int] | None = None) -> dict[str, dict[str, AttributeValue]]:
        """The attributes a complete output records per variable with a plausible range: the count of values
        outside it and their share (of ``counts``, default :attr:`outside_counts`)."""
        counts = self.outside_counts if counts is None else counts
        size = self.num_members * self.times.size * self.latitude.size * self.longitude.size
        return {
            name: {
                OUTSIDE_COUNT_ATTRIBUTE: np.int64(counts[name]),
                OUTSIDE_FRACTION_ATTRIBUTE: np.float64(counts[name] / size),
            }
            for name in self.plausible_ranges
        }

    def _record_outside(self) -> None:
        """Record :meth:`outside_attributes` in the variables' attributes (and the open output)."""
        attributes = self.outside_attributes()
        for name, extra in attributes.items():
            self.variables[name].update(extra)
        if attributes:
            self._store_attributes(attributes)

    def _store_attributes(self, attributes: Mapping[str, Mapping[str, AttributeValue]]) -> None:
        """Add variable attributes to the open output."""
        dataset = self._require_open()
        for name, extra in attributes.items():
            dataset[name].setncatts(dict(extra))

    def missing(self) -> Iterator[tuple[str, int, int]]:
        """The (variable, member, time index) slabs not written yet."""
        for name, written in self._written.items():
            for member, time in zip(*np.nonzero(~written), strict=True):
                yield name, int(member), int(time)

    # ----------------------------------------------------------------- closing
    def close(self) -> Path:
        """Finish the file and rename it into place; returns the path. A complete file must hold every slab
        (else ValueError, naming the first missing one, and the temporary file is deleted)."""
        self._require_open()
        try:
            if self.part is None:
                first = next(self.missing(), None)
                if first is not None:
                    count = sum(int((~w).sum()) for w in self._written.values())
                    name, member, time = first
                    raise ValueError(
                        f"output {self.path}: {count} slab(s) not written, the first: variable {name}, "
                        f"member {member}, {self._time_label(time)}"
                    )
                self._record_outside()
            self._finish()
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary output (nothing is left under the target name)."""
        self._discard()

    def __enter__(self) -> EnsembleWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _plausible_range(name: str, value: Any) -> tuple[float, float]:
    """(lo, hi) of a variable's ``plausible_range`` attribute; ConfigError unless two finite numbers lo <= hi."""
    array = np.asarray(value, dtype=np.float64) if np.asarray(value).dtype.kind in "iuf" else np.array([])
    if array.shape != (2,) or not np.all(np.isfinite(array)) or array[0] > array[1]:
        raise ConfigError(f"variable {name}: attribute {RANGE_ATTRIBUTE} = {value!r} must be [low, high] numbers")
    return float(array[0]), float(array[1])


def _as_range(name: str, selection: slice | range, size: int) -> range:
    if isinstance(selection, slice):
        selection = range(*selection.indices(size)) if selection.step in (None, 1) else range(0, 0, 2)
    if not isinstance(selection, range) or selection.step != 1 or len(selection) == 0:
        raise ConfigError(f"{name} = {selection!r}: must be a non-empty slice or range with step 1")
    if selection.start < 0 or selection.stop > size:
        raise ConfigError(f"{name} = {selection!r}: must lie in [0, {size})")
    return selection


# --------------------------------------------------------------------- merging
def _read_layout(path: Path) -> dict[str, Any]:
    """Coordinates, variables' attributes and global attributes of a part file."""
    with netCDF4.Dataset(path, mode="r") as dataset:
        attributes = {key: dataset.getncattr(key) for key in dataset.ncattrs()}
        if PART_RANK not in attributes:
            raise ConfigError(f"part {path}: not a diffscale part file (no {PART_RANK} attribute)")
        names = [name for name in dataset.variables if dataset[name].dimensions == DIMENSIONS]
        variables = {
            name: {key: dataset[name].getncattr(key) for key in dataset[name].ncattrs() if key != "_FillValue"}
            for name in names
        }
        per_time = [name for name in dataset.variables if name != "time" and dataset[name].dimensions == ("time",)]
        time_variables = {}
        for name in per_time:
            variable = dataset[name]
            variable.set_auto_maskandscale(False)  # the stored values, bit for bit
            time_variables[name] = {
                "values": np.array(variable[:], dtype=variable.dtype),
                "attributes": {key: variable.getncattr(key) for key in variable.ncattrs()},
            }
        time = dataset["time"]
        return {
            "latitude": np.asarray(dataset["latitude"][:], dtype=np.float64),
            "longitude": np.asarray(dataset["longitude"][:], dtype=np.float64),
            "times": decode_times(np.asarray(time[:]), time.units, getattr(time, "calendar", "standard")),
            "time_encoding": {"units": time.units, "calendar": getattr(time, "calendar", "standard")},
            "num_members": dataset.dimensions["member"].size,
            "variables": variables,
            "time_variables": time_variables,
            "global_attributes": {k: v for k, v in attributes.items() if k not in (PART_RANK, PART_WORLD_SIZE)},
            "rank": int(attributes[PART_RANK]),
            "world_size": int(attributes.get(PART_WORLD_SIZE, -1)),
        }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return np.array_equal(np.asarray(a), np.asarray(b))


def _runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    """[start, stop) of the runs of True in a 1-D boolean mask."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    yield from zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True)


def merge_parts(
    part_paths: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    remove_parts: bool = True,
    complevel: int = 4,
) -> Path:
    """Combine the part files of R ranks into ``out_path``, equal to the file one process would write.

    Every part must have the same coordinates, variables and attributes, and every (variable, member, time) slab
    must be held by exactly one part (else ConfigError naming the parts / the slab); ``history`` may differ (each
    rank's writer stamps its own default) and rank 0's is kept. Slabs are copied one time
    index and one run of members at a time, so memory stays bounded by one (members, H, W) block. The output is
    written through :class:`EnsembleWriter` (temporary file, renamed when complete). The parts are deleted after
    a successful merge when ``remove_parts``.
    """
    paths = [Path(p) for p in part_paths]
    if not paths:
        raise ConfigError("merge_parts: no part files given")
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"part {path}: does not exist")
    layouts = [_read_layout(path) for path in paths]
    order = sorted(range(len(paths)), key=lambda i: layouts[i]["rank"])
    paths, layouts = [paths[i] for i in order], [layouts[i] for i in order]
    reference = layouts[0]  # the lowest rank's (rank 0's) metadata, its history included
    for path, layout in zip(paths[1:], layouts[1:], strict=True):
        compared = (
            "latitude",
            "longitude",
            "times",
            "time_encoding",
            "num_members",
            "variables",
            "time_variables",
            "global_attributes",
        )
        for key in compared:
            mine, theirs = layout[key], reference[key]
            if key == "global_attributes":  # each rank stamps its own default history
                mine, theirs = ({k: v for k, v in d.items() if k != "history"} for d in (mine, theirs))
            if not _same(mine, theirs):
                raise ConfigError(f"part {path}: its {key} differ from those of part {paths[0]}")
    world_sizes = {layout["world_size"] for layout in layouts}
    ranks = sorted(layout["rank"] for layout in layouts)
    if world_sizes != {len(paths)} or ranks != list(range(len(paths))):
        raise ConfigError(
            f"merge_parts: parts record ranks {ranks} of world sizes {sorted(world_sizes)}; expected ranks "
            f"0..{len(paths) - 1} of world size {len(paths)}"
        )
    with contextlib.ExitStack() as stack:
        datasets = [stack.enter_context(netCDF4.Dataset(path, mode="r")) for path in paths]
        with EnsembleWriter(
            out_path,
            latitude=reference["latitude"],
            longitude=reference["longitude"],
            times=reference["times"],
            time_encoding=reference["time_encoding"],
            num_members=reference["num_members"],
            variables=reference["variables"],
            time_variables={
                name: (entry["values"], entry["attributes"]) for name, entry in reference["time_variables"].items()
            },
            global_attributes=reference["global_attributes"],
            complevel=complevel,
            overwrite=overwrite,
        ) as writer:
            for name in reference["variables"]:
                masks = [np.asarray(dataset[WRITTEN_PREFIX + name][:], dtype=bool) for dataset in datasets]
                counts = np.sum(masks, axis=0)
                if np.any(counts != 1):
                    member, time = (int(i[0]) for i in np.nonzero(counts != 1))
                    holders = [str(path) for path, mask in zip(paths, masks, strict=True) if mask[member, time]]
                    raise ConfigError(
                        f"merge_parts: variable {name}, member {member}, {writer._time_label(time)} is held by "
                        f"{len(holders)} parts ({', '.join(holders) or 'none'}); each slab needs exactly one"
                    )
                for dataset, mask in zip(datasets, masks, strict=True):
                    for time in np.nonzero(mask.any(axis=0))[0].tolist():
                        for start, stop in _runs(mask[:, time]):
                            block = np.asarray(dataset[name][start:stop, time], dtype=np.float32)
                            writer.write(name, range(start, stop), time, block)
    if remove_parts:
        for path in paths:
            path.unlink()
    return Path(out_path)
