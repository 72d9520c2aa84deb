"""Evaluation without a fine truth (diffscale.runs.truth_free, ``diffscale evaluate`` without ``--truth``) on tiny
climate runs trained in-process: coarse consistency against independently computed block means (0 for an ensemble
built to keep the coarse field, the bias for a shifted one), the spectrum against the run's training fine fields
(1 for the training fields themselves, near 1 for held-out fields of the same process, far below for smooth
ones), the spectrum computed from the data of a run saved without it, and negative precipitation of a
standardized precipitation run counted, printed and recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

import diffscale
from diffscale.evaluation import single_thread
from diffscale.evaluation.climate_report import upsample_bilinear
from diffscale.runs.climatology import SPECTRUM_KEY, run_fine_spectrum
from diffscale.runs.stats import STATS_NAME
from diffscale.validation import ConfigError
from tests.conftest import run_cli
from tests.test_climate_runs import (
    FACTOR,
    LATITUDE,
    LONGITUDE,
    TIMES,
    _train_mask,
    climate_config,
    train_run,
    write_coarse,
    write_inputs,
)

COARSE_LATITUDE = LATITUDE.reshape(-1, FACTOR).mean(axis=1)
COARSE_LONGITUDE = LONGITUDE.reshape(-1, FACTOR).mean(axis=1)
HELD_OUT = ~_train_mask()  # the validation days: 16 times the run never saw


def _area_block_mean(fine: np.ndarray) -> np.ndarray:
    """sum_{i,j in block} cos(phi_i) x_ij / (f sum_i cos(phi_i)) over FACTOR x FACTOR blocks of (..., H, W)."""
    weights = np.cos(np.deg2rad(LATITUDE))
    *lead, height, width = fine.shape
    blocks = fine.reshape(*lead, height // FACTOR, FACTOR, width // FACTOR, FACTOR)
    w = weights.reshape(height // FACTOR, FACTOR)[:, :, None, None]
    return (blocks * w).sum(axis=(-3, -1)) / (FACTOR * w.sum(axis=1)[:, 0, 0][:, None])


def _ensemble(members: np.ndarray, times: np.ndarray, **attrs: Any) -> xr.Dataset:
    return xr.Dataset(
        {"t2m": (("member", "time", "latitude", "longitude"), members, {"units": "K"})},
        coords={"member": np.arange(members.shape[0]), "time": times, "latitude": LATITUDE, "longitude": LONGITUDE},
        attrs={"coarsening_factor": FACTOR, **attrs},
    )


def _coarse(values: np.ndarray, times: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
        coords={"time": times, "latitude": COARSE_LATITUDE, "longitude": COARSE_LONGITUDE},
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]), single_thread():
        root = tmp_path_factory.mktemp("truth_free")
        inputs = write_inputs(root)
        run = train_run(root, "diffusion", climate_config(root, "diffusion", "residual", 3))
        fine = inputs["fine"].astype(np.float64)
        times = TIMES[-3:]
        coarse = fine[-3:].reshape(3, 4, FACTOR, 6, FACTOR).mean(axis=(2, 4))  # any coarse field will do
        write_coarse(root / "coarse.nc", coarse, COARSE_LATITUDE, COARSE_LONGITUDE, times)
        ensemble = root / "ensemble.nc"
        argv = ["--members", "3", "--steps", "2", "--seed", "1", "--device", "cpu", "--no-progress"]
        assert run_cli(["downscale", str(run), "--input", str(root / "coarse.nc"), "--out", str(ensemble), *argv]) == 0
    return {"root": root, "run": run, "fine": fine, "ensemble": ensemble, "coarse_path": root / "coarse.nc"}


def test_the_command_without_truth_reports_consistency_range_and_spectrum(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    with single_thread():
        assert run_cli(["evaluate", str(setup["ensemble"]), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert f"coarse input: ['{setup['coarse_path'].resolve()}']" in out  # the file the ensemble records
    assert f"training spectrum: saved with the run {setup['run']}" in out
    scores = json.loads((tmp_path / "report" / "scores.json").read_text())
    t2m = scores["variables"]["t2m"]
    # independent: area-weighted block means of the members read back with xarray, against the coarse file
    with xr.open_dataset(setup["ensemble"]) as ensemble, xr.open_dataset(setup["coarse_path"]) as coarse:
        members = ensemble["t2m"].sortby("latitude").values.astype(np.float64)
        given = coarse["t2m"].sortby("latitude").values.astype(np.float64)
        share = ensemble["t2m_outside_training_range"].values.astype(np.float64)
    difference = _area_block_mean(members) - given[None]
    row_weights = np.cos(np.deg2rad(COARSE_LATITUDE))[:, None] / (np.cos(np.deg2rad(COARSE_LATITUDE)).sum() * 6)
    assert t2m["coarse_consistency"]["bias"] == pytest.approx((difference * row_weights).sum((2, 3)).mean(), abs=1e-9)
    rmse = np.sqrt((difference**2 * row_weights).sum((2, 3)).mean())
    assert t2m["coarse_consistency"]["rmse"] == pytest.approx(rmse, rel=1e-9)
    assert t2m["extrapolation"]["mean_outside_fraction"] == pytest.approx(share.mean(), rel=1e-6)
    outside = int(((members < 170) | (members > 340)).sum())
    assert t2m["physical_range"] == {
        "checked": True,
        "range": [170.0, 340.0],
        "outside_count": outside,
        "outside_fraction": outside / members.size,
        "recorded_outside_count": outside,
    }
    spectrum = t2m["spectrum_vs_training"]
    assert spectrum["grid"] == "the training grid" and spectrum["shells"] > 0
    assert scores["training_spectrum_times"] == int(_train_mask().sum())
    assert (
        scores["figures"] == ["t2m_spectrum_ratio.png"] and (tmp_path / "report" / "t2m_spectrum_ratio.png").is_file()
    )
    lines = out.splitlines()
    assert any(line.startswith("coarse consistency (members' block means - coarse input): RMSE ") for line in lines)
    assert any(line.startswith("physical range 170 to 340 K: ") for line in lines)
    assert any(
        line.startswith("spectrum of the members / training fine fields above the coarse Nyquist") for line in lines
    )
    # the Python API gives the same numbers
    dataset = diffscale.evaluate(setup["ensemble"])
    assert float(dataset["coarse_rmse"].sel(variable="t2m")) == pytest.approx(t2m["coarse_consistency"]["rmse"])
    assert float(dataset["spectral_ratio_vs_training"].sel(variable="t2m")) == pytest.approx(spectrum["mean_ratio"])


def test_an_ensemble_that_keeps_the_coarse_field_scores_0_and_a_shifted_one_its_shift(setup: dict[str, Any]) -> None:
    truth = setup["fine"][HELD_OUT][:4]
    times = TIMES[HELD_OUT][:4]
    coarse = _coarse(_area_block_mean(truth), times)
    # members: the truth plus +-a in alternate columns (every row of every block sums to 0: the block mean is kept)
    pattern = np.where(np.arange(LONGITUDE.size) % 2 == 0, 1.0, -1.0)[None, None, None, :]
    members = truth[None] + np.array([0.5, 1.0, 2.0])[:, None, None, None] * pattern
    kept = diffscale.evaluate(_ensemble(members, times), coarse=coarse, run=setup["run"])
    assert abs(float(kept["coarse_rmse"].item())) < 1e-10 and abs(float(kept["coarse_bias"].item())) < 1e-10
    shifts = np.array([0.1, 0.2, 0.6])[:, None, None, None]
    shifted = diffscale.evaluate(_ensemble(members + shifts, times), coarse=coarse, run=setup["run"])
    assert float(shifted["coarse_bias"].item()) == pytest.approx(0.3, abs=1e-9)
    assert float(shifted["coarse_rmse"].item()) == pytest.approx(np.sqrt((0.01 + 0.04 + 0.36) / 3), abs=1e-9)
    per_member = shifted["coarse_rmse_per_member"].sel(variable="t2m").values
    np.testing.assert_allclose(per_member, [0.1, 0.2, 0.6], atol=1e-9)


def test_the_spectrum_ratio_is_1_for_training_fields_near_1_for_held_out_ones_and_low_for_smooth_ones(
    setup: dict[str, Any],
) -> None:
    ratios = {}
    fields = {"training": _train_mask(), "held out": HELD_OUT}
    for label, mask in fields.items():
        truth, times = setup["fine"][mask], TIMES[mask]
        coarse = _coarse(_area_block_mean(truth), times)
        scores = diffscale.evaluate(_ensemble(truth[None], times), coarse=coarse, run=setup["run"])
        ratios[label] = float(scores["spectral_ratio_vs_training"].item())
        if label == "held out":  # the coarse field interpolated bilinearly: no small scales of its own
            smooth = upsample_bilinear(_area_block_mean(truth), FACTOR)
            scores = diffscale.evaluate(_ensemble(smooth[None], times), coarse=coarse, run=setup["run"])
            ratios["bilinear"] = float(scores["spectral_ratio_vs_training"].item())
    assert ratios["training"] == pytest.approx(1.0, abs=1e-9)  # the training fields are the climatology
    assert 0.8 < ratios["held out"] < 1.25
    assert ratios["bilinear"] < 0.5, ratios


def test_a_run_saved_without_its_spectrum_has_it_computed_from_its_training_data(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    stats = json.loads((run / STATS_NAME).read_text())
    saved = stats.pop(SPECTRUM_KEY)
    (run / STATS_NAME).write_text(json.dumps(stats))
    computed, source = run_fine_spectrum(run)
    assert source == f"computed from the training data of {run}"
    assert computed is not None and computed["times"] == saved["times"]
    np.testing.assert_allclose(computed["power"]["t2m"], saved["power"]["t2m"], rtol=1e-12)
    # without readable training data the comparison is left out and the report says why
    moved = setup["root"] / "fine.nc"
    hidden = tmp_path / "fine.nc"
    shutil.move(moved, hidden)
    try:
        missing, reason = run_fine_spectrum(run)
        scores = diffscale.evaluate(setup["ensemble"], run=run)
    finally:
        shutil.move(hidden, moved)
    assert missing is None and reason.startswith(f"the training data of {run} cannot be read")
    assert np.isnan(float(scores["spectral_ratio_vs_training"].item()))
    assert scores.attrs["training_spectrum"] == reason


def test_without_a_coarse_input_or_with_one_off_the_blocks_it_is_a_one_line_error(setup: dict[str, Any]) -> None:
    truth, times = setup["fine"][-2:], TIMES[-2:]
    with pytest.raises(
        ConfigError, match=r"records no coarse input file: pass the coarse input it was downscaled from \(coarse\)"
    ):
        diffscale.evaluate(_ensemble(truth[None], times))
    recorded = _ensemble(truth[None], times, coarse_input="an in-memory xarray.Dataset")
    with pytest.raises(ConfigError, match="was downscaled from an in-memory Dataset: pass the coarse input"):
        diffscale.evaluate(recorded)
    celsius = _coarse(_area_block_mean(truth) - 273.15, times)  # degC labelled K
    with pytest.raises(ConfigError, match=r"coarse input .*'t2m' holds -?\d.* K at time .*plausible range"):
        diffscale.evaluate(_ensemble(truth[None], times), coarse=celsius)


def test_a_coarse_input_on_another_grid_is_regridded_onto_the_blocks_or_refused(setup: dict[str, Any]) -> None:
    """A climate model's coarse field on its own grid (1.25 x 1.5 deg, off the ensemble's 1 deg blocks): regridded
    onto them (conservatively, or bilinearly), a field uniform in space stays the same, so members whose block means
    equal it score 0 and members 0.3 K warmer a bias of 0.3 K; with regrid none the grid is refused."""
    times = TIMES[HELD_OUT][:2]
    level = np.array([281.0, 276.5])  # one value per time, the same everywhere
    source_latitude, source_longitude = np.arange(49.5, 54.6, 1.25), np.arange(-3.5, 4.1, 1.5)
    coarse = xr.Dataset(
        {
            "t2m": (
                ("time", "latitude", "longitude"),
                np.broadcast_to(level[:, None, None], (2, source_latitude.size, source_longitude.size)).copy(),
                {"units": "K"},
            )
        },
        coords={"time": times, "latitude": source_latitude, "longitude": source_longitude},
    )
    # members: the level plus +-0.5 K in alternate columns (every block's mean is the level)
    pattern = np.where(np.arange(LONGITUDE.size) % 2 == 0, 0.5, -0.5)[None, None, None, :]
    members = level[None, :, None, None] + np.zeros((2, 1, LATITUDE.size, 1)) + pattern
    kept = diffscale.evaluate(_ensemble(members, times), coarse=coarse, run=setup["run"])
    assert abs(float(kept["coarse_rmse"].item())) < 1e-9
    warmer = diffscale.evaluate(_ensemble(members + 0.3, times), coarse=coarse, run=setup["run"], regrid="bilinear")
    assert float(warmer["coarse_bias"].item()) == pytest.approx(0.3, abs=1e-9)
    with pytest.raises(ConfigError, match="coarse input"):
        diffscale.evaluate(_ensemble(members, times), coarse=coarse, run=setup["run"], regrid="none")


# -- precipitation ---------------------------------------------------------------------------------------------
def _precipitation(rng: np.random.Generator) -> np.ndarray:
    """Showers in m per 3 h: 0 over much of the domain, up to a few mm (T, H, W), latitude ascending."""
    lat, lon = np.meshgrid(LATITUDE, LONGITUDE, indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=(TIMES.size, 1, 1))
    wet = np.sin(np.deg2rad(60 * lat) + phase) * np.cos(np.deg2rad(45 * lon)) + rng.normal(
        0, 0.3, (TIMES.size, *lat.shape)
    )
    return np.maximum(wet - 0.3, 0.0) * 0.003


def test_negative_precipitation_members_are_counted_printed_and_recorded(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = setup["root"]
    fine = _precipitation(np.random.default_rng(5))
    xr.Dataset(
        {"tp": (("time", "latitude", "longitude"), fine[:, ::-1].astype(np.float32), {"units": "m"})},
        coords={"time": TIMES, "latitude": LATITUDE[::-1], "longitude": LONGITUDE},
    ).to_netcdf(root / "tp.nc")
    config = climate_config(root, "diffusion", "residual", 2)
    config["data"].update({"paths": [str(root / "tp.nc")], "variables": ["tp"]})  # transform: standardize
    with single_thread():
        run = train_run(root, "precipitation", config)
        coarse = fine[-2:].reshape(2, 4, FACTOR, 6, FACTOR).mean(axis=(2, 4))
        xr.Dataset(
            {"tp": (("time", "latitude", "longitude"), coarse.astype(np.float32), {"units": "m"})},
            coords={"time": TIMES[-2:], "latitude": COARSE_LATITUDE, "longitude": COARSE_LONGITUDE},
        ).to_netcdf(tmp_path / "coarse_tp.nc")
        capsys.readouterr()
        out = tmp_path / "tp_ensemble.nc"
        argv = ["--members", "4", "--steps", "2", "--device", "cpu", "--no-progress"]
        assert (
            run_cli(["downscale", str(run), "--input", str(tmp_path / "coarse_tp.nc"), "--out", str(out), *argv]) == 0
        )
    warnings_printed = [line for line in capsys.readouterr().err.splitlines() if "plausible range" in line]
    with xr.open_dataset(out) as ensemble:
        values = ensemble["tp"].values
        negative = int((values < 0).sum())
        recorded = int(ensemble["tp"].attrs["outside_plausible_range_count"])
    assert negative > 0 and recorded == negative  # a standardized 2-step model leaves negative amounts
    assert warnings_printed == [
        f"warning: variable 'tp': {negative} of {values.size} member values ({100 * negative / values.size:.3g} %) "
        "lie outside the plausible range 0 to 2 m; they are written as sampled (the count is the variable's "
        "attribute outside_plausible_range_count)"
    ]
    scores = diffscale.evaluate(out)
    assert int(scores["outside_range_count"].item()) == negative


def test_a_run_whose_grid_had_no_spectrum_says_why_and_run_with_truth_is_refused(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    stats = json.loads((run / STATS_NAME).read_text())
    stats[SPECTRUM_KEY] = {"unavailable": "no power spectrum on the training grid (latitude is not evenly spaced)"}
    (run / STATS_NAME).write_text(json.dumps(stats))
    capsys.readouterr()
    assert run_cli(["evaluate", str(setup["ensemble"]), "--run", str(run), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"training spectrum: {run}: no power spectrum on the training grid (latitude is not evenly spaced)" in out
    assert "spectrum against the training period: not available" in out
    assert not (tmp_path / "r" / "t2m_spectrum_ratio.png").exists()
    argv = ["evaluate", str(setup["ensemble"]), "--truth", str(setup["coarse_path"]), "--run", str(run)]
    assert run_cli([*argv, "--out", str(tmp_path / "r2")]) == 2
    assert "--run is for an evaluation without --truth" in capsys.readouterr().err
