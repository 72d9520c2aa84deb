"""diffscale.data.climate.regrid: static fields onto the data grid, checked against closed forms (bilinear
reproduces a + b phi + c lambda + d phi lambda), exact copies where the grids line up, and scipy's linear
interpolation of the real global orography on the real (offset) Italy grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from diffscale.data.climate.io import harmonise, open_fields
from diffscale.data.climate.regrid import regrid_bilinear, regridding_method
from diffscale.validation import ConfigError

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data directory ../shared/data is absent")


def source(latitude: np.ndarray, longitude: np.ndarray, values: np.ndarray, dtype: type = np.float64) -> xr.Dataset:
    return xr.Dataset(
        {"orography": (("latitude", "longitude"), values.astype(dtype), {"units": "m"})},
        coords={"latitude": latitude, "longitude": longitude},
    )


def bilinear_field(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """a + b phi + c lambda + d phi lambda, which bilinear interpolation reproduces exactly."""
    phi, lam = np.meshgrid(latitude, longitude, indexing="ij")
    return 120.0 + 3.0 * phi - 1.5 * lam + 0.04 * phi * lam


def test_a_bilinear_field_is_reproduced_on_an_offset_grid() -> None:
    lat, lon = np.arange(30.0, 60.01, 0.25), np.arange(-20.0, 30.01, 0.25)
    target_lat, target_lon = np.arange(36.4, 46.91, 0.25), np.arange(6.57, 18.33, 0.25)
    out = regrid_bilinear(source(lat, lon, bilinear_field(lat, lon)), target_lat, target_lon)
    assert out.attrs["regridding"] == "bilinear" and out["orography"].attrs == {"units": "m"}
    np.testing.assert_allclose(out["orography"].values, bilinear_field(target_lat, target_lon), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(out["longitude"].values, target_lon)
    assert regridding_method(source(lat, lon, bilinear_field(lat, lon)), target_lat, target_lon) == "bilinear"
    # a point strictly inside one cell: the four-corner formula written out
    values = np.random.default_rng(0).normal(size=(lat.size, lon.size))
    one = regrid_bilinear(source(lat, lon, values), [40.1], [0.05])["orography"].values[0, 0]
    u, v, i, j = 0.4, 0.2, 40, 80  # 40.1 = lat[40] + 0.4 x 0.25; 0.05 = lon[80] + 0.2 x 0.25
    corners = (1 - u) * (1 - v) * values[i, j] + u * (1 - v) * values[i + 1, j]
    corners += (1 - u) * v * values[i, j + 1] + u * v * values[i + 1, j + 1]
    assert one == pytest.approx(corners, abs=1e-12)


def test_coinciding_points_are_copied_bitwise() -> None:
    lat, lon = np.arange(-90.0, 90.01, 0.25), np.arange(0.0, 360.0, 0.25)
    values = np.random.default_rng(1).normal(size=(lat.size, lon.size)).astype(np.float32)
    target_lat = np.arange(50.0, 58.01, 0.25)
    target_lon = np.arange(-10.0, 2.01, 0.25)  # across Greenwich on a 0..359.75 source
    out = regrid_bilinear(source(lat, lon, values, np.float32), target_lat, target_lon)
    rows = np.round((target_lat + 90.0) / 0.25).astype(int)
    cols = np.round((target_lon % 360.0) / 0.25).astype(int)
    assert out.attrs["regridding"] == "exact" and out["orography"].dtype == np.float32
    np.testing.assert_array_equal(out["orography"].values, values[np.ix_(rows, cols)])
    # one axis coinciding, the other not: the coinciding rows are still copied, the columns interpolated
    half = regrid_bilinear(source(lat, lon, values, np.float32), target_lat, target_lon + 0.125)
    expected = 0.5 * (values[np.ix_(rows, cols)].astype(np.float64) + values[np.ix_(rows, (cols + 1) % 1440)])
    np.testing.assert_allclose(half["orography"].values, expected, rtol=1e-6)
    # float32 rounding of a coordinate (here 1e-5 degrees) still counts as the same point
    nudged = regrid_bilinear(source(lat, lon, values, np.float32), target_lat + 1e-5, target_lon)
    assert nudged.attrs["regridding"] == "exact"


@pytest.mark.parametrize("start", [0.0, -180.0])
def test_global_sources_wrap_round_in_longitude(start: float) -> None:
    lat, lon = np.arange(-10.0, 10.01, 1.0), np.arange(start, start + 360.0, 1.0)

    def field(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        # linear in latitude and in the longitude measured from 90 W: continuous at 0 and at 180
        phi, lam = np.meshgrid(latitude, (np.asarray(longitude) + 90.0) % 360.0, indexing="ij")
        return 5.0 + 0.5 * phi + 0.1 * lam + 0.01 * phi * lam

    ds = source(lat, lon, field(lat, lon))
    for target_lon in (np.arange(-10.25, 2.0, 0.5), np.arange(170.25, 190.0, 0.5), np.arange(359.25, 362.0, 0.5)):
        out = regrid_bilinear(ds, [-0.5, 0.3], target_lon)
        np.testing.assert_allclose(out["orography"].values, field([-0.5, 0.3], target_lon), rtol=0, atol=1e-9)
    # the seam of the source itself: halfway between its last and first columns
    values = np.random.default_rng(2).normal(size=(lat.size, lon.size))
    seam = regrid_bilinear(source(lat, lon, values), [0.0], [start + 359.5])["orography"].values[0, 0]
    assert seam == pytest.approx(0.5 * (values[10, -1] + values[10, 0]), abs=1e-14)


def test_a_domain_that_is_not_covered_is_refused_naming_the_range() -> None:
    lat, lon = np.arange(30.0, 60.01, 0.5), np.arange(-20.0, 30.01, 0.5)
    ds = source(lat, lon, bilinear_field(lat, lon))
    with pytest.raises(ConfigError) as error:
        regrid_bilinear(ds, np.arange(25.5, 40.0, 1.0), np.arange(0.0, 10.0))
    message = str(error.value)
    assert message == (
        "static fields do not cover the data grid: latitude 25.5 .. 29.5 (5 of 15 rows) lies outside their "
        "latitude 30 .. 60"
    )
    with pytest.raises(
        ConfigError, match=r"longitude 30\.5 .. 34\.5 \(5 of 15 columns\) lies outside their longitude -20 .. 30"
    ):
        regrid_bilinear(ds, [40.0], np.arange(20.5, 35.0, 1.0))
    # longitudes are compared modulo 360: 340 is the source's first column -20, 339.5 lies outside
    at_edge = regrid_bilinear(ds, [40.0], [340.0])
    np.testing.assert_array_equal(at_edge["orography"].values, ds["orography"].values[20:21, :1])
    with pytest.raises(ConfigError, match=r"longitude 339\.5 \.\. 339\.5 \(1 of 1 columns\)"):
        regrid_bilinear(ds, [40.0], [339.5])
    assert "\n" not in message


@needs_data
def test_real_global_orography_on_the_offset_italy_grid() -> None:
    italy = open_fields(DATA / "era5_t2m_italy_2022-05-06_3h.nc", ["t2m"])
    statics = open_fields(DATA / "era5_orography_lsm_global.nc", ["orography", "lsm"]).isel(time=0, drop=True)
    latitude, longitude = italy["latitude"].values, italy["longitude"].values
    out = regrid_bilinear(statics, latitude, longitude)
    assert out.attrs["regridding"] == "bilinear" and out["orography"].shape == (43, 48)
    # the reference: scipy's linear interpolation of the raw file (latitude descending there, 0..359.75)
    raw = xr.open_dataset(DATA / "era5_orography_lsm_global.nc")
    for name, raw_name, scale in (("orography", "z", 1 / 9.80665), ("lsm", "lsm", 1.0)):
        values = raw[raw_name].values[0, ::-1].astype(np.float64) * scale
        interpolator = RegularGridInterpolator((raw["latitude"].values[::-1], raw["longitude"].values), values)
        points = np.stack(np.meshgrid(latitude, longitude % 360.0, indexing="ij"), axis=-1)
        np.testing.assert_allclose(out[name].values, interpolator(points), rtol=1e-12, atol=1e-9)
    # the same file on the UK grid, which lies on its lattice: an exact copy
    uk = harmonise(xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc"))
    exact = regrid_bilinear(statics, uk["latitude"].values, uk["longitude"].values)
    assert exact.attrs["regridding"] == "exact"
    rows = np.round((90.0 - uk["latitude"].values) / 0.25).astype(int)
    cols = np.round((uk["longitude"].values % 360.0) / 0.25).astype(int)
    np.testing.assert_array_equal(exact["lsm"].values, raw["lsm"].values[0][np.ix_(rows, cols)])
