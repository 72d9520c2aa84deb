"""Every CF calendar end to end: cftime dates (standard, proleptic_gregorian, noleap, all_leap, 360_day, julian and
the aliases gregorian, 365_day, 366_day) flow through reading, training, coarsening, downscaling (netCDF and Zarr),
evaluation and the writers unchanged, and the output keeps the input's time units and calendar. The hour and
day-of-year channels follow each calendar's year (closed forms), the per-(seed, date, member) seeds are those of
datetime64 for a standard-calendar date, and what a calendar cannot do is one line naming it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cftime
import netCDF4
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import diffscale
from diffscale.config.climate import ClimateData, period_bounds
from diffscale.data.climate.calendars import (
    CALENDARS,
    date_keys,
    decode_times,
    encode_times,
    parse_time_bound,
    time_text,
    within,
)
from diffscale.data.climate.channels import time_channels
from diffscale.data.climate.extrapolation import extrapolation_warning
from diffscale.data.climate.splits import open_fine_series
from diffscale.downscaling import EnsembleWriter, member_seed, merge_parts, part_path, time_key
from diffscale.evaluation import single_thread
from diffscale.validation import ConfigError
from tests.conftest import run_cli
from tests.test_climate_runs import LATITUDE, LONGITUDE, TIMES, climate_config, fine_field, train_run, write_statics

END_TO_END = ("standard", "proleptic_gregorian", "noleap", "all_leap", "360_day", "julian")
"""The six calendars (the three aliases are the same calendars under other names: checked on the writers)."""
UNITS = "hours since 2020-02-27"
"""The fine files' time units: 40 times every 3 h from 27 February 2020, across the end of February."""
FIRST, LAST = "2020-03-01", "2020-03-02"
"""The validation days, coarsened and downscaled (16 times; 8 in 360_day, whose 40 times end on 1 March)."""
SAMPLING = ["--members", "2", "--steps", "2", "--seed", "3", "--device", "cpu", "--no-progress"]


# -- the hour and day-of-year channels ------------------------------------------------------------------------------
def _closed_form(day: int, hour: float, year_length: int) -> list[float]:
    """sin/cos of 2 pi h / 24 and of 2 pi a, a = (d - 1 + h / 24) / N."""
    a = (day - 1 + hour / 24.0) / year_length
    hour_phase, year_phase = 2 * math.pi * hour / 24, 2 * math.pi * a
    return [math.sin(hour_phase), math.cos(hour_phase), math.sin(year_phase), math.cos(year_phase)]


def test_the_channels_of_a_360_day_year_are_its_closed_forms() -> None:
    """Every month has 30 days: d = 30 (m - 1) + day, N = 360; 30 February exists, 30 December ends the cycle."""
    dates = [(1, 1, 0), (2, 29, 6), (2, 30, 12), (3, 1, 0), (6, 30, 18), (12, 30, 23)]
    times = np.array([cftime.datetime(2021, m, d, h, calendar="360_day") for m, d, h in dates], dtype=object)
    channels = time_channels(times, 2, 3)
    assert channels.shape == (6, 4, 2, 3) and torch.equal(channels, channels[:, :, :1, :1].expand(6, 4, 2, 3))
    expected = [_closed_form(30 * (m - 1) + d, h, 360) for m, d, h in dates]
    np.testing.assert_allclose(channels[:, :, 0, 0].numpy(), np.array(expected), rtol=0, atol=2e-7)
    # 30 December, 23:00 is 1 h before the year's end: a = 1 - 1 / (24 x 360)
    year_phase = math.atan2(float(channels[-1, 2, 0, 0]), float(channels[-1, 3, 0, 0]))
    assert year_phase == pytest.approx(-2 * math.pi / (24 * 360), abs=1e-6)


@pytest.mark.parametrize(
    ("calendar", "year", "day", "length"),
    [
        ("noleap", 2020, 60, 365),  # 1 March of a noleap 2020: no 29 February before it
        ("365_day", 2020, 60, 365),
        ("all_leap", 2021, 61, 366),  # every year has 29 February
        ("366_day", 2021, 61, 366),
        ("julian", 1900, 61, 366),  # a Julian leap year, not a Gregorian one
        ("standard", 1900, 60, 365),
        ("proleptic_gregorian", 2000, 61, 366),
    ],
)
def test_each_calendar_counts_its_own_days_of_the_year(calendar: str, year: int, day: int, length: int) -> None:
    times = np.array([cftime.datetime(year, 3, 1, 9, calendar=calendar)], dtype=object)
    np.testing.assert_allclose(time_channels(times, 1, 1)[0, :, 0, 0].numpy(), _closed_form(day, 9, length), atol=2e-7)


