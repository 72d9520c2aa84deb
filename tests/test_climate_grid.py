"""diffscale.data.climate.grid: area-weighted coarsening, its coordinates, upsampling and grid checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from diffscale.data.climate.grid import (
    area_weights,
    block_centres,
    check_factor,
    coarsen,
    fine_coordinates,
    is_global_longitude,
    select_grid,
    trim_to_factor,
    upsample,
)
from diffscale.data.climate.io import open_fields
from diffscale.validation import ConfigError

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data directory ../shared/data is absent")


def explicit_block_mean(values: np.ndarray, latitude: np.ndarray, factor: int) -> np.ndarray:
    """sum cos(phi_i) x_ij / sum cos(phi_i) over each f x f block, by loops (the reference)."""
    *lead, height, width = values.shape
    out = np.zeros((*lead, height // factor, width // factor))
    for bi in range(height // factor):
        for bj in range(width // factor):
            total, weight = 0.0, 0.0
            for i in range(bi * factor, (bi + 1) * factor):
                for j in range(bj * factor, (bj + 1) * factor):
                    w = np.cos(np.radians(latitude[i]))
                    total = total + w * values[..., i, j]
                    weight += w
            out[..., bi, bj] = total / weight
    return out


def grid_dataset(height: int = 12, width: int = 16, times: int = 2, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    latitude = np.linspace(30.0, 85.0, height)  # far from the equator: the weights differ a lot
    longitude = np.arange(width) * 2.5 - 20.0
    values = rng.normal(size=(times, height, width))
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values)},
        coords={"time": np.arange(times), "latitude": latitude, "longitude": longitude},
    )


def test_area_weights_are_cos_latitude() -> None:
    np.testing.assert_allclose(area_weights([0.0, 60.0, -60.0]), [1.0, 0.5, 0.5], atol=1e-15)
    tensor = area_weights(torch.tensor([0.0, 60.0], dtype=torch.float64))
    assert isinstance(tensor, torch.Tensor)
    torch.testing.assert_close(tensor, torch.tensor([1.0, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("factor", [2, 4])
def test_coarsen_dataset_is_the_area_weighted_block_mean(factor: int) -> None:
    ds = grid_dataset()
    coarse = coarsen(ds, factor)
    expected = explicit_block_mean(ds["t2m"].values, ds["latitude"].values, factor)
    np.testing.assert_allclose(coarse["t2m"].values, expected, rtol=1e-12, atol=1e-12)
    plain = ds["t2m"].values.reshape(2, 12 // factor, factor, 16 // factor, factor).mean(axis=(2, 4))
    assert np.abs(coarse["t2m"].values - plain).max() > 1e-3  # the weights matter here
    np.testing.assert_allclose(coarse["latitude"].values, ds["latitude"].values.reshape(-1, factor).mean(axis=1))
    np.testing.assert_allclose(coarse["longitude"].values, ds["longitude"].values.reshape(-1, factor).mean(axis=1))


def test_coarsen_tensor_matches_the_explicit_mean_and_keeps_dtype() -> None:
    ds = grid_dataset()
    field = torch.tensor(ds["t2m"].values)
    coarse = coarsen(field, 4, latitude=torch.tensor(ds["latitude"].values))
    expected = explicit_block_mean(ds["t2m"].values, ds["latitude"].values, 4)
    np.testing.assert_allclose(coarse.numpy(), expected, rtol=1e-12)
    unweighted = coarsen(field.float(), 2)
    assert unweighted.dtype == torch.float32
    torch.testing.assert_close(unweighted, field.float().reshape(2, 6, 2, 8, 2).mean(dim=(2, 4)))


def test_coarsen_refuses_a_grid_that_is_not_divisible() -> None:
    with pytest.raises(ConfigError, match=r"12 x 16 .* not divisible by the coarsen factor 5; crop it to 10 x 15"):
        coarsen(grid_dataset(), 5)
    with pytest.raises(ConfigError, match="not divisible"):
        coarsen(torch.zeros(3, 10, 9), 2)


def test_fine_coordinates_invert_coarsening_coordinates() -> None:
    ds = grid_dataset(height=12, width=16)
    coarse = coarsen(ds, 4)
    latitude, longitude = fine_coordinates(coarse["latitude"].values, coarse["longitude"].values, 4)
    np.testing.assert_allclose(latitude, ds["latitude"].values, atol=1e-12)
    np.testing.assert_allclose(longitude, ds["longitude"].values, atol=1e-12)
    np.testing.assert_allclose(fine_coordinates([0.0, 1.0], [10.0, 12.0], 2)[1], [9.5, 10.5, 11.5, 12.5])


def test_upsample_of_constant_and_linear_fields_is_exact_in_the_interior() -> None:
    factor = 4
    constant = torch.full((2, 5, 6), 3.25, dtype=torch.float64)
    for mode in ("bilinear", "bicubic"):
        torch.testing.assert_close(upsample(constant, factor, mode), torch.full((2, 20, 24), 3.25, dtype=torch.float64))
    # a linear field on the fine grid; its block means are its values at the block centres
    rows = torch.arange(20, dtype=torch.float64)[:, None]
    cols = torch.arange(24, dtype=torch.float64)[None, :]
    fine = 0.7 * rows - 1.3 * cols + 2.0
    coarse = coarsen(fine, factor)
    # interior: fine points whose stencil (2 coarse centres for bilinear, 4 for bicubic) stays inside the grid;
    # fine index i sits at coarse position (i + 1/2) / f - 1/2
    for mode, margin in (("bilinear", factor // 2), ("bicubic", factor + factor // 2)):
        up = upsample(coarse, factor, mode)
        assert up.shape == (20, 24)
        interior = slice(margin, -margin)
        torch.testing.assert_close(up[interior, interior], fine[interior, interior], rtol=0, atol=1e-10)


def test_bicubic_reproduces_a_quadratic_sampled_at_the_coarse_centres() -> None:
    factor = 4

    def quadratic(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return 0.05 * i**2 - 0.02 * i * j + 0.03 * j**2 + 0.5 * i - j

    fine_rows = torch.arange(24, dtype=torch.float64)[:, None]
    fine_cols = torch.arange(28, dtype=torch.float64)[None, :]
    centres_rows = fine_rows.reshape(6, 4).mean(dim=1, keepdim=True)  # coarse centre i_c = 4 k + 1.5
    centres_cols = fine_cols.reshape(7, 4).mean(dim=1)[None, :]
    up = upsample(quadratic(centres_rows, centres_cols), factor, "bicubic")
    interior = slice(factor + factor // 2, -(factor + factor // 2))
    expected = quadratic(fine_rows, fine_cols)
    torch.testing.assert_close(up[interior, interior], expected[interior, interior], rtol=0, atol=1e-10)


def test_bilinear_equals_torch_interpolate_with_align_corners_false() -> None:
    field = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    for factor in (2, 3, 4):
        expected = torch.nn.functional.interpolate(field, scale_factor=factor, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample(field, factor, "bilinear"), expected, rtol=0, atol=1e-12)


def test_periodic_upsample_interpolates_across_the_seam() -> None:
    factor, width = 4, 8  # a global ring of coarse cells at 45 degree spacing
    coarse_lon = np.arange(width) * 45.0
    coarse = torch.as_tensor(np.cos(np.radians(coarse_lon)) + 0.5 * np.sin(2 * np.radians(coarse_lon)))[None]
    up = upsample(coarse, factor, "bilinear", periodic_longitude=True)[0]
    _, fine_lon = fine_coordinates([0.0, 1.0], coarse_lon, factor)
    # np.interp with a period interpolates linearly between neighbouring centres, wrapping round the globe
    expected = np.interp(fine_lon, coarse_lon, coarse[0].numpy(), period=360.0)
    np.testing.assert_allclose(up.numpy(), expected, atol=1e-12)
    clamped = upsample(coarse, factor, "bilinear")[0]
    assert abs(clamped[0].item() - expected[0]) > 1e-3  # without the wrap the edge is held constant


def test_upsample_follows_batch_dims_and_dtype() -> None:
    field = torch.randn(3, 2, 4, 5)
    out = upsample(field, 2, "bicubic", periodic_longitude=True)
    assert out.shape == (3, 2, 8, 10) and out.dtype == torch.float32


def test_check_factor_accepts_the_coarsening_and_names_mismatches() -> None:
    ds = grid_dataset()
    check_factor(coarsen(ds, 4), ds, 4)
    with pytest.raises(ConfigError, match=r"coarse grid 6 x 8 is not the fine grid 12 x 16 coarsened by 4"):
        check_factor(coarsen(ds, 2), ds, 4)
    shifted = coarsen(ds, 4).assign_coords(longitude=lambda d: d["longitude"] + 2.5)
    with pytest.raises(ConfigError, match=r"coarse longitude .* is not the centre"):
        check_factor(shifted, ds, 4)


def test_block_centres_and_global_longitude() -> None:
    np.testing.assert_allclose(block_centres([0.0, 1.0, 2.0, 3.0], 2), [0.5, 2.5])
    assert is_global_longitude(np.arange(-180.0, 180.0, 0.25))
    assert not is_global_longitude(np.arange(-10.0, 2.0, 0.25))


def test_select_grid_matches_by_coordinate_modulo_360() -> None:
    latitude = np.arange(-90.0, 90.1, 10.0)
    longitude = np.arange(-180.0, 180.0, 10.0)
    values = latitude[:, None] * 1000 + (longitude[None, :] % 360)
    ds = xr.Dataset({"lsm": (("latitude", "longitude"), values)}, coords={"latitude": latitude, "longitude": longitude})
    sub = select_grid(ds, [10.0, 20.0], [170.0, 180.0, 190.0], "static fields")
    np.testing.assert_array_equal(sub["lsm"].values, [[10170, 10180, 10190], [20170, 20180, 20190]])
    np.testing.assert_array_equal(sub["longitude"].values, [170.0, 180.0, 190.0])
    with pytest.raises(ConfigError, match=r"static fields does not line up with the grid: no latitude .* of 15"):
        select_grid(ds, [15.0, 25.0], [0.0, 10.0], "static fields")


@needs_data
def test_real_t2m_coarsens_32x48_to_8x12() -> None:
    fine = open_fields(DATA / "era5_t2m_uk_2019-03.nc", ["t2m"], time_slice=("2019-03-01T00", "2019-03-01T02"))
    fine = fine.isel(latitude=slice(0, 32), longitude=slice(0, 48)).load()
    coarse = coarsen(fine, 4)
    assert coarse.sizes == {"time": 3, "latitude": 8, "longitude": 12}
    expected = explicit_block_mean(fine["t2m"].values.astype(np.float64), fine["latitude"].values, 4)
    np.testing.assert_allclose(coarse["t2m"].values, expected, rtol=1e-6)
    np.testing.assert_allclose(coarse["latitude"].values, 50.375 + np.arange(8))
    np.testing.assert_allclose(coarse["longitude"].values, -9.625 + np.arange(12))
    check_factor(coarse, fine, 4)


# -- poles, any factor, trimming to the factor -----------------------------------------------------------------
FACTORS = (2, 3, 4, 5, 8, 10)
GLOBAL_LATITUDE = np.arange(-90.0, 90.5, 1.0)  # 181 rows, both poles (harmonised: ascending)
GLOBAL_LONGITUDE = np.arange(-180.0, 180.0, 1.0)  # 360 columns round the globe


def cell_weights(latitude: np.ndarray) -> np.ndarray:
    """cos(phi), set to 0 by hand on the pole rows (the reference)."""
    weights = np.cos(np.radians(latitude))
    weights[np.isclose(np.abs(latitude), 90.0)] = 0.0
    return weights


def global_dataset(values: np.ndarray | None = None) -> xr.Dataset:
    if values is None:
        values = np.zeros((1, GLOBAL_LATITUDE.size, GLOBAL_LONGITUDE.size))
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values)},
        coords={"time": [0], "latitude": GLOBAL_LATITUDE, "longitude": GLOBAL_LONGITUDE},
    )


def test_area_weights_are_exactly_zero_at_the_poles_and_never_negative() -> None:
    weights = area_weights([-90.0, -89.0, 0.0, 90.0, 90.0 - 1e-9])
    assert weights[0] == 0.0 and weights[3] == 0.0 and weights[4] == 0.0
    assert weights[1] == pytest.approx(np.sin(np.radians(1.0)), rel=1e-12) and weights[2] == 1.0
    tensor = area_weights(torch.tensor([-90.0, 45.0, 90.0], dtype=torch.float32))
    assert tensor[0].item() == 0.0 and tensor[2].item() == 0.0 and tensor.dtype == torch.float32
    assert (area_weights(np.linspace(-90.0, 90.0, 721)) >= 0).all()


@pytest.mark.parametrize("factor", FACTORS)
def test_trim_to_factor_drops_the_surplus_south_first(factor: int) -> None:
    trimmed, trim = trim_to_factor(global_dataset(), factor)
    surplus = 181 % factor
    south, north = -(-surplus // 2), surplus // 2  # ceil and floor of surplus / 2
    assert trimmed.sizes["latitude"] == 181 - surplus and trimmed.sizes["latitude"] % factor == 0
    np.testing.assert_array_equal(trimmed["latitude"].values, GLOBAL_LATITUDE[south : 181 - north])
    np.testing.assert_array_equal(trimmed["longitude"].values, GLOBAL_LONGITUDE)  # the global axis stays whole
    assert trim.latitude_start == tuple(GLOBAL_LATITUDE[:south]) and len(trim.latitude_end) == north
    assert trim.shape == (181 - surplus, 360) and trim.original_shape == (181, 360)
    assert trim.describe().startswith("dropped 1 row at latitude -90 (south)" if surplus == 1 else "dropped ")
    assert trim.to_dict()["dropped_latitude"] == {
        "south": list(GLOBAL_LATITUDE[:south]),
        "north": list(trim.latitude_end),
    }


def test_trim_to_factor_rules_for_regional_and_periodic_axes() -> None:
    ds = grid_dataset(height=12, width=16)  # regional: both axes may be trimmed
    trimmed, trim = trim_to_factor(ds, 5)
    np.testing.assert_array_equal(trimmed["latitude"].values, ds["latitude"].values[1:11])  # 2 surplus rows: 1 + 1
    np.testing.assert_array_equal(trimmed["longitude"].values, ds["longitude"].values[1:16])  # 1 column: west
    assert trim.describe() == (
        "dropped 1 row at latitude 30 (south) and 1 row at latitude 85 (north) and 1 column at longitude -20 (west) "
        "so that the coarsen factor 5 divides the fine grid: 12 x 16 -> 10 x 15"
    )
    same, nothing = trim_to_factor(ds, 4)
    assert same is ds and not nothing.dropped and "nothing dropped" in nothing.describe()
    with pytest.raises(ConfigError, match=r"12 x 16 .* not divisible by the coarsen factor 5; crop it to 10 x 15"):
        trim_to_factor(ds, 5, remainder="error")
    with pytest.raises(ConfigError, match=r"the coarsen factor 7 does not divide the 360 longitudes of the periodic"):
        trim_to_factor(global_dataset(), 7)
    trimmed, trim = trim_to_factor(global_dataset(), 7, periodic_longitude=False)  # 360 = 7 x 51 + 3
    np.testing.assert_array_equal(trimmed["longitude"].values, GLOBAL_LONGITUDE[2:359])
    assert trim.longitude_start == (-180.0, -179.0) and trim.longitude_end == (179.0,)
    with pytest.raises(ConfigError, match="smaller than the coarsen factor 16"):
        trim_to_factor(ds, 16)
    with pytest.raises(ConfigError, match=r"data\.remainder = 'pad'"):
        trim_to_factor(ds, 4, remainder="pad")


@pytest.mark.parametrize("factor", FACTORS)
def test_a_linear_field_coarsens_to_its_value_at_the_area_weighted_block_centre(factor: int) -> None:
    # x = a phi + b lambda + c on the trimmed global grid: X_B = a phi_w + b lambda_bar + c, with
    # phi_w = sum w_i phi_i / sum w_i over the block's rows (w_i = 0 on a pole row) and lambda_bar the plain mean
    a, b, c = 0.3, -0.02, 250.0
    values = a * GLOBAL_LATITUDE[:, None] + b * GLOBAL_LONGITUDE[None, :] + c
    fine, _ = trim_to_factor(global_dataset(values[None]), factor)
    coarse = coarsen(fine, factor)
    latitude = fine["latitude"].values.reshape(-1, factor)
    weights = cell_weights(fine["latitude"].values).reshape(-1, factor)
    weighted_centre = (weights * latitude).sum(axis=1) / weights.sum(axis=1)
    mean_longitude = GLOBAL_LONGITUDE.reshape(-1, factor).mean(axis=1)
    expected = a * weighted_centre[:, None] + b * mean_longitude[None, :] + c
    np.testing.assert_allclose(coarse["t2m"].values[0], expected, rtol=0, atol=1e-10)
    tensor = coarsen(torch.tensor(fine["t2m"].values), factor, torch.tensor(fine["latitude"].values))
    np.testing.assert_allclose(tensor[0].numpy(), expected, rtol=0, atol=1e-10)
    check_factor(coarse, fine, factor)
    np.testing.assert_allclose(coarse["latitude"].values, latitude.mean(axis=1))  # coordinates: plain means


def test_pole_rows_do_not_count_and_a_factor_of_one_keeps_them() -> None:
    values = np.random.default_rng(1).normal(size=(1, 181, 360))
    fine, _ = trim_to_factor(global_dataset(values), 4)  # rows -89..90: the last block holds the north pole
    changed = fine.copy(deep=True)
    changed["t2m"][0, -1, :] = 1e6  # the pole row has no area: the block means do not move
    np.testing.assert_array_equal(coarsen(changed, 4)["t2m"].values, coarsen(fine, 4)["t2m"].values)
    same = coarsen(global_dataset(values), 1)  # f = 1: a pole row is a block of its own, kept as it is
    np.testing.assert_allclose(same["t2m"].values, values, rtol=1e-15, atol=0)
    tensor = coarsen(torch.tensor(values), 1, torch.tensor(GLOBAL_LATITUDE))
    assert torch.isfinite(tensor).all()
    torch.testing.assert_close(tensor, torch.tensor(values), rtol=1e-15, atol=0)


@pytest.mark.parametrize("factor", FACTORS)
def test_a_constant_field_stays_constant_through_coarsen_and_upsample(factor: int) -> None:
    fine, _ = trim_to_factor(global_dataset(np.full((1, 181, 360), 287.5)), factor)
    coarse = coarsen(fine, factor)
    for mode in ("bilinear", "bicubic"):
        up = upsample(torch.tensor(coarse["t2m"].values), factor, mode, periodic_longitude=True)
        assert tuple(up.shape) == (1, fine.sizes["latitude"], 360)
        torch.testing.assert_close(up, torch.full_like(up, 287.5), rtol=1e-14, atol=0)


@pytest.mark.parametrize("factor", [3, 5, 10])
def test_odd_and_large_factors_upsample_coordinates_and_select(factor: int) -> None:
    ds = grid_dataset(height=2 * factor, width=3 * factor)
    coarse = coarsen(ds, factor)
    check_factor(coarse, ds, factor)
    latitude, longitude = fine_coordinates(coarse["latitude"].values, coarse["longitude"].values, factor)
    np.testing.assert_allclose(latitude, ds["latitude"].values, atol=1e-12)
    np.testing.assert_allclose(longitude, ds["longitude"].values, atol=1e-12)
    if factor % 2:  # the middle fine centre of each block is the coarse centre
        np.testing.assert_allclose(longitude[factor // 2 :: factor], coarse["longitude"].values, atol=1e-12)
    centres = block_centres(ds["latitude"].values, factor), block_centres(ds["longitude"].values, factor)
    picked = select_grid(coarse, centres[0][1:], centres[1], "coarse file")  # coarse cells of a sub-grid
    np.testing.assert_array_equal(picked["t2m"].values, coarse["t2m"].values[:, 1:])
    if factor % 2:  # a block centre is a fine point: the middle one of its block
        middle = select_grid(ds, *centres, "fine file")
        np.testing.assert_array_equal(
            middle["t2m"].values, ds["t2m"].values[:, factor // 2 :: factor, factor // 2 :: factor]
        )
    field = torch.randn(2, 4, 5, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(field[None], scale_factor=factor, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample(field, factor), expected[0], rtol=0, atol=1e-12)
    # a field linear in longitude: reproduced exactly between the outermost coarse centres (every row)
    columns = np.arange(5 * factor, dtype=np.float64)
    up = upsample(torch.tensor(coarsen(torch.tensor(np.tile(columns, (factor, 1))), factor).numpy()), factor)
    inner = slice((factor - 1) // 2 + 1, -((factor - 1) // 2 + 1))
    np.testing.assert_allclose(up[:, inner].numpy(), np.tile(columns[inner], (factor, 1)), atol=1e-12)
    if factor % 2:
        np.testing.assert_allclose(up[:, (factor - 1) // 2 :: factor].numpy()[0], columns.reshape(-1, factor).mean(1))


@pytest.mark.parametrize("factor", FACTORS)
def test_upsampling_is_constant_in_latitude_beyond_the_outermost_coarse_centres(factor: int) -> None:
    values = np.random.default_rng(factor).normal(size=(1, 181, 360))
    fine, _ = trim_to_factor(global_dataset(values), factor)
    coarse = torch.tensor(coarsen(fine, factor)["t2m"].values[0])
    up = upsample(coarse, factor, periodic_longitude=True)
    # fine row i sits at coarse position (i + 1/2) / f - 1/2: below 0 (south of the first centre) for i < f / 2
    # and beyond h - 1 for the last f / 2 rows; there every row is the first (last) coarse row, interpolated
    # (and wrapped) in longitude only
    edges = upsample(coarse[[0, -1]].repeat_interleave(2, dim=0), factor, periodic_longitude=True)
    for i in range(factor // 2):
        torch.testing.assert_close(up[i], edges[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(up[-1 - i], edges[-1], rtol=0, atol=1e-12)
    assert fine["latitude"].values[-1] == 90.0 or factor == 8  # the north pole row is among them
