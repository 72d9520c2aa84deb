"""``diffscale downscale`` end to end: tiny climate runs trained in-process on synthetic files, their ensembles
written as CF-netCDF and checked against independent computations (the regression prediction recomputed from
numpy conditioning), reproducibility per seed and per block, torchrun with two gloo processes, patches, bad
input (exit 2, one line, nothing written), ``diffscale evaluate`` on the result, and real ERA5 data."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
import yaml

import diffscale
from diffscale.evaluation import single_thread
from diffscale.runs import load_climate_run
from tests.conftest import mounted_read_only, run_cli, snapshot
from tests.test_climate_runs import (
    FACTOR,
    LATITUDE,
    LONGITUDE,
    TIMES,
    climate_config,
    train_run,
    train_runs,
    write_coarse,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COARSE_LATITUDE = LATITUDE.reshape(-1, FACTOR).mean(axis=1)  # 50.375 .. 53.375, spacing 1
COARSE_LONGITUDE = LONGITUDE.reshape(-1, FACTOR).mean(axis=1)  # -2.625 .. 2.375
COARSE_TIMES = TIMES[-3:]  # validation times, not seen in training


def _block_means(fine: np.ndarray) -> np.ndarray:
    """Plain FACTOR x FACTOR block means (T, H / f, W / f) (any coarse field will do as input)."""
    t, h, w = fine.shape
    return fine.reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(2, 4))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]), single_thread():
        root = tmp_path_factory.mktemp("downscale")
        runs = train_runs(root)
    truth = runs["fine"][-COARSE_TIMES.size :].astype(np.float64)
    coarse = _block_means(truth)
    write_coarse(root / "coarse.nc", coarse, COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES)
    write_coarse(root / "truth.nc", truth, LATITUDE, LONGITUDE, COARSE_TIMES)
    return {
        **runs,
        "coarse_path": root / "coarse.nc",
        "coarse": coarse,
        "truth_path": root / "truth.nc",
        "truth": truth,
    }


def downscale(run_dir: Path, coarse: Path, out: Path, *extra: str) -> int:
    return run_cli(["downscale", str(run_dir), "--input", str(coarse), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def regression_file(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "regression.nc"
    with single_thread():  # module fixtures run outside conftest's one-thread fixture
        # no --members: a regression run writes its one member
        assert downscale(setup["regression"], setup["coarse_path"], out, "--device", "cpu") == 0
    return out


@pytest.fixture(scope="module")
def diffusion_file(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "diffusion.nc"
    # Heun with churn: every member also draws noise at each step (the stochastic path of the seeding)
    argv = ["--members", "4", "--member-batch", "2", "--steps", "3", "--s-churn", "5", "--seed", "7", "--device", "cpu"]
    with single_thread():  # bitwise reproducibility needs the same number of threads as the reruns
        assert downscale(setup["diffusion"], setup["coarse_path"], out, *argv) == 0
    return out


def _values(path: Path) -> np.ndarray:
    with netCDF4.Dataset(path) as dataset:
        return np.asarray(dataset["t2m"][:])


# -- the file ----------------------------------------------------------------------------------------------------
def test_regression_output_layout_attributes_and_coordinates(setup: dict[str, Any], regression_file: Path) -> None:
    with netCDF4.Dataset(regression_file) as dataset:
        variable = dataset["t2m"]
        assert variable.dimensions == ("member", "time", "latitude", "longitude")
        assert variable.dtype == np.float32 and variable.shape == (1, 3, 16, 24)
        assert variable.units == "K" and variable.standard_name == "air_temperature"
        assert dataset["member"].standard_name == "realization"
        attributes = {key: dataset.getncattr(key) for key in dataset.ncattrs()}
    assert attributes["seed"] == 0 and attributes["coarsening_factor"] == FACTOR
    assert attributes["source"] == f"diffscale {diffscale.__version__}"
    assert attributes["diffscale_version"] == diffscale.__version__
    assert attributes["model"] == "regression" and not any(key.startswith("sampler") for key in attributes)
    # the SHA-256 of the EMA weights file the run saved (the default --weights ema)
    (ema_file,) = setup["regression"].glob("ema-*.safetensors")
    assert attributes["checkpoint_sha256"] == hashlib.sha256(ema_file.read_bytes()).hexdigest()
    assert attributes["checkpoint_step"] == 3
    ds = xr.open_dataset(regression_file)
    np.testing.assert_array_equal(ds["time"].values, COARSE_TIMES)
    # the fine grid of the coarse centres: c + (k - 3/2) d / 4, i.e. the training grid itself
    fine_lat = (COARSE_LATITUDE[:, None] + (np.arange(FACTOR) - 1.5) * 0.25).ravel()
    fine_lon = (COARSE_LONGITUDE[:, None] + (np.arange(FACTOR) - 1.5) * 0.25).ravel()
    np.testing.assert_allclose(ds["latitude"].values, fine_lat, atol=1e-9)
    np.testing.assert_allclose(ds["longitude"].values, fine_lon, atol=1e-9)
    np.testing.assert_allclose(ds["latitude"].values, LATITUDE, atol=1e-9)
    ds.close()


def _bilinear(coarse: np.ndarray) -> np.ndarray:
    """Separable linear interpolation at fine positions (i + 1/2)/f - 1/2 of the coarse index, clamped at the
    edges (torch's align_corners=False), with np.interp."""

    def along(values: np.ndarray, axis: int) -> np.ndarray:
        n = values.shape[axis]
        positions = (np.arange(n * FACTOR) + 0.5) / FACTOR - 0.5
        return np.apply_along_axis(lambda row: np.interp(positions, np.arange(n), row), axis, values)

    return along(along(coarse, -2), -1)


def test_regression_member_equals_an_independent_prediction(setup: dict[str, Any], regression_file: Path) -> None:
    """y = T^-1(mu(c) + U(T(x))) with c = [U(T(x)), T(orography), T(lsm), lat/90, sin lon, cos lon, sin h, cos h]
    built here with numpy from the files' values and the run's statistics."""
    run = load_climate_run(setup["regression"])
    stats = run.stats
    coarse = setup["coarse"].astype(np.float32).astype(np.float64)  # as stored
    t2m = stats["t2m"]
    upsampled = _bilinear((coarse - t2m["mean"]) / t2m["std"])  # (T, H, W)
    statics = [(setup[name] - stats[name]["mean"]) / stats[name]["std"] for name in ("orography", "lsm")]
    lat, lon = np.meshgrid(LATITUDE, np.deg2rad(LONGITUDE), indexing="ij")
    hours = (COARSE_TIMES - COARSE_TIMES.astype("datetime64[D]")) / np.timedelta64(1, "h")
    phase = 2 * np.pi * hours / 24
    channels = [upsampled] + [np.broadcast_to(s, upsampled.shape) for s in statics]
    channels += [np.broadcast_to(c, upsampled.shape) for c in (lat / 90, np.sin(lon), np.cos(lon))]
    channels += [np.broadcast_to(f(phase)[:, None, None], upsampled.shape) for f in (np.sin, np.cos)]
    cond = torch.as_tensor(np.stack(channels, axis=1), dtype=torch.float32)
    with torch.no_grad():
        normalised = run.model(cond)[:, 0].double().numpy() + upsampled
    expected = normalised * t2m["std"] + t2m["mean"]
    written = _values(regression_file)[0]
    # float32 conditioning and the float32 file: a few 1e-5 K at 280 K; orography is float32 in the file
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-4)
    assert np.abs(written - _bilinear(coarse)).max() > 1e-3  # the model did something


