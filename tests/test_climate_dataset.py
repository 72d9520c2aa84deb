"""diffscale.data.climate.dataset: splits, statistics, conditioning channels, base fields and batches, checked
against explicit numpy computations on synthetic files (and on the real ERA5 files when present)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset, ConditioningBuilder, open_fields, target_shape
from diffscale.data.climate.splits import load_fine
from diffscale.data.climate.statistics import fit_climate_stats, stats_time_indices
from diffscale.validation import ConfigError, validate

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data directory ../shared/data is absent")

G0 = 9.80665
FINE_LAT = np.arange(55.5, 39.9, -1.0)  # 16 rows, descending as in ERA5 files
FINE_LON = np.concatenate([np.arange(350.0, 360.0), np.arange(0.0, 14.0)])  # 24 columns across Greenwich, 0..360
TIMES = pd.date_range("2020-03-01", periods=16, freq="6h").values  # 4 days


def block_mean(values: np.ndarray, latitude: np.ndarray, factor: int) -> np.ndarray:
    """Area-weighted block mean by explicit sums (reference)."""
    weights = np.cos(np.radians(latitude))
    *lead, height, width = values.shape
    weighted = (values * weights[:, None]).reshape(*lead, height // factor, factor, width // factor, factor)
    return weighted.sum(axis=(-3, -1)) / (weights.reshape(-1, factor).sum(axis=1)[:, None] * factor)


def bilinear(values: np.ndarray, factor: int) -> np.ndarray:
    """torch's bilinear interpolation with align_corners=False (the reference geometry)."""
    x = torch.tensor(values, dtype=torch.float64)
    lead = x.shape[:-2]
    out = torch.nn.functional.interpolate(
        x.reshape(1, -1, *x.shape[-2:]), scale_factor=factor, mode="bilinear", align_corners=False
    )
    return out.reshape(*lead, *out.shape[-2:]).numpy()


def ascending(values: np.ndarray) -> np.ndarray:
    """Raw (descending latitude, 350..13 longitude) values in the canonical order (-10..13 is already ascending)."""
    return values[..., ::-1, :]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("climate")
    rng = np.random.default_rng(0)
    t2m = (280.0 + 5.0 * rng.standard_normal((16, 16, 24))).astype(np.float32)
    tp = rng.exponential(0.001, size=(16, 16, 24)).astype(np.float32)
    fine = xr.Dataset(
        {
            "2m_temperature": (("valid_time", "lat", "lon"), t2m),
            "total_precipitation": (("valid_time", "lat", "lon"), tp),
        },
        coords={"valid_time": TIMES, "lat": FINE_LAT, "lon": FINE_LON},
    )
    fine.to_netcdf(root / "fine.nc")
    static_lat = np.arange(70.0, 29.0, -0.5)  # finer and larger than the fine grid, 0..360
    static_lon = np.arange(0.0, 360.0, 0.5)
    z = rng.uniform(0.0, 3000.0, size=(1, static_lat.size, static_lon.size))
    lsm = rng.uniform(0.0, 1.0, size=(1, static_lat.size, static_lon.size))
    statics = xr.Dataset(
        {
            "z": (("time", "latitude", "longitude"), z, {"units": "m**2 s**-2"}),
            "lsm": (("time", "latitude", "longitude"), lsm),
        },
        coords={"time": TIMES[:1], "latitude": static_lat, "longitude": static_lon},
    )
    statics.to_netcdf(root / "statics.nc")
    statics.assign_coords(latitude=static_lat + 0.25).to_netcdf(root / "statics_shifted.nc")
    return {
        "root": root,
        "t2m": t2m,
        "tp": tp,
        "z": z[0],
        "lsm": lsm[0],
        "static_lat": static_lat,
        "static_lon": static_lon,
    }


def section(files: dict[str, Any], **overrides: Any) -> ClimateData:
    root = files["root"]
    data = {
        "paths": [str(root / "fine.nc")],
        "variables": ["t2m", "tp"],
        "transforms": {"tp": "log1p"},
        "coarsen_factor": 4,
        "static_paths": [str(root / "statics.nc")],
        "static_variables": ["orography", "lsm"],
        "channels": {"latlon": True, "hour": True, "day_of_year": True},
        "train_period": ["2020-03-01", "2020-03-03"],
        "validation_period": ["2020-03-04", "2020-03-04"],
        **overrides,
    }
    return validate(ClimateData, data, prefix="data")


