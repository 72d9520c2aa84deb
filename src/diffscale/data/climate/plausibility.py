"""Physical plausibility of climate fields: the range a variable can take, checked on inputs before any work and
counted on outputs.

A variable is found in :data:`PHYSICAL_RANGES` by its name (ERA5 short names ``t2m``, ``msl``, ``tp``, ...; CMIP
names ``tas``, ``psl``, ``pr``, ...) or else by its CF ``standard_name`` attribute. Each entry holds a range
[lo, hi] on one quantity's scale of :mod:`~diffscale.data.climate.units` in its base unit (K, Pa, m, m s-1, 1) and
is put in a field's units u through that scale: lo_u = (lo - b_u) / a_u (x_base = a_u x_u + b_u), so 170..340 K is
-103.15..66.85 in degC and 0..1 is 0..100 in %. A few quantities the units module does not convert (geopotential
in m2 s-2, specific humidity in kg kg-1, radiation in W m-2) list their own spellings.

The ranges are those of the variable anywhere on Earth with a margin (the record values lie inside them), so a
value outside is not weather but a mistake: usually a field in other units than its ``units`` attribute says
(2 m temperature in degC labelled K: -20 .. 31 "K"), a sign, or a scaling. Precipitation and the other
non-negative amounts have lo = 0.

Inputs (:func:`check_plausible`): the minimum and maximum of every time over the grid (NaNs ignored: masked
cells, e.g. the sea of ERA5-Land, are NaN) must lie in [lo - tau, hi + tau], tau = 1e-6 (hi - lo) (float32
rounding of a value on a bound); else one ConfigError line names the variable, the first time, the value furthest
out there and the range, and says how to fix the units attribute. A variable not in the table, or in units its
entry does not know, is not checked (logged once per process and variable).

Outputs (:func:`count_outside`): values outside [lo, hi] (no tolerance) are counted; the ensemble writers record
the count per variable (:data:`RANGE_ATTRIBUTE`, :data:`OUTSIDE_COUNT_ATTRIBUTE`) and downscaling reports it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from diffscale.data.climate.series import format_time
from diffscale.data.climate.units import UNITS, normalise_units
from diffscale.validation import ConfigError

__all__ = [
    "OUTSIDE_COUNT_ATTRIBUTE",
    "OUTSIDE_FRACTION_ATTRIBUTE",
    "PHYSICAL_RANGES",
    "RANGE_ATTRIBUTE",
    "STANDARD_NAMES",
    "OutputRangeWarning",
    "PhysicalRange",
    "check_extremes",
    "check_plausible",
    "count_outside",
    "output_range",
    "outside_lines",
    "outside_report",
    "physical_range",
    "range_in_units",
    "time_extremes",
    "warn_outside",
]

logger = logging.getLogger(__name__)

RANGE_ATTRIBUTE = "plausible_range"
"""Variable attribute of an ensemble: [lo, hi] in the variable's units (the values a member may take)."""
OUTSIDE_COUNT_ATTRIBUTE = "outside_plausible_range_count"
"""Variable attribute of an ensemble: how many of its values lie outside :data:`RANGE_ATTRIBUTE`."""
OUTSIDE_FRACTION_ATTRIBUTE = "outside_plausible_range_fraction"
"""Variable attribute of an ensemble: that count over the number of values."""
INPUT_TOLERANCE = 1e-6
"""Inputs may exceed a bound by this fraction of the range's width (float32 rounding of a value on a bound)."""


class OutputRangeWarning(UserWarning):
    """Members hold values outside their variable's plausible range (one line; the command prints it as
    ``warning: ...``)."""


@dataclass(frozen=True)
class PhysicalRange:
    """[low, high] of a variable in ``base_units``, on the scale of ``quantity`` (a quantity of
    :data:`~diffscale.data.climate.units.UNITS`, or one known only through ``spellings``)."""

    description: str
    quantity: str
    base_units: str
    low: float
    high: float
    spellings: Mapping[str, float] = field(default_factory=dict)
    """Further normalised units spellings -> a with x_base = a x (quantities the units module does not convert)."""


