"""Members that are coherent time series (``time_correlation``): the blended anchor noise against its closed forms
(unit variance, corr cos(pi (u1 - u2) / 2) within an anchor interval, sin(pi u1 / 2) cos(pi u2 / 2) across
one anchor, the anchor's own noise at an anchor), anchors counted on the calendar's own time axis, and a tiny
trained run: the same member whatever --start/--end and member batch, time_correlation 0 the independent
ensemble bitwise, and a higher lag-1 residual autocorrelation than independent sampling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cftime
import netCDF4
import numpy as np
import pandas as pd
import pytest
import torch

import diffscale
from diffscale.devices import BlendedGenerator, standard_normal
from diffscale.downscaling import Block
from diffscale.downscaling.coherence import (
    anchor_positions,
    anchor_seed,
    anchor_weights,
    check_time_correlation,
    coherent_generators,
    microseconds_since_epoch,
)
from diffscale.evaluation import single_thread
from diffscale.runs import load_climate_run
from diffscale.validation import ConfigError
from tests.conftest import run_cli
from tests.test_climate_runs import (
    FACTOR,
    LATITUDE,
    LONGITUDE,
    climate_config,
    fine_field,
    train_run,
    write_coarse,
    write_inputs,
)

# the hourly day's coarse input lies partly outside the 3-step run's training range: that warning is not the subject
ON_THE_RUN = pytest.mark.filterwarnings("ignore::diffscale.data.climate.extrapolation.ExtrapolationWarning")
HOUR_US = 3_600_000_000
ELEMENTS = 400_000
HOURLY = pd.date_range("2020-01-05T00", periods=24, freq="1h").values  # one whole day, after the training days


def _draws(times: np.ndarray, hours: float, seed: int = 3, member: int = 0, draws: int = 2) -> list[np.ndarray]:
    """For every time, ``draws`` successive noises (1, ELEMENTS) of ``member``: the initial noise, then churn."""
    positions = anchor_positions(times, hours)
    block = Block(0, member, member + 1)
    result = []
    for index in range(len(times)):
        sources = coherent_generators(seed, positions, index, block)
        shape = (1, ELEMENTS)
        result.append(
            np.stack(
                [standard_normal(shape, sources, dtype=torch.float64, device="cpu")[0].numpy() for _ in range(draws)]
            )
        )
    return result


def _hours(*offsets: float, start: str = "2020-01-05T00") -> np.ndarray:
    return np.datetime64(start, "ns") + (np.asarray(offsets) * 3600 * 1e9).astype("timedelta64[ns]")


# -- the noise -----------------------------------------------------------------------------------------------------
def test_blended_noise_has_unit_variance_and_the_closed_form_correlations() -> None:
    """L = 6 h, anchors at 00 and 06 (2020-01-05T00 is 1,578,182,400 s = 73,064 x 6 h after the epoch): hours
    1, 4 (u = 1/6, 2/3), 9 (u = 1/2 in the next interval) and 15 (two anchors later)."""
    times = _hours(1, 4, 9, 15)
    positions = anchor_positions(times, 6)
    assert positions.anchor == [73064, 73064, 73065, 73066]
    np.testing.assert_allclose(positions.fraction, [1 / 6, 2 / 3, 1 / 2, 1 / 2], rtol=0, atol=1e-15)
    first, second, third, far = _draws(times, 6)
    tolerance = 6 / math.sqrt(ELEMENTS)  # the sampling error of a variance or correlation is <= sqrt(2 / n)
    for noise in (first, second, third, far):
        for draw in noise:  # the initial noise and the next (churn) draw alike
            assert abs(draw.mean()) < tolerance and abs(draw.var() - 1.0) < tolerance
    expected = {
        (0, 1): math.cos(math.pi * (2 / 3 - 1 / 6) / 2),  # one interval: cos(pi (u1 - u2) / 2) = cos(pi / 4)
        (1, 2): math.sin(math.pi * (2 / 3) / 2) * math.cos(math.pi * (1 / 2) / 2),  # across the anchor 06
        (0, 2): math.sin(math.pi * (1 / 6) / 2) * math.cos(math.pi * (1 / 2) / 2),
        (0, 3): 0.0,  # no anchor in common
        (2, 3): math.sin(math.pi / 4) * math.cos(math.pi / 4),  # 1/2
    }
    noises = (first, second, third, far)
    for (i, j), value in expected.items():
        for draw in range(2):
            correlation = np.corrcoef(noises[i][draw], noises[j][draw])[0, 1]
            assert correlation == pytest.approx(value, abs=tolerance), (i, j, draw)
    assert abs(np.corrcoef(first[0], first[1])[0, 1]) < tolerance  # successive draws are independent


def test_at_an_anchor_the_noise_is_the_anchors_noise_and_between_it_is_the_blend() -> None:
    seed, member = 11, 2
    times = _hours(0, 2, 6)  # anchors 00 and 06 with L = 6; 02 has u = 1/3
    positions = anchor_positions(times, 6)
    assert positions.fraction[0] == 0.0 and positions.fraction[2] == 0.0
    block = Block(0, member, member + 1)
    shape = (1, 5, 7)

    def noise(index: int) -> torch.Tensor:
        return standard_normal(
            shape, coherent_generators(seed, positions, index, block), dtype=torch.float32, device="cpu"
        )

    at_anchor, between, next_anchor = noise(0), noise(1), noise(2)
    k = positions.anchor[0]
    for value, anchor in ((at_anchor, k), (next_anchor, k + 1)):
        generator = torch.Generator().manual_seed(anchor_seed(seed, anchor * 6 * HOUR_US, member))
        torch.testing.assert_close(value[0], torch.randn(shape[1:], generator=generator), rtol=0, atol=0)
    cos, sin = anchor_weights(1 / 3)
    assert (cos, sin) == pytest.approx((math.cos(math.pi / 6), math.sin(math.pi / 6)))
    torch.testing.assert_close(between, cos * at_anchor + sin * next_anchor, rtol=0, atol=1e-6)
    other = coherent_generators(seed, positions, 1, Block(0, member + 1, member + 2))
    assert not torch.equal(standard_normal(shape, other, dtype=torch.float32, device="cpu"), between)


def test_anchors_are_counted_on_each_calendars_own_axis() -> None:
    """Microseconds since 1970-01-01 of the date's calendar: a 360_day year has 360 days, a noleap year 365."""
    day = 86_400_000_000
    dates = [cftime.datetime(2019, 2, 30, 6, calendar="360_day")]
    assert microseconds_since_epoch(np.array(dates)) == [((2019 - 1970) * 360 + 30 + 29) * day + 6 * HOUR_US]
    noleap = np.array([cftime.datetime(2020, 3, 1, calendar="noleap")])
    assert microseconds_since_epoch(noleap) == [((2020 - 1970) * 365 + 31 + 28) * day]
    standard = np.array([cftime.datetime(2020, 3, 1, 12, 30, calendar="standard")])
    numpy_date = np.array(["2020-03-01T12:30"], dtype="datetime64[ns]")
    expected = int((numpy_date[0] - np.datetime64("1970-01-01", "ns")) // np.timedelta64(1, "us"))
    assert microseconds_since_epoch(standard) == microseconds_since_epoch(numpy_date) == [expected]
    # daily data with L = 48 h: alternate days sit on an anchor and half-way (1970-01-01 is anchor 0)
    days = np.array([cftime.datetime(2019, 12, d, calendar="360_day") for d in (1, 2, 3)])
    positions = anchor_positions(days, 48)
    start = ((2019 - 1970) * 360 + 11 * 30) // 2
    assert positions.anchor == [start, start, start + 1] and positions.fraction.tolist() == [0.0, 0.5, 0.0]


def test_bad_correlation_lengths_and_blends_are_refused() -> None:
    assert check_time_correlation(0) == 0.0 and check_time_correlation(6) == 6.0
    for value in (-1, math.nan, math.inf, "6", True):
        with pytest.raises(ConfigError, match="must be a number of hours >= 0"):
            check_time_correlation(value)
    with pytest.raises(ConfigError, match="no anchors"):
        anchor_positions(_hours(0), 0)
    with pytest.raises(ValueError, match="must sum to 1"):
        BlendedGenerator([torch.Generator(), torch.Generator()], [0.5, 0.5])


# -- a tiny trained run ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A residual diffusion run (3 steps), and one hourly day of coarse input (block means) and truth."""
    with torch.random.fork_rng(devices=[]), single_thread():
        root = tmp_path_factory.mktemp("coherent")
        write_inputs(root)
        run_dir = train_run(root, "diffusion", climate_config(root, "diffusion", "residual", 3))
        regression = train_run(root, "regression", climate_config(root, "regression", "residual", 2))
    truth = fine_field(np.random.default_rng(1), LATITUDE, LONGITUDE, HOURLY)
    t, h, w = truth.shape
    coarse = truth.reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(2, 4))
    write_coarse(
        root / "coarse.nc", coarse, LATITUDE.reshape(-1, FACTOR).mean(1), LONGITUDE.reshape(-1, FACTOR).mean(1), HOURLY
    )
    write_coarse(root / "truth.nc", truth, LATITUDE, LONGITUDE, HOURLY)
    return {
        "root": root,
        "run": run_dir,
        "regression": regression,
        "coarse": root / "coarse.nc",
        "truth": root / "truth.nc",
    }