def static_on_fine_grid(files: dict[str, Any], name: str) -> np.ndarray:
    """Index the raw statics at the fine grid's coordinates by arithmetic (0.5 degree steps)."""
    latitude = FINE_LAT[::-1]
    longitude = np.concatenate([np.arange(-10.0, 0.0), np.arange(0.0, 14.0)])
    rows = np.round((70.0 - latitude) / 0.5).astype(int)
    cols = np.round((longitude % 360.0) / 0.5).astype(int)
    values = files["z"] / G0 if name == "orography" else files["lsm"]
    return values[np.ix_(rows, cols)]


def test_residual_dataset_matches_an_explicit_computation(files: dict[str, Any]) -> None:
    ds = ClimateDataset(section(files), "train")
    train = slice(0, 12)  # 1-3 March, 6-hourly
    assert len(ds) == 12 and ds.shape == (2, 16, 24) and ds.cond_channels == 2 + 2 + 3 + 4
    assert ds.cond_channel_names[:4] == ["t2m_coarse", "tp_coarse", "orography", "lsm"]
    np.testing.assert_array_equal(ds.latitude, FINE_LAT[::-1])
    np.testing.assert_array_equal(ds.longitude, np.arange(-10.0, 14.0))
    assert not ds.periodic_longitude
    # statistics of the train period only
    t2m, tp = ascending(files["t2m"][train]).astype(np.float64), ascending(files["tp"][train]).astype(np.float64)
    assert ds.stats["t2m"]["mean"] == pytest.approx(t2m.mean()) and ds.stats["t2m"]["std"] == pytest.approx(t2m.std())
    assert ds.stats["tp"] == {
        "transform": "log1p",
        "mean": pytest.approx(np.log1p(tp).mean()),
        "std": pytest.approx(np.log1p(tp).std()),
    }
    # conditioning: upsampled normalised block means, then the standardised statics, then lat/lon, time
    coarse_t2m = block_mean(t2m, ds.latitude, 4)
    normalised_coarse = (coarse_t2m - t2m.mean()) / t2m.std()
    cond = ds.cond_fields.double().numpy()
    np.testing.assert_allclose(cond[:, 0], bilinear(normalised_coarse, 4), atol=2e-5)
    coarse_tp = block_mean(tp, ds.latitude, 4)
    expected_tp = (np.log1p(coarse_tp) - np.log1p(tp).mean()) / np.log1p(tp).std()
    np.testing.assert_allclose(cond[:, 1], bilinear(expected_tp, 4), atol=2e-5)
    orography = static_on_fine_grid(files, "orography")
    np.testing.assert_allclose(cond[3, 2], (orography - orography.mean()) / orography.std(), atol=1e-5)
    lsm = static_on_fine_grid(files, "lsm")
    np.testing.assert_allclose(cond[3, 3], (lsm - lsm.mean()) / lsm.std(), atol=1e-5)
    np.testing.assert_allclose(cond[0, 4, :, 0], ds.latitude / 90.0, atol=1e-6)
    np.testing.assert_allclose(cond[1, 7:9, 0, 0], [1.0, 0.0], atol=1e-6)  # 06:00 UTC: sin, cos of pi / 2
    # residual target: normalised fine minus the base (the upsampled coarse fields); back to physical units
    fields = ds.fields(list(range(12)))
    torch.testing.assert_close(fields.base, ds.cond_fields[:, :2])
    np.testing.assert_allclose(
        fields.target[:, 0].double().numpy(), (t2m - t2m.mean()) / t2m.std() - cond[:, 0], atol=2e-5
    )
    torch.testing.assert_close(ds.to_physical(fields.target + fields.base), fields.fine, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fields.fine[:, 1].numpy(), ascending(files["tp"][train]))


def test_fine_target_and_validation_split_with_train_statistics(files: dict[str, Any]) -> None:
    config = section(files, target="fine", static_variables=[], static_paths=[], channels={})
    train = ClimateDataset(config, "train")
    validation = ClimateDataset(config, "validation")  # statistics fitted on the train split
    assert validation.stats == train.stats
    np.testing.assert_array_equal(validation.times, TIMES[12:])
    fields = validation.fields(slice(0, 4))
    assert torch.equal(fields.base, torch.zeros_like(fields.base))
    t2m = ascending(files["t2m"][12:]).astype(np.float64)
    expected = (t2m - train.stats["t2m"]["mean"]) / train.stats["t2m"]["std"]
    np.testing.assert_allclose(fields.target[:, 0].double().numpy(), expected, atol=1e-5)
    assert validation.cond_channel_names == ["t2m_coarse", "tp_coarse"]
    with pytest.raises(ConfigError, match="test_period is not set"):
        ClimateDataset(config, "test", stats=train.stats)