# -- reproducibility ---------------------------------------------------------------------------------------------
def test_same_seed_same_ensemble_other_seed_another(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path
) -> None:
    members = _values(diffusion_file)
    assert members.shape == (4, 3, 16, 24) and np.isfinite(members).all()
    assert np.abs(members[0] - members[1]).max() > 1e-3  # members differ
    assert np.abs(members[0] - members[2]).max() > 1e-3  # blocks differ
    argv = ["--members", "4", "--member-batch", "2", "--steps", "3", "--s-churn", "5", "--device", "cpu"]
    assert downscale(setup["diffusion"], setup["coarse_path"], tmp_path / "again.nc", *argv, "--seed", "7") == 0
    np.testing.assert_array_equal(_values(tmp_path / "again.nc"), members)
    assert downscale(setup["diffusion"], setup["coarse_path"], tmp_path / "other.nc", *argv, "--seed", "8") == 0
    assert np.abs(_values(tmp_path / "other.nc") - members).max() > 1e-3
    with netCDF4.Dataset(diffusion_file) as dataset:
        assert dataset.getncattr("seed") == 7 and dataset.getncattr("member_batch") == 2
        sampler = {key: dataset.getncattr(key) for key in dataset.ncattrs() if key.startswith("sampler_")}
        nfe = dataset.getncattr("nfe_per_member")
    # --steps 3 overrides the run's sampling.steps 4; Heun takes 2 N - 1 evaluations
    assert sampler["sampler_steps"] == 3 and sampler["sampler_solver"] == "heun" and nfe == 5
    assert sampler["sampler_s_churn"] == 5