_TEMPERATURE = (170.0, 340.0)
_SST = (265.0, 320.0)
_GEOPOTENTIAL = {"m2 s-2": 1.0, "m2/s2": 1.0, "j kg-1": 1.0}
_SPECIFIC = {"kg kg-1": 1.0, "kg/kg": 1.0, "1": 1.0, "g kg-1": 1e-3, "g/kg": 1e-3}
_FLUX = {"w m-2": 1.0, "w/m2": 1.0}
_ENERGY = {"j m-2": 1.0, "j/m2": 1.0}


def _table() -> dict[str, PhysicalRange]:
    table: dict[str, PhysicalRange] = {}

    def add(names: Sequence[str], entry: PhysicalRange) -> None:
        for name in names:
            table[name] = entry

    add(
        ("t2m", "tas", "tasmax", "tasmin", "ta", "t"),
        PhysicalRange("air temperature", "temperature", "K", *_TEMPERATURE),
    )
    add(("d2m", "tdps"), PhysicalRange("dew point temperature", "temperature", "K", *_TEMPERATURE))
    add(("skt", "ts"), PhysicalRange("surface temperature", "temperature", "K", *_TEMPERATURE))
    add(("sst", "tos"), PhysicalRange("sea surface temperature", "temperature", "K", *_SST))
    add(("msl", "psl"), PhysicalRange("mean sea level pressure", "pressure", "Pa", 85000.0, 110000.0))
    add(("sp", "ps"), PhysicalRange("surface pressure", "pressure", "Pa", 30000.0, 110000.0))
    add(
        ("u10", "v10", "uas", "vas", "u100", "v100", "u", "v"),
        PhysicalRange("wind component", "length per second", "m s-1", -150.0, 150.0),
    )
    add(("ws10", "sfcwind", "sfcWind", "si10"), PhysicalRange("wind speed", "length per second", "m s-1", 0.0, 150.0))
    add(("i10fg", "fg10", "wsgsmax"), PhysicalRange("wind gust", "length per second", "m s-1", 0.0, 150.0))
    add(("tp", "cp", "lsp", "pr_amount"), PhysicalRange("precipitation amount", "length", "m", 0.0, 2.0))
    add(("pr", "prc", "prsn"), PhysicalRange("precipitation rate", "length per second", "m s-1", 0.0, 1e-3))
    add(("r", "hurs", "rh", "rh2m", "hur"), PhysicalRange("relative humidity", "fraction", "1", 0.0, 1.1))
    add(("q", "huss", "hus"), PhysicalRange("specific humidity", "specific humidity", "kg kg-1", 0.0, 0.05, _SPECIFIC))
    add(("tcc", "clt", "lcc", "mcc", "hcc"), PhysicalRange("cloud cover", "fraction", "1", 0.0, 1.0))
    add(("ci", "siconc", "sic"), PhysicalRange("sea ice fraction", "fraction", "1", 0.0, 1.0))
    add(("lsm", "sftlf"), PhysicalRange("land fraction", "fraction", "1", 0.0, 1.0))
    add(("z", "orog_geopotential"), PhysicalRange("geopotential", "geopotential", "m2 s-2", -1e4, 5e5, _GEOPOTENTIAL))
    add(("zg", "orog"), PhysicalRange("geopotential height", "length", "m", -1000.0, 50000.0))
    add(("sd", "snw_depth"), PhysicalRange("snow depth (water equivalent)", "length", "m", 0.0, 100.0))
    add(("rsds", "rlds", "rsus", "rlus"), PhysicalRange("radiative flux", "flux", "W m-2", 0.0, 1500.0, _FLUX))
    add(("ssrd", "strd"), PhysicalRange("accumulated radiation", "energy", "J m-2", 0.0, 1.2e8, _ENERGY))
    return table


PHYSICAL_RANGES: dict[str, PhysicalRange] = _table()
"""Variable name (ERA5 or CMIP) -> its range."""

