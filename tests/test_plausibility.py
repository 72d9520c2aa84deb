"""Physical plausibility (diffscale.data.climate.plausibility): the ranges in a field's units, the one-line refusal
of inputs outside them (2 m temperature in degC labelled K), NaN cells, variables not in the table, and the
ensemble writers' count of output values outside the range (negative precipitation)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffscale.data.climate.plausibility import (
    OUTSIDE_COUNT_ATTRIBUTE,
    OUTSIDE_FRACTION_ATTRIBUTE,
    RANGE_ATTRIBUTE,
    OutputRangeWarning,
    check_plausible,
    output_range,
    physical_range,
    range_in_units,
    warn_outside,
)
from diffscale.downscaling import EnsembleWriter, MemoryEnsembleWriter, ZarrEnsembleWriter, merge_parts, part_path
from diffscale.validation import ConfigError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMES = np.arange("2019-03-01T00", "2019-03-01T04", dtype="datetime64[h]")
LATITUDE = np.array([50.0, 50.25, 50.5])
LONGITUDE = np.array([0.0, 0.25, 0.5, 0.75])


def _fields(name: str, values: np.ndarray, **attrs: str) -> xr.Dataset:
    return xr.Dataset(
        {name: (("time", "latitude", "longitude"), values, attrs)},
        coords={"time": TIMES[: values.shape[0]], "latitude": LATITUDE, "longitude": LONGITUDE},
    )


def _celsius(rng: np.random.Generator) -> np.ndarray:
    """2 m temperatures of a winter-to-summer range in degC: -20 .. 31."""
    return rng.uniform(-20.0, 31.0, size=(4, 3, 4))


def test_temperature_in_celsius_labelled_kelvin_is_refused_in_one_line_naming_variable_time_value_and_range() -> None:
    values = _celsius(np.random.default_rng(0))
    values[0] = 280.0  # the first time is fine: the message names the second, and its lowest value
    with pytest.raises(ConfigError) as raised:
        check_plausible(_fields("t2m", values, units="K"), ["t2m"], "coarse fields")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"coarse fields: variable 't2m' holds {values[1].min():.6g} K at time 2019-03-01T01:00")
    assert "plausible range of air temperature, 170 to 340 K (3 of 4 times affected)" in message
    assert "set the variable's units attribute" in message and "degC" in message


def test_the_same_values_labelled_celsius_pass_and_valid_kelvin_passes() -> None:
    values = _celsius(np.random.default_rng(1))
    check_plausible(_fields("t2m", values, units="degC"), ["t2m"], "coarse fields")
    check_plausible(_fields("tas", values + 273.15, units="K"), ["tas"], "coarse fields")
    # the range in degC is the K range shifted by 273.15; the bounds themselves pass
    assert range_in_units(physical_range("t2m"), "degC") == pytest.approx((170 - 273.15, 340 - 273.15))
    check_plausible(_fields("t2m", np.full((2, 3, 4), 340.0), units="K"), ["t2m"], "x")


def test_ranges_follow_the_units_pressure_humidity_and_precipitation_rates() -> None:
    assert output_range("msl", {"units": "hPa"}) == pytest.approx((850.0, 1100.0))
    assert output_range("hurs", {"units": "%"}) == pytest.approx((0.0, 110.0))
    assert output_range("r", {"units": "1"}) == pytest.approx((0.0, 1.1))
    assert output_range("tp", {"units": "m"}) == (0.0, 2.0)
    assert output_range("tp", {"units": "mm"}) == pytest.approx((0.0, 2000.0))
    assert output_range("tp", {"units": "mm d-1"}) == pytest.approx((0.0, 2000.0))  # ERA5-Land's daily tp: a rate
    assert output_range("pr", {"units": "kg m-2 s-1"}) == pytest.approx((0.0, 1.0))
    assert output_range("z", {"units": "m**2 s**-2"}) == (-1e4, 5e5)
    # a name not in the table is found by its standard name
    assert output_range("temperature_2m", {"units": "K", "standard_name": "air_temperature"}) == (170.0, 340.0)
    # msl in Pa labelled hPa: 101325 hPa is refused
    with pytest.raises(ConfigError, match=r"'msl' holds 101325 hPa at .* 850 to 1100 hPa"):
        check_plausible(_fields("msl", np.full((2, 3, 4), 101325.0), units="hPa"), ["msl"], "coarse fields")


def test_negative_precipitation_input_is_refused_but_float_rounding_on_the_bound_passes() -> None:
    values = np.zeros((2, 3, 4))
    values[1, 0, 0] = -1e-9  # within 1e-6 of the range's width (2 m)
    check_plausible(_fields("tp", values, units="m"), ["tp"], "x")
    values[1, 0, 0] = -0.001
    with pytest.raises(ConfigError, match=r"'tp' holds -0\.001 m at time 2019-03-01T01:00"):
        check_plausible(_fields("tp", values, units="m"), ["tp"], "x")


def test_nan_cells_are_ignored_and_lazy_fields_are_checked_alike() -> None:
    values = np.full((4, 3, 4), 285.0)
    values[:, 0, :2] = np.nan  # masked sea cells, e.g. ERA5-Land
    values[2] = np.nan  # a time that is all sea
    dataset = _fields("t2m", values, units="K")
    check_plausible(dataset, ["t2m"], "x")
    check_plausible(dataset.chunk({"time": 1}), ["t2m"], "x")
    values[3, 2, 3] = 12.0
    with pytest.raises(ConfigError, match=r"'t2m' holds 12 K at time 2019-03-01T03:00, .*\(1 of 4 times affected\)"):
        check_plausible(_fields("t2m", values, units="K").chunk({"time": 2}), ["t2m"], "x")


def test_unknown_variables_and_unknown_units_are_not_checked_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    crazy = np.full((2, 3, 4), -1e6)
    with caplog.at_level(logging.INFO, logger="diffscale.data.climate.plausibility"):
        for _ in range(2):
            check_plausible(_fields("my_index", crazy, units="K"), ["my_index"], "x")
            check_plausible(_fields("t2m", crazy, units="furlong"), ["t2m"], "x")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "variable 'my_index': not in the table of physical ranges; its values are not checked for physical "
        "plausibility",
        "variable 't2m': units 'furlong' are not units of air temperature; its values are not checked for physical "
        "plausibility",
    ]


@pytest.mark.skipif(not (DATA / "era5land_quebec_1970_daily.nc").is_file(), reason="shared ERA5 data not present")
def test_real_era5_and_era5_land_fields_pass() -> None:
    for name in ("era5land_quebec_1970_daily.nc", "era5_global_1deg_2026-03.nc", "era5_t2m_uk_2019-03.nc"):
        with xr.open_dataset(DATA / name, chunks={}) as dataset:
            check_plausible(dataset, [str(v) for v in dataset.data_vars], name)


# -- outputs -------------------------------------------------------------------------------------------------------
def _precipitation_layout(members: int = 3) -> dict:
    bounds = output_range("tp", {"units": "m"})
    return dict(
        latitude=LATITUDE,
        longitude=LONGITUDE,
        times=TIMES,
        num_members=members,
        variables={
            "tp": {"units": "m", "standard_name": "precipitation_amount", RANGE_ATTRIBUTE: list(bounds)},
            "t2m": {"units": "K"},  # no range given: not counted
        },
    )


def _precipitation(rng: np.random.Generator, members: int = 3) -> np.ndarray:
    """(M, T, H, W) precipitation near 0 with some negative values, as a standardized model samples it."""
    return rng.normal(0.001, 0.002, size=(members, TIMES.size, LATITUDE.size, LONGITUDE.size))


def _write_all(writer: EnsembleWriter, values: np.ndarray, members: range | None = None) -> None:
    members = members if members is not None else range(values.shape[0])
    for time in range(TIMES.size):
        writer.write("tp", members, time, values[members.start : members.stop, time])
        writer.write("t2m", members, time, np.full((len(members), 3, 4), 280.0))


@pytest.mark.parametrize("kind", ["netcdf", "zarr", "memory"])
def test_negative_precipitation_members_are_counted_and_recorded(kind: str, tmp_path: Path) -> None:
    values = _precipitation(np.random.default_rng(2))
    expected = int((values.astype(np.float32) < 0).sum())
    assert expected > 0
    if kind == "memory":
        writer: EnsembleWriter = MemoryEnsembleWriter(**_precipitation_layout())
    elif kind == "zarr":
        writer = ZarrEnsembleWriter(tmp_path / "e.zarr", **_precipitation_layout())
    else:
        writer = EnsembleWriter(tmp_path / "e.nc", **_precipitation_layout())
    with writer:
        _write_all(writer, values)
        # a slab written again replaces its count: the total stays that of the values in the output
        writer.write("tp", range(0, 3), 0, values[:, 0])
        assert writer.outside_counts == {"tp": expected}
    if kind == "memory":
        dataset = writer.dataset
    elif kind == "zarr":
        dataset = xr.open_zarr(tmp_path / "e.zarr")
    else:
        dataset = xr.open_dataset(tmp_path / "e.nc")
    with dataset:
        attrs = dataset["tp"].attrs
        assert int(attrs[OUTSIDE_COUNT_ATTRIBUTE]) == expected == int((dataset["tp"] < 0).sum())
        assert float(attrs[OUTSIDE_FRACTION_ATTRIBUTE]) == pytest.approx(expected / values.size)
        assert list(np.asarray(attrs[RANGE_ATTRIBUTE])) == [0.0, 2.0]
        assert OUTSIDE_COUNT_ATTRIBUTE not in dataset["t2m"].attrs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warn_outside(dataset)
    assert len(caught) == 1 and caught[0].category is OutputRangeWarning
    assert str(caught[0].message) == (
        f"variable 'tp': {expected} of {values.size} member values ({100 * expected / values.size:.3g} %) lie outside "
        f"the plausible range 0 to 2 m; they are written as sampled (the count is the variable's attribute "
        f"{OUTSIDE_COUNT_ATTRIBUTE})"
    )


def test_merged_rank_parts_record_the_count_of_the_whole_ensemble(tmp_path: Path) -> None:
    values = _precipitation(np.random.default_rng(3), members=4)
    out = tmp_path / "e.nc"
    parts = [part_path(out, rank, 2) for rank in range(2)]
    for rank, part in enumerate(parts):
        with EnsembleWriter(part, part=(rank, 2), **_precipitation_layout(4)) as writer:
            _write_all(writer, values, range(2 * rank, 2 * rank + 2))
        with xr.open_dataset(part) as written:  # a part records no count (the merge counts the whole)
            assert OUTSIDE_COUNT_ATTRIBUTE not in written["tp"].attrs
    merge_parts(parts, out)
    with xr.open_dataset(out) as merged:
        assert int(merged["tp"].attrs[OUTSIDE_COUNT_ATTRIBUTE]) == int((values.astype(np.float32) < 0).sum())


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_an_output_completed_from_a_resumable_store_records_the_count_of_every_block(
    suffix: str, tmp_path: Path
) -> None:
    """A resumable run writes into a store that is completed at the end (moved into place, or written out as
    netCDF): the output counts the values of every block, those written before an interruption too."""
    from diffscale.downscaling.resumable import complete_state, create_state, read_state, record_done

    values = _precipitation(np.random.default_rng(4))
    out = tmp_path / f"e{suffix}"
    layout = _precipitation_layout()
    state = create_state(out, layout, {"test": True}, total=2)
    # two blocks written by two writers (as by an interrupted run and its resume): neither saw the whole
    for block, members in enumerate((range(0, 1), range(1, 3))):
        with ZarrEnsembleWriter(out, store=state.store, create=False, overwrite=True, **layout) as writer:
            _write_all(writer, values, members)
        record_done(state.store, 0, 1, range(block + 1))
    state = read_state(out)
    assert state is not None and state.complete
    complete_state(state, layout)
    opened = xr.open_zarr(out) if suffix == ".zarr" else xr.open_dataset(out)
    with opened as dataset:
        expected = int((values.astype(np.float32) < 0).sum())
        assert expected > 0
        assert int(dataset["tp"].attrs[OUTSIDE_COUNT_ATTRIBUTE]) == expected == int((dataset["tp"] < 0).sum())
        assert float(dataset["tp"].attrs[OUTSIDE_FRACTION_ATTRIBUTE]) == pytest.approx(expected / values.size)
        assert OUTSIDE_COUNT_ATTRIBUTE not in dataset["t2m"].attrs


def test_a_bad_plausible_range_attribute_is_refused() -> None:
    layout = _precipitation_layout()
    layout["variables"]["tp"][RANGE_ATTRIBUTE] = [2.0, 0.0]
    with pytest.raises(ConfigError, match=r"attribute plausible_range = .* must be \[low, high\] numbers"):
        MemoryEnsembleWriter(**layout)