def test_train_split_without_a_period_leaves_out_validation_and_test(files: dict[str, Any]) -> None:
    config = section(
        files, train_period=None, validation_period=["2020-03-02", "2020-03-02"], static_variables=[], static_paths=[]
    )
    train = ClimateDataset(config, "train")
    np.testing.assert_array_equal(train.times, np.concatenate([TIMES[:4], TIMES[8:]]))


def test_sampling_is_reproducible_and_patches_are_windows_of_the_fields(files: dict[str, Any]) -> None:
    ds = ClimateDataset(section(files, patch=[8, 12]), "train")
    first = ds.sample(6, torch.Generator().manual_seed(3))
    again = ds.sample(6, torch.Generator().manual_seed(3))
    other = ds.sample(6, torch.Generator().manual_seed(4))
    assert first.target.shape == (6, 2, 8, 12) and first.cond["cond_fields"].shape == (6, 11, 8, 12)
    assert torch.equal(first.target, again.target) and torch.equal(first.cond["cond_fields"], again.cond["cond_fields"])
    assert not torch.equal(first.target, other.target)
    full = ds.fields(list(range(len(ds))))
    for target, cond in zip(first.target, first.cond["cond_fields"], strict=True):
        matches = [
            (t, i, j)
            for t in range(len(ds))
            for i in range(16 - 8 + 1)
            for j in range(24 - 12 + 1)
            if torch.equal(full.target[t, :, i : i + 8, j : j + 12], target)
        ]
        assert len(matches) == 1
        t, i, j = matches[0]
        assert torch.equal(full.cond_fields[t, :, i : i + 8, j : j + 12], cond)


def test_patches_wrap_round_a_global_grid(tmp_path: Path) -> None:
    longitude = np.arange(0.0, 360.0, 15.0)  # 24 columns round the globe
    latitude = np.arange(-30.0, 30.0, 7.5)  # 8 rows
    values = (np.arange(8)[:, None] * 100 + np.arange(24)[None, :]).astype(np.float32)
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), np.broadcast_to(values, (4, 8, 24)).copy())},
        coords={"time": TIMES[:4], "latitude": latitude, "longitude": longitude},
    )
    ds.to_netcdf(tmp_path / "global.nc")
    config = validate(
        ClimateData,
        {"paths": [str(tmp_path / "global.nc")], "coarsen_factor": 2, "patch": [4, 16], "target": "fine"},
    )
    data = ClimateDataset(config)
    assert data.periodic_longitude
    physical = data.to_physical(data.sample(64, torch.Generator().manual_seed(0)).target)[:, 0]
    columns = (physical[:, 0, :] % 100).round().long()  # original column index of each patch column (+12 roll)
    steps = (columns[:, 1:] - columns[:, :-1]) % 24
    assert torch.all(steps == 1)  # consecutive columns round the globe
    assert any(int(row[0]) > int(row[-1]) for row in columns)  # some patches cross the seam


def test_bad_inputs_give_one_line_config_errors(files: dict[str, Any], tmp_path: Path) -> None:
    raw = xr.open_dataset(files["root"] / "fine.nc").load()
    raw["2m_temperature"][5, 3, 4] = np.nan
    raw.to_netcdf(tmp_path / "nan.nc")
    with pytest.raises(ConfigError, match=r"variable 't2m' has NaN/inf values at time 2020-03-02T06:00"):
        ClimateDataset(section(files, paths=[str(tmp_path / "nan.nc")]))
    with pytest.raises(ConfigError, match=r"variable 'msl' not in .*fine\.nc; it has: t2m \(2m_temperature\), tp"):
        ClimateDataset(section(files, variables=["msl"], transforms={}))
    shifted = str(files["root"] / "statics_shifted.nc")
    with pytest.raises(ConfigError, match="static fields does not line up with the grid: no latitude"):
        ClimateDataset(section(files, static_paths=[shifted], static_interpolation="none"))
    with pytest.raises(ConfigError, match="not divisible by the coarsen factor 5"):
        ClimateDataset(section(files, coarsen_factor=5, remainder="error"))
    with pytest.raises(ConfigError, match=r"data.crop.lat = \[0, 20\] exceeds the fine grid's 16 latitude points"):
        ClimateDataset(section(files, crop={"lat": [0, 20]}))
    raw.expand_dims(step=2, axis=1).to_netcdf(tmp_path / "steps.nc")
    with pytest.raises(ConfigError, match=r"variable 't2m' has extra dimension\(s\) step \(2\)"):
        ClimateDataset(section(files, paths=[str(tmp_path / "steps.nc")]))
    with pytest.raises(ConfigError, match="no fields in the train split"):
        ClimateDataset(section(files, train_period=["2021-01-01", "2021-01-02"]))
    with pytest.raises(ConfigError) as error:
        ClimateDataset(section(files, paths=[str(tmp_path / "nan.nc")]))
    assert "\n" not in str(error.value)