def test_a_member_is_the_same_whatever_else_the_run_holds(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path
) -> None:
    """Members 0..2 of the 4-member run (member batch 2) from a 3-member run with member batch 1, and the last
    time alone (--start): each member comes from its own stream, seeded by (seed, timestamp, member)."""
    argv = ["--members", "3", "--member-batch", "1", "--batch-size", "2", "--steps", "3", "--s-churn", "5"]
    argv += ["--seed", "7"]
    assert downscale(setup["diffusion"], setup["coarse_path"], tmp_path / "three.nc", *argv, "--device", "cpu") == 0
    np.testing.assert_allclose(_values(tmp_path / "three.nc"), _values(diffusion_file)[:3], rtol=0, atol=1e-4)
    last = str(COARSE_TIMES[-1])[:16]
    start = ["--start", last, "--device", "cpu"]
    assert downscale(setup["diffusion"], setup["coarse_path"], tmp_path / "last.nc", *argv, *start) == 0
    alone = _values(tmp_path / "last.nc")
    assert alone.shape == (3, 1, 16, 24)
    np.testing.assert_allclose(alone[:, 0], _values(diffusion_file)[:3, -1], rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not available")
@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_two_gloo_processes_write_the_single_process_file(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path, suffix: str
) -> None:
    """netCDF: each rank writes a part, rank 0 merges; Zarr: both ranks write one store."""
    out = tmp_path / f"ddp{suffix}"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "diffscale", "downscale", str(setup["diffusion"]), "--input", str(setup["coarse_path"])]
    argv += ["--out", str(out), "--members", "4", "--member-batch", "2", "--steps", "3", "--s-churn", "5"]
    argv += ["--seed", "7"]
    argv += ["--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1  # rank 0 alone reports
    assert sorted(path.name for path in tmp_path.iterdir()) == [out.name]  # no part or partial store left
    single, ddp = xr.open_dataset(diffusion_file), xr.open_dataset(out)
    np.testing.assert_array_equal(ddp["t2m"].values, _values(diffusion_file))
    for name in ("time", "latitude", "longitude", "member"):
        np.testing.assert_array_equal(ddp[name].values, single[name].values)
    different = {k for k in single.attrs if k not in ("history",) and str(single.attrs[k]) != str(ddp.attrs.get(k))}
    assert different == set()
    # the values outside the plausible range, counted by each rank and summed (Zarr) or recounted by the merge
    outside = int(((single["t2m"] < 170) | (single["t2m"] > 340)).sum())
    for dataset in (single, ddp):
        assert int(dataset["t2m"].attrs["outside_plausible_range_count"]) == outside
    single.close()
    ddp.close()


def test_patches_on_a_diffusion_run(setup: dict[str, Any], tmp_path: Path) -> None:
    argv = ["--members", "2", "--steps", "2", "--patch", "8", "12", "--overlap", "2", "--device", "cpu"]
    assert downscale(setup["diffusion"], setup["coarse_path"], tmp_path / "patched.nc", *argv) == 0
    values = _values(tmp_path / "patched.nc")
    assert values.shape == (2, 3, 16, 24) and np.isfinite(values).all()
    # K-scale temperatures near the coarse input (a 3-step model cannot be far off a residual of a few K)
    assert np.abs(values.mean() - setup["coarse"].mean()) < 30
    with netCDF4.Dataset(tmp_path / "patched.nc") as dataset:
        assert "patch" in dataset.ncattrs()


def test_corrdiff_run_downscales(setup: dict[str, Any], tmp_path: Path) -> None:
    argv = ["--members", "2", "--steps", "2", "--device", "cpu"]
    assert downscale(setup["corrdiff"], setup["coarse_path"], tmp_path / "c.nc", *argv) == 0
    values = _values(tmp_path / "c.nc")
    assert values.shape == (2, 3, 16, 24) and np.isfinite(values).all()
    with netCDF4.Dataset(tmp_path / "c.nc") as dataset:
        assert dataset.getncattr("data_target") == "regression_residual"


# -- evaluate ----------------------------------------------------------------------------------------------------
def test_evaluate_scores_the_ensemble(setup: dict[str, Any], diffusion_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["evaluate", str(diffusion_file), "--truth", str(setup["truth_path"]), "--out", str(out), "--no-figures"]
    assert run_cli(argv) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["members"] == 4 and scores["coarsening_factor"] == FACTOR
    truth = setup["truth"].astype(np.float32).astype(np.float64)
    mean = _values(diffusion_file).astype(np.float64).mean(axis=0)
    weights = np.cos(np.deg2rad(LATITUDE))[:, None]
    squared = ((mean - truth) ** 2 * weights).sum(axis=(-2, -1)) / (weights.sum() * truth.shape[-1])
    expected = math.sqrt(squared.mean())
    assert scores["variables"]["t2m"]["ensemble"]["rmse"] == pytest.approx(expected, rel=1e-5)


def test_a_zarr_store_holds_the_netcdf_ensemble_and_evaluates_alike(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path
) -> None:
    store = tmp_path / "ensemble.zarr"
    argv = ["--members", "4", "--member-batch", "2", "--steps", "3", "--s-churn", "5", "--seed", "7", "--device", "cpu"]
    assert downscale(setup["diffusion"], setup["coarse_path"], store, *argv) == 0
    zarr_ds, netcdf = xr.open_zarr(store), xr.open_dataset(diffusion_file)
    np.testing.assert_array_equal(zarr_ds["t2m"].values, _values(diffusion_file))
    for name in ("member", "time", "latitude", "longitude"):
        np.testing.assert_array_equal(zarr_ds[name].values, netcdf[name].values)
    assert zarr_ds["member"].attrs["standard_name"] == "realization" and zarr_ds.attrs["seed"] == 7
    netcdf.close()
    scores = {}
    for path in (diffusion_file, store):
        out = tmp_path / f"report_{path.suffix[1:]}"
        argv = ["evaluate", str(path), "--truth", str(setup["truth_path"]), "--out", str(out), "--no-figures"]
        assert run_cli(argv) == 0
        scores[path.suffix] = json.loads((out / "scores.json").read_text())["variables"]["t2m"]["ensemble"]
    assert scores[".zarr"]["rmse"] == scores[".nc"]["rmse"] and scores[".zarr"]["crps"] == scores[".nc"]["crps"]


# -- the Python API ------------------------------------------------------------------------------------------------
def _without_history(dataset: xr.Dataset) -> xr.Dataset:
    """The dataset without its ``history`` attribute (a time stamp of when it was written)."""
    copy = dataset.copy()
    copy.attrs = {key: value for key, value in dataset.attrs.items() if key != "history"}
    return copy


def test_the_api_returns_what_the_command_writes(setup: dict[str, Any], diffusion_file: Path) -> None:
    run = diffscale.load_run(setup["diffusion"], device="cpu")
    assert isinstance(run, diffscale.ClimateRun) and run.kind == "climate" and run.variables == ["t2m"]
    with single_thread():  # as the command ran: bitwise needs the same thread count
        ensemble = run.downscale(setup["coarse_path"], members=4, member_batch=2, steps=3, s_churn=5, seed=7)
    with xr.open_dataset(diffusion_file) as written:
        xr.testing.assert_identical(_without_history(ensemble), _without_history(written.load()))
        assert written.attrs["history"] != "" and "history" in ensemble.attrs
    assert ensemble["t2m"].dtype == np.float32 and ensemble["t2m"].attrs["units"] == "K"
    # an xarray Dataset as input (what a notebook holds) gives the same members
    with xr.open_dataset(setup["coarse_path"]) as coarse, single_thread():
        from_dataset = run.downscale(coarse, members=4, member_batch=2, steps=3, s_churn=5, seed=7)
    np.testing.assert_array_equal(from_dataset["t2m"].values, ensemble["t2m"].values)


def test_the_api_writes_long_ensembles_to_a_store_and_opens_them_lazily(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path
) -> None:
    import dask.array

    run = diffscale.load_run(setup["diffusion"], device="cpu")
    with single_thread():
        stored = run.downscale(
            setup["coarse_path"], 4, member_batch=2, steps=3, s_churn=5, seed=7, out=tmp_path / "e.zarr"
        )
    assert isinstance(stored["t2m"].data, dask.array.Array)  # nothing read yet
    np.testing.assert_array_equal(stored["t2m"].values, _values(diffusion_file))
    with pytest.raises(diffscale.ConfigError, match="': exists; pass overwrite=True to replace it"):
        run.downscale(setup["coarse_path"], 4, steps=3, out=tmp_path / "e.zarr")


def test_the_api_downscales_a_regression_run_as_the_command(setup: dict[str, Any], regression_file: Path) -> None:
    run = diffscale.load_run(setup["regression"], device="cpu")
    assert run.kind == "regression" and run.deterministic
    with single_thread():
        prediction = run.downscale(setup["coarse_path"])
    assert prediction.sizes["member"] == 1
    np.testing.assert_array_equal(prediction["t2m"].values, _values(regression_file))
    with pytest.raises(diffscale.ConfigError, match=r"^members = 3: .* is a regression run .* use members=1$"):
        run.downscale(setup["coarse_path"], members=3)
    with pytest.raises(diffscale.ConfigError, match="has no denoiser"):
        _ = run.denoiser


def test_a_climate_run_refuses_unconditional_sampling_in_one_line(setup: dict[str, Any]) -> None:
    run = diffscale.load_run(setup["diffusion"], device="cpu")
    for call, words in ((lambda: run.sample(4), "downscale"), (lambda: run.likelihood(4), "conditional")):
        with pytest.raises(diffscale.ConfigError, match="is a climate run") as caught:
            call()
        assert words in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(diffscale.ConfigError, match=r"^coarse: no times within start 2030-01-01 and end 2030-01-02$"):
        run.downscale(setup["coarse_path"], start="2030-01-01", end="2030-01-02")


def test_the_api_scores_what_the_command_writes(setup: dict[str, Any], diffusion_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["evaluate", str(diffusion_file), "--truth", str(setup["truth_path"]), "--out", str(out), "--no-figures"]
    assert run_cli(argv) == 0
    document = json.loads((out / "scores.json").read_text())
    written = document["variables"]["t2m"]
    scores = diffscale.evaluate(diffusion_file, truth=setup["truth_path"])
    t2m = scores.sel(variable="t2m")
    for prediction in ("ensemble", "bilinear"):
        scored, expected = t2m.sel(prediction=prediction), written[prediction]
        for key in ("rmse", "mae", "bias", "crps"):
            assert float(scored[key]) == expected[key]
        assert float(scored["spectral_ratio"]) == expected["spectral_ratio"]["mean_ratio"]
        for percentile in ("p01", "p99"):
            value = float(scored["percentile_error"].sel(percentile=percentile))
            assert value == expected["percentile_errors"][percentile]["bias"]
    assert float(t2m["spread"]) == written["ensemble"]["spread"]
    assert float(t2m["spread_skill_ratio"]) == written["ensemble"]["spread_skill_ratio"]
    assert t2m["rank_histogram"].values.tolist() == written["ensemble"]["rank_histogram"]["frequency"]
    assert t2m["power"].sel(spectrum="truth").values.tolist() == written["spectra"]["truth"]
    assert str(t2m["units"].values) == "K" and scores.attrs["members"] == 4 == document["members"]
    # in memory, one day: the ensemble and truth as Datasets select like any xarray object
    with xr.open_dataset(diffusion_file) as ensemble, xr.open_dataset(setup["truth_path"]) as truth:
        one_time = diffscale.evaluate(ensemble.isel(time=[0]), truth, variables=["t2m"])
    rmse = one_time["rmse"].sel(variable="t2m", prediction="ensemble")
    assert one_time.attrs["times_count"] == 1 and np.isfinite(float(rmse))


# -- bad input ---------------------------------------------------------------------------------------------------
def _nan_input(setup: dict[str, Any], directory: Path) -> list[str]:
    values = setup["coarse"].copy()
    values[1, 2, 3] = np.nan
    write_coarse(directory / "nan.nc", values, COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES)
    return [str(setup["diffusion"]), "--input", str(directory / "nan.nc")]


def _wrong_spacing(setup: dict[str, Any], directory: Path) -> list[str]:
    # block centres of 2 x 2 blocks: spacing 0.5 deg, not 4 x 0.25
    latitude = LATITUDE.reshape(-1, 2).mean(axis=1)
    longitude = LONGITUDE.reshape(-1, 2).mean(axis=1)
    values = setup["truth"].reshape(3, 8, 2, 12, 2).mean(axis=(2, 4))
    write_coarse(directory / "half.nc", values, latitude, longitude, COARSE_TIMES)
    return [str(setup["diffusion"]), "--input", str(directory / "half.nc")]


def _shifted_grid(setup: dict[str, Any], directory: Path) -> list[str]:
    # the right spacing, shifted by half a fine cell: the statics cannot be matched
    shifted = COARSE_LATITUDE + 0.125
    write_coarse(directory / "shifted.nc", setup["coarse"], shifted, COARSE_LONGITUDE, COARSE_TIMES)
    return [str(setup["diffusion"]), "--input", str(directory / "shifted.nc")]


def _missing_variable(setup: dict[str, Any], directory: Path) -> list[str]:
    write_coarse(directory / "msl.nc", setup["coarse"], COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES, name="msl")
    return [str(setup["diffusion"]), "--input", str(directory / "msl.nc")]


def _celsius_labelled_kelvin(setup: dict[str, Any], directory: Path) -> list[str]:
    # 2 m temperature in degC with the units attribute K (write_coarse labels it K): refused before any work
    write_coarse(directory / "celsius.nc", setup["coarse"] - 273.15, COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES)
    return [str(setup["diffusion"]), "--input", str(directory / "celsius.nc")]


def _mixture_run(setup: dict[str, Any], directory: Path) -> list[str]:
    run_dir = setup["root"] / "mixture"
    if not run_dir.exists():
        config = {
            "model": {"width": 16, "depth": 1, "embedding_dim": 8},
            "training": {"steps": 1, "batch_size": 8, "device": "cpu", "tensorboard": False},
        }
        path = setup["root"] / "mixture.yaml"
        path.write_text(yaml.safe_dump(config))
        assert run_cli(["train", str(path), "--out", str(run_dir), "--no-progress"]) == 0
    return [str(run_dir), "--input", str(setup["coarse_path"])]


def _existing_out(setup: dict[str, Any], directory: Path) -> list[str]:
    (directory / "out.nc").write_bytes(b"keep me")
    return [str(setup["diffusion"]), "--input", str(setup["coarse_path"])]


BAD_INPUTS: dict[str, tuple[Any, list[str], str]] = {
    "nan": (_nan_input, [], "variable 't2m' has NaN/inf values at time 2020-01-05T18:00"),
    "spacing": (
        _wrong_spacing,
        ["--regrid", "none"],
        "coarse input latitude spacing 0.5 deg is not the coarsening factor 4",
    ),
    "shifted": (
        _shifted_grid,
        ["--regrid", "none"],
        "coarse input latitude: its fine cells fall 0.125 deg off the training grid",
    ),
    "not covered": (
        _shifted_grid,
        [],
        "--input does not cover the run's 4 x 6 coarse cells (latitude 49.875 .. 53.875, longitude -3.125 .. "
        "2.875): 0.125 deg of latitude missing in the south; give an input that extends over it",
    ),
    "variable": (_missing_variable, [], "variable 't2m' not in"),
    "celsius labelled kelvin": (
        _celsius_labelled_kelvin,
        [],
        "K at time 2020-01-05T15:00, outside the plausible range of air temperature, 170 to 340 K",
    ),
    "members": (
        lambda s, d: [str(s["regression"]), "--input", str(s["coarse_path"])],
        ["--members", "3"],
        "--members = 3: ",
    ),
    "steps": (
        lambda s, d: [str(s["diffusion"]), "--input", str(s["coarse_path"])],
        ["--steps", "0"],
        "--steps = 0: must be greater than or equal to 1",
    ),
    "existing out": (_existing_out, [], "': exists; pass --overwrite"),
    "not netcdf or zarr": (
        lambda s, d: [str(s["diffusion"]), "--input", str(s["coarse_path"])],
        ["--out-name", "e.grib"],
        "the ensemble is written as netCDF (.nc) or a Zarr store (.zarr)",
    ),
    "mixture run": (_mixture_run, [], "is not a climate run"),
    "missing run": (lambda s, d: [str(d / "nowhere"), "--input", str(s["coarse_path"])], [], "nowhere' not found"),
    "run is a file": (lambda s, d: [str(s["coarse_path"]), "--input", str(s["coarse_path"])], [], "not a directory"),
    "bad date": (
        lambda s, d: [str(s["diffusion"]), "--input", str(s["coarse_path"])],
        ["--start", "25 March"],
        "--start = '25 March': not an ISO date or time",
    ),
    "missing input": (lambda s, d: [str(s["diffusion"]), "--input", str(d / "none.nc")], [], "--input: data file not"),
    "overlap": (
        lambda s, d: [str(s["diffusion"]), "--input", str(s["coarse_path"])],
        ["--patch", "8", "8", "--overlap", "8"],
        "--overlap = 8: must be smaller than the patch 8 x 8",
    ),
    "no times": (
        lambda s, d: [str(s["diffusion"]), "--input", str(s["coarse_path"])],
        ["--start", "2020-01-05T16:00", "--end", "2020-01-05T17:00"],
        "no times within --start 2020-01-05T16:00 and --end 2020-01-05T17:00",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, extra, message = BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    head = make(setup, inputs)
    name = "out.nc"
    if extra[:1] == ["--out-name"]:
        name, extra = extra[1], extra[2:]
    out_dir = inputs if case == "existing out" else tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    capsys.readouterr()
    argv = ["downscale", *head, "--out", str(out_dir / name), "--members", "2", "--steps", "2", "--no-progress"]
    argv += ["--device", "cpu", *extra]
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffscale: error: ") and message in lines[0], lines
    assert snapshot(tmp_path) == before  # no output, no hidden temporary or part file
    if case == "existing out":
        assert (inputs / "out.nc").read_bytes() == b"keep me"


# -- coarse inputs on other grids --------------------------------------------------------------------------------
def test_an_input_on_the_lattice_is_not_regridded_and_gives_the_same_ensemble_bitwise(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "none.nc"
    argv = ["--members", "4", "--member-batch", "2", "--steps", "3", "--s-churn", "5", "--seed", "7", "--device", "cpu"]
    with single_thread():
        assert downscale(setup["diffusion"], setup["coarse_path"], out, *argv, "--regrid", "none") == 0
    np.testing.assert_array_equal(_values(out), _values(diffusion_file))  # the default (conservative) skipped it
    with xr.open_dataset(diffusion_file) as written:
        assert not any(key.startswith("coarse_regridding") for key in written.attrs)
        assert "regridded" not in written.attrs["history"]


def _half_spacing(setup: dict[str, Any], directory: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A coarse input of 0.5 deg cells (2 x 2 block means of the truth) over the run's domain: (its file, its
    values as stored (float32), latitude, longitude)."""
    latitude = LATITUDE.reshape(-1, 2).mean(axis=1)
    longitude = LONGITUDE.reshape(-1, 2).mean(axis=1)
    values = setup["truth"].reshape(3, 8, 2, 12, 2).mean(axis=(2, 4))
    write_coarse(directory / "half.nc", values, latitude, longitude, COARSE_TIMES)
    return directory / "half.nc", values.astype(np.float32).astype(np.float64), latitude, longitude


def _coarse_dataset(values: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
        coords={"time": COARSE_TIMES, "latitude": COARSE_LATITUDE, "longitude": COARSE_LONGITUDE},
    )


def test_an_input_at_another_spacing_is_regridded_conservatively_and_says_so(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """0.5 deg cells nest in the run's 1 deg cells: the conservative value of a run cell is the mean of its 2 x 2
    input cells weighted by their areas, (sin phi+ - sin phi-) x 0.5 deg, which is computed here on its own."""
    path, values, latitude, _ = _half_spacing(setup, tmp_path)
    edges = np.deg2rad(np.append(latitude - 0.25, latitude[-1] + 0.25))
    band = np.diff(np.sin(edges))  # the latitude weight of each input row
    weighted = (values * band[None, :, None]).reshape(3, 4, 2, 6, 2).sum(axis=(2, 4))
    expected = (weighted / (2 * band.reshape(4, 2).sum(axis=1))[None, :, None]).astype(np.float32)
    run = diffscale.load_run(setup["regression"], device="cpu")
    with single_thread():
        regridded = run.downscale(path)
        reference = run.downscale(_coarse_dataset(expected.astype(np.float64)))
    np.testing.assert_allclose(regridded["t2m"].values, reference["t2m"].values, rtol=0, atol=2e-4)
    assert regridded.attrs["coarse_regridding"] == "conservative"
    assert regridded.attrs["coarse_source_grid"].startswith(
        "8 x 12 (latitude 50.125 .. 53.625, spacing 0.5 deg; longitude -2.875 .. 2.625, spacing 0.5 deg;"
    )
    # bilinear: each run centre lies midway between four input centres, so it takes their plain mean
    with single_thread():
        bilinear = run.downscale(path, regrid="bilinear")
        plain = run.downscale(_coarse_dataset(values.reshape(3, 4, 2, 6, 2).mean(axis=(2, 4))))
    np.testing.assert_allclose(bilinear["t2m"].values, plain["t2m"].values, rtol=0, atol=2e-4)
    assert bilinear.attrs["coarse_regridding"] == "bilinear"
    with pytest.raises(diffscale.ConfigError, match=r"^regrid = 'nearest': allowed: conservative, bilinear, none$"):
        run.downscale(path, regrid="nearest")
    # the command writes the record into the file: attributes and history
    out = tmp_path / "regridded.nc"
    with single_thread():
        assert downscale(setup["regression"], path, out, "--device", "cpu") == 0
    with netCDF4.Dataset(out) as dataset:
        attributes = {key: dataset.getncattr(key) for key in dataset.ncattrs()}
        np.testing.assert_array_equal(np.asarray(dataset["t2m"][:]), regridded["t2m"].values)
    assert attributes["coarse_regridding"] == "conservative"
    assert "cell edges: midpoints between centres" in attributes["coarse_source_grid"]
    assert f"coarse input {path} regridded (first-order conservative) from the grid 8 x 12" in attributes["history"]
    assert "onto the run's 4 x 6 coarse cells; ensemble written by diffscale" in attributes["history"]


def test_evaluate_regrids_a_coarse_input_from_another_grid_for_its_baseline(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline of a 0.5 deg coarse input is that of its conservative regridding, computed on its own."""
    path, values, latitude, _ = _half_spacing(setup, tmp_path)
    band = np.diff(np.sin(np.deg2rad(np.append(latitude - 0.25, latitude[-1] + 0.25))))
    weighted = (values * band[None, :, None]).reshape(3, 4, 2, 6, 2).sum(axis=(2, 4))
    expected = weighted / (2 * band.reshape(4, 2).sum(axis=1))[None, :, None]
    with single_thread():
        regridded = diffscale.evaluate(diffusion_file, setup["truth_path"], path)
        reference = diffscale.evaluate(diffusion_file, setup["truth_path"], _coarse_dataset(expected))
    rmse = {
        name: float(ds["rmse"].sel(variable="t2m", prediction="bilinear"))
        for name, ds in (("regridded", regridded), ("reference", reference))
    }
    assert rmse["regridded"] == pytest.approx(rmse["reference"], rel=1e-6)
    assert "regridded (first-order conservative) from the grid 8 x 12" in regridded.attrs["baseline"]
    with pytest.raises(diffscale.ConfigError, match=r"half\.nc"):
        diffscale.evaluate(diffusion_file, setup["truth_path"], path, regrid="none")
    capsys.readouterr()
    argv = ["evaluate", str(diffusion_file), "--truth", str(setup["truth_path"]), "--coarse", str(path)]
    assert run_cli([*argv, "--out", str(tmp_path / "report"), "--no-figures", "--regrid", "none"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffscale: error: ") and "half.nc" in lines[0], lines
    assert run_cli([*argv, "--out", str(tmp_path / "report"), "--no-figures"]) == 0
    scores = json.loads((tmp_path / "report" / "scores.json").read_text())
    assert scores["variables"]["t2m"]["bilinear"]["rmse"] == pytest.approx(rmse["reference"], rel=1e-6)


# -- real data ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (DATA / "era5_t2m_uk_2019-03.nc").exists(), reason="shared ERA5 data not available")
def test_real_era5_regression_run_downscales_to_the_crop(tmp_path: Path) -> None:
    config = climate_config(tmp_path, "regression", "residual", 2)
    config["data"].update(
        paths=[str(DATA / "era5_t2m_uk_2019-03.nc")],
        static_paths=[str(DATA / "era5_orography_lsm_global.nc")],
        crop={"lat": [1, 33], "lon": [0, 48]},
        train_period=["2019-03-01", "2019-03-03"],
        validation_period=["2019-03-25", "2019-03-31"],
    )
    path = tmp_path / "era5.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "era5_run"
    assert run_cli(["train", str(path), "--out", str(run_dir), "--no-progress"]) == 0
    fine = xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc")["t2m"].isel(time=slice(600, 602))
    crop = fine.sortby("latitude").isel(latitude=slice(1, 33), longitude=slice(0, 48)).load()
    coarse = crop.coarsen(latitude=FACTOR, longitude=FACTOR).mean()
    coarse.to_dataset(name="t2m").to_netcdf(tmp_path / "coarse.nc")
    out = tmp_path / "era5.nc"
    assert downscale(run_dir, tmp_path / "coarse.nc", out, "--members", "1", "--device", "cpu") == 0
    ds = xr.open_dataset(out)
    assert ds["t2m"].shape == (1, 2, 32, 48)
    np.testing.assert_allclose(ds["latitude"].values, crop["latitude"].values, atol=1e-9)
    np.testing.assert_allclose(ds["longitude"].values, crop["longitude"].values, atol=1e-9)
    np.testing.assert_array_equal(ds["time"].values, crop["time"].values)
    assert np.isfinite(ds["t2m"].values).all() and 250 < float(ds["t2m"].mean()) < 300
    ds.close()


@pytest.mark.skipif(not (DATA / "era5_t2m_uk_2019-03.nc").exists(), reason="shared ERA5 data not available")
def test_real_era5_run_downscales_a_gcm_like_input_regridded_onto_its_cells(tmp_path: Path) -> None:
    """A GCM-like input (1.25 deg longitude x 1 deg latitude, cells off the run's) made by regridding the
    coarsened UK file, downscaled by a run over a part of the UK that its cells cover."""
    from diffscale.data.climate.coarse_regrid import plan_regridding, source_grid

    config = climate_config(tmp_path, "regression", "residual", 2)
    config["data"].update(
        paths=[str(DATA / "era5_t2m_uk_2019-03.nc")],
        static_paths=[str(DATA / "era5_orography_lsm_global.nc")],
        crop={"lat": [3, 27], "lon": [2, 34]},  # 50.75 .. 56.5, -9.5 .. -1.75: cells 50.625 .. 56.625, -9.625 .. -1.625
        train_period=["2019-03-01", "2019-03-03"],
        validation_period=["2019-03-25", "2019-03-31"],
    )
    path = tmp_path / "era5.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "era5_run"
    assert run_cli(["train", str(path), "--out", str(run_dir), "--no-progress"]) == 0
    # the coarsened UK file (1 deg cells over 50.125 .. 58.125, -10.125 .. 1.875), then a GCM grid inside it
    fine = xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc")["t2m"].isel(time=slice(600, 602))
    crop = fine.sortby("latitude").isel(latitude=slice(1, 33), longitude=slice(0, 48)).load()
    coarse = crop.coarsen(latitude=FACTOR, longitude=FACTOR).mean().to_dataset(name="t2m")
    gcm_latitude, gcm_longitude = np.arange(51.1, 57.2, 1.0), np.arange(-9.125, 1.0, 1.25)  # 50.6 .. 57.6, -9.75 .. 1.5
    gcm = plan_regridding(source_grid(coarse), gcm_latitude, gcm_longitude).apply(coarse)
    gcm = gcm.assign_coords(longitude=gcm["longitude"] % 360.0).sortby("longitude")  # stored 0..360 ...
    gcm.isel(latitude=slice(None, None, -1)).to_netcdf(tmp_path / "gcm.nc")  # ... and north to south
    out = tmp_path / "gcm_downscaled.nc"
    assert downscale(run_dir, tmp_path / "gcm.nc", out, "--members", "1", "--device", "cpu") == 0
    ds = xr.open_dataset(out)
    assert ds["t2m"].shape == (1, 2, 24, 32)
    np.testing.assert_allclose(ds["latitude"].values, 50.75 + 0.25 * np.arange(24), atol=1e-9)
    np.testing.assert_allclose(ds["longitude"].values, -9.5 + 0.25 * np.arange(32), atol=1e-9)
    assert ds.attrs["coarse_regridding"] == "conservative"
    assert ds.attrs["coarse_source_grid"].startswith(
        "7 x 9 (latitude 51.1 .. 57.1, spacing 1 deg; longitude -9.125 .. 0.875, spacing 1.25 deg"
    )
    assert "regridded (first-order conservative) from the grid 7 x 9" in ds.attrs["history"]
    assert np.isfinite(ds["t2m"].values).all() and 250 < float(ds["t2m"].mean()) < 300
    ds.close()


def test_sample_and_likelihood_on_a_climate_run_say_what_to_do_in_one_line(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, words in (
        (["sample", str(setup["diffusion"]), "--num", "2", "--out", str(tmp_path / "s.npy")], "diffscale downscale"),
        (["likelihood", str(setup["diffusion"]), "--data", "mixture:10"], "conditional on coarse fields"),
    ):
        capsys.readouterr()
        assert run_cli([*argv, "--device", "cpu"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "is a climate run" in lines[0] and words in lines[0], lines
    assert not any(tmp_path.iterdir())


def test_training_a_climate_run_prints_its_grid(setup: dict[str, Any], tmp_path: Path, capsys) -> None:
    config = climate_config(setup["root"], "diffusion", "residual", 1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with single_thread():
        assert run_cli(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "data climate (1 x 16 x 24)" in printed and "x 0 x 0" not in printed, printed


def test_coarsen_makes_the_coarse_input_as_training_did(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "made" / "coarse.nc"
    argv = ["coarsen", str(setup["diffusion"]), "--input", str(setup["truth_path"]), "--out", str(out)]
    assert run_cli([*argv, "--start", str(COARSE_TIMES[1])]) == 0
    with xr.open_dataset(out) as made:
        values = made["t2m"].values
        assert made.sizes["time"] == 2 and made["t2m"].attrs["units"] == "K"
        np.testing.assert_allclose(made["latitude"].values, COARSE_LATITUDE)
    # the area-weighted block mean, by hand: sum_i w_i x_ij / (f sum_i w_i) over each f x f block, w_i = cos(lat_i)
    truth = setup["truth"][1:].astype(np.float32).astype(np.float64)
    weights = np.cos(np.deg2rad(LATITUDE))
    t, h, w = truth.shape
    blocks = (truth * weights[:, None]).reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).sum(axis=(2, 4))
    expected = blocks / (FACTOR * weights.reshape(-1, FACTOR).sum(axis=1))[:, None]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    # and it downscales
    assert (
        downscale(setup["diffusion"], out, tmp_path / "e.nc", "--members", "2", "--steps", "2", "--device", "cpu") == 0
    )


def test_coarsen_writes_a_zarr_store_when_the_output_ends_in_zarr(setup: dict[str, Any], tmp_path: Path) -> None:
    """The same coarse fields as the netCDF output, in a Zarr store that downscale reads as its input."""
    base = ["coarsen", str(setup["diffusion"]), "--input", str(setup["truth_path"])]
    assert run_cli([*base, "--out", str(tmp_path / "coarse.nc")]) == 0
    store = tmp_path / "made" / "coarse.zarr"
    assert run_cli([*base, "--out", str(store)]) == 0
    assert store.is_dir() and (store / ".zmetadata").is_file()
    assert sorted(path.name for path in store.parent.iterdir()) == ["coarse.zarr"]  # no partial store left
    with xr.open_dataset(tmp_path / "coarse.nc") as netcdf, xr.open_zarr(store) as zarr:
        xr.testing.assert_identical(zarr.load(), netcdf.load())
    assert run_cli([*base, "--out", str(store)]) == 2  # exists: refused without --overwrite
    assert run_cli([*base, "--out", str(store), "--overwrite", "--start", str(COARSE_TIMES[2])]) == 0
    with xr.open_zarr(store) as zarr:
        np.testing.assert_array_equal(zarr["time"].values, COARSE_TIMES[2:])
    ensemble = tmp_path / "e.nc"
    assert downscale(setup["diffusion"], store, ensemble, "--members", "2", "--steps", "2", "--device", "cpu") == 0
    with xr.open_dataset(ensemble) as written:
        assert written["t2m"].shape == (2, 1, 16, 24)


def test_a_crop_is_logged_when_training_and_when_coarsening(
    setup: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows 4..15 of the 16 x 24 grid (latitude 50 .. 53.75): the crop drops latitudes 50 to 50.75, said in one line
    when training reads its split and again by coarsen, which then coarsens the 12 x 24 window to 3 x 6."""
    root = setup["root"]
    config = climate_config(root, "diffusion", "residual", 1)
    config["data"]["crop"] = {"lat": [4, 16], "lon": [0, 24]}
    expected = (
        "data.crop {lat: [4, 16], lon: [0, 24]} dropped 4 rows at latitude 50 to 50.75 (south): 16 x 24 -> 12 x 24"
    )
    with caplog.at_level("WARNING", logger="diffscale.data.climate.splits"), single_thread():
        run_dir = train_run(tmp_path, "cropped", config)
    assert [record.getMessage() for record in caplog.records] == [f"data (train split): {expected}"]
    caplog.clear()
    out = tmp_path / "coarse.nc"
    with caplog.at_level("WARNING", logger="diffscale.data.climate.splits"):
        assert run_cli(["coarsen", str(run_dir), "--input", str(setup["truth_path"]), "--out", str(out)]) == 0
    assert [record.getMessage() for record in caplog.records] == [f"coarsen: {expected}"]
    with xr.open_dataset(out) as made:
        assert made["t2m"].shape == (3, 3, 6)
        np.testing.assert_allclose(made["latitude"].values, COARSE_LATITUDE[1:])


def test_coarsen_refuses_coarse_fields_in_one_line(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["coarsen", str(setup["diffusion"]), "--input", str(setup["coarse_path"]), "--out", str(tmp_path / "c.nc")]
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "latitude spacing 1 deg is not the training grid's 0.25 deg" in lines[0], lines
    assert not any(tmp_path.iterdir())


def test_an_input_far_outside_the_training_range_is_flagged_with_a_one_line_warning(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """+8 K on the coarse input: the command warns in one line on stderr and still writes the ensemble, whose
    per-time variables say how much of the area lies outside the training range (more than for the plain input)."""
    shifted = tmp_path / "shifted.nc"
    write_coarse(shifted, setup["coarse"] + 8.0, COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES)
    capsys.readouterr()
    with single_thread():
        assert downscale(setup["diffusion"], shifted, tmp_path / "e.nc", "--members", "2", "--steps", "2") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith("warning: the coarse input lies outside the training range")
    with xr.open_dataset(tmp_path / "e.nc") as ensemble, xr.open_dataset(diffusion_file) as plain:
        # the 3-step model's members may leave 170..340 K here: then that is the one other line, and it is counted
        outside = int(ensemble["t2m"].attrs["outside_plausible_range_count"])
        assert len(err) == 1 + (outside > 0)
        assert outside == int(((ensemble["t2m"] < 170) | (ensemble["t2m"] > 340)).sum())
        assert ensemble["t2m_outside_training_range"].dims == ("time",)
        shifted_share = ensemble["t2m_outside_training_range"].values
        assert np.all(shifted_share > 0.5) and shifted_share.mean() > plain["t2m_outside_training_range"].values.mean()


def test_recalibrate_threads_set_torchs_count_and_change_no_more_than_rounding(
    setup: dict[str, Any], diffusion_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(setup["diffusion"], run_dir)
    argv = ["recalibrate", str(run_dir), "--ensemble", str(diffusion_file), "--truth", str(setup["truth_path"])]
    before = torch.get_num_threads()
    dispersion = {}
    for count in ("1", "2"):
        caplog.clear()
        with caplog.at_level("INFO", logger="diffscale.threads"):
            assert run_cli([*argv, "--threads", count]) == 0
        assert f"CPU threads: {count} (as set" in caplog.text
        assert torch.get_num_threads() == before  # restored afterwards
        dispersion[count] = json.loads((run_dir / "recalibration.json").read_text())["dispersion"]["t2m"]
    assert dispersion["2"] == pytest.approx(dispersion["1"], rel=1e-12)


def test_recalibrate_refuses_a_read_only_run_before_any_work(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(setup["diffusion"], run_dir)
    missing = tmp_path / "absent.nc"  # never read: the run directory is refused first
    with mounted_read_only(run_dir):
        before = snapshot(run_dir)
        capsys.readouterr()
        assert run_cli(["recalibrate", str(run_dir), "--ensemble", str(missing), "--truth", str(missing)]) == 2
        err = capsys.readouterr().err
        assert snapshot(run_dir) == before
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"'{run_dir}' is on a read-only file system" in err


def test_recalibrate_stores_the_dispersion_and_downscale_inflates_the_members(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rho = sum w ((xbar - y)^2 - s^2 / M) / sum w s^2 of a held-out ensemble, recomputed with numpy; the next
    ensemble's members are xbar + k (x - xbar) of the raw ones (same seed), k = sqrt((M rho + 1) / (M + 1))."""
    run_dir = tmp_path / "run"
    shutil.copytree(setup["diffusion"], run_dir)
    raw = tmp_path / "raw.nc"
    argv = ["--members", "4", "--steps", "2", "--seed", "3", "--device", "cpu"]
    with single_thread():
        assert downscale(run_dir, setup["coarse_path"], raw, *argv) == 0
        capsys.readouterr()
        assert run_cli(["recalibrate", str(run_dir), "--ensemble", str(raw), "--truth", str(setup["truth_path"])]) == 0
    assert "dispersion rho" in capsys.readouterr().out
    members = _values(raw).astype(np.float64)  # (M, T, H, W), latitude descending as written
    with xr.open_dataset(raw) as dataset:
        truth = xr.open_dataset(setup["truth_path"])["t2m"].sel(latitude=dataset.latitude).values
        weights = np.cos(np.deg2rad(dataset.latitude.values))[:, None]
    weights = weights / weights.mean()
    error = ((members.mean(axis=0) - truth) ** 2 * weights).sum()
    variance = (members.var(axis=0, ddof=1) * weights).sum()
    rho = (error - variance / 4) / variance
    saved = json.loads((run_dir / "recalibration.json").read_text())
    assert saved["dispersion"]["t2m"] == pytest.approx(rho, rel=1e-9)
    k = math.sqrt((4 * rho + 1) / 5)
    with single_thread():
        assert downscale(run_dir, setup["coarse_path"], tmp_path / "inflated.nc", *argv) == 0
        assert downscale(run_dir, setup["coarse_path"], tmp_path / "off.nc", *argv, "--no-recalibration") == 0
    mean = members.mean(axis=0)
    np.testing.assert_allclose(_values(tmp_path / "inflated.nc"), mean + k * (members - mean), rtol=0, atol=2e-4)
    assert np.array_equal(_values(tmp_path / "off.nc"), _values(raw))
    with xr.open_dataset(tmp_path / "inflated.nc") as inflated:
        assert inflated.attrs["spread_inflation_t2m"] == pytest.approx(k)
    run = load_climate_run(run_dir, device="cpu")
    assert run.recalibration is not None and run.recalibration.factors(4)["t2m"] == pytest.approx(k)
    with single_thread():
        python_raw = run.downscale(setup["coarse_path"], members=4, steps=2, seed=3, recalibrate=False)
    np.testing.assert_array_equal(python_raw["t2m"].values, xr.open_dataset(raw)["t2m"].values)