def test_standard_cftime_dates_give_the_datetime64_channels_bitwise() -> None:
    stamps = pd.date_range("2019-12-30", "2021-01-02", freq="7h").values  # across a leap year, both its ends
    for calendar in ("standard", "gregorian", "proleptic_gregorian"):
        dates = np.array(
            [cftime.datetime(t.year, t.month, t.day, t.hour, calendar=calendar) for t in pd.DatetimeIndex(stamps)],
            dtype=object,
        )
        assert torch.equal(time_channels(dates, 1, 1), time_channels(stamps, 1, 1))


# -- seeding ----------------------------------------------------------------------------------------------------
def test_a_standard_date_seeds_as_its_datetime64_and_every_calendar_date_has_its_own_key() -> None:
    stamp = np.datetime64("2019-03-25T06:00")
    for calendar in ("standard", "gregorian", "proleptic_gregorian"):
        date = cftime.datetime(2019, 3, 25, 6, calendar=calendar)
        assert time_key(date) == time_key(stamp) == "2019-03-25T06:00:00.000000000"
        assert member_seed(7, time_key(date), 3) == member_seed(7, time_key(stamp), 3)
    assert time_key(cftime.datetime(2019, 2, 30, 6, calendar="360_day")) == "2019-02-30T06:00:00.000000000"
    noleap = time_key(cftime.datetime(2020, 3, 1, calendar="noleap"))
    assert noleap == "2020-03-01T00:00:00.000000000" != time_key(cftime.datetime(2020, 2, 29, calendar="all_leap"))


# -- encoding, periods and bounds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("calendar", CALENDARS)
def test_times_of_every_calendar_round_trip_through_their_encoding(calendar: str) -> None:
    dates = cftime.num2date(
        np.arange(0, 24 * 40, 9), "hours since 2019-02-25", calendar, only_use_cftime_datetimes=True
    )
    values, units, written = encode_times(dates)  # hours since 1970 in the dates' own calendar
    assert units == "hours since 1970-01-01 00:00:00" and values.dtype == np.int64
    np.testing.assert_array_equal(date_keys(decode_times(values, units, written)), date_keys(dates))
    values, units, written = encode_times(dates, "days since 1850-01-01", calendar)  # an input's, kept
    assert (units, written, values.dtype) == ("days since 1850-01-01", calendar, np.float64)  # 9 h: fractions
    back = decode_times(values, units, written)
    np.testing.assert_array_equal(date_keys(back), date_keys(dates))
    daily = dates[::8]  # every 72 h: whole days
    assert encode_times(daily, "days since 1850-01-01", calendar)[0].dtype == np.int64


def test_an_encoding_that_cannot_hold_the_times_is_one_line() -> None:
    noleap = np.array([cftime.datetime(2020, 3, 1, calendar="noleap")], dtype=object)
    with pytest.raises(ConfigError, match="noleap calendar cannot be written in the 360_day calendar"):
        encode_times(noleap, "days since 2000-01-01", "360_day")
    with pytest.raises(ConfigError, match="not a CF calendar"):
        encode_times(noleap, "days since 2000-01-01", "lunar")
    with pytest.raises(ConfigError, match="sub-second"):
        encode_times(np.array([cftime.datetime(2020, 3, 1, 0, 0, 0, 500, calendar="noleap")], dtype=object))


def test_periods_select_the_dates_of_every_calendar_by_their_components() -> None:
    days = {
        calendar: cftime.num2date(np.arange(8), "days since 2020-02-26", calendar, only_use_cftime_datetimes=True)
        for calendar in ("360_day", "noleap", "all_leap")
    }
    february = period_bounds(("2020-02-01", "2020-02"))
    chosen = {
        calendar: [time_text(d)[:10] for d in dates[within(dates, *february)]] for calendar, dates in days.items()
    }
    assert chosen["360_day"] == ["2020-02-26", "2020-02-27", "2020-02-28", "2020-02-29", "2020-02-30"]
    assert chosen["noleap"] == ["2020-02-26", "2020-02-27", "2020-02-28"]
    assert chosen["all_leap"] == ["2020-02-26", "2020-02-27", "2020-02-28", "2020-02-29"]
    up_to_the_27th = period_bounds(("2020-01-01", "2020-02-27"))
    assert within(days["360_day"], *up_to_the_27th).sum() == 2
    first = parse_time_bound("2020-02-30", "360_day", "start")
    last = parse_time_bound("2020-03", "360_day", "end", end=True)
    assert time_text(first) == "2020-02-30T00:00" and time_text(last, "s") == "2020-03-30T23:59:59"
    with pytest.raises(
        ConfigError, match=r"--start = '2020-02-30': not a date of the noleap calendar of the input \(give"
    ):
        parse_time_bound("2020-02-30", "noleap", "--start")