def test_separate_coarse_files_give_the_same_conditioning(files: dict[str, Any], tmp_path: Path) -> None:
    latitude = FINE_LAT[::-1]
    coarse_lat = latitude.reshape(-1, 4).mean(axis=1)
    coarse_lon = np.arange(-10.0, 14.0).reshape(-1, 4).mean(axis=1)
    values = {name: block_mean(ascending(files[name]).astype(np.float64), latitude, 4) for name in ("t2m", "tp")}
    coarse = xr.Dataset(
        {
            "VAR_2T": (("time", "latitude", "longitude"), values["t2m"][:, ::-1]),
            "tp": (("time", "latitude", "longitude"), values["tp"][:, ::-1]),
        },
        coords={"time": TIMES, "latitude": coarse_lat[::-1], "longitude": coarse_lon % 360.0},
    )
    coarse.to_netcdf(tmp_path / "coarse.nc")
    own = ClimateDataset(section(files), "train")
    given = ClimateDataset(section(files, coarse_paths=[str(tmp_path / "coarse.nc")]), "train")
    torch.testing.assert_close(given.cond_fields, own.cond_fields, atol=2e-5, rtol=0)
    coarser = coarse.assign_coords(longitude=coarse_lon).coarsen(longitude=2).mean()
    coarser.to_netcdf(tmp_path / "coarser.nc")
    with pytest.raises(ConfigError, match=r"coarse longitude step is 8 x the fine one, not data.coarsen_factor = 4"):
        ClimateDataset(section(files, coarse_paths=[str(tmp_path / "coarser.nc")]), "train")


def test_conditioning_builder_on_a_users_coarse_file_matches_training(files: dict[str, Any], tmp_path: Path) -> None:
    config = section(files)
    ds = ClimateDataset(config, "validation", stats=ClimateDataset(config, "train").stats)
    latitude = FINE_LAT[::-1]
    coarse = xr.Dataset(
        {
            "2t": (("t", "lat", "lon"), block_mean(ascending(files["t2m"][12:]).astype(np.float64), latitude, 4)),
            "pr": (("t", "lat", "lon"), block_mean(ascending(files["tp"][12:]).astype(np.float64), latitude, 4)),
        },
        coords={
            "t": TIMES[12:],
            "lat": latitude.reshape(-1, 4).mean(1),
            "lon": np.arange(-10.0, 14.0).reshape(-1, 4).mean(1),
        },
    )
    coarse.to_netcdf(tmp_path / "user_coarse.nc")
    builder = ConditioningBuilder.from_section(config, ds.stats)
    built = builder.build(open_fields(tmp_path / "user_coarse.nc"))
    torch.testing.assert_close(built.cond_fields, ds.cond_fields, atol=2e-5, rtol=0)
    torch.testing.assert_close(built.base, ds.base, atol=2e-5, rtol=0)
    np.testing.assert_allclose(built.latitude, ds.latitude)
    np.testing.assert_array_equal(built.times, ds.times)
    assert built.channel_names == ds.cond_channel_names == config.cond_channel_names()
    torch.testing.assert_close(builder.to_physical(ds.fields([0]).target + built.base[:1]), ds.fields([0]).fine)


def test_target_shape_from_metadata(files: dict[str, Any]) -> None:
    assert target_shape(section(files)) == (2, 16, 24)
    assert target_shape(section(files, crop={"lat": [4, 12]})) == (2, 8, 24)
    assert target_shape(section(files, patch=[8, 8])) == (2, 8, 8)


def test_regression_residual_base_from_a_callable(files: dict[str, Any]) -> None:
    regression = section(files, target="regression_residual", regression_run="runs/regression", patch=[8, 8])
    ds = ClimateDataset(regression, "train")
    with pytest.raises(ConfigError, match="needs set_base"):
        ds.sample(2, torch.Generator().manual_seed(0))
    calls = []

    def regression(cond: torch.Tensor) -> torch.Tensor:
        calls.append(cond.shape[0])
        return 0.5 * cond[:, :2] + cond[:, 2:3]

    ds.set_base(regression, batch_size=5)
    assert calls == [5, 5, 2]
    expected = 0.5 * ds.cond_fields[:, :2] + ds.cond_fields[:, 2:3]
    fields = ds.fields([0, 7])
    torch.testing.assert_close(fields.base, expected[[0, 7]])
    torch.testing.assert_close(ds.to_physical(fields.target + fields.base), fields.fine, rtol=1e-6, atol=1e-6)
    assert ds.sample(3, torch.Generator().manual_seed(0)).target.shape == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="returned shape"):
        ds.set_base(lambda cond: cond[:, :1])


