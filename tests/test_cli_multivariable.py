"""Several variables through ``diffscale train``, ``downscale`` and ``evaluate`` on small synthetic files: a run
of tasmax, tasmin and precipitation at factor 3, one of t2m at factor 5; coarse inputs matched by variable name
(any order), in other units (converted), the ordered pair tasmin <= tasmax measured and sorted on request, and
bad input (a missing variable, NaNs, units that do not convert, a factor that does not fit, statics that do not
cover the grid) ending with one line, exit status 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from diffscale.evaluation import single_thread
from tests.conftest import run_cli, snapshot
from tests.test_climate_runs import train_run

LATITUDE = 45.0 + 0.1 * np.arange(12)  # 12 x 18 at 0.1 deg: factor 3 gives 4 x 6 coarse cells of 0.3 deg
LONGITUDE = -75.0 + 0.1 * np.arange(18)
TIMES = pd.date_range("1970-01-01", periods=40, freq="D").values
TEST_TIMES = TIMES[-4:]
UNITS = {"tasmax": "degC", "tasmin": "degC", "tp": "mm d-1", "t2m": "K"}


def _fields(rng: np.random.Generator, latitude: np.ndarray, longitude: np.ndarray) -> dict[str, np.ndarray]:
    """tasmin, tasmax (tasmax - tasmin from 0.3 to 12.8 degC) and precipitation (many zeros), (T, H, W)."""
    lat, lon = np.meshgrid(latitude, longitude, indexing="ij")
    days = np.arange(TIMES.size)[:, None, None]
    shape = (TIMES.size, *lat.shape)
    mean = 5.0 + 8.0 * np.sin(2 * np.pi * days / 40) + 2.0 * np.sin(7 * lat) * np.cos(5 * lon)
    tasmin = mean + rng.normal(scale=1.0, size=shape)
    spread = 0.3 + 6.0 * (1 + np.sin(3 * lon + days / 5.0)) + rng.uniform(0, 0.5, size=shape)
    wet = rng.gamma(0.6, 4.0, size=shape) * (rng.uniform(size=(TIMES.size, 1, 1)) < 0.6)
    return {"tasmax": tasmin + spread, "tasmin": tasmin, "tp": wet}


def _write(
    path: Path,
    fields: dict[str, np.ndarray],
    latitude: np.ndarray,
    longitude: np.ndarray,
    times: np.ndarray,
    **units: str,
) -> None:
    """Fields (T, H, W) on latitude x longitude, written with latitude descending (as ERA5-Land files are)."""
    variables = {
        name: (
            ("time", "latitude", "longitude"),
            values[:, ::-1].astype(np.float32),
            {"units": units.get(name, UNITS[name])},
        )
        for name, values in fields.items()
    }
    coords = {"time": times, "latitude": latitude[::-1], "longitude": longitude}
    xr.Dataset(variables, coords=coords).to_netcdf(path)


def _block_means(values: np.ndarray, factor: int) -> np.ndarray:
    t, h, w = values.shape
    return values.reshape(t, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _config(root: Path, variables: list[str], factor: int, fine: str, **data: Any) -> dict[str, Any]:
    return {
        "data": {
            "kind": "climate",
            "paths": [str(root / fine)],
            "variables": variables,
            "coarsen_factor": factor,
            "channels": {"latlon": True},
            "target": "residual",
            "train_period": [str(TIMES[0])[:10], str(TIMES[-8])[:10]],
            "test_period": [str(TEST_TIMES[0])[:10], str(TEST_TIMES[-1])[:10]],
            **data,
        },
        "model": {"arch": "ddpmpp", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1},
        "training": {
            "steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
            "log_every": 1,
            "tensorboard": False,
            "device": "cpu",
        },
        "sampling": {"steps": 3, "sampler": "heun"},
        # residuals of a few normalised units: an untrained network's samples stay within float32 through
        # log1p's inverse (exp) for tp
        "diffusion": {"type": "EDM", "sigma_data": 0.5, "sigma_max": 2.0, "p_mean": -1.5},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multivariable")
    rng = np.random.default_rng(0)
    fine = _fields(rng, LATITUDE, LONGITUDE)
    _write(root / "fine.nc", fine, LATITUDE, LONGITUDE, TIMES)
    # factor 5 on a 10 x 20 grid of t2m
    lat5, lon5 = 50.0 + 0.25 * np.arange(10), 0.25 * np.arange(20)
    t2m = 275.0 + _fields(rng, lat5, lon5)["tasmin"]
    _write(root / "fine5.nc", {"t2m": t2m}, lat5, lon5, TIMES)
    transforms = {"tp": {"name": "log1p", "scale": 1.0}}
    with torch.random.fork_rng(devices=[]), single_thread():
        joint = train_run(root, "joint", _config(root, ["tasmax", "tasmin", "tp"], 3, "fine.nc", transforms=transforms))
        five = train_run(root, "five", _config(root, ["t2m"], 5, "fine5.nc"))
    test = {name: values[-TEST_TIMES.size :].astype(np.float64) for name, values in fine.items()}
    coarse = {name: _block_means(values, 3) for name, values in test.items()}
    coarse_lat, coarse_lon = LATITUDE.reshape(-1, 3).mean(axis=1), LONGITUDE.reshape(-1, 3).mean(axis=1)
    _write(root / "coarse.nc", coarse, coarse_lat, coarse_lon, TEST_TIMES)
    _write(root / "truth.nc", test, LATITUDE, LONGITUDE, TEST_TIMES)
    t2m_test = t2m[-TEST_TIMES.size :].astype(np.float64)
    _write(
        root / "coarse5.nc",
        {"t2m": _block_means(t2m_test, 5)},
        lat5.reshape(-1, 5).mean(1),
        lon5.reshape(-1, 5).mean(1),
        TEST_TIMES,
    )
    _write(root / "truth5.nc", {"t2m": t2m_test}, lat5, lon5, TEST_TIMES)
    return {
        "root": root,
        "joint": joint,
        "five": five,
        "coarse": coarse,
        "coarse_latitude": coarse_lat,
        "coarse_longitude": coarse_lon,
    }


def _downscale(run_dir: Path, coarse: Path, out: Path, *extra: str) -> int:
    argv = ["downscale", str(run_dir), "--input", str(coarse), "--out", str(out), "--members", "4"]
    return run_cli([*argv, "--steps", "2", "--seed", "3", "--device", "cpu", "--no-progress", *extra])


@pytest.fixture(scope="module")
def ensemble(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "ensemble.nc"
    with single_thread():
        assert _downscale(setup["joint"], setup["root"] / "coarse.nc", out) == 0
    return out


def test_every_variable_in_its_own_units_with_cf_attributes(ensemble: Path) -> None:
    with xr.open_dataset(ensemble) as result:
        fields = [name for name in result.data_vars if "member" in result[name].dims]
        assert fields == ["tasmax", "tasmin", "tp"]
        per_time = {name for name in result.data_vars if result[name].dims == ("time",)}
        assert per_time == {
            f"{name}_{part}" for name in fields for part in ("outside_training_range", "training_range_excess")
        }
        assert {name: result[name].attrs["units"] for name in fields} == {
            "tasmax": "degC",
            "tasmin": "degC",
            "tp": "mm d-1",
        }
        assert result["tasmax"].dims == ("member", "time", "latitude", "longitude")
        assert result.sizes == {"member": 4, "time": 4, "latitude": 12, "longitude": 18}
        assert int(result.attrs["coarsening_factor"]) == 3
        assert float(result["tp"].min()) >= 0.0  # log1p's inverse keeps precipitation non-negative


def test_coarse_variables_are_matched_by_name_and_converted_by_units(
    setup: dict[str, Any], ensemble: Path, tmp_path: Path
) -> None:
    coarse = setup["coarse"]
    lat, lon = setup["coarse_latitude"], setup["coarse_longitude"]
    # another order, and an extra variable the run does not use: the same ensemble, bitwise
    shuffled = {
        "tp": coarse["tp"],
        "t2m": coarse["tasmin"] + 273.15,
        "tasmin": coarse["tasmin"],
        "tasmax": coarse["tasmax"],
    }
    _write(tmp_path / "shuffled.nc", shuffled, lat, lon, TEST_TIMES)
    with single_thread():
        assert _downscale(setup["joint"], tmp_path / "shuffled.nc", tmp_path / "shuffled_out.nc") == 0
    # temperatures in K and precipitation in kg m-2 d-1 (= mm d-1): converted to the run's degC and mm d-1
    kelvin = {**coarse, "tasmin": coarse["tasmin"] + 273.15, "tasmax": coarse["tasmax"] + 273.15}
    _write(tmp_path / "kelvin.nc", kelvin, lat, lon, TEST_TIMES, tasmin="K", tasmax="K", tp="kg m-2 d-1")
    with single_thread():
        assert _downscale(setup["joint"], tmp_path / "kelvin.nc", tmp_path / "kelvin_out.nc") == 0
    with (
        xr.open_dataset(ensemble) as reference,
        xr.open_dataset(tmp_path / "shuffled_out.nc") as shuffled_out,
        xr.open_dataset(tmp_path / "kelvin_out.nc") as kelvin_out,
    ):
        for name in ("tasmax", "tasmin", "tp"):
            np.testing.assert_array_equal(shuffled_out[name].values, reference[name].values)
            # float32 K values hold degC to 3e-5 degC: the ensembles agree to that rounding
            np.testing.assert_allclose(kelvin_out[name].values, reference[name].values, atol=1e-3)
            assert kelvin_out[name].attrs["units"] == reference[name].attrs["units"]


def test_evaluate_reports_the_order_and_sorting_restores_it(
    setup: dict[str, Any], ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = setup["root"]
    out = tmp_path / "report"
    assert (
        run_cli(["evaluate", str(ensemble), "--truth", str(root / "truth.nc"), "--out", str(out), "--no-figures"]) == 0
    )
    document = json.loads((out / "scores.json").read_text())
    (pair,) = document["ordered_pairs"]
    assert pair["low"] == "tasmin" and pair["high"] == "tasmax" and pair["truth"] == 0.0
    assert document["joint"]["energy_score"]["variables"] == ["tasmax", "tasmin", "tp"]
    assert "tasmin <= tasmax broken at" in capsys.readouterr().out
    with xr.open_dataset(ensemble) as unsorted:
        broken = (unsorted["tasmin"] > unsorted["tasmax"]).values
        low, high = unsorted["tasmin"].values, unsorted["tasmax"].values
    # a 3-step model is far from calibrated: its members break the order somewhere, which sorting repairs
    assert broken.any()
    with single_thread():
        sorted_path = tmp_path / "sorted.nc"
        assert _downscale(setup["joint"], root / "coarse.nc", sorted_path, "--sort-ordered-pairs") == 0
    with xr.open_dataset(sorted_path) as result:
        np.testing.assert_array_equal(result["tasmin"].values, np.minimum(low, high))
        np.testing.assert_array_equal(result["tasmax"].values, np.maximum(low, high))
        assert "tasmin <= tasmax sorted pointwise" in result.attrs["ordered_pairs"]
    report = tmp_path / "sorted_report"
    assert (
        run_cli(["evaluate", str(sorted_path), "--truth", str(root / "truth.nc"), "--out", str(report), "--no-figures"])
        == 0
    )
    assert json.loads((report / "scores.json").read_text())["ordered_pairs"][0]["ensemble"] == 0.0


def test_factor_5_end_to_end(setup: dict[str, Any], tmp_path: Path) -> None:
    root = setup["root"]
    out = tmp_path / "five.nc"
    with single_thread():
        assert _downscale(setup["five"], root / "coarse5.nc", out) == 0
    with xr.open_dataset(out) as result:
        assert result.sizes == {"member": 4, "time": 4, "latitude": 10, "longitude": 20}
        assert int(result.attrs["coarsening_factor"]) == 5
    report = tmp_path / "report5"
    assert (
        run_cli(["evaluate", str(out), "--truth", str(root / "truth5.nc"), "--out", str(report), "--no-figures"]) == 0
    )
    scores = json.loads((report / "scores.json").read_text())
    assert scores["coarsening_factor"] == 5 and np.isfinite(scores["variables"]["t2m"]["ensemble"]["crps"])


# -- bad input -----------------------------------------------------------------------------------------------------
def _coarse_with(setup: dict[str, Any], directory: Path, name: str, **changes: Any) -> Path:
    fields = {key: value.copy() for key, value in setup["coarse"].items()}
    units = changes.pop("units", {})
    for key, value in changes.items():
        if value is None:
            fields.pop(key)
        else:
            fields[key] = value
    _write(directory / name, fields, setup["coarse_latitude"], setup["coarse_longitude"], TEST_TIMES, **units)
    return directory / name


def _nan(setup: dict[str, Any], directory: Path) -> list[str]:
    tp = setup["coarse"]["tp"].copy()
    tp[2, 1, 1] = np.nan
    return [str(setup["joint"]), "--input", str(_coarse_with(setup, directory, "nan.nc", tp=tp))]


def _missing(setup: dict[str, Any], directory: Path) -> list[str]:
    return [str(setup["joint"]), "--input", str(_coarse_with(setup, directory, "missing.nc", tasmin=None))]


def _pascal(setup: dict[str, Any], directory: Path) -> list[str]:
    path = _coarse_with(setup, directory, "pascal.nc", units={"tasmax": "Pa"})
    return [str(setup["joint"]), "--input", str(path)]


def _factor_2_grid(setup: dict[str, Any], directory: Path) -> list[str]:
    # a coarse grid of 0.2 deg: the 12 x 18 truth coarsened 2x, not the run's 3x
    fields = {name: _block_means(values, 2) for name, values in _truth(setup).items()}
    _write(directory / "two.nc", fields, LATITUDE.reshape(-1, 2).mean(1), LONGITUDE.reshape(-1, 2).mean(1), TEST_TIMES)
    return [str(setup["joint"]), "--input", str(directory / "two.nc")]


def _truth(setup: dict[str, Any]) -> dict[str, np.ndarray]:
    with xr.open_dataset(setup["root"] / "truth.nc") as truth:
        return {name: truth[name].values[:, ::-1].astype(np.float64) for name in ("tasmax", "tasmin", "tp")}


BAD_DOWNSCALING: dict[str, tuple[Any, list[str], str]] = {
    "missing variable": (_missing, [], "variable 'tasmin' not in"),
    "nan": (_nan, [], "variable 'tp' has NaN/inf values at time 1970-02-08T00:00"),
    "units": (_pascal, [], "variable 'tasmax' is in 'Pa', expected 'degC': no unambiguous conversion"),
    "factor": (
        _factor_2_grid,
        ["--regrid", "none"],  # regridded onto the run's cells otherwise
        "coarse input latitude spacing 0.2 deg is not the coarsening factor 3",
    ),
    "no pair to sort": (
        lambda s, d: [str(s["five"]), "--input", str(s["root"] / "coarse5.nc")],
        ["--sort-ordered-pairs"],
        "--sort-ordered-pairs: the run's variables (t2m) hold no ordered pair (known: tasmin <= tasmax)",
    ),
}


@pytest.mark.parametrize("case", BAD_DOWNSCALING)
def test_bad_downscaling_input_exits_2_with_one_line_and_writes_nothing(
    case: str, setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, extra, message = BAD_DOWNSCALING[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    head = make(setup, inputs)
    before = snapshot(tmp_path)
    capsys.readouterr()
    argv = ["downscale", *head, "--out", str(tmp_path / "out.nc"), "--members", "2", "--steps", "2"]
    assert run_cli([*argv, "--device", "cpu", "--no-progress", *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffscale: error: ") and message in lines[0], lines
    assert snapshot(tmp_path) == before


def test_statics_that_do_not_cover_the_grid_stop_training_in_one_line(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = setup["root"]
    latitude, longitude = np.arange(40.0, 46.01, 0.25), np.arange(-80.0, -70.0, 0.25)  # ends at 46 N; data: 46.1
    xr.Dataset(
        {"orography": (("latitude", "longitude"), np.zeros((latitude.size, longitude.size)), {"units": "m"})},
        coords={"latitude": latitude, "longitude": longitude},
    ).to_netcdf(tmp_path / "statics.nc")
    config = _config(
        root, ["tasmax"], 3, "fine.nc", static_paths=[str(tmp_path / "statics.nc")], static_variables=["orography"]
    )
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert run_cli(["train", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "static fields" in lines[0] and "46.1" in lines[0], lines
    assert snapshot(tmp_path) == before


def test_several_test_periods_select_exactly_their_times(setup: dict[str, Any]) -> None:
    from diffscale.config.climate import ClimateData
    from diffscale.data.climate import ClimateDataset

    weeks = [["1970-01-08", "1970-01-14"], ["1970-01-29", "1970-02-04"]]
    data = {**_config(setup["root"], ["tasmax", "tasmin"], 3, "fine.nc")["data"], "train_period": None}
    section = ClimateData.model_validate({**data, "test_period": weeks})
    test = ClimateDataset(section, "test")
    expected = np.concatenate([np.arange(7, 14), np.arange(28, 35)])  # day indices of the two weeks
    np.testing.assert_array_equal(test.times, TIMES[expected])
    train = ClimateDataset(section, "train", stats=test.stats)
    np.testing.assert_array_equal(train.times, TIMES[np.setdiff1d(np.arange(TIMES.size), expected)])