def test_a_split_of_several_periods_leaves_out_a_360_day_february_s_end_between_them() -> None:
    """test_period [[26, 27 February], [1, 2 March]]: the gap between them is 28, 29 and 30 February."""
    section = ClimateData.model_validate(
        {"paths": ["/nowhere/fine.nc"], "test_period": [["2020-02-26", "2020-02-27"], ["2020-03-01", "2020-03-02"]]}
    )
    days = cftime.num2date(np.arange(8), "days since 2020-02-25", "360_day", only_use_cftime_datetimes=True)
    inside = within(days, *section.period("test"))
    for start, end in section.excluded_periods("test"):
        inside &= ~within(days, start, end)
    assert [time_text(day)[:10] for day in days[inside]] == ["2020-02-26", "2020-02-27", "2020-03-01", "2020-03-02"]


def test_the_extrapolation_warning_names_a_360_day_date() -> None:
    times = np.array([cftime.datetime(2019, 2, day, 6, calendar="360_day") for day in (29, 30)], dtype=object)
    measured = {"t2m": {"outside_fraction": np.array([0.1, 0.6]), "excess": np.array([0.0, 1.5])}}
    warning = extrapolation_warning(measured, times)
    assert warning is not None and "t2m at 1 of 2 times" in warning and "2019-02-30T06:00" in warning


def test_part_files_of_a_360_day_ensemble_merge_into_its_calendar(tmp_path: Path) -> None:
    times = cftime.num2date([0, 1, 2], "days since 2019-02-29", "360_day", only_use_cftime_datetimes=True)
    layout = {
        "latitude": np.array([50.0, 51.0]),
        "longitude": np.array([0.0, 1.0, 2.0]),
        "times": times,
        "num_members": 2,
        "variables": {"t2m": {"units": "K"}},
        "time_encoding": {"units": "hours since 2019-01-01 00:00:00", "calendar": "360_day"},
    }
    parts = [part_path(tmp_path / "merged.nc", rank, 2) for rank in range(2)]
    for rank, part in enumerate(parts):
        with EnsembleWriter(part, part=(rank, 2), **layout) as writer:
            writer.write("t2m", range(rank, rank + 1), slice(0, 3), np.full((1, 3, 2, 3), 280.0 + rank))
    merged = merge_parts(parts, tmp_path / "merged.nc")
    with netCDF4.Dataset(merged) as dataset:
        assert (dataset["time"].units, dataset["time"].calendar) == ("hours since 2019-01-01 00:00:00", "360_day")
        np.testing.assert_array_equal(dataset["time"][:], [1392, 1416, 1440])  # (30 + 28 + 0, 1, 2 days) x 24 h
        np.testing.assert_array_equal(dataset["t2m"][:, 0, 0, 0], [280.0, 281.0])
    with xr.open_dataset(merged) as reopened:
        assert [time_text(d)[:10] for d in reopened["time"].values] == ["2019-02-29", "2019-02-30", "2019-03-01"]


# -- end to end, one tiny run per calendar ---------------------------------------------------------------------
def _write_fine(path: Path, calendar: str) -> np.ndarray:
    """The synthetic fine t2m of the climate-run tests on 40 dates of ``calendar`` (every 3 h from 27 February
    2020, so across its own end of February), latitude descending; returns the dates."""
    values = fine_field(np.random.default_rng(0), LATITUDE, LONGITUDE, TIMES).astype(np.float32)
    dates = cftime.num2date(np.arange(40) * 3, UNITS, calendar, only_use_cftime_datetimes=True)
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values[:, ::-1], {"units": "K"})},
        coords={"time": ("time", dates), "latitude": LATITUDE[::-1], "longitude": LONGITUDE},
    ).to_netcdf(path, encoding={"time": {"units": UNITS, "calendar": calendar, "dtype": "int64"}})
    return dates


