"""Units of climate fields: a field in other units than the model was trained in is converted through its
``units`` attribute when the conversion is unambiguous, and refused otherwise; it is never used as it is.

Each known spelling of a unit is a point x_base = a x + b on one quantity's scale (:data:`UNITS`):

* temperature [K]: K (kelvin), degC (deg_C, Celsius, degrees Celsius, ...): x_K = x_degC + 273.15;
* length, e.g. of water (precipitation) [m]: m, mm, and kg m-2 (a mass of water per area: 1 kg m-2 = 1 mm,
  density 1000 kg m-3);
* length per second, hour, day [m s-1, m h-1, m d-1]: m, mm (and kg m-2) per unit time; wind speed is a
  length per second (m s-1, m s**-1, m/s, ...). A rate per day and a rate per hour are different quantities
  here: they describe accumulations over different periods, whose distributions differ (a daily total is not
  24 hourly values), so they are not converted into each other;
* pressure [Pa]: Pa, hPa (mbar, millibar), kPa;
* fraction [1]: 1, 0-1, (0 - 1), fraction, and % (x_1 = x_% / 100).

:func:`convert_units` maps x (units u) to units v by x_v = (a_u x + b_u - b_v) / a_v when u and v are on one
quantity's scale. The same spelling (after normalising case and blanks), or two spellings of one unit, leave
the values untouched (bitwise). Anything else where u and v differ (unknown spellings, different quantities,
a missing attribute) is a one-line ConfigError naming the variable, its units and the expected ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from diffscale.validation import ConfigError

__all__ = ["UNITS", "convert_units", "normalise_units", "units_conversion"]

ZERO_CELSIUS_K = 273.15

_DEPTH = {"m": 1.0, "mm": 1e-3, "kg m-2": 1e-3}
_PER_TIME = {"s": "second", "h": "hour", "d": "day"}
_TIME_SPELLINGS = {
    "s": ("s-1", "/s", "/sec", " per second"),
    "h": ("h-1", "hr-1", "hour-1", "/h", "/hr", "/hour", " per hour"),
    "d": ("d-1", "day-1", "/d", "/day", " per day"),
}
_DEPTH_SPELLINGS = {
    "m": ("m", "metre", "metres", "meter", "meters", "m of water equivalent", "m water equivalent"),
    "mm": ("mm", "millimetre", "millimetres", "millimeter", "millimeters"),
    "kg m-2": ("kg m-2", "kg/m2", "kg/m^2"),
}


def _build_table() -> dict[str, tuple[str, float, float]]:
    table: dict[str, tuple[str, float, float]] = {}
    for spelling in ("k", "kelvin", "kelvins", "deg_k", "degk", "degree_kelvin", "degrees_kelvin"):
        table[spelling] = ("temperature", 1.0, 0.0)
    for spelling in (
        "degc",
        "deg_c",
        "deg c",
        "celsius",
        "degree_c",
        "degrees_c",
        "degree c",
        "degrees c",
        "degree celsius",
        "degrees celsius",
        "degree_celsius",
        "degrees_celsius",
        "°c",
        "℃",
    ):
        table[spelling] = ("temperature", 1.0, ZERO_CELSIUS_K)
    for unit, spellings in _DEPTH_SPELLINGS.items():
        for spelling in spellings:
            table[spelling] = ("length", _DEPTH[unit], 0.0)
            for period, suffixes in _TIME_SPELLINGS.items():
                quantity = f"length per {_PER_TIME[period]}"
                for suffix in suffixes:
                    table[f"{spelling} {suffix}".replace("  ", " ").replace(" /", "/")] = (quantity, _DEPTH[unit], 0.0)
    for spelling in ("pa", "pascal", "pascals"):
        table[spelling] = ("pressure", 1.0, 0.0)
    for spelling in ("hpa", "mbar", "millibar", "millibars"):
        table[spelling] = ("pressure", 100.0, 0.0)
    table["kpa"] = ("pressure", 1000.0, 0.0)
    for spelling in ("1", "0-1", "(0-1)", "fraction", "dimensionless"):
        table[spelling] = ("fraction", 1.0, 0.0)
    for spelling in ("%", "percent"):
        table[spelling] = ("fraction", 0.01, 0.0)
    return table


UNITS: dict[str, tuple[str, float, float]] = _build_table()
"""Normalised spelling -> (quantity, a, b) with x_base = a x + b (module docstring)."""


def normalise_units(units: str) -> str:
    """A units string in one spelling: lower case, single blanks, exponents as ``-1`` (``m s**-1``, ``m s^-1``,
    ``m.s-1`` -> ``m s-1``), blanks around ``/`` and ``-`` in ``0 - 1`` removed."""
    text = str(units).strip().lower()
    text = text.replace("**", "").replace("^", "")
    text = re.sub(r"(?<=[a-z])\.(?=[a-z])", " ", text)  # m.s-1
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*/\s*", "/", text)
    text = re.sub(r"(?<=\d)\s*-\s*(?=\d)", "-", text)  # 0 - 1
    text = re.sub(r"\(\s*", "(", re.sub(r"\s*\)", ")", text))
    return text


def units_conversion(variable: str, given: str | None, expected: str | None) -> tuple[float, float] | None:
    """(scale, offset) with x_expected = scale x_given + offset, or None when the values stay as they are
    (the same units, or both unknown).

    Raises:
        ConfigError: the units differ and the conversion is not known (one line naming ``variable``, ``given``
            and ``expected``).
    """
    if given is None and expected is None:
        return None
    if given is None or expected is None:
        missing, other = ("the input has no units attribute", f"expected {expected!r}")
        if expected is None:
            missing, other = (f"the input is in {given!r}", "the expected units are not known")
        raise ConfigError(f"variable {variable!r}: {missing}, {other}; set the units attribute to convert")
    a, b = normalise_units(given), normalise_units(expected)
    if a == b:
        return None
    if a in UNITS and b in UNITS and UNITS[a][0] == UNITS[b][0]:
        _, scale_a, offset_a = UNITS[a]
        _, scale_b, offset_b = UNITS[b]
        if scale_a == scale_b and offset_a == offset_b:
            return None
        return scale_a / scale_b, (offset_a - offset_b) / scale_b
    if a in UNITS and b in UNITS:
        reason = f"{UNITS[a][0]} and {UNITS[b][0]} are different quantities"
    else:
        unknown = [text for text, norm in ((given, a), (expected, b)) if norm not in UNITS]
        reason = f"unknown units {', '.join(map(repr, unknown))}"
    raise ConfigError(
        f"variable {variable!r} is in {given!r}, expected {expected!r}: no unambiguous conversion ({reason})"
    )


def _units_of(attrs: Mapping[str, Any]) -> str | None:
    units = attrs.get("units")
    return None if units is None or str(units).strip() == "" else str(units)


def convert_units(
    ds: xr.Dataset, expected: Mapping[str, str | None], variables: Sequence[str] | None = None, source: str = ""
) -> xr.Dataset:
    """``ds`` with each of ``variables`` (default: those in ``expected``) in the units ``expected[name]``
    (module docstring); variables already in them (or without expected units: an older run) are the same
    objects, untouched. Converted variables carry the expected ``units`` attribute.

    Raises:
        ConfigError: a conversion is not known (the message starts with ``source``).
    """
    names = list(expected) if variables is None else list(variables)
    converted = {}
    for name in names:
        if name not in ds or expected.get(name) is None:
            continue
        try:
            conversion = units_conversion(name, _units_of(ds[name].attrs), expected[name])
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}" if source else str(error)) from None
        if conversion is None:
            continue
        scale, offset = conversion
        variable = ds[name]
        dtype = variable.dtype if variable.dtype.kind == "f" else np.dtype(np.float64)
        values = (variable.astype(np.float64) * scale + offset).astype(dtype)
        values.attrs = {**variable.attrs, "units": expected[name], "original_units": _units_of(variable.attrs)}
        converted[name] = values
    return ds.assign(converted) if converted else ds
