"""diffscale.runs.coarse_grid: the run's coarse lattice from its saved grid, which inputs lie on it (taken as they
are) and which are regridded onto its cells, with their CF bounds read from the file as given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffscale.data.climate.io import open_fields
from diffscale.runs.coarse_grid import coarse_lattice, on_coarse_lattice, onto_coarse_lattice
from diffscale.validation import ConfigError

# a UK-like training grid: 32 x 48 points at 0.25 deg, latitude 50.25 .. 58, longitude -10 .. 1.75
GRID = {
    "latitude_spacing": 0.25,
    "longitude_spacing": 0.25,
    "height": 32,
    "width": 48,
    "latitude_range": [50.25, 58.0],
    "longitude_range": [-10.0, 1.75],
}


def test_the_lattice_is_the_block_centres_of_the_training_grid_trimmed_as_training_trims() -> None:
    latitude, longitude = coarse_lattice(GRID, 4)
    np.testing.assert_allclose(latitude, 50.625 + np.arange(8.0))
    np.testing.assert_allclose(longitude, -9.625 + np.arange(12.0))
    # 33 x 49 points (a run of windows keeps them): one surplus row dropped at the start, none at the end
    latitude, longitude = coarse_lattice({**GRID, "height": 33, "width": 49, "latitude_range": [50.0, 58.0]}, 4)
    np.testing.assert_allclose(latitude, 50.625 + np.arange(8.0))
    with pytest.raises(ConfigError, match=r"^the run's saved grid lacks height, .*\(regrid='none'\)$"):
        coarse_lattice({key: value for key, value in GRID.items() if key != "height"}, 4)


def test_which_inputs_lie_on_the_lattice() -> None:
    latitude, longitude = coarse_lattice(GRID, 4)
    assert on_coarse_lattice(latitude, longitude, GRID, 4, aligned=True)
    # a sub-region and a larger region of the lattice, longitudes in 0..360, float32 coordinates
    assert on_coarse_lattice(latitude[2:5], (longitude[:6] - 4.0) % 360.0, GRID, 4, aligned=True)
    assert on_coarse_lattice(latitude.astype(np.float32), longitude.astype(np.float32), GRID, 4, aligned=True)
    # the global 1 deg points sit 0.375 deg off: off the lattice of a run with static fields, on that of one without
    global_latitude, global_longitude = np.arange(-90.0, 90.1, 1.0), np.arange(0.0, 360.0, 1.0)
    assert not on_coarse_lattice(global_latitude, global_longitude, GRID, 4, aligned=True)
    assert on_coarse_lattice(global_latitude, global_longitude, GRID, 4, aligned=False)
    # another spacing, or a gap, is off any lattice
    assert not on_coarse_lattice(np.arange(50.0, 58.0, 1.25), longitude, GRID, 4, aligned=False)
    assert not on_coarse_lattice(np.delete(latitude, 3), longitude, GRID, 4, aligned=False)
    assert not on_coarse_lattice(latitude + 3e-5, longitude, GRID, 4, aligned=True)


def _gcm_file(path: Path, with_bounds: bool) -> xr.Dataset:
    """A GCM-like 1.5 x 1 deg file over 45.125 .. 62.125 N, 340.875 .. 10.875 E (0..360, north to south), whose
    cell edges include the run domain's (50.125, 58.125; -10.125, 1.875), its latitudes 0.3 deg above their cells'
    southern edges (CF bounds optional): f = 3 + sin(phi) + cos(lambda) as exact cell means."""
    lat_edges = np.arange(45.125, 62.2, 1.0)
    lon_edges = np.arange(340.875, 371.0, 1.5)
    phi, lam = np.deg2rad(lat_edges), np.deg2rad(lon_edges)
    means = 3.0 + ((np.sin(phi[:-1]) + np.sin(phi[1:])) / 2)[:, None] + (np.diff(np.sin(lam)) / np.diff(lam))[None]
    latitude = lat_edges[:-1] + 0.3  # off-centre in its cell
    longitude = (lon_edges[:-1] + 0.75) % 360.0
    order = np.argsort(longitude)
    data = xr.Dataset(
        {"tas": (("time", "lat", "lon"), means[None, ::-1][..., order].astype(np.float64), {"units": "K"})},
        coords={"time": [np.datetime64("2000-01-01")], "lat": latitude[::-1], "lon": longitude[order]},
    )
    if with_bounds:
        bounds = np.stack([lon_edges[:-1], lon_edges[1:]], axis=1) % 360.0
        bounds[bounds[:, 1] < bounds[:, 0], 1] += 360.0
        data = data.assign(
            lat_bnds=(("lat", "bnds"), np.stack([lat_edges[:-1], lat_edges[1:]], axis=1)[::-1]),
            lon_bnds=(("lon", "bnds"), bounds[order]),
        )
        data["lat"].attrs["bounds"] = "lat_bnds"
        data["lon"].attrs["bounds"] = "lon_bnds"
    data.to_netcdf(path)
    return data


@pytest.mark.parametrize("with_bounds", [True, False], ids=["CF bounds", "midpoints"])
def test_an_input_off_the_lattice_is_regridded_onto_the_run_cells(tmp_path: Path, with_bounds: bool) -> None:
    path = tmp_path / "gcm.nc"
    _gcm_file(path, with_bounds)
    fields = open_fields(path, ["t2m"])
    out, regridding = onto_coarse_lattice(fields, path, GRID, 4, aligned=True)
    assert regridding is not None and regridding.method == "conservative"
    latitude, longitude = coarse_lattice(GRID, 4)
    np.testing.assert_allclose(out["latitude"].values, latitude)
    np.testing.assert_allclose(out["longitude"].values, longitude)
    edges = "CF bounds (lat_bnds, lon_bnds)" if with_bounds else "midpoints between centres"
    assert regridding.source.describe().endswith(f"cell edges: {edges})")
    # the area mean over the run's domain is the analytic one where the cells are the file's true cells (its
    # bounds); the midpoints between its off-centre points are other cells, 0.2 deg further south
    phi, lam = np.deg2rad([50.125, 58.125]), np.deg2rad([-10.125, 1.875])
    analytic = 3.0 + (np.sin(phi[0]) + np.sin(phi[1])) / 2 + (np.sin(lam[1]) - np.sin(lam[0])) / (lam[1] - lam[0])
    areas = np.diff(np.sin(np.deg2rad(np.arange(50.125, 58.2, 1.0))))[:, None] * np.ones(12)[None]
    mean = float((out["t2m"].values[0] * areas).sum() / areas.sum())
    assert (mean == pytest.approx(analytic, rel=1e-6)) == with_bounds
    # an input on the lattice is returned as it is; regrid none never regrids
    same, none = onto_coarse_lattice(out, path, GRID, 4, aligned=True)
    assert none is None and same is out
    assert onto_coarse_lattice(fields, path, GRID, 4, aligned=True, regrid="none") == (fields, None)
