"""diffscale.runs.init_config and ``diffscale init-config``: the rules in closed form, a drafted configuration that
loads and trains, its sigma_data equal to the training target's measured standard deviation, and on the real UK
file the shipped recipe's data values."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from diffscale.cli.main import main
from diffscale.config import load_config
from diffscale.data.climate import ClimateDataset
from diffscale.runs.init_config import (
    blocked_periods,
    initial_config,
    noise_levels,
    precipitation_scale,
    target_std,
)
from diffscale.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
UK = SHARED / "era5_t2m_uk_2019-03.nc"


def _days(count: int) -> list[str]:
    return [day.strftime("%Y-%m-%d") for day in pd.date_range("2019-03-01", periods=count, freq="D")]


def test_blocked_periods_of_a_month_are_the_uk_recipes() -> None:
    assert blocked_periods(_days(31)) == {
        "train_period": ["2019-03-01", "2019-03-19"],
        "validation_period": ["2019-03-21", "2019-03-24"],
        "test_period": ["2019-03-25", "2019-03-31"],
    }


def test_blocked_periods_of_twelve_days() -> None:
    """ceil(2.4) = 3 test days, ceil(1.2) = 2 validation days, one gap day, 6 training days."""
    assert blocked_periods(_days(12)) == {
        "train_period": ["2019-03-01", "2019-03-06"],
        "validation_period": ["2019-03-08", "2019-03-09"],
        "test_period": ["2019-03-10", "2019-03-12"],
    }


def test_blocked_periods_refuse_a_short_record() -> None:
    with pytest.raises(ConfigError, match="at least 5 days"):
        blocked_periods(_days(4))


def test_noise_levels_closed_form() -> None:
    levels = noise_levels(0.25)
    assert levels == {
        "sigma_data": 0.25,
        "sigma_min": 0.0005,
        "sigma_max": 2.5,
        "p_mean": pytest.approx(-0.6 + math.log(0.25), abs=1e-15),
    }
    with pytest.raises(ValueError):
        noise_levels(0.0)


@pytest.mark.parametrize(("units", "scale"), [("m", 0.001), ("mm", 1.0), ("kg m-2 s-1", 1 / 86_400)])
def test_precipitation_scale_is_one_millimetre(units: str, scale: float) -> None:
    assert precipitation_scale(units, "tp") == pytest.approx(scale, rel=1e-5)


def test_precipitation_without_units_fails_in_one_line() -> None:
    with pytest.raises(ConfigError, match="no units attribute"):
        precipitation_scale(None, "tp")


# -- a drafted configuration on small files -------------------------------------------------------------------
def _write_data(folder: Path) -> Path:
    """12 days of 6-hourly t2m [K] and tp [m] on a 10 x 14 grid (not divisible by 4), a static file of z and lsm
    on a wider grid beside it, and a file with times (not a static) that also holds z."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    times = pd.date_range("2019-03-01", periods=48, freq="6h")
    latitude, longitude = np.arange(50.0, 52.5, 0.25), np.arange(-3.0, 0.5, 0.25)
    shape = (times.size, latitude.size, longitude.size)
    smooth = np.cumsum(np.cumsum(rng.standard_normal(shape), axis=1), axis=2) * 0.3
    fields = xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), (280 + smooth).astype("float32"), {"units": "K"}),
            "tp": (("time", "latitude", "longitude"), rng.gamma(0.3, 0.002, shape).astype("float32"), {"units": "m"}),
        },
        coords={"time": times, "latitude": latitude, "longitude": longitude},
    )
    fine = folder / "fine.nc"
    fields.to_netcdf(fine)
    wide_lat, wide_lon = np.arange(49.0, 54.0, 0.25), np.arange(-5.0, 2.0, 0.25)
    grid = (len(wide_lat), len(wide_lon))
    xr.Dataset(
        {
            "z": (("latitude", "longitude"), rng.uniform(0, 3000, grid), {"units": "m**2 s**-2"}),
            "lsm": (("latitude", "longitude"), rng.uniform(0, 1, grid), {"units": "1"}),
        },
        coords={"latitude": wide_lat, "longitude": wide_lon},
    ).to_netcdf(folder / "statics.nc")
    xr.Dataset(
        {"z": (("time", "latitude", "longitude"), rng.uniform(0, 3000, (2, *grid)), {"units": "m**2 s**-2"})},
        coords={"time": times[:2], "latitude": wide_lat, "longitude": wide_lon},
    ).to_netcdf(folder / "another_with_times.nc")
    return fine


def _population_std(dataset: ClimateDataset) -> float:
    target = dataset.fields(slice(None)).target.double()
    return float(target.std(unbiased=False))