def _downscale(setup: dict[str, Any], **options: Any) -> np.ndarray:
    run = load_climate_run(setup["run"], device="cpu")
    options = {"members": 3, "steps": 3, "seed": 5, **options}
    return run.downscale(setup["coarse"], **options)["t2m"].values


@ON_THE_RUN
def test_a_member_is_the_same_whatever_the_times_and_batches(setup: dict[str, Any]) -> None:
    """Heun with churn (the churn draws blend too): members 0..1 of hours 05..09 with member batch 1 and a
    different batch size are those of the whole day with member batch 2."""
    options = {"time_correlation": 6, "s_churn": 5}
    whole = _downscale(setup, member_batch=2, **options)
    part = _downscale(
        setup, members=2, member_batch=1, batch_size=3, start="2020-01-05T05", end="2020-01-05T09", **options
    )
    assert whole.shape == (3, 24, 16, 24) and part.shape == (2, 5, 16, 24)
    np.testing.assert_allclose(part, whole[:2, 5:10], rtol=0, atol=1e-4)
    assert np.abs(whole[0] - whole[1]).max() > 1e-3  # members differ


@ON_THE_RUN
def test_time_correlation_zero_is_the_independent_ensemble_bitwise(setup: dict[str, Any]) -> None:
    independent = _downscale(setup)
    np.testing.assert_array_equal(_downscale(setup, time_correlation=0), independent)
    np.testing.assert_array_equal(_downscale(setup, time_correlation=0.0, member_batch=1), independent)
    assert np.abs(_downscale(setup, time_correlation=6) - independent).max() > 1e-3


