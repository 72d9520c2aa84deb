"""Climate runs trained through ``diffscale train`` in-process on small synthetic files: a regression run, a
diffusion run on the residual over the upsampled coarse field, and a CorrDiff run on the residual over the
regression run's prediction; the saved statistics are those of the training period (computed here with numpy)
and a resumed run reuses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from diffscale.data.climate import ClimateDataset
from diffscale.evaluation import single_thread
from diffscale.runs import load_climate_run
from diffscale.runs.stats import STATS_NAME
from diffscale.training.checkpoint import load_checkpoint
from tests.conftest import run_cli

FACTOR = 4
LATITUDE = 50.0 + 0.25 * np.arange(16)  # ascending; the fine file stores it descending
LONGITUDE = -3.0 + 0.25 * np.arange(24)  # crosses 0; the statics file is on 0 .. 359.75
TIMES = pd.date_range("2020-01-01", periods=40, freq="3h").values  # 5 days
TRAIN_PERIOD = ["2020-01-01", "2020-01-03"]
VALIDATION_PERIOD = ["2020-01-04", "2020-01-05"]
G0 = 9.80665


def fine_field(rng: np.random.Generator, latitude: np.ndarray, longitude: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Smooth large scales, a diurnal cycle and small-scale noise, in K: (T, H, W)."""
    lat, lon = np.meshgrid(latitude, longitude, indexing="ij")
    hours = (times - times[0]) / np.timedelta64(1, "h")
    phase = rng.uniform(0, 2 * np.pi, size=(times.size, 1, 1))
    diurnal = 2.0 * np.sin(2 * np.pi * hours / 24.0)[:, None, None]
    return (
        278.0
        + 4.0 * np.sin(np.deg2rad(40 * lat) + phase) * np.cos(np.deg2rad(30 * lon))
        + diurnal
        + rng.normal(scale=0.4, size=(times.size, *lat.shape))
    )


def write_fine(path: Path, values: np.ndarray, times: np.ndarray) -> None:
    """t2m (T, H, W) on LATITUDE x LONGITUDE, written with latitude descending."""
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values[:, ::-1].astype(np.float32), {"units": "K"})},
        coords={"time": times, "latitude": LATITUDE[::-1], "longitude": LONGITUDE},
    ).to_netcdf(path)


def write_coarse(
    path: Path, values: np.ndarray, latitude: np.ndarray, longitude: np.ndarray, times: np.ndarray, name: str = "t2m"
) -> None:
    """A coarse file (latitude descending, as a provider writes it)."""
    xr.Dataset(
        {name: (("time", "latitude", "longitude"), values[:, ::-1].astype(np.float32), {"units": "K"})},
        coords={"time": times, "latitude": latitude[::-1], "longitude": longitude},
    ).to_netcdf(path)