def _config(root: Path) -> dict[str, Any]:
    """The climate-run tests' tiny diffusion configuration, trained on February (its last days, in the file's
    calendar) with the hour and day-of-year channels, validated on 1-2 March."""
    config = climate_config(root, "diffusion", "residual", 2)
    config["data"]["train_period"] = ["2020-02-27", "2020-02"]
    config["data"]["validation_period"] = [FIRST, LAST]
    config["data"]["channels"] = {"latlon": True, "hour": True, "day_of_year": True}
    return config


@pytest.fixture(scope="module")
def calendar_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """A tiny run per calendar (trained once, when first asked for), its fine file and the coarse input that
    ``diffscale coarsen`` makes of the validation days."""
    made: dict[str, dict[str, Any]] = {}

    def make(calendar: str) -> dict[str, Any]:
        if calendar not in made:
            root = tmp_path_factory.mktemp(f"calendar_{calendar}")
            with torch.random.fork_rng(devices=[]), single_thread():
                dates = _write_fine(root / "fine.nc", calendar)
                write_statics(root / "statics.nc")
                run = train_run(root, "run", _config(root))
                argv = ["coarsen", str(run), "--input", str(root / "fine.nc"), "--start", FIRST, "--end", LAST]
                assert run_cli([*argv, "--out", str(root / "coarse.nc")]) == 0
            made[calendar] = {"root": root, "run": run, "dates": dates, "coarse": root / "coarse.nc"}
        return made[calendar]

    return make


def _time_encoding(path: Path) -> tuple[str, str]:
    with netCDF4.Dataset(path) as dataset:
        return dataset["time"].units, dataset["time"].calendar


@pytest.mark.parametrize("calendar", END_TO_END)
def test_each_calendar_trains_coarsens_and_downscales_keeping_its_time_encoding(
    calendar: str, calendar_run: Callable[[str], dict[str, Any]]
) -> None:
    made = calendar_run(calendar)
    root, coarse = made["root"], made["coarse"]
    assert _time_encoding(root / "fine.nc") == (UNITS, calendar)
    assert _time_encoding(coarse) == (UNITS, calendar)  # coarsen keeps the fine file's units and calendar
    validation = [date for date in made["dates"] if FIRST <= time_text(date)[:10] <= LAST]
    with single_thread():
        for name in ("ensemble.nc", "ensemble.zarr"):
            assert (
                run_cli(["downscale", str(made["run"]), "--input", str(coarse), "--out", str(root / name), *SAMPLING])
                == 0
            )
    assert _time_encoding(root / "ensemble.nc") == (UNITS, calendar)
    with netCDF4.Dataset(coarse) as source, netCDF4.Dataset(root / "ensemble.nc") as ensemble:
        np.testing.assert_array_equal(ensemble["time"][:], source["time"][:])
        values = np.asarray(ensemble["t2m"][:])
    assert values.shape == (2, len(validation), 16, 24) and np.isfinite(values).all()
    store = xr.open_zarr(root / "ensemble.zarr")
    assert (store["time"].encoding["units"], store["time"].encoding["calendar"]) == (UNITS, calendar)
    np.testing.assert_array_equal(date_keys(store["time"].values), date_keys(np.array(validation, dtype=object)))
    np.testing.assert_array_equal(store["t2m"].values, values)


def test_training_takes_in_the_last_days_of_a_360_day_february(calendar_run: Callable[[str], dict[str, Any]]) -> None:
    """train_period [2020-02-27, 2020-02]: 27, 28, 29 and 30 February of the 360_day file, 8 times each."""
    made = calendar_run("360_day")
    section = ClimateData.model_validate(_config(made["root"])["data"])
    series, _ = open_fine_series(section, "train")
    assert len(series) == 32 and time_text(series.times[-1]) == "2020-02-30T21:00"
    assert all(isinstance(date, cftime.datetime) and date.calendar == "360_day" for date in series.times)