STANDARD_NAMES: dict[str, str] = {
    "air_temperature": "t2m",
    "dew_point_temperature": "d2m",
    "surface_temperature": "skt",
    "sea_surface_temperature": "sst",
    "air_pressure_at_mean_sea_level": "msl",
    "air_pressure_at_sea_level": "msl",
    "surface_air_pressure": "sp",
    "eastward_wind": "u10",
    "northward_wind": "v10",
    "wind_speed": "ws10",
    "wind_speed_of_gust": "i10fg",
    "lwe_thickness_of_precipitation_amount": "tp",
    "precipitation_amount": "tp",
    "precipitation_flux": "pr",
    "relative_humidity": "hurs",
    "specific_humidity": "huss",
    "cloud_area_fraction": "tcc",
    "sea_ice_area_fraction": "siconc",
    "land_area_fraction": "lsm",
    "geopotential": "z",
    "geopotential_height": "zg",
    "surface_downwelling_shortwave_flux_in_air": "rsds",
}
"""CF standard name -> the entry of :data:`PHYSICAL_RANGES` it stands for (when the variable's name is not one)."""

_UNCHECKED_REPORTED: set[tuple[str, str]] = set()


def physical_range(variable: str, attrs: Mapping[str, Any] | None = None) -> PhysicalRange | None:
    """The range of ``variable`` by its name, else by its ``standard_name`` attribute; None when neither is known.

    A precipitation whose units are a rate (``mm d-1``, ``kg m-2 s-1``) takes the rate entry whatever its name,
    and an amount (``m``, ``mm``) the amount entry: ERA5-Land's daily ``tp`` is in mm d-1."""
    attrs = attrs or {}
    entry = PHYSICAL_RANGES.get(variable)
    if entry is None:
        standard = str(attrs.get("standard_name", "")).strip()
        entry = PHYSICAL_RANGES.get(STANDARD_NAMES.get(standard, ""))
    if entry is not None and entry.description.startswith("precipitation"):
        units = normalise_units(str(attrs.get("units", "")))
        quantity = UNITS.get(units, ("",))[0]
        if quantity.startswith("length per "):
            rates = {
                "length per second": (1e-3, "m s-1"),
                "length per hour": (0.5, "m h-1"),
                "length per day": (2.0, "m d-1"),
            }
            high, base = rates[quantity]
            entry = PhysicalRange("precipitation rate", quantity, base, 0.0, high)
        elif quantity == "length":
            entry = PHYSICAL_RANGES["tp"]
    return entry


def range_in_units(entry: PhysicalRange, units: str | None) -> tuple[float, float] | None:
    """[lo, hi] of ``entry`` in ``units`` (module docstring), or None when the units are not on its scale."""
    if units is None or not str(units).strip():
        return None
    spelling = normalise_units(str(units))
    if spelling in entry.spellings:
        scale, offset = entry.spellings[spelling], 0.0
    elif spelling in UNITS and UNITS[spelling][0] == entry.quantity:
        _, scale, offset = UNITS[spelling]
    else:
        return None
    low, high = ((bound - offset) / scale for bound in (entry.low, entry.high))
    return (min(low, high), max(low, high))


def output_range(variable: str, attrs: Mapping[str, Any]) -> tuple[float, float] | None:
    """[lo, hi] of ``variable`` in its ``units`` attribute, or None when it is not known (not checked)."""
    entry = physical_range(variable, attrs)
    return None if entry is None else range_in_units(entry, attrs.get("units"))


def _report_unchecked(variable: str, reason: str) -> None:
    if (variable, reason) not in _UNCHECKED_REPORTED:
        _UNCHECKED_REPORTED.add((variable, reason))
        logger.info("variable %r: %s; its values are not checked for physical plausibility", variable, reason)


def _format_value(value: float) -> str:
    return f"{value:.6g}"