def write_statics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Surface geopotential ``z`` [m2 s-2] and ``lsm`` on a larger 0 .. 359.75 grid (latitude 60 -> 40);
    returns the orography [m] and lsm on the fine grid, for independent checks."""
    latitude = np.arange(60.0, 39.99, -0.25)
    longitude = np.arange(0.0, 360.0, 0.25)
    lat, lon = np.meshgrid(latitude, longitude, indexing="ij")
    orography = 300.0 * (1 + np.sin(np.deg2rad(8 * lat)) * np.cos(np.deg2rad(6 * lon)))
    lsm = (np.cos(np.deg2rad(12 * lon)) > 0).astype(np.float64) * 0.8 + 0.1
    xr.Dataset(
        {
            "z": (("latitude", "longitude"), (G0 * orography).astype(np.float32), {"units": "m**2 s**-2"}),
            "lsm": (("latitude", "longitude"), lsm.astype(np.float32), {"units": "(0 - 1)"}),
        },
        coords={"latitude": latitude, "longitude": longitude},
    ).to_netcdf(path)
    rows = [int(np.argmin(np.abs(latitude - value))) for value in LATITUDE]
    cols = [int(np.argmin(np.abs(longitude - value % 360))) for value in LONGITUDE]
    return orography[np.ix_(rows, cols)], lsm[np.ix_(rows, cols)]


def climate_config(
    root: Path, objective: str, target: str, steps: int, regression_run: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """A tiny ``data: {kind: climate}`` configuration over the synthetic files under ``root``."""
    data: dict[str, Any] = {
        "kind": "climate",
        "paths": [str(root / "fine.nc")],
        "variables": ["t2m"],
        "coarsen_factor": FACTOR,
        "static_paths": [str(root / "statics.nc")],
        "static_variables": ["orography", "lsm"],
        "channels": {"latlon": True, "hour": True},
        "target": target,
        "train_period": TRAIN_PERIOD,
        "validation_period": VALIDATION_PERIOD,
    }
    if regression_run is not None:
        data["regression_run"] = str(regression_run)
    return {
        "data": data,
        "model": {
            "arch": "ddpmpp",
            "model_channels": 8,
            "channel_mult": [1, 2],
            "num_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "training": {
            "objective": objective,
            "steps": steps,
            "batch_size": 4,
            "learning_rate": 0.002,
            "warmup_steps": 1,
            "log_every": 1,
            "ema_halflife": 10,
            "tensorboard": False,
            "device": "cpu",
            "seed": seed,
        },
        "sampling": {"steps": 4, "sampler": "heun"},
    }


def write_inputs(root: Path) -> dict[str, Any]:
    """The fine file, the statics file, the fine values (T, H, W) ascending latitude, and the fine statics."""
    rng = np.random.default_rng(0)
    fine = fine_field(rng, LATITUDE, LONGITUDE, TIMES).astype(np.float32)
    write_fine(root / "fine.nc", fine, TIMES)
    orography, lsm = write_statics(root / "statics.nc")
    return {"root": root, "fine": fine, "orography": orography, "lsm": lsm}


def train_run(root: Path, name: str, config: dict[str, Any], extra: list[str] | None = None) -> Path:
    """``diffscale train`` in-process; the run directory."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = root / name
    status = run_cli(["train", str(path), "--out", str(run_dir), "--no-progress", *(extra or [])])
    assert status == 0, f"training {name} failed with status {status}"
    return run_dir


def train_runs(root: Path) -> dict[str, Any]:
    """Inputs plus a regression run (3 steps), a residual diffusion run (3 steps) and a CorrDiff run (2 steps)."""
    inputs = write_inputs(root)
    regression = train_run(root, "regression", climate_config(root, "regression", "residual", 3))
    diffusion = train_run(root, "diffusion", climate_config(root, "diffusion", "residual", 3))
    corrdiff = train_run(
        root, "corrdiff", climate_config(root, "diffusion", "regression_residual", 2, regression_run=regression)
    )
    return {**inputs, "regression": regression, "diffusion": diffusion, "corrdiff": corrdiff}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]), single_thread():
        return train_runs(tmp_path_factory.mktemp("climate_runs"))


def _train_mask() -> np.ndarray:
    start = np.datetime64(TRAIN_PERIOD[0])
    end = np.datetime64(TRAIN_PERIOD[1]) + np.timedelta64(1, "D")
    return (start <= TIMES) & (end > TIMES)


def test_runs_save_the_training_statistics(runs: dict[str, Any]) -> None:
    train = runs["fine"][_train_mask()].astype(np.float64)
    for name in ("regression", "diffusion"):
        saved = json.loads((runs[name] / STATS_NAME).read_text())
        transforms, grid = saved["transforms"], saved["grid"]
        assert set(transforms) == {"t2m", "orography", "lsm"}
        assert transforms["t2m"]["mean"] == pytest.approx(train.mean(), rel=1e-6)
        assert transforms["t2m"]["std"] == pytest.approx(train.std(), rel=1e-3)
        assert transforms["orography"]["mean"] == pytest.approx(runs["orography"].mean(), rel=1e-4)
        assert transforms["lsm"]["mean"] == pytest.approx(runs["lsm"].mean(), rel=1e-5)
        assert (grid["height"], grid["width"]) == (16, 24)
        assert abs(grid["latitude_spacing"]) == pytest.approx(0.25) and grid["longitude_spacing"] == pytest.approx(0.25)
        assert grid["latitude_range"] == pytest.approx([LATITUDE[0], LATITUDE[-1]])
        assert grid["longitude_range"] == pytest.approx([LONGITUDE[0], LONGITUDE[-1]])
    # the CorrDiff run conditions exactly as its regression run: the same statistics
    corrdiff = json.loads((runs["corrdiff"] / STATS_NAME).read_text())["transforms"]
    assert corrdiff == json.loads((runs["regression"] / STATS_NAME).read_text())["transforms"]