def test_drafted_configuration_measures_the_data_and_trains(tmp_path: Path) -> None:
    fine = _write_data(tmp_path / "data")
    output = tmp_path / "my.yaml"
    arguments = ["init-config", "--fine", str(fine), "--variables", "t2m", "tp", "--factor", "4"]
    status = main([*arguments, "--output", str(output), "--budget-minutes", "30"])
    assert status == 0
    text = output.read_text()
    config = load_config(output)
    data = config.data
    assert data.crop is None and data.remainder == "trim"
    assert data.static_paths == [str(tmp_path / "data" / "statics.nc")]
    assert data.static_variables == ["orography", "lsm"]
    assert "another_with_times.nc: has 2 times" in text
    assert data.transforms["t2m"] == "standardize"
    assert (data.transforms["tp"].name, data.transforms["tp"].scale) == ("log1p", 0.001)
    assert (data.train_period, data.test_period) == ([("2019-03-01", "2019-03-06")], [("2019-03-10", "2019-03-12")])
    assert data.channels.hour and not data.channels.day_of_year
    dataset = ClimateDataset(data, "train")
    assert (dataset.latitude.size, dataset.longitude.size) == (8, 12)
    assert "10 x 14 -> 8 x 12" in text
    measured = _population_std(dataset)
    assert config.diffusion.sigma_data == float(f"{measured:.3g}")
    stated = float(re.search(r"sigma_data = ([0-9.]+):", text).group(1))
    assert stated == pytest.approx(measured, abs=5e-5)
    levels = noise_levels(config.diffusion.sigma_data)
    assert config.diffusion.sigma_max == pytest.approx(levels["sigma_max"], rel=5e-3)
    assert config.diffusion.p_mean == pytest.approx(levels["p_mean"], abs=5e-3)
    assert config.training.batch_size == 16 and config.training.steps >= 50
    # every measured key carries its comment
    for key in ("sigma_data", "sigma_min", "remainder", "static_paths", "transforms", "train_period", "steps"):
        assert re.search(rf"  # .*\n(  # .*\n)*  {key}:", text), key
    run = tmp_path / "run"
    train = ["train", str(output), "--out", str(run), "--set", "training.steps=2", "--set", "training.sample_every=0"]
    assert main([*train, "--no-progress"]) == 0
    assert (run / "checkpoint.json").is_file()


def test_an_existing_output_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "my.yaml"
    output.write_text("kept\n")
    arguments = ["init-config", "--fine", str(tmp_path / "missing.nc"), "--variables", "t2m", "--factor", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--output", str(output)])
    assert exit_info.value.code == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_text() == "kept\n"


def test_statics_given_that_do_not_serve_fail_in_one_line(tmp_path: Path) -> None:
    fine = _write_data(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"--statics: no file .*another_with_times.nc: has 2 times"):
        initial_config([fine], ["t2m"], 4, statics=[str(tmp_path / "data" / "another_with_times.nc")])


def test_a_budget_too_small_names_the_minimum(tmp_path: Path) -> None:
    fine = _write_data(tmp_path / "data")
    with pytest.raises(ConfigError, match="give at least"):
        initial_config([fine], ["t2m"], 4, budget_minutes=0.001)


# -- the real UK file: the shipped recipe's data values -----------------------------------------------------
@pytest.mark.skipif(not UK.is_file(), reason="real data ../shared/data is absent")
def test_uk_draft_matches_the_shipped_recipe(tmp_path: Path) -> None:
    """The whole UK grid trimmed by the rule is 32 x 48 like the recipe's crop (it drops the west column where
    the recipe drops the east one); statics, transforms, channels and periods are the recipe's; sigma_data is the
    training target's std on the drafted grid (0.241), and the same measurement on the recipe's own crop gives the
    recipe's 0.243 (and its noise levels, to the digits it gives); the draft trains."""
    shipped = load_config(ROOT / "configs" / "era5_uk.yaml")
    draft = initial_config([UK], ["t2m"], 4, budget_minutes=20)
    path = draft.write(tmp_path / "uk.yaml")
    config = load_config(path)
    data = config.data
    ours, theirs = ClimateDataset(data, "train"), ClimateDataset(shipped.data, "train")
    assert (ours.latitude.size, ours.longitude.size) == (theirs.latitude.size, theirs.longitude.size) == (32, 48)
    assert [Path(p).name for p in data.static_paths] == [Path(p).name for p in shipped.data.static_paths]
    assert data.static_variables == shipped.data.static_variables
    assert ours.transforms.to_dict()["t2m"]["transform"] == theirs.transforms.to_dict()["t2m"]["transform"]
    assert data.channels == shipped.data.channels
    periods = ("train_period", "validation_period", "test_period")
    assert [getattr(data, p) for p in periods] == [getattr(shipped.data, p) for p in periods]
    assert config.diffusion.sigma_data == float(f"{_population_std(ours):.3g}")

    # the same measurement on the recipe's own crop gives the recipe's values, to the digits it gives
    sigma_data = target_std(theirs)[0]
    given = yaml.safe_load((ROOT / "configs" / "era5_uk.yaml").read_text())["diffusion"]
    for key, value in noise_levels(sigma_data).items():
        digits = len(str(given[key]).split(".")[1])
        assert round(value, digits) == given[key], key
    run = tmp_path / "run"
    train = ["train", str(path), "--out", str(run), "--set", "training.steps=2", "--set", "training.sample_every=0"]
    assert main([*train, "--no-progress"]) == 0