def test_the_api_returns_what_the_command_writes_in_a_360_day_calendar(
    calendar_run: Callable[[str], dict[str, Any]], tmp_path: Path
) -> None:
    made = calendar_run("360_day")
    run = diffscale.load_run(made["run"], device="cpu")
    argv = ["downscale", str(made["run"]), "--input", str(made["coarse"]), "--out", str(tmp_path / "e.nc")]
    with single_thread():
        ensemble = run.downscale(made["coarse"], members=2, steps=2, seed=3)
        assert run_cli([*argv, *SAMPLING]) == 0
        # time bounds given as dates of the calendar (cftime), not only as text
        noon = cftime.datetime(2020, 3, 1, 12, calendar="360_day")  # the file ends on 1 March (30-day February)
        afternoon = run.downscale(made["coarse"], members=2, steps=2, seed=3, start=noon)
    assert ensemble["time"].encoding["calendar"] == "360_day" and ensemble["time"].encoding["units"] == UNITS
    assert all(isinstance(date, cftime.datetime) and date.calendar == "360_day" for date in ensemble["time"].values)
    with xr.open_dataset(tmp_path / "e.nc") as written:
        for dataset in (ensemble, written):
            dataset.attrs.pop("history", None)
        xr.testing.assert_identical(ensemble, written.load())
    assert [time_text(date) for date in afternoon["time"].values] == [f"2020-03-01T{h}:00" for h in (12, 15, 18, 21)]
    np.testing.assert_allclose(afternoon["t2m"].values, ensemble["t2m"].values[:, 4:], rtol=0, atol=1e-4)


def test_a_standard_calendar_input_gives_its_datetime64_ensemble_bitwise(
    calendar_run: Callable[[str], dict[str, Any]],
) -> None:
    """The same file read as datetime64 (xarray's default) and as cftime dates: the same members, bit for bit."""
    made = calendar_run("standard")
    run = diffscale.load_run(made["run"], device="cpu")
    ensembles = {}
    with single_thread():
        for use_cftime in (False, True):
            with xr.open_dataset(
                made["coarse"], decode_times=xr.coders.CFDatetimeCoder(use_cftime=use_cftime)
            ) as coarse:
                ensembles[use_cftime] = run.downscale(coarse.load(), members=3, steps=2, s_churn=5.0, seed=11)
    assert ensembles[False]["time"].dtype.kind == "M" and isinstance(ensembles[True]["time"].values[0], cftime.datetime)
    assert np.array_equal(ensembles[True]["t2m"].values, ensembles[False]["t2m"].values)
    np.testing.assert_array_equal(date_keys(ensembles[True]["time"].values), date_keys(ensembles[False]["time"].values))


def test_a_noleap_member_is_the_same_whatever_start_and_end(
    calendar_run: Callable[[str], dict[str, Any]], tmp_path: Path
) -> None:
    """Each member sampled on its own (batches of one), so the same (seed, date, member) gives the same field bit
    for bit whatever other dates the input holds."""
    made = calendar_run("noleap")
    run, coarse = str(made["run"]), str(made["coarse"])
    alone = [*SAMPLING, "--member-batch", "1", "--batch-size", "1"]
    with single_thread():
        assert run_cli(["downscale", run, "--input", coarse, "--out", str(tmp_path / "all.nc"), *alone]) == 0
        window = ["--start", "2020-03-02T03:00", "--end", "2020-03-02T09"]
        argv = ["downscale", run, "--input", coarse, "--out", str(tmp_path / "part.nc"), *window, *alone]
        assert run_cli(argv) == 0
    with xr.open_dataset(tmp_path / "all.nc") as whole, xr.open_dataset(tmp_path / "part.nc") as part:
        labels = [time_text(d) for d in part["time"].values]
        assert labels == ["2020-03-02T03:00", "2020-03-02T06:00", "2020-03-02T09:00"]
        assert part["time"].encoding["calendar"] == "noleap"
        assert np.array_equal(part["t2m"].values, whole["t2m"].values[:, 9:12])
        # another member, another date: another field
        assert np.abs(whole["t2m"].values[0, 9] - whole["t2m"].values[1, 9]).max() > 1e-2
        assert np.abs(whole["t2m"].values[0, 9] - whole["t2m"].values[0, 10]).max() > 1e-2


