"""The ``data: {kind: climate}`` section: climate fields for probabilistic downscaling.

Validating the section reads no file (paths, variables and grids are checked when the dataset is built, with
one-line :class:`~diffscale.validation.ConfigError` messages). Example::

    data:
      kind: climate
      paths: [/data/era5_t2m_*.nc]          # fine (high-resolution) fields
      variables: [t2m]
      coarsen_factor: 4                     # coarse input = area-weighted 4 x 4 block mean of the fine fields
      remainder: trim                       # a grid not divisible by 4: drop the surplus rows/columns (or: error)
      crop: {lat: [0, 32], lon: [0, 48]}    # index window of the harmonised fine grid (south -> north, west -> east)
      static_paths: [/data/era5_orography_lsm_global.nc]
      static_variables: [orography, lsm]
      static_interpolation: bilinear        # statics on another grid: bilinear in lat/lon (none: must line up)
      channels: {latlon: true, hour: true, day_of_year: true}
      transforms: {t2m: standardize, tp: {name: log1p, scale: 0.001}}   # tp in m: log1p of millimetres
      target: residual
      train_period: ["2019-03-01", "2019-03-24"]
      validation_period: ["2019-03-25", "2019-03-31"]   # or several: [["2019-03-25", "2019-03-27"], [...]]
      patch: null
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from diffscale.data.climate.io import canonical_variable
from diffscale.validation import StrictModel

__all__ = ["ClimateChannels", "ClimateData", "CropWindow", "Split", "TransformSpec"]

Split = Literal["train", "validation", "test"]

_ONE_DAY = np.timedelta64(1, "D")
_ONE_NS = np.timedelta64(1, "ns")


def _as_list(value: Any) -> Any:
    """A single path or name is a list of one."""
    return [value] if isinstance(value, str) else value


def _as_iso(value: Any) -> Any:
    """YAML reads an unquoted 2019-03-01 as a date: keep it as its ISO string."""
    if isinstance(value, list | tuple):
        return [item.isoformat() if isinstance(item, dt.date | dt.datetime) else item for item in value]
    return value


PathList = Annotated[list[str], BeforeValidator(_as_list)]
NameList = Annotated[list[str], BeforeValidator(_as_list)]
Period = Annotated[tuple[str, str], BeforeValidator(_as_iso)]
IndexRange = tuple[Annotated[int, Field(ge=0, strict=True)], Annotated[int, Field(ge=1, strict=True)]]


def _as_periods(value: Any) -> Any:
    """One period [first, last] is a list of one; a list of periods stays as it is."""
    value = _as_iso(value) if not _is_list_of_periods(value) else [_as_iso(item) for item in value]
    return value if value is None or _is_list_of_periods(value) else [value]


def _is_list_of_periods(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], list | tuple)


Periods = Annotated[list[Period], BeforeValidator(_as_periods), Field(min_length=1)]
"""One period [first, last], or several ([[first, last], ...]: e.g. every fourth week of a year); kept as a list."""


_NOT_A_DATE = (
    "{text!r} is not an ISO date or time of the proleptic Gregorian calendar, in which periods are given (e.g. "
    "2019-03-01 or 2019-03-01T06:00; for data in another calendar, a period ending with a month, '2019-02', takes in "
    "its whole month, the 29th and 30th of a 360_day February included)"
)


def _parse_time(text: str) -> np.datetime64:
    try:
        return np.datetime64(text, "ns")
    except ValueError:
        raise ValueError(_NOT_A_DATE.format(text=text)) from None


def _end_of(text: str) -> np.datetime64:
    """The last instant of the calendar unit an ISO date names: '2019' -> the year's end, '2019-03' -> the
    month's, '2019-03-31' -> the day's; a time ('2019-03-31T06:00') is an instant and is itself."""
    text = text.strip()
    try:
        value = np.datetime64(text)
    except ValueError:
        raise ValueError(_NOT_A_DATE.format(text=text)) from None
    unit = np.datetime_data(value.dtype)[0]
    if unit in ("Y", "M", "W", "D"):
        return (value + np.timedelta64(1, unit)).astype("datetime64[ns]") - _ONE_NS
    return value.astype("datetime64[ns]")


def period_bounds(period: tuple[str, str]) -> tuple[np.datetime64, np.datetime64]:
    """(first, last) instants of an inclusive ISO period: the end covers the whole unit it names (the whole
    year of '2019', month of '2019-03', day of '2019-03-31'). The dates are those of the proleptic Gregorian
    calendar; data in another calendar are selected by their dates' components, an end at a month's last instant
    closing that month in the data's calendar
    (:func:`~diffscale.data.climate.calendars.within`)."""
    return _parse_time(period[0]), _end_of(period[1])


class CropWindow(StrictModel):
    """Index window [start, stop) of the fine grid after harmonisation (latitude ascending, longitude ascending)."""

    lat: IndexRange | None = Field(None, description="[start, stop) latitude indices (south -> north); null: all")
    lon: IndexRange | None = Field(None, description="[start, stop) longitude indices (west -> east); null: all")

    @field_validator("lat", "lon")
    @classmethod
    def _increasing(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[1] <= value[0]:
            raise ValueError(f"stop must be greater than start; got {list(value)}")
        return value


TransformName = Literal["standardize", "log1p", "sqrt"]


class TransformSpec(StrictModel):
    """A transform with its scale c: log1p(x / c) or sqrt(x / c) (:mod:`~diffscale.data.climate.transforms`)."""

    name: TransformName = Field(..., description="standardize, log1p or sqrt")
    scale: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="c, in the variable's units (0.001 for tp in m: millimetres)"
    )


Transform = Annotated[
    Annotated[TransformName, Tag("")] | Annotated[TransformSpec, Tag("{name, scale}")],
    Discriminator(lambda value: "" if isinstance(value, str) else "{name, scale}"),
]
"""A transform: its name, or ``{name, scale}`` (only the form given is validated, so an error names one form;
the empty tag keeps the name form's location as it was, ``data.transforms.tp``)."""


class ClimateChannels(StrictModel):
    """Optional conditioning channels beside the coarse fields and the statics."""

    latlon: bool = Field(False, description="latitude / 90, sin and cos of longitude (3 channels)")
    hour: bool = Field(False, description="sin and cos of the UTC hour of day (2 channels)")
    day_of_year: bool = Field(False, description="sin and cos of the day of year (2 channels)")


class ClimateData(StrictModel):
    """``data: {kind: climate}``: fine climate fields y (C, H, W) to generate from coarse fields (downscaling)."""

    kind: Literal["climate"] = Field("climate", description="data kind: climate (fields read from files)")
    paths: PathList = Field(..., min_length=1, description="high-resolution files (netCDF, zarr, GRIB; globs allowed)")
    variables: NameList = Field(["t2m"], min_length=1, description="variables to model (canonical names or aliases)")
    coarse_paths: PathList | None = Field(
        None, description="low-resolution files; null: coarsen the fine fields by coarsen_factor"
    )
    coarsen_factor: int = Field(4, ge=1, strict=True, description="fine cells per coarse cell along each axis")
    remainder: Literal["trim", "error", "keep"] = Field(
        "trim",
        description="a grid not divisible by coarsen_factor: trim (drop the surplus, south/west first), error, or "
        "keep (only with random_windows, whose windows are whole blocks anywhere)",
    )
    crop: CropWindow | None = Field(
        None, description="index window {lat: [start, stop], lon: [start, stop]} of the fine grid"
    )
    static_paths: PathList = Field([], description="files of time-invariant fields (orography, land-sea mask)")
    static_variables: NameList = Field([], description="static fields to condition on, e.g. [orography, lsm]")
    static_interpolation: Literal["bilinear", "none"] = Field(
        "bilinear", description="statics onto the data grid: bilinear in lat/lon (copied where points coincide) or none"
    )
    channels: ClimateChannels = Field(default_factory=ClimateChannels, description="optional lat/lon and time channels")
    transforms: dict[str, Transform] = Field(
        {},
        description="per-variable transform before standardising: a name (default standardize; log1p/sqrt for tp) "
        "or {name, scale}",
    )
    target: Literal["fine", "residual", "regression_residual"] = Field(
        "residual", description="fine field, residual vs upsampled coarse, or residual vs a regression model"
    )
    regression_run: str | None = Field(
        None, description="target regression_residual: run directory of the regression model (objective regression)"
    )
    interpolation: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="upsampling of the coarse fields to the fine grid"
    )
    train_period: Periods | None = Field(
        None,
        description="[first, last] ISO dates (inclusive), or a list of them, to train on; null: all times outside "
        "the other periods",
    )
    validation_period: Periods | None = Field(
        None, description="[first, last] ISO dates (inclusive), or a list of them, to validate on"
    )
    test_period: Periods | None = Field(
        None, description="[first, last] ISO dates (inclusive), or a list of them, held out for testing"
    )
    patch: tuple[Annotated[int, Field(ge=1, strict=True)], Annotated[int, Field(ge=1, strict=True)]] | None = Field(
        None, description="[height, width] of random training patches; null: the whole domain"
    )
    periodic_longitude: bool | None = Field(
        None, description="wrap in longitude (patches, upsampling); null: true when the grid is global"
    )
    latitude_weighted_loss: bool = Field(
        False, description="weight each row's training loss by cos(latitude), normalised to mean 1 over a sample"
    )
    stats_times: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="fit the statistics on this many evenly spaced times of the train period (null: on all)",
    )
    random_alignment: bool = Field(
        False,
        description="train on coarse lattices shifted by 0 .. f-1 fine cells at random, so any window downscales alike",
    )
    random_windows: bool = Field(
        False,
        description="coarsen each training patch on its own (its own whole blocks, as a window a user brings); "
        "patches start at every fine row and column, so every coarse-lattice alignment is trained",
    )

    @field_validator("variables", "static_variables")
    @classmethod
    def _canonical_names(cls, names: list[str]) -> list[str]:
        canonical = [canonical_variable(name) for name in names]
        duplicates = sorted({name for name in canonical if canonical.count(name) > 1})
        if duplicates:
            raise ValueError(f"{', '.join(duplicates)} listed more than once (aliases count as the same variable)")
        return canonical

    @field_validator("transforms", mode="before")
    @classmethod
    def _canonical_transform_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {canonical_variable(str(key)): item for key, item in value.items()}
        return value

    @field_validator("train_period", "validation_period", "test_period")
    @classmethod
    def _ordered_period(cls, periods: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        for period in periods or []:
            start, end = period_bounds(period)
            if end < start:
                raise ValueError(f"the end {period[1]!r} is before the start {period[0]!r}")
        return periods

    @model_validator(mode="after")
    def _consistent(self) -> ClimateData:
        unknown = [name for name in self.transforms if name not in self.variables]
        if unknown:
            raise ValueError(f"transforms: {', '.join(unknown)} not among variables ({', '.join(self.variables)})")
        if (self.target == "regression_residual") != (self.regression_run is not None):
            raise ValueError(
                "target regression_residual needs regression_run (the regression model's run directory), "
                "and regression_run is only used with that target"
            )
        if self.static_variables and not self.static_paths:
            raise ValueError("static_variables needs static_paths (the files that hold them)")
        if self.random_alignment and (self.coarse_paths is not None or self.target == "regression_residual"):
            raise ValueError(
                "random_alignment shifts the coarse lattice of the fine fields' block means: it needs coarse_paths "
                "null and target fine or residual"
            )
        if self.random_windows:
            self._check_random_windows()
        elif self.remainder == "keep":
            raise ValueError(
                "remainder: keep is for random_windows (windows of whole blocks anywhere on the grid); a model of "
                "the whole grid needs it divisible by coarsen_factor: trim or error"
            )
        both = set(self.static_variables) & set(self.variables)
        if both:
            raise ValueError(f"{', '.join(sorted(both))} is both a variable and a static variable")
        given = [
            (name, period, period_bounds(period))
            for name in ("train_period", "validation_period", "test_period")
            for period in getattr(self, name) or []
        ]
        for i, (name_a, period_a, (start_a, end_a)) in enumerate(given):
            for name_b, period_b, (start_b, end_b) in given[i + 1 :]:
                if start_a <= end_b and start_b <= end_a:
                    raise ValueError(f"{name_a} {list(period_a)} overlaps {name_b} {list(period_b)}")
        if self.patch is not None and self.crop is not None:
            for size, window, axis in zip(self.patch, (self.crop.lat, self.crop.lon), ("lat", "lon"), strict=True):
                if window is not None and size > window[1] - window[0]:
                    raise ValueError(f"patch {list(self.patch)} is larger than the crop's {axis} window {list(window)}")
        return self

    def _check_random_windows(self) -> None:
        """random_windows needs patches of whole coarse blocks cut from fine fields it coarsens itself."""
        if self.patch is None:
            raise ValueError("random_windows needs patch: [height, width] of the training windows")
        factor = self.coarsen_factor
        if any(size % factor for size in self.patch):
            raise ValueError(
                f"random_windows: patch {list(self.patch)} must be whole coarse blocks (multiples of coarsen_factor "
                f"{factor})"
            )
        if self.coarse_paths is not None or self.target == "regression_residual":
            raise ValueError(
                "random_windows coarsens each window's own fine fields: it needs coarse_paths null and target "
                "fine or residual"
            )
        if self.random_alignment:
            raise ValueError("random_windows and random_alignment exclude each other: choose one")

    def with_absolute_paths(self, base: str | os.PathLike[str] | None = None) -> ClimateData:
        """A copy whose file paths (and regression run) are absolute, relative ones resolved against ``base``
        (default: the working directory), so that a run directory's stored configuration works from anywhere
        (globs stay globs). A shipped run stores its bundled files by name, resolved against its directory."""

        def absolute(path: str) -> str:
            return os.path.abspath(path if base is None else os.path.join(base, path))

        update: dict[str, Any] = {
            "paths": [absolute(path) for path in self.paths],
            "static_paths": [absolute(path) for path in self.static_paths],
        }
        if self.coarse_paths is not None:
            update["coarse_paths"] = [absolute(path) for path in self.coarse_paths]
        if self.regression_run is not None:
            update["regression_run"] = absolute(self.regression_run)
        return self.model_copy(update=update)

    # -- what follows from the section without reading files ----------------------------------------------
    def period(self, split: Split) -> tuple[np.datetime64, np.datetime64] | None:
        """(first, last) instants of ``split`` (inclusive; of several periods, the span from the first start to
        the last end, less :meth:`excluded_periods`); None for an unset train period (then the train split is
        every time outside the validation and test periods).

        Raises:
            ValueError: ``split`` is validation or test and its period is not set.
        """
        periods = getattr(self, f"{split}_period")
        if periods is None:
            if split == "train":
                return None
            raise ValueError(f"data.{split}_period is not set; give [first, last] ISO dates to use the {split} split")
        bounds = [period_bounds(period) for period in periods]
        return min(start for start, _ in bounds), max(end for _, end in bounds)

    def excluded_periods(self, split: Split) -> list[tuple[np.datetime64, np.datetime64]]:
        """Periods whose times ``split`` must leave out: for a train split without its own period, the
        validation and test periods; for a split of several periods, the gaps between them (open intervals
        given as the instants just after one period's end and just before the next one's start); nothing
        otherwise."""
        periods = getattr(self, f"{split}_period")
        if periods is None:
            if split != "train":
                return []
            return [
                period_bounds(p) for name in ("validation_period", "test_period") for p in getattr(self, name) or []
            ]
        bounds = sorted(period_bounds(period) for period in periods)
        gaps = []
        for (_, end), (start, _) in itertools.pairwise(bounds):
            if start - end > _ONE_NS:
                gaps.append((end + _ONE_NS, start - _ONE_NS))
        return gaps

    def cond_channel_names(self) -> list[str]:
        """Names of the conditioning channels, in order: the upsampled coarse variables, the statics, then
        latitude/longitude and time channels (as the dataset builds them)."""
        from diffscale.data.climate.channels import LATLON_NAMES, time_channel_names

        names = [f"{name}_coarse" for name in self.variables] + list(self.static_variables)
        if self.channels.latlon:
            names += LATLON_NAMES
        names += time_channel_names(self.channels.hour, self.channels.day_of_year)
        return names

    @property
    def cond_channels(self) -> int:
        """K, the number of conditioning channels (``cond_fields`` (B, K, H, W))."""
        return len(self.cond_channel_names())

    def sample_shape(self) -> tuple[int, int, int] | None:
        """(C, h, w) of a training target when known without reading files (a patch, or a crop of both axes,
        less the surplus that ``remainder: trim`` drops); None otherwise (then it is the dataset's ``shape``)."""
        if self.patch is not None:
            return (len(self.variables), *self.patch)
        if self.crop is not None and self.crop.lat is not None and self.crop.lon is not None:
            height, width = self.crop.lat[1] - self.crop.lat[0], self.crop.lon[1] - self.crop.lon[0]
            if self.remainder == "trim":
                height, width = height - height % self.coarsen_factor, width - width % self.coarsen_factor
            return (len(self.variables), height, width)
        return None