def time_extremes(data: Any, dims: Sequence[str]) -> tuple[Any, Any]:
    """(minimum, maximum) per time of ``data`` (dims ``dims``, one of them ``time``) over the other axes, NaNs
    ignored (NaN for a time that is all NaN): dask arrays stay lazy, anything else is computed with numpy."""
    import dask.array as da

    axes = tuple(axis for axis, dim in enumerate(dims) if dim != "time")
    if isinstance(data, da.Array):
        return da.nanmin(data, axis=axes), da.nanmax(data, axis=axes)
    values = np.asarray(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN time gives NaN, which passes
        return np.nanmin(values, axis=axes), np.nanmax(values, axis=axes)


def check_extremes(
    variable: str,
    attrs: Mapping[str, Any],
    times: Any,
    minima: Any,
    maxima: Any,
    source: str,
) -> None:
    """ConfigError when a time's minimum or maximum lies outside the plausible range of ``variable`` (in its
    ``units`` attribute; module docstring): one line naming ``source``, the variable, the first such time, the
    value furthest out there and the range. A variable with no known range is logged once and passes."""
    entry = physical_range(variable, attrs)
    if entry is None:
        _report_unchecked(variable, "not in the table of physical ranges")
        return
    units = attrs.get("units")
    bounds = range_in_units(entry, units)
    if bounds is None:
        reason = "no units attribute" if units is None else f"units {units!r} are not units of {entry.description}"
        _report_unchecked(variable, reason)
        return
    low, high = bounds
    tolerance = INPUT_TOLERANCE * (high - low)
    minima = np.atleast_1d(np.asarray(minima, dtype=np.float64))
    maxima = np.atleast_1d(np.asarray(maxima, dtype=np.float64))
    below = minima < low - tolerance
    above = maxima > high + tolerance
    bad = below | above
    if not bad.any():
        return
    first = int(np.argmax(bad))
    value = minima[first] if below[first] else maxima[first]
    if below[first] and above[first] and (maxima[first] - high) > (low - minima[first]):
        value = maxima[first]
    time_values = np.atleast_1d(np.asarray(times))
    when = f" at time {format_time(time_values[first])}" if time_values.size == bad.size else ""
    units_text = f" {units}" if units else ""
    raise ConfigError(
        f"{source}: variable {variable!r} holds {_format_value(value)}{units_text}{when}, outside the plausible "
        f"range of {entry.description}, {_format_value(low)} to {_format_value(high)}{units_text} "
        f"({int(bad.sum())} of {bad.size} times affected); if the values are in other units, set the variable's "
        "units attribute to those units (e.g. degC, hPa, mm) and they are converted"
    )


def check_plausible(ds: xr.Dataset, variables: Sequence[str], source: str) -> None:
    """:func:`check_extremes` of every variable of ``ds`` (lazy or loaded), computed in one pass."""
    import dask
    import dask.array as da

    extremes = [time_extremes(ds[name].data, ds[name].dims) for name in variables]
    if any(isinstance(part, da.Array) for pair in extremes for part in pair):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
            extremes = dask.compute(*extremes, scheduler="threads", pool=pool)
    times = ds["time"].values if "time" in ds.coords else np.array([])
    for name, (minima, maxima) in zip(variables, extremes, strict=True):
        check_extremes(name, ds[name].attrs, times, minima, maxima, source)


def count_outside(values: Any, bounds: tuple[float, float]) -> int:
    """How many finite values lie outside [lo, hi] (no tolerance; NaNs are not counted)."""
    array = np.asarray(values)
    low, high = bounds
    return int(np.count_nonzero((array < low) | (array > high)))


def outside_report(variable: str, count: int, total: int, bounds: tuple[float, float], units: str = "") -> str:
    """One line: ``count`` of ``total`` values of ``variable`` outside ``bounds``."""
    share = 100.0 * count / total if total else math.nan
    units_text = f" {units}" if units else ""
    return (
        f"variable {variable!r}: {count} of {total} member values ({share:.3g} %) lie outside the plausible range "
        f"{_format_value(bounds[0])} to {_format_value(bounds[1])}{units_text}; they are written as sampled "
        f"(the count is the variable's attribute {OUTSIDE_COUNT_ATTRIBUTE})"
    )


def outside_lines(dataset: xr.Dataset) -> list[str]:
    """One line (:func:`outside_report`) per variable of an ensemble whose values outside its plausible range
    were counted (attribute :data:`OUTSIDE_COUNT_ATTRIBUTE`) and are not 0."""
    lines = []
    for name, variable in dataset.data_vars.items():
        count = variable.attrs.get(OUTSIDE_COUNT_ATTRIBUTE)
        bounds = variable.attrs.get(RANGE_ATTRIBUTE)
        if count is None or bounds is None or int(count) == 0:
            continue
        low, high = (float(value) for value in np.asarray(bounds).ravel()[:2])
        lines.append(
            outside_report(str(name), int(count), int(variable.size), (low, high), variable.attrs.get("units", ""))
        )
    return lines


def warn_outside(dataset: xr.Dataset) -> None:
    """An :class:`OutputRangeWarning` per line of :func:`outside_lines`."""
    for line in outside_lines(dataset):
        warnings.warn(line, OutputRangeWarning, stacklevel=3)