@needs_data
def test_real_era5_dataset_with_statics() -> None:
    config = validate(
        ClimateData,
        {
            "paths": [str(DATA / "era5_t2m_uk_2019-03.nc")],
            "crop": {"lat": [0, 32], "lon": [0, 48]},
            "static_paths": [str(DATA / "era5_orography_lsm_global.nc")],
            "static_variables": ["orography", "lsm"],
            "train_period": ["2019-03-01", "2019-03-03"],
            "patch": [16, 16],
        },
    )
    ds = ClimateDataset(config)
    assert len(ds) == 72 and ds.shape == (1, 16, 16) and ds.cond_channels == 3
    raw = xr.open_dataset(DATA / "era5_orography_lsm_global.nc")
    rows = np.round((90.0 - ds.latitude) / 0.25).astype(int)
    cols = np.round((ds.longitude % 360.0) / 0.25).astype(int)
    orography = raw["z"].values[0][np.ix_(rows, cols)] / 9.80665
    np.testing.assert_allclose(
        ds.cond_fields[0, 1].double().numpy(), (orography - orography.mean()) / orography.std(), atol=1e-5
    )
    batch = ds.sample(4, torch.Generator().manual_seed(0))
    assert batch.target.shape == (4, 1, 16, 16) and torch.isfinite(batch.target).all()