@ON_THE_RUN
def test_the_option_on_the_command_line_is_recorded_and_checked(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = ["downscale", str(setup["run"]), "--input", str(setup["coarse"]), "--members", "2", "--steps", "2"]
    head += ["--no-progress", "--device", "cpu", "--end", "2020-01-05T03"]
    assert run_cli([*head, "--out", str(tmp_path / "e.nc"), "--time-correlation", "6"]) == 0
    with netCDF4.Dataset(tmp_path / "e.nc") as dataset:
        assert dataset.getncattr("time_correlation_hours") == 6.0
        assert "every 6 h" in dataset.getncattr("member_noise")
    capsys.readouterr()
    assert run_cli([*head, "--out", str(tmp_path / "bad.nc"), "--time-correlation", "-2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--time-correlation = -2.0: must be a number of hours >= 0" in lines[0], lines
    assert not (tmp_path / "bad.nc").exists()
    regression = ["downscale", str(setup["regression"]), "--input", str(setup["coarse"]), "--no-progress"]
    regression += ["--device", "cpu", "--out", str(tmp_path / "r.nc"), "--time-correlation", "6"]
    assert run_cli(regression) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--time-correlation = 6: " in lines[0] and "regression run" in lines[0], lines
    assert not (tmp_path / "r.nc").exists()


@ON_THE_RUN
def test_coherent_members_have_a_higher_lag1_residual_autocorrelation(setup: dict[str, Any], tmp_path: Path) -> None:
    """An ODE sampler (Heun, no churn) maps the blended noise of neighbouring hours to neighbouring fields."""
    run = load_climate_run(setup["run"], device="cpu")
    scores = {}
    for hours in (0, 6):
        out = tmp_path / f"ensemble_{hours}.nc"
        run.downscale(setup["coarse"], members=4, steps=3, s_churn=0, seed=2, time_correlation=hours, out=out)
        scores[hours] = diffscale.evaluate(out, truth=setup["truth"], variables=["t2m"])
    lag1 = {hours: float(score["autocorrelation"].sel(variable="t2m", lag=1)) for hours, score in scores.items()}
    assert lag1[6] > lag1[0] + 0.5, lag1
