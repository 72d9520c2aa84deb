"""diffscale.data.climate.units: fields converted to the training units through their units attribute (known
factors and offsets), left untouched in the same units, refused in one line otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from diffscale.data.climate.units import convert_units, normalise_units, units_conversion
from diffscale.validation import ConfigError


def dataset(values: np.ndarray, units: str | None, name: str = "t2m") -> xr.Dataset:
    attrs = {} if units is None else {"units": units}
    return xr.Dataset({name: (("latitude", "longitude"), values, attrs)})


@pytest.mark.parametrize(
    ("given", "expected", "x", "y"),
    [
        ("degC", "K", 0.0, 273.15),
        ("deg_C", "K", -40.0, 233.15),
        ("Celsius", "kelvin", 100.0, 373.15),
        ("degrees Celsius", "K", 15.0, 288.15),
        ("°C", "K", 1.0, 274.15),
        ("K", "degC", 300.0, 26.85),
        ("m", "mm", 0.0125, 12.5),
        ("mm", "m", 12.5, 0.0125),
        ("kg m**-2", "m", 3.0, 0.003),
        ("mm d-1", "m day-1", 4.0, 0.004),
        ("kg m-2 s-1", "m s-1", 2.0, 0.002),
        ("Pa", "hPa", 101325.0, 1013.25),
        ("hPa", "Pa", 1013.25, 101325.0),
        ("mbar", "kPa", 1000.0, 100.0),
        ("%", "(0 - 1)", 40.0, 0.4),
    ],
)
def test_known_conversions(given: str, expected: str, x: float, y: float) -> None:
    scale, offset = units_conversion("v", given, expected)
    assert scale * x + offset == pytest.approx(y, rel=1e-12, abs=1e-12)
    converted = convert_units(dataset(np.full((2, 3), x), given, "v"), {"v": expected})
    np.testing.assert_allclose(converted["v"].values, y, rtol=1e-12, atol=1e-12)
    assert converted["v"].attrs["units"] == expected and converted["v"].attrs["original_units"] == given


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("m s**-1", "m s-1"),
        ("m/s", "m s-1"),
        ("m s^-1", "M S-1"),
        ("m.s-1", "m s**-1"),
        ("K", "kelvin"),
        ("degC", "degrees_Celsius"),
        ("(0 - 1)", "1"),
        ("mm d-1", "mm/day"),
        ("kg m-2", "mm"),
        ("kg m-2 s-1", "mm/s"),
        ("furlongs", "furlongs"),
        (None, None),
    ],
)
def test_spellings_of_one_unit_leave_the_values_untouched(given: str | None, expected: str | None) -> None:
    assert units_conversion("v", given, expected) is None
    ds = dataset(np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32), given, "v")
    assert convert_units(ds, {"v": expected}) is ds  # the same object: bitwise unchanged


@pytest.mark.parametrize(
    ("given", "expected", "reason"),
    [
        ("mm d-1", "mm h-1", "length per day and length per hour are different quantities"),
        ("m", "mm d-1", "length and length per day are different quantities"),
        ("K", "Pa", "temperature and pressure are different quantities"),
        ("degF", "K", "unknown units 'degF'"),
        ("m2 s-2", "m", "unknown units 'm2 s-2'"),
    ],
)
def test_ambiguous_or_unknown_units_are_refused_in_one_line(given: str, expected: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        convert_units(dataset(np.zeros((2, 2)), given, "tp"), {"tp": expected}, source="coarse fields")
    message = str(error.value)
    assert message == (
        f"coarse fields: variable 'tp' is in {given!r}, expected {expected!r}: no unambiguous conversion ({reason})"
    )
    assert "\n" not in message


def test_a_missing_units_attribute_is_refused_when_units_are_expected() -> None:
    with pytest.raises(ConfigError, match=r"variable 't2m': the input has no units attribute, expected 'K'"):
        convert_units(dataset(np.zeros((2, 2)), None), {"t2m": "K"})
    with pytest.raises(ConfigError, match=r"variable 't2m': the input is in 'K', the expected units are not known"):
        units_conversion("t2m", "K", None)
    ds = dataset(np.zeros((2, 2)), "degC")
    assert convert_units(ds, {"t2m": None}) is ds  # nothing recorded (an older run): nothing to check
    assert convert_units(ds, {}) is ds


def test_only_the_named_variables_change_and_dtypes_are_kept() -> None:
    ds = xr.Dataset(
        {
            "t2m": (("latitude", "longitude"), np.array([[0.0, 10.0]], dtype=np.float32), {"units": "degC"}),
            "msl": (("latitude", "longitude"), np.array([[1000.0, 990.0]]), {"units": "hPa"}),
            "tp": (("latitude", "longitude"), np.array([[1, 2]], dtype=np.int16), {"units": "mm"}),
        }
    )
    out = convert_units(ds, {"t2m": "K", "msl": "Pa", "tp": "m"}, variables=["t2m", "tp"])
    assert out["t2m"].dtype == np.float32 and out["tp"].dtype == np.float64
    np.testing.assert_allclose(out["t2m"].values, [[273.15, 283.15]], rtol=1e-7)
    np.testing.assert_allclose(out["tp"].values, [[0.001, 0.002]], rtol=1e-12)
    assert out["msl"] is not None and out["msl"].attrs["units"] == "hPa"  # not among the variables
    np.testing.assert_array_equal(out["msl"].values, ds["msl"].values)


def test_normalise_units() -> None:
    assert normalise_units(" m  s**-1 ") == "m s-1"
    assert normalise_units("kg m^-2") == "kg m-2"
    assert normalise_units("(0 - 1)") == "(0-1)"
    assert normalise_units("mm / day") == "mm/day"