def test_a_date_the_calendar_lacks_is_one_line_naming_it(
    calendar_run: Callable[[str], dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = calendar_run("noleap")
    argv = ["downscale", str(made["run"]), "--input", str(made["coarse"]), "--out", str(tmp_path / "e.nc")]
    assert run_cli([*argv, "--start", "2020-02-29", *SAMPLING]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        len(error) == 1 and f"--start = '2020-02-29': not a date of the noleap calendar of {made['coarse']}" in error[0]
    )
    assert error[0].endswith("(give a date that calendar has: every February has 28 days)")
    assert not (tmp_path / "e.nc").exists()


def test_evaluate_scores_a_noleap_ensemble_against_a_noleap_truth(
    calendar_run: Callable[[str], dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = calendar_run("noleap")
    ensemble = tmp_path / "ensemble.nc"
    with single_thread():
        assert (
            run_cli(["downscale", str(made["run"]), "--input", str(made["coarse"]), "--out", str(ensemble), *SAMPLING])
            == 0
        )
    fine = made["root"] / "fine.nc"
    report = tmp_path / "report"
    assert run_cli(["evaluate", str(ensemble), "--truth", str(fine), "--out", str(report), "--no-figures"]) == 0
    scores = json.loads((report / "scores.json").read_text())
    assert scores["times"] == {
        "count": 16,
        "first": "2020-03-01T00:00:00",
        "last": "2020-03-02T21:00:00",
        "ensemble_times_without_truth": 0,
    }
    # the RMSE of the ensemble mean against the truth of the same noleap dates (rows ascending, cos-latitude weights)
    with xr.open_dataset(ensemble) as members, xr.open_dataset(fine) as truth:
        mean = members["t2m"].values.astype(np.float64).mean(axis=0)
        target = truth["t2m"].values[-24:-8, ::-1].astype(np.float64)  # 1-2 March of 27 Feb .. 3 March
    weights = np.cos(np.deg2rad(LATITUDE))[:, None]
    squared = ((mean - target) ** 2 * weights).sum(axis=(-2, -1)) / (weights.sum() * target.shape[-1])
    assert scores["variables"]["t2m"]["ensemble"]["rmse"] == pytest.approx(math.sqrt(squared.mean()), rel=1e-5)
    # a truth in another calendar: one line naming both
    with xr.open_dataset(fine) as truth:
        truth.load().convert_calendar("360_day", align_on="date").to_netcdf(tmp_path / "truth_360.nc")
    capsys.readouterr()
    argv = ["evaluate", str(ensemble), "--truth", str(tmp_path / "truth_360.nc"), "--out", str(tmp_path / "r2")]
    assert run_cli([*argv, "--no-figures"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "360_day calendar, the ensemble's in the noleap calendar" in error[0]


# -- real data -----------------------------------------------------------------------------------------------------
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UK = DATA / "era5_t2m_uk_2019-03.nc"


@pytest.mark.skipif(not UK.exists(), reason="shared ERA5 data not available")
@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_era5_converted_to_a_model_calendar_trains_coarsens_and_downscales(calendar: str, tmp_path: Path) -> None:
    """The UK ERA5 t2m of 1-4 March 2019 converted to a climate model's calendar (as CMIP6/CORDEX output is)."""
    with xr.open_dataset(UK) as source:
        converted = source.isel(time=slice(0, 96)).load().convert_calendar(calendar, align_on="date")
    converted.to_netcdf(tmp_path / "fine.nc")
    config = climate_config(tmp_path, "regression", "residual", 2)
    config["data"].update(
        paths=[str(tmp_path / "fine.nc")],
        static_paths=[str(DATA / "era5_orography_lsm_global.nc")],
        crop={"lat": [1, 33], "lon": [0, 48]},
        channels={"latlon": True, "hour": True, "day_of_year": True},
        train_period=["2019-03-01", "2019-03-02"],
        validation_period=["2019-03-03", "2019-03-04"],
    )
    with single_thread():
        run = train_run(tmp_path, "run", config)
        window = ["--start", "2019-03-04", "--end", "2019-03-04T02"]
        argv = ["coarsen", str(run), "--input", str(tmp_path / "fine.nc"), *window, "--out", str(tmp_path / "c.nc")]
        assert run_cli(argv) == 0
        argv = ["downscale", str(run), "--input", str(tmp_path / "c.nc"), "--out", str(tmp_path / "e.nc")]
        assert run_cli([*argv, "--device", "cpu", "--no-progress"]) == 0
    fine_encoding = _time_encoding(tmp_path / "fine.nc")
    assert fine_encoding[1] == calendar
    assert _time_encoding(tmp_path / "c.nc") == _time_encoding(tmp_path / "e.nc") == fine_encoding
    with xr.open_dataset(tmp_path / "e.nc") as ensemble:
        assert [time_text(d) for d in ensemble["time"].values] == [f"2019-03-04T0{h}:00" for h in range(3)]
        assert ensemble["t2m"].shape == (1, 3, 32, 48) and 250 < float(ensemble["t2m"].mean()) < 300
