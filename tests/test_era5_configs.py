"""The shipped ERA5 configurations on small slices of the real files (skipped without ../shared/data): each is
loaded as shipped, made small (a few training steps of a small network, a few times) and run through
``diffscale train``, ``downscale`` and ``evaluate``.

* ``era5_global.yaml``: u10, v10 and tp on a band of the global grid that spans every longitude (periodic):
  the seam is measured, the wind speed derived, the joint energy score given; and a deterministic run shows the
  periodicity directly: the prediction for the globe turned by 180 degrees is the prediction turned.
* ``era5_italy.yaml``: the grid offset from the invariants' lattice, so the statics are interpolated; 43 rows
  trimmed to 40.
* ``era5land_quebec.yaml``: tasmax and tasmin at factor 3, every fourth week held out, the order report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from diffscale.data.climate import open_fields
from diffscale.data.climate.grid import coarsen
from diffscale.evaluation import single_thread
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GLOBAL = DATA / "era5_global_1deg_2026-03.nc"
ITALY = DATA / "era5_t2m_italy_2022-05-06_3h.nc"
QUEBEC = DATA / "era5land_quebec_1970_daily.nc"
STATICS = DATA / "era5_orography_lsm_global.nc"

pytestmark = pytest.mark.skipif(
    not all(path.exists() for path in (GLOBAL, ITALY, QUEBEC, STATICS)), reason="shared ERA5 data not available"
)

SMALL_MODEL = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}
FEW_STEPS = {"steps": 3, "batch_size": 2, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0}


def shipped(name: str, data: dict[str, Any], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """configs/NAME.yaml with data paths absolute, ``data`` overrides, a small network and a few CPU steps."""
    config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    for key in ("paths", "static_paths"):
        if key in config["data"]:
            config["data"][key] = [str(DATA / Path(path).name) for path in config["data"][key]]
    config["data"].update(data)
    config["model"].update({**SMALL_MODEL, **(model or {})})
    config["training"].update({**FEW_STEPS, "tensorboard": False, "device": "cpu"})
    return config


def train(root: Path, name: str, config: dict[str, Any]) -> Path:
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    with torch.random.fork_rng(devices=[]), single_thread():
        assert run_cli(["train", str(root / f"{name}.yaml"), "--out", str(root / name), "--no-progress"]) == 0
    return root / name


def downscale(run_dir: Path, coarse: Path, out: Path, *extra: str) -> None:
    argv = ["downscale", str(run_dir), "--input", str(coarse), "--out", str(out), "--steps", "3", "--seed", "1"]
    with single_thread():
        assert run_cli([*argv, "--device", "cpu", "--no-progress", *extra]) == 0


def evaluate(ensemble: Path, truth: Path, out: Path) -> dict[str, Any]:
    assert run_cli(["evaluate", str(ensemble), "--truth", str(truth), "--out", str(out), "--no-figures"]) == 0
    return json.loads((out / "scores.json").read_text())


# -- global ----------------------------------------------------------------------------------------------------
BAND = [84, 108]  # harmonised rows (latitude ascending from -90): -6 .. 17 N, every longitude


def test_global_band_of_three_variables_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "variables": ["u10", "v10", "tp"],
        "crop": {"lat": BAND},
        "patch": [16, 360],
        "train_period": ["2026-03-25T00:00", "2026-03-25T14:00"],
        "test_period": ["2026-03-31T15:00", "2026-03-31T23:00"],
    }
    run_dir = train(tmp_path, "global", shipped("era5_global", data))
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["transforms"]["tp"]["scale"] == 0.001 and stats["transforms"]["tp"]["units"] == "m"
    assert stats["grid"]["width"] == 360 and stats["grid"]["static_regridding"] == "exact"  # 1 deg on 0.25 deg
    fine = open_fields([str(GLOBAL)], data["variables"], ("2026-03-31T15:00", "2026-03-31T23:00"))
    fine = fine.isel(latitude=slice(*BAND)).load()
    coarsen(fine, 4).to_netcdf(tmp_path / "coarse.nc")
    downscale(run_dir, tmp_path / "coarse.nc", tmp_path / "ensemble.nc", "--members", "3")
    with xr.open_dataset(tmp_path / "ensemble.nc") as ensemble:
        assert ensemble.sizes == {"member": 3, "time": 2, "latitude": 24, "longitude": 360}
        assert ensemble["tp"].attrs["units"] == "m" and float(ensemble["tp"].min()) >= 0.0
        assert ensemble["u10"].attrs["standard_name"] == "eastward_wind"
    document = evaluate(tmp_path / "ensemble.nc", GLOBAL, tmp_path / "report")
    assert list(document["variables"]) == ["u10", "v10", "tp", "ws10"]
    for name in ("u10", "v10", "tp", "ws10"):
        seam = document["variables"][name]["seam"]
        assert seam["truth"] > 0 and np.isfinite(seam["ratio"])
        # the baseline interpolates round the globe: across the seam it is smoother than the truth, as everywhere
        # (clamped at the edges instead, its seam pair would differ by the whole coarse step, 4x as much)
        assert seam["bilinear"] < seam["truth"] and seam["bilinear_interior"] < seam["truth_interior"]
    assert document["joint"]["energy_score"]["variables"] == ["u10", "v10", "tp"]
    assert "seam at the longitude wrap" in capsys.readouterr().out


def test_turning_the_globe_turns_the_prediction(tmp_path: Path) -> None:
    # a deterministic run conditioned on the coarse fields alone (no latitude/longitude or static channels): the
    # network pads circularly and the upsampling wraps, so the grid's edge at -180/179 is like any other meridian
    data = {
        "variables": ["t2m", "msl"],
        "transforms": {},
        "crop": {"lat": BAND},
        "patch": None,
        "static_paths": [],
        "static_variables": [],
        "channels": {"latlon": False, "hour": False},
        "train_period": ["2026-03-25T00:00", "2026-03-25T14:00"],
        "test_period": ["2026-03-31T23:00", "2026-03-31T23:00"],
    }
    config = shipped("era5_global", data)
    config["training"]["objective"] = "regression"
    run_dir = train(tmp_path, "regression", config)
    fine = open_fields([str(GLOBAL)], data["variables"], ("2026-03-31T23:00", "2026-03-31T23:00"))
    coarse = coarsen(fine.isel(latitude=slice(*BAND)).load(), 4)
    coarse.to_netcdf(tmp_path / "coarse.nc")
    turned = coarse.assign_coords(longitude=coarse.longitude + 180.0)  # the same values, half a turn east
    turned.to_netcdf(tmp_path / "turned.nc")
    downscale(run_dir, tmp_path / "coarse.nc", tmp_path / "plain.nc")
    downscale(run_dir, tmp_path / "turned.nc", tmp_path / "turned_out.nc")
    with xr.open_dataset(tmp_path / "plain.nc") as plain, xr.open_dataset(tmp_path / "turned_out.nc") as moved:
        for name in data["variables"]:
            expected = np.roll(plain[name].values, 180, axis=-1)
            scale = float(np.abs(plain[name].values).max())
            np.testing.assert_allclose(moved[name].values, expected, rtol=0, atol=1e-5 * scale)


# -- Italy -----------------------------------------------------------------------------------------------------
def test_italy_with_interpolated_statics(tmp_path: Path) -> None:
    data = {
        "train_period": ["2022-05-01", "2022-05-02"],
        "validation_period": None,
        "test_period": ["2022-06-30", "2022-06-30"],
    }
    run_dir = train(tmp_path, "italy", shipped("era5_italy", data))
    grid = json.loads((run_dir / "data_stats.json").read_text())["grid"]
    assert grid["static_regridding"] == "bilinear"  # 46.9, 46.65, ... N and 6.57, 6.82, ... E lie between 0.25 nodes
    assert grid["trimmed"]["shape"] == [40, 48]
    assert grid["trimmed"]["dropped_latitude"] == {
        "south": pytest.approx([36.4, 36.65]),
        "north": pytest.approx([46.9]),
    }
    fine = open_fields([str(ITALY)], ["t2m"], ("2022-06-30", "2022-06-30T23:00")).isel(latitude=slice(2, 42)).load()
    coarsen(fine, 4).to_netcdf(tmp_path / "coarse.nc")
    downscale(run_dir, tmp_path / "coarse.nc", tmp_path / "ensemble.nc", "--members", "2")
    with xr.open_dataset(tmp_path / "ensemble.nc") as ensemble:
        np.testing.assert_allclose(ensemble.latitude.values, fine.latitude.values, atol=1e-4)
        assert ensemble.sizes["time"] == 8 and ensemble["t2m"].attrs["units"] == "K"
    document = evaluate(tmp_path / "ensemble.nc", ITALY, tmp_path / "report")
    assert 0.5 < document["variables"]["t2m"]["bilinear"]["rmse"] < 3.0  # K: 4x coarsening over the Alps
    assert "seam" not in document["variables"]["t2m"] and "joint" not in document


# -- Quebec ----------------------------------------------------------------------------------------------------
def test_quebec_tasmax_tasmin_with_the_order_report(tmp_path: Path) -> None:
    config = shipped("era5land_quebec", {})
    weeks = config["data"]["test_period"]
    assert len(weeks) == 13 and weeks[0] == ["1970-01-22", "1970-01-28"] and weeks[-1] == ["1970-12-24", "1970-12-30"]
    from diffscale.config.climate import ClimateData
    from diffscale.data.climate import ClimateDataset

    section = ClimateData.model_validate(config["data"])
    test = ClimateDataset(section, "test")
    day = (test.times - np.datetime64("1970-01-01")) // np.timedelta64(1, "D")
    assert test.times.size == 91 and set((day // 7) % 4) == {3}  # weeks 4, 8, ..., 52 counted from 1
    run_dir = train(tmp_path, "quebec", config)
    fine = open_fields([str(QUEBEC)], ["tasmax", "tasmin"], tuple(weeks[0])).load()
    coarsen(fine, 3).to_netcdf(tmp_path / "coarse.nc")
    downscale(run_dir, tmp_path / "coarse.nc", tmp_path / "ensemble.nc", "--members", "3")
    with xr.open_dataset(tmp_path / "ensemble.nc") as ensemble:
        assert ensemble.sizes == {"member": 3, "time": 7, "latitude": 30, "longitude": 30}
        assert ensemble["tasmin"].attrs["units"] == "degC" and int(ensemble.attrs["coarsening_factor"]) == 3
    document = evaluate(tmp_path / "ensemble.nc", QUEBEC, tmp_path / "report")
    (pair,) = document["ordered_pairs"]
    assert pair["truth"] == 0.0 and 0.0 <= pair["ensemble"] <= 1.0
    downscale(run_dir, tmp_path / "coarse.nc", tmp_path / "sorted.nc", "--members", "3", "--sort-ordered-pairs")
    assert evaluate(tmp_path / "sorted.nc", QUEBEC, tmp_path / "sorted")["ordered_pairs"][0]["ensemble"] == 0.0


# -- the UK on any window ----------------------------------------------------------------------------------------
UK = DATA / "era5_t2m_uk_2019-03.nc"


@pytest.mark.skipif(not UK.exists(), reason="shared ERA5 data not available")
def test_uk_windows_config_trains_on_the_whole_file_and_downscales_a_shifted_window(tmp_path: Path) -> None:
    """era5_uk_windows.yaml keeps the file's 33 x 49 grid (not whole blocks of 4) and downscales a window one fine
    row south of era5_uk.yaml's, coarsened on its own, in one network call."""
    data = {"train_period": ["2019-03-01T00:00", "2019-03-01T05:00"], "validation_period": None}
    run_dir = train(tmp_path, "uk_windows", shipped("era5_uk_windows", data))
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert (stats["grid"]["height"], stats["grid"]["width"]) == (33, 49)
    fine = open_fields([str(UK)], ["t2m"], ("2019-03-25T00:00", "2019-03-25T02:00"))
    fine = fine.isel(latitude=slice(0, 32), longitude=slice(0, 48)).load()  # latitude ascending: from 50.0 N
    coarsen(fine, 4).to_netcdf(tmp_path / "coarse.nc")
    downscale(run_dir, tmp_path / "coarse.nc", tmp_path / "ensemble.nc", "--members", "2", "--patch", "32", "48")
    with xr.open_dataset(tmp_path / "ensemble.nc") as ensemble:
        assert ensemble.sizes == {"member": 2, "time": 3, "latitude": 32, "longitude": 48}
        assert float(ensemble["latitude"][0]) == 50.0 and bool(np.isfinite(ensemble["t2m"]).all())
    # `diffscale coarsen` of the whole file: the kept 33 x 49 grid is trimmed to whole blocks (32 x 48) there
    argv = ["coarsen", str(run_dir), "--input", str(UK), "--start", "2019-03-25T00:00", "--end", "2019-03-25T01:00"]
    assert run_cli([*argv, "--out", str(tmp_path / "coarsened.nc")]) == 0
    with xr.open_dataset(tmp_path / "coarsened.nc") as coarsened:
        assert (coarsened.sizes["latitude"], coarsened.sizes["longitude"]) == (8, 12)