def test_runs_load_back_with_their_objective(runs: dict[str, Any]) -> None:
    regression, diffusion = load_climate_run(runs["regression"]), load_climate_run(runs["diffusion"])
    assert regression.deterministic and not diffusion.deterministic
    assert regression.step == diffusion.step == 3 and load_climate_run(runs["corrdiff"]).step == 2
    assert regression.config.training.objective == "regression"
    # the regression model predicts a field of the target's shape from the K = 1 + 2 + 3 + 2 conditioning channels
    cond = torch.randn(2, 8, 16, 24)
    assert regression.model(cond).shape == (2, 1, 16, 24)
    # the diffusion model is a denoiser D(x; sigma, cond_fields)
    x, sigma = torch.randn(2, 1, 16, 24), torch.full((2,), 1.0)
    assert diffusion.model(x, sigma, cond_fields=cond).shape == (2, 1, 16, 24)
    # the metrics log one line per step
    lines = (runs["diffusion"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_corrdiff_base_is_the_regression_prediction(runs: dict[str, Any]) -> None:
    """b = R(c) + U(T(x)) for a regression run of target residual, recomputed from the loaded model."""
    corrdiff = load_climate_run(runs["corrdiff"])
    dataset = ClimateDataset(corrdiff.section, "train", corrdiff.stats)
    assert dataset.base is None
    regression = load_climate_run(runs["regression"])
    with torch.no_grad():
        expected = regression.model(dataset.cond_fields) + dataset.cond_fields[:, :1]
    from diffscale.runs.climate import build_climate_data

    built = build_climate_data(corrdiff.config)
    torch.testing.assert_close(built.base, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(built.base, dataset.cond_fields[:, :1])  # not the plain residual base


def test_a_resumed_run_continues_with_its_saved_statistics(runs: dict[str, Any], tmp_path: Path) -> None:
    root = runs["root"]
    run_dir = tmp_path / "resumed"
    config = climate_config(root, "regression", "residual", 2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_cli(["train", str(path), "--out", str(run_dir), "--no-progress"]) == 0
    stats_before = (run_dir / STATS_NAME).read_text()
    # a statistic no fit could give: the resumed run must use it rather than refit
    marked = json.loads(stats_before)
    marked["transforms"]["t2m"]["mean"] = 123.0
    (run_dir / STATS_NAME).write_text(json.dumps(marked))
    config["training"]["steps"] = 4
    path.write_text(yaml.safe_dump(config))
    assert run_cli(["train", str(path), "--out", str(run_dir), "--no-progress"]) == 0
    assert load_checkpoint(run_dir).step == 4
    assert json.loads((run_dir / STATS_NAME).read_text())["transforms"]["t2m"]["mean"] == 123.0
    from diffscale.config import config_from_dict
    from diffscale.runs.climate import build_climate_data

    dataset = build_climate_data(config_from_dict(config), run_dir)
    assert dataset.stats["t2m"]["mean"] == 123.0
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_corrdiff_run_refuses_a_regression_run_on_other_data(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = climate_config(runs["root"], "diffusion", "regression_residual", 1, regression_run=runs["regression"])
    config["data"]["coarsen_factor"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert run_cli(["train", str(path), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.coarsen_factor differ" in err[0]
    assert not (tmp_path / "x").exists()
    # a diffusion run cannot serve as the regression run
    config = climate_config(runs["root"], "diffusion", "regression_residual", 1, regression_run=runs["diffusion"])
    path.write_text(yaml.safe_dump(config))
    assert run_cli(["train", str(path), "--out", str(tmp_path / "y"), "--no-progress"]) == 2
    assert "not a regression run" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_downscaled_ensembles_measure_how_far_the_input_lies_outside_the_training_range(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    """The range of the training inputs is saved with the run; an ensemble of training times carries 0 in its
    per-time extrapolation variables, the same times shifted by +8 K carry a share near 1 and a warning; a run
    saved without the range downscales as before (no such variables, no warning)."""
    import shutil
    import warnings

    from diffscale.data.climate.extrapolation import ExtrapolationWarning

    run = load_climate_run(runs["diffusion"], device="cpu")
    assert run.input_range is not None and run.input_range.times == int(_train_mask().sum())
    coarse = run.coarsen(runs["root"] / "fine.nc", start=TRAIN_PERIOD[0], end=TRAIN_PERIOD[1]).isel(time=[0, 5, 9])
    names = ["t2m_outside_training_range", "t2m_training_range_excess"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        inside = run.downscale(coarse, members=2, steps=2)
    for name in names:
        assert inside[name].dims == ("time",) and np.all(inside[name].values == 0)
    assert inside["t2m_outside_training_range"].attrs["units"] == "1"
    with pytest.warns(ExtrapolationWarning) as caught:
        shifted = run.downscale(coarse.assign(t2m=coarse["t2m"] + 8.0), members=2, steps=2)
    assert np.all(shifted["t2m_outside_training_range"].values > 0.5)
    # excess in training standard deviations: at least 8 K less the widest cell's range above the input, over std
    assert np.all(shifted["t2m_training_range_excess"].values > 0)
    lines = [str(item.message) for item in caught if item.category is ExtrapolationWarning]
    assert len(lines) == 1 and "\n" not in lines[0] and "t2m at 3 of 3 times" in lines[0]
    old = tmp_path / "old"
    shutil.copytree(runs["diffusion"], old)
    saved = json.loads((old / STATS_NAME).read_text())
    del saved["input_range"]
    (old / STATS_NAME).write_text(json.dumps(saved))
    old_run = load_climate_run(old, device="cpu")
    assert old_run.input_range is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        ensemble = old_run.downscale(coarse.assign(t2m=coarse["t2m"] + 8.0), members=2, steps=2)
    assert not any(name in ensemble for name in names)
    np.testing.assert_array_equal(ensemble["t2m"].values, shifted["t2m"].values)


def test_cross_fitted_base_is_the_mean_of_the_out_of_fold_predictions(runs: dict[str, Any], tmp_path: Path) -> None:
    """Fold run A trained on 1 January only, B on 3 January only: the base of a 1 January time is B's prediction,
    of 3 January A's, of 2 January (left out by both) their mean; a time every fold trained on is refused."""
    from diffscale.data.climate.dataset import regression_base
    from diffscale.runs.climate import cross_fitted_base, in_training_split
    from diffscale.validation import ConfigError

    root = runs["root"]
    folds = {}
    for name, period in (("a", ["2020-01-01", "2020-01-01"]), ("b", ["2020-01-03", "2020-01-03"])):
        config = climate_config(root, "regression", "residual", 1, seed=3 if name == "a" else 4)
        config["data"].update(train_period=period, validation_period=None)
        folds[name] = load_climate_run(train_run(tmp_path, f"fold_{name}", config), device="cpu")
    section = load_climate_run(runs["regression"]).section
    dataset = ClimateDataset(section, "train", folds["a"].stats)
    day = (dataset.times - np.datetime64("2020-01-01")) // np.timedelta64(1, "D")
    assert np.array_equal(in_training_split(folds["a"].section, dataset.times), day == 0)
    base = cross_fitted_base(dataset, [folds["a"], folds["b"]])
    predicted = {
        name: regression_base(run.regression_predictor(), dataset.cond_fields, 1) for name, run in folds.items()
    }
    torch.testing.assert_close(base[day == 0], predicted["b"][day == 0])
    torch.testing.assert_close(base[day == 2], predicted["a"][day == 2])
    torch.testing.assert_close(base[day == 1], (predicted["a"][day == 1] + predicted["b"][day == 1]) / 2)
    with pytest.raises(ConfigError, match="lie in the train split of every fold run"):
        cross_fitted_base(dataset, [folds["a"]])
