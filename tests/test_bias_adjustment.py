"""Bias adjustment with a trained run (diffscale.runs.bias_adjustment, ``diffscale bias-adjust``, ``diffscale
climatology``, ``diffscale downscale --bias-adjust``): a tiny regression run trained in-process on two synthetic
months saves its training coarse climatology; inputs with a known bias are mapped back onto it (QM), a shifted or
scaled future keeps its change (QDM), the downscaling option equals adjusting first, and bad input is refused in one
line with nothing written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from diffscale.data.climate.climatology import CLIMATOLOGY_ARRAYS, CLIMATOLOGY_SIDECAR, calendar_months
from diffscale.evaluation import single_thread
from diffscale.runs import load_climate_run
from diffscale.runs.bias_adjustment import bias_adjust, compute_climatology, load_climatology
from diffscale.validation import ConfigError
from tests.conftest import run_cli, snapshot
from tests.test_climate_runs import LATITUDE, LONGITUDE, climate_config, fine_field, train_run, write_fine

TIMES = pd.date_range("2021-01-01", "2021-02-28T21:00", freq="3h").values  # 472 times: 248 in Jan, 224 in Feb
FUTURE = pd.date_range("2022-01-01", "2022-02-28T21:00", freq="3h").values  # the same calendar days a year later
REFERENCE = ["2021-01-01", "2021-02-28"]


def _write(path: Path, values: np.ndarray, coords: xr.Dataset, times: np.ndarray) -> Path:
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values.astype(np.float32), {"units": "K"})},
        coords={"time": times, "latitude": coords["latitude"].values, "longitude": coords["longitude"].values},
    ).to_netcdf(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bias")
    with torch.random.fork_rng(devices=[]), single_thread():
        fine = fine_field(np.random.default_rng(0), LATITUDE, LONGITUDE, TIMES)
        fine += 3.0 * (calendar_months(TIMES) == 2)[:, None, None]  # a warmer February
        write_fine(root / "fine.nc", fine.astype(np.float32), TIMES)
        config = climate_config(root, "regression", "residual", 1)
        config["data"].update(train_period=REFERENCE, channels={"latlon": False, "hour": False})
        for key in ("static_paths", "static_variables", "validation_period"):
            config["data"].pop(key)
        run_dir = train_run(root, "run", config)
    run = load_climate_run(run_dir, device="cpu")
    coarse = run.coarsen(root / "fine.nc").load()  # the training coarse fields, as the climatology read them
    observed = coarse["t2m"].values.astype(np.float64)
    mean = observed.mean(axis=0)
    biased = mean + 1.3 * (observed - mean) + 2.0  # 2 K warmer, 1.3 x the variability about each cell's mean
    return {
        "root": root,
        "run_dir": run_dir,
        "run": run,
        "coarse": coarse,
        "observed": observed,
        "biased": _write(root / "biased.nc", biased, coarse, TIMES),
        "shifted": _write(
            root / "shifted.nc", np.concatenate([biased, biased + 1.5]), coarse, np.concatenate([TIMES, FUTURE])
        ),
        "scaled": _write(
            root / "scaled.nc",
            np.concatenate([1.1 * observed, 1.1 * 1.05 * observed]),
            coarse,
            np.concatenate([TIMES, FUTURE]),
        ),
    }


def test_training_saved_the_quantiles_of_each_months_coarse_fields(setup: dict[str, Any]) -> None:
    climatology = load_climatology(setup["run_dir"])
    assert climatology is not None and climatology.variables == ("t2m",)
    months = calendar_months(TIMES)
    for month in (1, 2):
        expected = np.quantile(setup["observed"][months == month], climatology.levels, axis=0)
        np.testing.assert_allclose(climatology.quantiles["t2m"][month - 1], expected, rtol=1e-6)
    assert climatology.pools[:2] == ("month", "month") and climatology.counts[:2] == (248, 224)
    assert climatology.month_counts == (248, 224, *[0] * 10)
    assert climatology.pools[11] == "season DJF" and climatology.pools[6] == "none"
    np.testing.assert_allclose(climatology.latitude, setup["coarse"]["latitude"].values)
    assert climatology.units == {"t2m": "K"} and climatology.period == ("2021-01-01T00:00", "2021-02-28T21:00")


def test_qm_maps_a_known_bias_back_onto_the_climatology_in_every_cell(setup: dict[str, Any]) -> None:
    adjusted = bias_adjust(setup["run"], setup["biased"], REFERENCE, "qm")
    observed, values = setup["observed"], adjusted["t2m"].values.astype(np.float64)
    assert np.abs(values.mean(axis=0) - observed.mean(axis=0)).max() < 0.1
    assert np.abs(values.std(axis=0) / observed.std(axis=0) - 1).max() < 0.05
    assert np.abs(values - observed).max() < 1e-3  # a linear bias is undone to float32 rounding
    assert adjusted.attrs["bias_adjustment_method"] == "qm"
    assert adjusted.attrs["bias_reference_period"] == "2021-01-01T00:00 .. 2021-02-28T21:00"
    assert adjusted.attrs["bias_reference_pools"] == "Jan: month (248 times); Feb: month (224 times)"
    assert str(setup["run_dir"].resolve() / CLIMATOLOGY_SIDECAR) in adjusted.attrs["bias_climatology"]
    assert adjusted["t2m"].attrs["bias_adjustment"] == "QM, additive" and adjusted["t2m"].attrs["units"] == "K"


def test_qm_of_the_training_coarse_fields_is_the_identity(setup: dict[str, Any]) -> None:
    adjusted = bias_adjust(setup["run"], setup["coarse"], REFERENCE, "qm")
    np.testing.assert_allclose(adjusted["t2m"].values, setup["observed"], rtol=0, atol=1e-3)


def test_qdm_keeps_a_shift_and_a_ratio_of_the_future_on_the_climatology(setup: dict[str, Any]) -> None:
    """Future = reference + 1.5 K: adjusted future = observed + 1.5 K; future = 1.05 x reference (multiplicative):
    adjusted future = 1.05 x observed (the closed forms of QDM, cell by cell, month by month)."""
    shifted = bias_adjust(setup["run_dir"], setup["shifted"], REFERENCE, "qdm", start="2022-01-01")
    np.testing.assert_array_equal(shifted["time"].values, FUTURE)
    np.testing.assert_allclose(shifted["t2m"].values, setup["observed"] + 1.5, rtol=0, atol=2e-3)
    scaled = bias_adjust(
        setup["run"], setup["scaled"], REFERENCE, "qdm", start="2022-01-01", kinds={"t2m": "multiplicative"}
    )
    np.testing.assert_allclose(scaled["t2m"].values, 1.05 * setup["observed"], rtol=1e-5)
    assert scaled["t2m"].attrs["bias_adjustment"] == "QDM, multiplicative"
    assert scaled.attrs["bias_adjusted_period_pools"] == "Jan: month (248 times); Feb: month (224 times)"


def test_the_command_writes_what_the_api_returns_and_downscale_adjusts_alike(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, out = setup["run_dir"], tmp_path / "adjusted.nc"
    argv = ["bias-adjust", str(run_dir), "--input", str(setup["shifted"]), "--reference", *REFERENCE]
    assert run_cli([*argv, "--method", "qdm", "--start", "2022-02-27", "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    expected = bias_adjust(setup["run"], setup["shifted"], REFERENCE, "qdm", start="2022-02-27")
    with xr.open_dataset(out) as written:
        np.testing.assert_array_equal(written["t2m"].values, expected["t2m"].values)
        assert written.attrs["bias_adjustment_method"] == "qdm"
    # downscale --bias-adjust: the same ensemble as downscaling the adjusted file (a regression run: deterministic)
    common = ["--device", "cpu", "--no-progress", "--start", "2022-02-27"]
    direct = ["downscale", str(run_dir), "--input", str(setup["shifted"]), "--out", str(tmp_path / "a.nc")]
    bias = ["--bias-adjust", "qdm", "--bias-reference", *REFERENCE]
    assert run_cli([*direct, *common, *bias]) == 0
    assert run_cli(["downscale", str(run_dir), "--input", str(out), "--out", str(tmp_path / "b.nc"), *common]) == 0
    with xr.open_dataset(tmp_path / "a.nc") as a, xr.open_dataset(tmp_path / "b.nc") as b:
        np.testing.assert_allclose(a["t2m"].values, b["t2m"].values, rtol=0, atol=1e-4)
        assert a.attrs["bias_adjustment_method"] == b.attrs["bias_adjustment_method"] == "qdm"
        assert a.attrs["bias_reference_period"] == "2021-01-01T00:00 .. 2021-02-28T21:00"


def test_a_run_without_climatology_says_how_to_compute_it_and_the_command_does(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old_run"
    shutil.copytree(setup["run_dir"], old)
    (old / CLIMATOLOGY_ARRAYS).unlink()
    (old / CLIMATOLOGY_SIDECAR).unlink()
    hint = f"compute it from the run's training data with 'diffscale climatology {old}'"
    with pytest.raises(ConfigError, match=re.escape(hint)):
        bias_adjust(old, setup["biased"], REFERENCE, "qm")
    capsys.readouterr()
    assert run_cli(["climatology", str(old)]) == 0
    assert "51 quantiles of t2m" in capsys.readouterr().out
    recomputed, saved = load_climatology(old), load_climatology(setup["run_dir"])
    assert recomputed is not None and saved is not None and recomputed.pools == saved.pools
    np.testing.assert_array_equal(recomputed.quantiles["t2m"], saved.quantiles["t2m"])
    assert compute_climatology(old, levels=21).levels.size == 21


def _bad(setup: dict[str, Any], directory: Path, case: str) -> list[str]:
    run_dir, biased = str(setup["run_dir"]), str(setup["biased"])
    out = ["--output", str(directory / "out.nc")]
    adjust = ["bias-adjust", run_dir, "--input", biased]
    if case == "reference outside":
        return [*adjust, "--reference", "2019-01-01", "2019-12-31", *out]
    if case == "reference partly outside":
        return [*adjust, "--reference", "2020-12-01", "2021-01-31", *out]
    if case == "variable":
        return [*adjust, "--reference", *REFERENCE, "--variable", "tp", *out]
    if case == "no climatology":
        old = directory / "old"
        shutil.copytree(run_dir, old)
        (old / CLIMATOLOGY_SIDECAR).unlink()
        return ["bias-adjust", str(old), "--input", biased, "--reference", *REFERENCE, *out]
    if case == "a season the run was not trained on":
        july = pd.date_range("2021-07-01", periods=60, freq="6h").values
        path = _write(directory / "july.nc", setup["observed"][:60], setup["coarse"], july)
        return ["bias-adjust", run_dir, "--input", str(path), "--reference", "2021-07-01", "2021-07-10", *out]
    if case == "a reference outside the season adjusted":
        june = pd.date_range("2021-06-01", periods=60, freq="6h").values
        times = np.concatenate([TIMES, june])
        values = np.concatenate([setup["observed"], setup["observed"][:60]])
        path = _write(directory / "june.nc", values, setup["coarse"], times)
        reference = ["--reference", "2021-06-01", "2021-06-10", "--end", "2021-02-28"]
        return ["bias-adjust", run_dir, "--input", str(path), *reference, *out]
    downscale = ["downscale", run_dir, "--input", biased, "--out", str(directory / "e.nc"), "--device", "cpu"]
    if case == "downscale without reference":
        return [*downscale, "--bias-adjust", "qm"]
    assert case == "downscale reference outside"
    return [*downscale, "--bias-adjust", "qm", "--bias-reference", "2030-01-01", "2030-12-31"]


BAD = {
    "reference outside": ["--reference = 2019-01-01 2019-12-31: outside the coarse input", "2021-01-01T00:00 .."],
    "reference partly outside": ["--reference = 2020-12-01 2021-01-31: outside the coarse input"],
    "variable": ["--variable:", "has no variable 'tp'", "(it models t2m)"],
    "no climatology": ["has no coarse climatology", "'diffscale climatology"],
    "a season the run was not trained on": ["has no training times in JJA: its climatology cannot stand for Jul"],
    "a reference outside the season adjusted": ["--reference: no reference times in DJF, the season of Jan"],
    "downscale without reference": ["--bias-adjust needs --bias-reference too"],
    "downscale reference outside": ["--bias-reference = 2030-01-01 2030-12-31: outside the coarse input"],
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(
    case: str, setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _bad(setup, tmp_path, case)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("diffscale: error: "), err
    for part in BAD[case]:
        assert part in err, (part, err)
    assert snapshot(tmp_path) == before


def test_resuming_a_run_without_climatology_saves_it(setup: dict[str, Any], tmp_path: Path) -> None:
    old = tmp_path / "old_run"
    shutil.copytree(setup["run_dir"], old)
    (old / CLIMATOLOGY_ARRAYS).unlink()
    (old / CLIMATOLOGY_SIDECAR).unlink()
    argv = ["train", str(setup["root"] / "run.yaml"), "--out", str(old), "--set", "training.steps=2", "--no-progress"]
    with single_thread():
        assert run_cli(argv) == 0
    resumed, saved = load_climatology(old), load_climatology(setup["run_dir"])
    assert resumed is not None and saved is not None
    np.testing.assert_array_equal(resumed.quantiles["t2m"], saved.quantiles["t2m"])
