"""diffscale.data.climate.regrid: static fields onto the data grid, checked against closed forms (bilinear
reproduces a + b phi + c lambda + d phi lambda), exact copies where the grids line up, and scipy's linear
interpolation of the real global orography on the real (offset) Italy grid; coarse inputs from other grids
(diffscale.data.climate.coarse_regrid): the area mean kept by conservative regridding on regular, offset,
Gaussian and GCM grids, closed-form cell means of 3 + sin(phi) + cos(lambda), CF bounds, the coverage message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from diffscale.data.climate.coarse_regrid import plan_regridding, source_grid
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


# -- coarse inputs from other grids: conservative and bilinear regridding onto a lattice --------------------------
def gaussian_latitudes(count: int) -> np.ndarray:
    """The latitudes of a Gaussian grid: arcsin of the Gauss-Legendre nodes (unevenly spaced, no pole rows)."""
    nodes, _ = np.polynomial.legendre.leggauss(count)
    return np.rad2deg(np.arcsin(nodes))


SOURCE_GRIDS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "regular 1 deg": (np.arange(-89.5, 90.0, 1.0), np.arange(0.5, 360.0, 1.0)),
    "offset 1 deg with pole rows": (np.arange(-90.0, 90.01, 1.0), np.arange(0.0, 360.0, 1.0)),
    "Gaussian-like T63": (gaussian_latitudes(96), np.arange(0.0, 360.0, 1.875)),
    "GCM-like 1.25 x 0.9375": (np.linspace(-90 + 0.9375 / 2, 90 - 0.9375 / 2, 192), np.arange(0.0, 360.0, 1.25)),
}


def gridded(latitude: np.ndarray, longitude: np.ndarray, values: np.ndarray, descending: bool, convention: str):
    """A raw coarse input (times, latitude, longitude) as a provider may write it: latitude descending or not,
    longitude in 0..360 or -180..180 (rolled so that it ascends)."""
    if convention == "-180..180":
        wrapped = (longitude + 180.0) % 360.0 - 180.0
        order = np.argsort(wrapped)
        longitude, values = wrapped[order], values[..., order]
    if descending:
        latitude, values = latitude[::-1], values[..., ::-1, :]
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
        coords={"time": np.arange(values.shape[0]), "latitude": latitude, "longitude": longitude},
    )


def area_mean(values: np.ndarray, latitude_edges: np.ndarray, longitude_edges: np.ndarray) -> np.ndarray:
    """sum_ij |C_ij| x_ij / sum_ij |C_ij| over the last two axes, |C_ij| = (sin phi_i+ - sin phi_i-) (lambda_j+ -
    lambda_j-)."""
    areas = np.diff(np.sin(np.deg2rad(latitude_edges)))[:, None] * np.diff(longitude_edges)[None, :]
    return (values * areas).sum(axis=(-2, -1)) / areas.sum()


def cell_means(latitude_edges: np.ndarray, longitude_edges: np.ndarray) -> np.ndarray:
    """The exact area mean over each cell of f = 3 + sin(phi) + cos(lambda):
    3 + (sin phi- + sin phi+) / 2 + (sin lambda+ - sin lambda-) / (lambda+ - lambda-) (radians)."""
    phi, lam = np.deg2rad(latitude_edges), np.deg2rad(longitude_edges)
    rows = (np.sin(phi[:-1]) + np.sin(phi[1:])) / 2.0
    columns = (np.sin(lam[1:]) - np.sin(lam[:-1])) / np.diff(lam)
    return 3.0 + rows[:, None] + columns[None, :]


def regrid_to(dataset: xr.Dataset, latitude: np.ndarray, longitude: np.ndarray, method: str = "conservative"):
    fields = harmonise(dataset)
    plan = plan_regridding(source_grid(fields, dataset), latitude, longitude, method)
    return fields, plan, plan.apply(fields)


@pytest.mark.parametrize("convention", ["0..360", "-180..180"])
@pytest.mark.parametrize("descending", [False, True], ids=["south-north", "north-south"])
@pytest.mark.parametrize("grid", SOURCE_GRIDS)
def test_conservative_regridding_preserves_the_global_area_mean(grid: str, descending: bool, convention: str):
    latitude, longitude = SOURCE_GRIDS[grid]
    values = np.random.default_rng(3).normal(280.0, 10.0, size=(2, latitude.size, longitude.size))
    dataset = gridded(latitude, longitude, values, descending, convention)
    target_latitude, target_longitude = np.arange(-88.5, 90.0, 3.0), np.arange(-178.0, 180.0, 4.0)  # 3 x 4 deg
    fields, plan, out = regrid_to(dataset, target_latitude, target_longitude)
    source = plan.source
    assert source.periodic and out["t2m"].shape == (2, 60, 90)
    before = area_mean(fields["t2m"].values, source.latitude_edges, source.longitude_edges)
    after = area_mean(out["t2m"].values, np.arange(-90.0, 90.1, 3.0), np.arange(-180.0, 180.1, 4.0))
    np.testing.assert_allclose(after, before, rtol=1e-6)
    # a constant stays that constant at every cell
    constant = dataset.assign(t2m=dataset["t2m"] * 0.0 + 287.25)
    np.testing.assert_allclose(regrid_to(constant, target_latitude, target_longitude)[2]["t2m"].values, 287.25, 1e-12)


@pytest.mark.parametrize("convention", ["0..360", "-180..180"])
def test_a_regional_target_across_the_periodic_seam_keeps_the_closed_form_mean(convention: str) -> None:
    """GCM-like 1.25 deg source whose seam (its last and first columns, edge -0.625) lies inside the target; the
    target's outer edges are source edges, so the integral over it is the analytic one of f = 3 + sin phi + cos
    lambda, whose cell means the source holds exactly."""
    latitude, longitude = SOURCE_GRIDS["GCM-like 1.25 x 0.9375"]
    source_lat_edges = np.linspace(-90.0, 90.0, 193)
    values = cell_means(source_lat_edges, np.arange(-0.625, 359.4, 1.25))[None]
    dataset = gridded(latitude, longitude, values, True, convention)
    # 1 deg latitude cells over [40.3125, 55.3125] (source edges: -90 + 139 x 0.9375, + 16 x 0.9375), 2 deg longitude
    # cells over [-10.625, 9.375] (source edges), the inner edges of neither falling on the source's
    target_latitude = np.arange(40.8125, 55.0, 1.0)
    target_longitude = np.arange(-9.625, 9.0, 2.0)
    _, plan, out = regrid_to(dataset, target_latitude, target_longitude)
    assert out["t2m"].shape == (1, 15, 10) and -0.625 in plan.source.longitude_edges
    lat_edges, lon_edges = np.arange(40.3125, 55.4, 1.0), np.arange(-10.625, 9.4, 2.0)
    a, b = np.deg2rad(lat_edges[[0, -1]])
    l0, l1 = np.deg2rad(lon_edges[[0, -1]])
    analytic = 3.0 + (np.sin(a) + np.sin(b)) / 2.0 + (np.sin(l1) - np.sin(l0)) / (l1 - l0)
    assert area_mean(out["t2m"].values[0], lat_edges, lon_edges) == pytest.approx(analytic, rel=1e-12)
    # nested cells (every target edge a source edge: 2 x 2 source cells each) take the exact cell means
    nested_latitude = -90.0 + 0.9375 * (np.arange(140, 160, 2) + 1.0)
    nested_longitude = np.arange(-9.375, 9.0, 2.5)
    out = regrid_to(dataset, nested_latitude, nested_longitude)[2]
    expected = cell_means(-90.0 + 0.9375 * np.arange(140, 161, 2), np.arange(-10.625, 9.4, 2.5))
    np.testing.assert_allclose(out["t2m"].values[0], expected, rtol=1e-13)


def test_cf_bounds_give_the_cells_and_uneven_grids_keep_the_area_mean() -> None:
    """Cells from CF bounds (here not the midpoints: the centres sit off-centre in their cells)."""
    lat_edges = np.array([40.0, 41.0, 43.0, 44.5, 47.0, 50.0])
    lon_edges = np.array([350.0, 352.0, 354.5, 356.5, 358.5, 361.0])
    latitude = lat_edges[:-1] + 0.25 * np.diff(lat_edges)
    longitude = lon_edges[:-1] + 0.75 * np.diff(lon_edges)
    values = cell_means(lat_edges, lon_edges)[None]
    dataset = gridded(latitude, longitude, values, True, "0..360")
    dataset = dataset.assign(
        lat_bnds=(("latitude", "bnds"), np.stack([lat_edges[1:], lat_edges[:-1]], axis=1)[::-1]),
        lon_bnds=(("longitude", "bnds"), np.stack([lon_edges[:-1], lon_edges[1:]], axis=1)),
    )
    dataset["latitude"].attrs["bounds"] = "lat_bnds"
    dataset["longitude"].attrs["bounds"] = "lon_bnds"
    target_latitude, target_longitude = np.arange(40.5, 50.0, 1.0), np.arange(-9.5, 1.0, 1.0)
    _, plan, out = regrid_to(dataset, target_latitude, target_longitude)
    np.testing.assert_allclose(plan.source.latitude_edges, lat_edges)
    np.testing.assert_allclose(plan.source.longitude_edges, lon_edges - 360.0)
    assert "CF bounds (lat_bnds, lon_bnds)" in plan.source.describe()
    analytic = cell_means(lat_edges[[0, -1]], lon_edges[[0, -1]])[0, 0]
    after = area_mean(out["t2m"].values[0], np.arange(40.0, 50.1, 1.0), np.arange(-10.0, 1.1, 1.0))
    assert after == pytest.approx(analytic, rel=1e-12)


def test_bilinear_regridding_of_coarse_inputs_is_exact_on_affine_fields() -> None:
    latitude, longitude = SOURCE_GRIDS["GCM-like 1.25 x 0.9375"]
    values = bilinear_field(latitude, (longitude + 180.0) % 360.0 - 180.0)[None]
    dataset = gridded(latitude, longitude, values, True, "-180..180")
    target_latitude, target_longitude = np.arange(50.375, 58.0, 1.0), np.arange(-9.625, 2.0, 1.0)
    out = regrid_to(dataset, target_latitude, target_longitude, "bilinear")[2]
    np.testing.assert_allclose(out["t2m"].values[0], bilinear_field(target_latitude, target_longitude), atol=1e-9)
    # lazily read (dask) inputs give the same values, still lazily
    lazy = regrid_to(dataset.chunk({"time": 1}), target_latitude, target_longitude, "bilinear")[2]
    assert lazy["t2m"].chunks is not None
    np.testing.assert_array_equal(lazy["t2m"].values, out["t2m"].values)


def test_an_input_that_does_not_cover_the_domain_is_refused_saying_by_how_much() -> None:
    latitude, longitude = np.arange(50.5, 57.6, 1.0), np.arange(-10.0, 0.1, 1.25)  # cells 50 .. 58, -10.625 .. 0.625
    dataset = gridded(latitude, longitude, np.zeros((1, latitude.size, longitude.size)), False, "0..360")
    target_latitude, target_longitude = np.arange(49.875, 57.0, 1.0), np.arange(-9.625, 2.0, 1.0)  # 49.375 .. 1.875
    with pytest.raises(ConfigError) as error:
        regrid_to(dataset, target_latitude, target_longitude)
    assert str(error.value) == (
        "coarse input does not cover the target grid (latitude 49.375 .. 57.375, longitude -10.125 .. 1.875): "
        "0.625 deg of latitude missing in the south, 1.25 deg of longitude missing in the east; give an input that "
        "extends over it"
    )
    with pytest.raises(ConfigError, match=r"1\.375 deg of longitude missing in the east"):  # centres: 0 < 1.375
        regrid_to(dataset, np.arange(50.875, 57.0, 1.0), target_longitude, "bilinear")
