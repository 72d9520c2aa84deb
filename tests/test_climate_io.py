"""diffscale.data.climate.io: reading netCDF/zarr/GRIB and harmonising names, coordinates and orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.data.climate.io import STANDARD_GRAVITY, canonical_variable, harmonise, open_fields
from diffscale.validation import ConfigError

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data directory ../shared/data is absent")


def plane(latitude: np.ndarray, longitude: np.ndarray, times: int = 3) -> np.ndarray:
    """A field whose value encodes its own position: 1000 t + 10 lat + lon (lon in [-180, 180))."""
    lon = ((longitude + 180.0) % 360.0) - 180.0
    return (1000.0 * np.arange(times)[:, None, None] + 10.0 * latitude[None, :, None] + lon[None, None, :]).astype(
        np.float32
    )


def raw_dataset(
    name: str = "2m_temperature",
    latitude: np.ndarray | None = None,
    longitude: np.ndarray | None = None,
    lat_name: str = "lat",
    lon_name: str = "lon",
    time_name: str = "valid_time",
    times: int = 3,
) -> xr.Dataset:
    """A file-like dataset: descending latitude, 0..360 longitude, non-canonical names."""
    latitude = np.arange(60.0, 39.0, -2.0) if latitude is None else latitude
    longitude = np.arange(0.0, 360.0, 30.0) if longitude is None else longitude
    time = pd.date_range("2020-01-01", periods=times, freq="6h").values
    return xr.Dataset(
        {name: ((time_name, lat_name, lon_name), plane(latitude, longitude, times), {"units": "K"})},
        coords={time_name: time, lat_name: latitude, lon_name: longitude},
    )


def test_canonical_names_of_common_aliases() -> None:
    for alias in ("t2m", "2t", "2m_temperature", "VAR_2T", "tas"):
        assert canonical_variable(alias) == "t2m"
    assert canonical_variable("10m_u_component_of_wind") == "u10"
    assert canonical_variable("total_precipitation") == "tp"
    assert canonical_variable("my_field") == "my_field"


def test_harmonise_orients_renames_and_keeps_values_at_their_coordinates() -> None:
    ds = harmonise(raw_dataset())
    assert list(ds.data_vars) == ["t2m"]
    assert ds["t2m"].dims == ("time", "latitude", "longitude")
    latitude, longitude = ds["latitude"].values, ds["longitude"].values
    assert np.all(np.diff(latitude) > 0) and latitude[0] == 40.0
    np.testing.assert_array_equal(longitude, np.arange(-180.0, 180.0, 30.0))
    expected = plane(latitude, longitude)  # the value still sits at the coordinate it encodes
    np.testing.assert_array_equal(ds["t2m"].values, expected)
    assert ds["t2m"].attrs["source_name"] == "2m_temperature"
    again = harmonise(ds)
    xr.testing.assert_identical(again, ds)


def test_regional_domain_across_the_date_line_stays_contiguous_in_0_360() -> None:
    longitude = np.array([170.0, 175.0, 180.0, -175.0, -170.0])  # written in -180..180, crossing the date line
    ds = harmonise(raw_dataset(longitude=longitude))
    np.testing.assert_array_equal(ds["longitude"].values, [170.0, 175.0, 180.0, 185.0, 190.0])
    np.testing.assert_array_equal(ds["t2m"].values, plane(ds["latitude"].values, ds["longitude"].values))


def test_regional_domain_across_greenwich_goes_to_minus_180_180() -> None:
    longitude = np.array([350.0, 355.0, 0.0, 5.0])
    ds = harmonise(raw_dataset(longitude=longitude))
    np.testing.assert_array_equal(ds["longitude"].values, [-10.0, -5.0, 0.0, 5.0])


def test_duplicate_wrap_column_is_dropped() -> None:
    ds = harmonise(raw_dataset(longitude=np.arange(0.0, 361.0, 90.0)))  # 0 and 360 both present
    np.testing.assert_array_equal(ds["longitude"].values, [-180.0, -90.0, 0.0, 90.0])


def test_geopotential_becomes_orography_in_metres_and_percent_mask_a_fraction() -> None:
    latitude, longitude = np.array([10.0, 0.0]), np.array([0.0, 1.0])
    ds = xr.Dataset(
        {
            "z": (("latitude", "longitude"), np.full((2, 2), 9806.65), {"units": "m**2 s**-2"}),
            "sftlf": (("latitude", "longitude"), np.full((2, 2), 50.0), {"units": "%"}),
        },
        coords={"latitude": latitude, "longitude": longitude},
    )
    out = harmonise(ds)
    np.testing.assert_allclose(out["orography"].values, 9806.65 / STANDARD_GRAVITY)
    np.testing.assert_allclose(out["orography"].values, 1000.0)
    assert out["orography"].attrs["units"] == "m"
    np.testing.assert_allclose(out["lsm"].values, 0.5)
    assert "time" not in out.dims


def test_orography_already_in_metres_is_kept() -> None:
    ds = xr.Dataset(
        {"orog": (("lat", "lon"), np.full((2, 2), 300.0), {"units": "m"})},
        coords={"lat": [0.0, 1.0], "lon": [0.0, 1.0]},
    )
    np.testing.assert_allclose(harmonise(ds)["orography"].values, 300.0)


def test_time_and_axis_spellings() -> None:
    ds = harmonise(raw_dataset(name="tas", lat_name="latitude", lon_name="longitude", time_name="t"))
    assert set(ds.dims) == {"time", "latitude", "longitude"}
    xy = raw_dataset(lat_name="y", lon_name="x")
    xy["y"].attrs["units"] = "degrees_north"
    xy["x"].attrs["units"] = "degrees_east"
    assert set(harmonise(xy).dims) == {"time", "latitude", "longitude"}
    bare = raw_dataset(lat_name="y", lon_name="x")  # x/y without degree units are not taken for lat/lon
    with pytest.raises(ConfigError, match="no latitude coordinate"):
        harmonise(bare)


def test_netcdf_and_zarr_round_trips_match_in_memory_harmonisation(tmp_path: Path) -> None:
    raw = raw_dataset()
    expected = harmonise(raw).load()
    raw.to_netcdf(tmp_path / "fields.nc")
    raw.to_zarr(tmp_path / "fields.zarr", consolidated=False)
    for name in ("fields.nc", "fields.zarr"):
        ds = open_fields(tmp_path / name, variables=["t2m"])
        assert ds["t2m"].chunks is not None  # lazy (dask)
        xr.testing.assert_allclose(ds.load(), expected)


def test_files_combine_along_time_and_select_a_period(tmp_path: Path) -> None:
    raw = raw_dataset(times=6)
    raw.isel(valid_time=slice(3, 6)).to_netcdf(tmp_path / "b.nc")
    raw.isel(valid_time=slice(0, 3)).to_netcdf(tmp_path / "a.nc")
    ds = open_fields(str(tmp_path / "*.nc"), ["2m_temperature"])
    np.testing.assert_array_equal(ds["time"].values, raw["valid_time"].values)
    np.testing.assert_array_equal(ds["t2m"].values[:, 0, 0], 1000.0 * np.arange(6) + 400.0 - 180.0)
    window = open_fields([tmp_path / "a.nc", tmp_path / "b.nc"], time_slice=("2020-01-01T06", "2020-01-01T12"))
    assert window.sizes["time"] == 2


def test_overlapping_files_are_refused(tmp_path: Path) -> None:
    raw = raw_dataset(times=4)
    raw.isel(valid_time=slice(0, 3)).to_netcdf(tmp_path / "a.nc")
    raw.isel(valid_time=slice(2, 4)).to_netcdf(tmp_path / "b.nc")
    with pytest.raises(ConfigError, match="more than one"):
        open_fields([tmp_path / "a.nc", tmp_path / "b.nc"])


def test_bad_input_messages(tmp_path: Path) -> None:
    raw_dataset(name="VAR_2T").to_netcdf(tmp_path / "a.nc")
    with pytest.raises(ConfigError, match=r"variable 'tp' not in .*a\.nc; it has: t2m \(VAR_2T\)"):
        open_fields(tmp_path / "a.nc", ["tp"])
    with pytest.raises(ConfigError, match=r"not found: .*missing\.nc"):
        open_fields(tmp_path / "missing.nc")
    with pytest.raises(ConfigError, match="no file matches"):
        open_fields(str(tmp_path / "*.grib"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"unknown file type '\.txt'"):
        open_fields(tmp_path / "a.txt")
    (tmp_path / "broken.nc").write_text("not netcdf")
    with pytest.raises(ConfigError, match=r"cannot read .*broken\.nc"):
        open_fields(tmp_path / "broken.nc")


@needs_data
def test_grib_and_netcdf_give_identical_fields() -> None:
    nc = open_fields(DATA / "era5_t2m_uk_2019-03.nc", ["t2m"], time_slice=("2019-03-02", "2019-03-02"))
    grib = open_fields(DATA / "era5_t2m_uk_2019-03.grib", ["2t"], time_slice=("2019-03-02", "2019-03-02"))
    assert nc.sizes == {"time": 24, "latitude": 33, "longitude": 49}
    xr.testing.assert_equal(nc[["t2m"]].load(), grib[["t2m"]].load())
    assert nc["latitude"].values[0] == 50.0 and nc["longitude"].values[0] == -10.0


@needs_data
def test_global_statics_line_up_with_the_t2m_grid_after_the_longitude_roll() -> None:
    statics = open_fields(DATA / "era5_orography_lsm_global.nc", ["z", "lsm"])
    t2m = open_fields(DATA / "era5_t2m_uk_2019-03.nc", ["t2m"])
    assert statics["longitude"].values[0] == -180.0 and statics["latitude"].values[0] == -90.0
    sub = statics.sel(latitude=t2m["latitude"], longitude=t2m["longitude"])  # exact labels: they line up
    raw = xr.open_dataset(DATA / "era5_orography_lsm_global.nc")  # the file as written: lat 90 -> -90, lon 0..360
    rows = np.round((90.0 - t2m["latitude"].values) / 0.25).astype(int)
    cols = np.round((t2m["longitude"].values % 360.0) / 0.25).astype(int)
    np.testing.assert_allclose(sub["orography"].values[0], raw["z"].values[0][np.ix_(rows, cols)] / 9.80665, rtol=1e-12)
    np.testing.assert_array_equal(sub["lsm"].values[0], raw["lsm"].values[0][np.ix_(rows, cols)])


def test_a_pickle_codec_in_a_zarr_store_is_refused_before_reading() -> None:
    import numcodecs

    from diffscale.data.climate.io import _without_pickled_arrays

    ds = xr.Dataset({"t2m": (("time",), np.zeros(2, np.float32)), "note": (("time",), np.array(["a", "b"], object))})
    assert _without_pickled_arrays(ds, Path("ok.zarr")) is ds  # strings (vlen codecs) are fine
    ds["note"].encoding = {"filters": [numcodecs.Pickle()]}
    with pytest.raises(ConfigError, match="'note' is stored with the pickle codec"):
        _without_pickled_arrays(ds, Path("bad.zarr"))


def test_bad_time_bounds_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "fine.nc"
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), np.zeros((2, 2, 2), np.float32))},
        coords={
            "time": np.array(["2019-03-01", "2019-03-02"], "datetime64[ns]"),
            "latitude": [0.0, 1.0],
            "longitude": [0.0, 1.0],
        },
    ).to_netcdf(path)
    with pytest.raises(ConfigError, match="not ISO dates"):
        open_fields(path, ["t2m"], time_slice=("yesterday", None))


def test_source_units_win_over_the_table() -> None:
    from diffscale.data.climate.cf import cf_attributes

    assert cf_attributes("t2m", {"units": "K"})["standard_name"] == "air_temperature"
    precipitation_rate = cf_attributes("tp", {"units": "kg m-2 s-1", "standard_name": "precipitation_flux"})
    assert precipitation_rate == {"units": "kg m-2 s-1", "long_name": "tp", "standard_name": "precipitation_flux"}


def test_a_long_file_without_chunks_is_opened_a_few_times_per_dask_chunk(tmp_path: Path) -> None:
    """A netCDF file stored contiguously is one dask chunk by its own chunks (read whole for any time of it);
    with chunk_bytes it is cut along time into chunks of about that size."""
    path = tmp_path / "long.nc"
    xr.Dataset(
        {"t": (("valid_time", "lat", "lon"), np.zeros((50, 4, 8), np.float32))},  # 128 bytes per time
        coords={
            "valid_time": pd.date_range("2000-01-01", periods=50, freq="h").values,
            "lat": np.arange(4.0),
            "lon": np.arange(8.0),
        },
    ).to_netcdf(path)
    assert open_fields(path, ["t"])["t"].chunks[0] == (50,)
    assert open_fields(path, ["t"], chunk_bytes=1280)["t"].chunks[0] == (10,) * 5