# -- grids not divisible by the factor, statics from other grids, units, a latitude-weighted loss ----------------
def test_a_grid_not_divisible_by_the_factor_is_trimmed_and_recorded(
    files: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    config = section(files, coarsen_factor=5, static_variables=[], static_paths=[], channels={})
    with caplog.at_level("WARNING", logger="diffscale.data.climate.dataset"):
        ds = ClimateDataset(config, "train")
    # 16 rows: 1 surplus, dropped in the south (40.5); 24 columns: 4 surplus, 2 west (-10, -9) and 2 east (12, 13)
    np.testing.assert_array_equal(ds.latitude, FINE_LAT[::-1][1:])
    np.testing.assert_array_equal(ds.longitude, np.arange(-8.0, 12.0))
    assert ds.shape == (2, 15, 20) and target_shape(config) == (2, 15, 20)
    assert ds.grid_trim.describe() == (
        "dropped 1 row at latitude 40.5 (south) and 2 columns at longitude -10, -9 (west) and 2 columns at longitude "
        "12, 13 (east) so that the coarsen factor 5 divides the fine grid: 16 x 24 -> 15 x 20"
    )
    assert "dropped 1 row at latitude 40.5 (south)" in caplog.text
    t2m = ascending(files["t2m"][:12]).astype(np.float64)[:, 1:, 2:22]
    coarse = block_mean(t2m, ds.latitude, 5)
    stats = ds.stats["t2m"]
    expected = bilinear((coarse - stats["mean"]) / stats["std"], 5)
    np.testing.assert_allclose(ds.cond_fields[:, 0].double().numpy(), expected, atol=2e-5)
    assert stats["mean"] == pytest.approx(t2m.mean())  # the statistics of the trimmed grid
    cropped = section(files, coarsen_factor=5, crop={"lat": [0, 16], "lon": [0, 24]}, static_variables=[])
    assert cropped.sample_shape() == (2, 15, 20)


def test_a_crop_is_logged_in_one_line_with_the_rows_and_columns_it_removed(
    files: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Rows 1..12 and columns 2..21 of the 16 x 24 grid (latitude 40.5 .. 55.5 ascending, longitude -10 .. 13): the
    crop drops 1 row in the south, 3 in the north and 2 columns on each side; the factor 4 then divides 12 x 20."""
    config = section(files, crop={"lat": [1, 13], "lon": [2, 22]}, static_variables=[], static_paths=[], channels={})
    expected = (
        "data (train split): data.crop {lat: [1, 13], lon: [2, 22]} dropped 1 row at latitude 40.5 (south) and "
        "3 rows at latitude 53.5 to 55.5 (north) and 2 columns at longitude -10 to -9 (west) and 2 columns at "
        "longitude 12 to 13 (east): 16 x 24 -> 12 x 20"
    )
    with caplog.at_level("WARNING", logger="diffscale.data.climate.splits"):
        ds = ClimateDataset(config, "train")
    assert ds.shape == (2, 12, 20)
    np.testing.assert_array_equal(ds.latitude, FINE_LAT[::-1][1:13])
    assert [record.getMessage() for record in caplog.records] == [expected]  # one line, no trimming
    caplog.clear()
    whole = section(files, crop={"lat": [0, 16], "lon": None}, static_variables=[], static_paths=[], channels={})
    with caplog.at_level("WARNING", logger="diffscale.data.climate.splits"):
        ClimateDataset(whole, "train")
    assert caplog.records == []  # a crop that keeps the whole grid says nothing


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8, 10])
def test_a_global_grid_with_both_poles_works_for_any_factor(tmp_path: Path, factor: int) -> None:
    latitude, longitude = np.arange(90.0, -90.5, -1.0), np.arange(0.0, 360.0, 1.0)  # as ERA5 files: 181 x 360
    rng = np.random.default_rng(factor)
    values = (280.0 + rng.normal(size=(2, 181, 360))).astype(np.float32)
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
        coords={"time": TIMES[:2], "latitude": latitude, "longitude": longitude},
    ).to_netcdf(tmp_path / "global.nc")
    config = validate(
        ClimateData,
        {"paths": [str(tmp_path / "global.nc")], "coarsen_factor": factor, "latitude_weighted_loss": True},
    )
    ds = ClimateDataset(config)
    surplus = 181 % factor
    assert ds.latitude[0] == -90.0 + -(-surplus // 2) and ds.latitude[-1] == 90.0 - surplus // 2
    assert ds.longitude.size == 360 and ds.periodic_longitude and ds.units == {"t2m": "K"}
    fine = values[:, ::-1][:, -(-surplus // 2) : 181 - surplus // 2].astype(np.float64)
    fine = np.roll(fine, 180, axis=-1)  # harmonised longitudes -180..179
    normalised = (block_mean(fine, ds.latitude, factor) - ds.stats["t2m"]["mean"]) / ds.stats["t2m"]["std"]
    upsampled = ds.cond_fields[:, 0].double().numpy()
    inner = slice(factor, -factor)  # away from the seam, where the reference (torch) does not wrap
    np.testing.assert_allclose(upsampled[..., inner], bilinear(normalised, factor)[..., inner], atol=2e-5)
    if factor % 2:  # odd f: the middle fine point of a block sits on the coarse centre, where U(x) = x
        centres = upsampled[:, factor // 2 :: factor, factor // 2 :: factor]
        np.testing.assert_allclose(centres, normalised, atol=2e-5)
    assert torch.isfinite(ds.cond_fields).all()
    batch = ds.sample(3, torch.Generator().manual_seed(0))
    weights = np.cos(np.radians(ds.latitude))
    weights[np.isclose(np.abs(ds.latitude), 90.0)] = 0.0
    np.testing.assert_allclose(batch.cond["row_weights"].numpy(), np.tile(weights / weights.mean(), (3, 1)), rtol=1e-6)


def test_statics_on_another_grid_are_interpolated_and_the_method_recorded(files: dict[str, Any]) -> None:
    aligned = ClimateDataset(section(files), "train")
    assert aligned.static_regridding == "exact"
    np.testing.assert_array_equal(  # the coinciding points are copied: as the exact selection did
        aligned.builder.static_fields(aligned.latitude, aligned.longitude)["orography"].values,
        static_on_fine_grid(files, "orography").astype(np.float64),
    )
    shifted = ClimateDataset(section(files, static_paths=[str(files["root"] / "statics_shifted.nc")]), "train")
    assert shifted.static_regridding == "bilinear"
    # the shifted file's row k lies at 70.25 - 0.5 k: a fine row phi lies halfway between its rows
    # k = (70 - phi) / 0.5 (at phi + 0.25) and k + 1 (at phi - 0.25); in longitude it lies on a column
    latitude = FINE_LAT[::-1]
    columns = np.round((np.arange(-10.0, 14.0) % 360.0) / 0.5).astype(int)
    rows = np.round((70.0 - latitude) / 0.5).astype(int)
    orography = 0.5 * (files["z"][rows][:, columns] + files["z"][rows + 1][:, columns]) / G0
    statics = shifted.builder.static_fields(shifted.latitude, shifted.longitude)
    np.testing.assert_allclose(statics["orography"].values, orography, rtol=1e-12)
    assert shifted.stats["orography"]["mean"] == pytest.approx(orography.mean())


def test_statics_that_do_not_cover_the_grid_are_refused_in_one_line(files: dict[str, Any], tmp_path: Path) -> None:
    statics = xr.open_dataset(files["root"] / "statics.nc").load()
    statics.sel(latitude=slice(70.0, 45.0)).to_netcdf(tmp_path / "north.nc")
    with pytest.raises(ConfigError) as error:
        ClimateDataset(section(files, static_paths=[str(tmp_path / "north.nc")]), "train")
    assert str(error.value) == (
        "static fields do not cover the data grid: latitude 40.5 .. 44.5 (5 of 16 rows) lies outside their "
        "latitude 45 .. 70"
    )


def test_units_are_recorded_and_a_coarse_input_in_other_units_is_converted(
    files: dict[str, Any], tmp_path: Path
) -> None:
    raw = xr.open_dataset(files["root"] / "fine.nc").load()
    raw["2m_temperature"].attrs["units"] = "K"
    raw["total_precipitation"].attrs["units"] = "m"
    raw.to_netcdf(tmp_path / "fine_units.nc")
    config = section(files, paths=[str(tmp_path / "fine_units.nc")])
    ds = ClimateDataset(config, "train")
    assert ds.units == {"t2m": "K", "tp": "m", "orography": "m", "lsm": None}
    assert ds.stats["t2m"]["units"] == "K" and "units" not in ds.stats["lsm"]
    latitude = FINE_LAT[::-1]
    coarse_values = {
        name: block_mean(ascending(files[name][:12]).astype(np.float64), latitude, 4) for name in ("t2m", "tp")
    }
    coarse = xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), coarse_values["t2m"] - 273.15, {"units": "degC"}),
            "tp": (("time", "latitude", "longitude"), coarse_values["tp"] * 1000.0, {"units": "mm"}),
        },
        coords={
            "time": TIMES[:12],
            "latitude": latitude.reshape(-1, 4).mean(1),
            "longitude": np.arange(-10.0, 14.0).reshape(-1, 4).mean(1),
        },
    )
    builder = ConditioningBuilder.from_section(config, ds.stats)
    built = builder.build(coarse)
    torch.testing.assert_close(built.cond_fields, ds.cond_fields, atol=2e-5, rtol=0)
    assert built.units == {"t2m": "K", "tp": "m"}  # what the generated fields will be in
    daily = coarse.assign(tp=coarse["tp"].assign_attrs(units="mm d-1"))
    with pytest.raises(ConfigError, match=r"^coarse fields: variable 'tp' is in 'mm d-1', expected 'm': no unambig"):
        builder.build(daily)
    unitless = coarse.assign(t2m=coarse["t2m"].assign_attrs(units=""))
    with pytest.raises(ConfigError, match=r"variable 't2m': the input has no units attribute, expected 'K'"):
        builder.build(unitless)


def test_the_latitude_weighted_loss_adds_row_weights_and_changes_nothing_else(files: dict[str, Any]) -> None:
    plain = ClimateDataset(section(files, patch=[8, 12]), "train")
    weighted = ClimateDataset(section(files, patch=[8, 12], latitude_weighted_loss=True), "train")
    a = plain.sample(5, torch.Generator().manual_seed(7))
    b = weighted.sample(5, torch.Generator().manual_seed(7))
    assert set(a.cond) == {"cond_fields"} and set(b.cond) == {"cond_fields", "row_weights"}
    assert torch.equal(a.target, b.target) and torch.equal(a.cond["cond_fields"], b.cond["cond_fields"])
    # each patch's rows: find them from the latitude channel (phi / 90), then cos(phi) / mean
    phi = b.cond["cond_fields"][:, 4, :, 0].double() * 90.0
    expected = torch.cos(torch.deg2rad(phi))
    torch.testing.assert_close(
        b.cond["row_weights"].double(), expected / expected.mean(dim=1, keepdim=True), rtol=1e-5, atol=0
    )
    full = ClimateDataset(section(files, latitude_weighted_loss=True, static_variables=[], static_paths=[]), "train")
    weights = np.cos(np.radians(full.latitude))
    np.testing.assert_allclose(
        full.sample(2).cond["row_weights"].numpy(), np.tile(weights / weights.mean(), (2, 1)), rtol=1e-6
    )


@needs_data
def test_real_italy_data_with_the_global_orography() -> None:
    config = validate(
        ClimateData,
        {
            "paths": [str(DATA / "era5_t2m_italy_2022-05-06_3h.nc")],
            "static_paths": [str(DATA / "era5_orography_lsm_global.nc")],
            "static_variables": ["orography", "lsm"],
            "train_period": ["2022-05-01", "2022-05-02"],
        },
    )
    ds = ClimateDataset(config)
    assert ds.shape == (1, 40, 48) and ds.static_regridding == "bilinear" and ds.units["t2m"] == "K"
    assert ds.grid_trim.latitude_start == pytest.approx((36.4, 36.65)) and ds.grid_trim.latitude_end == pytest.approx(
        (46.9,)
    )
    assert torch.isfinite(ds.cond_fields).all() and ds.cond_channel_names == ["t2m_coarse", "orography", "lsm"]


@needs_data
def test_real_global_data_trims_the_south_pole_row_for_factor_4() -> None:
    config = validate(
        ClimateData,
        {
            "paths": [str(DATA / "era5_global_1deg_2026-03.nc")],
            "variables": ["t2m", "u10", "v10", "msl", "tp"],
            "transforms": {"tp": "log1p"},
            "static_paths": [str(DATA / "era5_orography_lsm_global.nc")],
            "static_variables": ["orography", "lsm"],
            "train_period": ["2026-03-25", "2026-03-26"],
        },
    )
    ds = ClimateDataset(config)
    assert ds.shape == (5, 180, 360) and ds.latitude[0] == -89.0 and ds.latitude[-1] == 90.0
    assert ds.grid_trim.describe().startswith("dropped 1 row at latitude -90 (south)")
    assert ds.static_regridding == "exact" and ds.periodic_longitude
    assert ds.units == {
        "t2m": "K",
        "u10": "m s**-1",
        "v10": "m s**-1",
        "msl": "Pa",
        "tp": "m",
        "orography": "m",
        "lsm": "(0 - 1)",
    }


# -- statistics in one streaming pass ------------------------------------------------------------------------------
def test_streaming_statistics_equal_the_in_memory_ones_and_subsample_evenly(files: dict[str, Any]) -> None:
    config = section(files)
    loaded = load_fine(config, "train")
    streamed = fit_climate_stats(config)
    in_memory = fit_climate_stats(config, loaded)
    for name in ("t2m", "tp", "orography", "lsm"):
        for key in ("mean", "std"):
            assert streamed[name][key] == pytest.approx(in_memory[name][key], rel=1e-12), (name, key)
        assert streamed[name]["transform"] == in_memory[name]["transform"]
    # data.stats_times: 4 of the 12 train times, evenly spaced: 0, 4, 7, 11 (rounded k * 11 / 3)
    np.testing.assert_array_equal(stats_time_indices(12, 4), [0, 4, 7, 11])
    subsampled = fit_climate_stats(section(files, stats_times=4))
    tp = np.log1p(ascending(files["tp"][[0, 4, 7, 11]]).astype(np.float64))
    assert subsampled["tp"]["mean"] == pytest.approx(tp.mean(), rel=1e-12)
    assert subsampled["tp"]["std"] == pytest.approx(tp.std(), rel=1e-12)
    # a transform with a scale c: log1p(x / c) in both paths, c saved with the statistics
    scaled = section(files, transforms={"tp": {"name": "log1p", "scale": 0.001}})
    streamed, in_memory = fit_climate_stats(scaled)["tp"], fit_climate_stats(scaled, load_fine(scaled, "train"))["tp"]
    assert streamed["scale"] == in_memory["scale"] == 0.001
    tp = np.log1p(np.maximum(ascending(files["tp"][:12]).astype(np.float64), 0) / 0.001)
    for key, expected in (("mean", tp.mean()), ("std", tp.std())):
        assert streamed[key] == pytest.approx(expected, rel=1e-12) and in_memory[key] == pytest.approx(expected)


@needs_data
def test_streaming_statistics_of_the_uk_file_equal_the_in_memory_ones() -> None:
    config = validate(
        ClimateData,
        {"paths": [str(DATA / "era5_t2m_uk_2019-03.nc")], "crop": {"lat": [0, 32], "lon": [0, 48]}},
    )
    streamed = fit_climate_stats(config)["t2m"]
    in_memory = fit_climate_stats(config, load_fine(config, "train"))["t2m"]
    assert streamed["mean"] == pytest.approx(in_memory["mean"], rel=1e-6)
    assert streamed["std"] == pytest.approx(in_memory["std"], rel=1e-6)
    values = xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc")["t2m"].values[:, ::-1][:, :32, :48].astype(np.float64)
    assert streamed["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert streamed["std"] == pytest.approx(values.std(), rel=1e-10)
