"""Temporal scores of an ensemble (diffscale.evaluation.temporal) against closed forms, and end to end through
``diffscale evaluate`` and ``diffscale.evaluate`` on a tiny hourly ensemble file."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import pytest
import scoringrules
import xarray as xr
from matplotlib.figure import Figure

from diffscale.evaluation.temporal import (
    daily_aggregates,
    daily_scores,
    lag_autocorrelation,
    spell_statistics,
    temporal_report,
    time_positions,
    wet_threshold,
    whole_days,
)
from diffscale.validation import ConfigError
from tests.conftest import run_cli

LATITUDE = np.array([50.0, 51.0, 52.0])


def _ar1(rng: np.random.Generator, phi: float, shape: tuple[int, ...]) -> np.ndarray:
    """x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t along axis -3, started from its stationary law N(0, 1)."""
    noise = rng.normal(size=shape)
    series = np.empty(shape)
    series[..., 0, :, :] = noise[..., 0, :, :]
    for t in range(1, shape[-3]):
        series[..., t, :, :] = phi * series[..., t - 1, :, :] + math.sqrt(1 - phi**2) * noise[..., t, :, :]
    return series


def _hours(count: int, start: str = "2020-01-01T00") -> np.ndarray:
    return pd.date_range(start, periods=count, freq="h").values


def test_an_ar1_series_has_autocorrelation_phi_to_the_k() -> None:
    rng = np.random.default_rng(1)
    phi, steps = 0.6, 6000
    series = _ar1(rng, phi, (steps, 3, 4))
    _, positions = time_positions(_hours(steps))
    rho = lag_autocorrelation(series, positions, LATITUDE, 5)
    # the estimator's standard error is about 1 / sqrt(T x cells) ~ 0.004
    np.testing.assert_allclose(rho, phi ** np.arange(1, 6), atol=0.03)


def test_independent_shuffles_have_no_autocorrelation() -> None:
    rng = np.random.default_rng(2)
    series = _ar1(rng, 0.9, (4, 3000, 3, 4))  # four members
    shuffled = np.stack([member[rng.permutation(3000)] for member in series])
    positions = np.arange(3000)
    assert (lag_autocorrelation(series, positions, LATITUDE, 1)[:, 0] > 0.85).all()
    assert np.abs(lag_autocorrelation(shuffled, positions, LATITUDE, 3)).max() < 0.05


def test_autocorrelation_of_a_hand_made_series_and_a_gap() -> None:
    # a_t = +1, -1, +1, -1 (mean 0, variance 1): rho_1 = -1, rho_2 = +1
    series = np.array([1.0, -1.0, 1.0, -1.0])[:, None, None] * np.ones((4, 1, 2))
    np.testing.assert_allclose(lag_autocorrelation(series, [0, 1, 2, 3], [45.0], 3), [-1.0, 1.0, -1.0])
    # positions 0, 1, 3, 4 (values +1, -1, +1, -1): lag 1 pairs (0,1), (3,4): -1; lag 2 (1,3): -1; lag 3 (0,3),
    # (1,4): +1; lag 4 (0,4): -1; lag 5: no pair
    np.testing.assert_allclose(lag_autocorrelation(series, [0, 1, 3, 4], [45.0], 5), [-1, -1, 1, -1, np.nan])
    # a cell whose series is constant is left out, not counted as zero
    mixed = np.concatenate([series[..., :1], np.full((4, 1, 1), 7.0)], axis=-1)
    np.testing.assert_allclose(lag_autocorrelation(mixed, [0, 1, 2, 3], [45.0], 1), [-1.0])


def test_time_positions_for_numpy_and_cftime_dates() -> None:
    times = np.concatenate([_hours(3), _hours(2, "2020-01-01T06")])
    step, positions = time_positions(times)
    assert step == 3600.0 and positions.tolist() == [0, 1, 2, 6, 7]
    calendar = [cftime.Datetime360Day(2001, 2, 30, 0) + datetime.timedelta(hours=3 * k) for k in (0, 1, 2, 4)]
    step, positions = time_positions(np.array(calendar))
    assert step == 3 * 3600.0 and positions.tolist() == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="regular grid"):
        time_positions(np.array(["2020-01-01T00", "2020-01-01T02", "2020-01-01T05"], dtype="datetime64[s]"))
    with pytest.raises(ValueError, match="at least two"):
        time_positions(_hours(1))


def test_whole_days_and_daily_aggregates_of_a_known_series() -> None:
    times = _hours(60, "2020-01-01T05")  # 05:00 on day 1 to 16:00 on day 3: only day 2 is whole
    step, _ = time_positions(times)
    days = whole_days(times, step)
    assert len(days) == 1 and days[0].tolist() == list(range(19, 43))
    hour = np.arange(60) + 5
    series = (np.sin(2 * np.pi * hour / 24)[:, None, None] + hour[:, None, None] / 100) * np.ones((60, 2, 2))
    aggregates = daily_aggregates(series, days, ("max", "min", "mean", "sum"))
    day = series[19:43, 0, 0]
    expected = {"max": day.max(), "min": day.min(), "mean": day.mean(), "sum": day.sum()}
    for name, value in expected.items():
        assert aggregates[name].shape == (1, 2, 2)
        np.testing.assert_allclose(aggregates[name], value)
    # 6 h sine peaking at 06:00: its maximum on day 2 is at 30 h, sin = 1, plus 30 / 100
    np.testing.assert_allclose(aggregates["max"][0, 0, 0], 1.0 + 30 / 100)
    # a 360-day calendar, a day with a missing hour is not whole, daily data have no whole days
    calendar = np.array([cftime.Datetime360Day(2001, 2, 29, 0) + datetime.timedelta(hours=k) for k in range(48)])
    assert [d.tolist()[0] for d in whole_days(calendar, 3600.0)] == [0, 24]
    assert len(whole_days(np.delete(calendar, 30), 3600.0)) == 1
    assert whole_days(pd.date_range("2020-01-01", periods=5, freq="D").values, 86400.0) == []
    assert whole_days(_hours(48), 5 * 3600.0) == []


def test_fair_crps_of_daily_aggregates() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(4, 3, 5))
    same = daily_scores(np.stack([truth] * 6), truth, LATITUDE)
    assert same["crps"] == pytest.approx(0.0, abs=1e-12) and same["bias"] == pytest.approx(0.0, abs=1e-12)
    members = rng.normal(size=(6, 4, 3, 5)) + 0.3
    scores = daily_scores(members, truth, LATITUDE)
    pointwise = scoringrules.crps_ensemble(truth, np.moveaxis(members, 0, -1), m_axis=-1, estimator="fair")
    weights = np.cos(np.deg2rad(LATITUDE))[:, None]
    area = lambda values: float((values * weights).sum(axis=(-2, -1)).mean() / (weights.sum() * 5))  # noqa: E731
    assert scores["crps"] == pytest.approx(area(pointwise), rel=1e-10)
    assert scores["bias"] == pytest.approx(area(members.mean(axis=0) - truth), rel=1e-10)


def test_spells_of_a_hand_made_series() -> None:
    held = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)[:, None, None]
    condition = np.concatenate([held, np.zeros_like(held)], axis=-1)  # a second cell without a spell
    result = spell_statistics(condition, np.arange(10), [0.0], step_hours=3.0)
    # cell 0: runs of 2, 1 and 3 steps; cell 1: none. <N> = 1.5, length = 3 h x 6 steps / 3 runs
    assert float(result["count"]) == pytest.approx(1.5)
    assert float(result["mean_length_hours"]) == pytest.approx(6.0)
    # a gap between the 8th and 9th times splits the last run
    gapped = spell_statistics(condition, [0, 1, 2, 3, 4, 5, 6, 7, 9, 10], [0.0], step_hours=3.0)
    assert float(gapped["count"]) == pytest.approx(2.0) and float(gapped["mean_length_hours"]) == pytest.approx(4.5)
    none = spell_statistics(np.zeros((4, 1, 1), dtype=bool), np.arange(4), [0.0], 1.0)
    assert float(none["count"]) == 0.0 and math.isnan(float(none["mean_length_hours"]))


def test_wet_threshold_is_one_millimetre_a_day_in_the_data_units() -> None:
    assert wet_threshold("m", 3600.0) == (pytest.approx(1e-3 / 24), True)
    assert wet_threshold("mm", 86400.0) == (pytest.approx(1.0), True)
    assert wet_threshold("kg m-2 s-1", 3600.0) == (pytest.approx(1 / 86400), False)
    assert wet_threshold("mm/h", 3600.0) == (pytest.approx(1 / 24), False)
    with pytest.raises(ValueError, match="not a depth of water"):
        wet_threshold("K", 3600.0)
    with pytest.raises(ValueError, match="unknown units"):
        wet_threshold("furlongs", 3600.0)


def test_independent_hourly_draws_make_daily_extremes_too_extreme_and_spells_too_short() -> None:
    rng = np.random.default_rng(4)
    steps, members = 24 * 20, 5
    truth = _ar1(rng, 0.95, (steps, 3, 4))
    coherent = _ar1(rng, 0.95, (members, steps, 3, 4))  # series with the truth's persistence
    independent = rng.normal(size=(members, steps, 3, 4))  # the same N(0, 1) law at each hour, drawn independently
    times = _hours(steps)
    baseline = np.zeros_like(truth)
    good = temporal_report("t2m", coherent, truth, baseline, LATITUDE, times, "K")
    bad = temporal_report("t2m", independent, truth, baseline, LATITUDE, times, "K")
    assert good["daily"]["whole_days"] == 20 and len(good["lag_hours"]) == 24
    assert good["autocorrelation"]["ensemble"][0] > 0.9 and abs(bad["autocorrelation"]["ensemble"][0]) < 0.05
    good_max, bad_max = good["daily"]["statistics"]["max"], bad["daily"]["statistics"]["max"]
    assert bad_max["ensemble"]["bias"] > 0.5 > abs(good_max["ensemble"]["bias"])
    assert bad["daily"]["statistics"]["min"]["ensemble"]["bias"] < -0.5
    assert bad_max["ensemble"]["crps"] > good_max["ensemble"]["crps"]
    spells_good, spells_bad = good["spells"]["above_p90"], bad["spells"]["above_p90"]
    assert spells_bad["ensemble"]["mean_length_hours"] < 1.5 < spells_good["ensemble"]["mean_length_hours"]
    truth_length = spells_good["truth"]["mean_length_hours"]
    assert spells_good["ensemble"]["mean_length_hours"] == pytest.approx(truth_length, rel=0.35)
    assert "wet" not in good["spells"] and good["notes"] == []


# -- end to end -------------------------------------------------------------------------------------------------
FACTOR = 2
GRID_LAT = 50.0 + 0.25 * np.arange(4)
GRID_LON = -1.0 + 0.25 * np.arange(6)
STEPS = 30  # 00:00 on day 1 to 05:00 on day 2: one whole day
MEMBERS = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("temporal")
    rng = np.random.default_rng(5)
    times = _hours(STEPS)
    shape = (STEPS, GRID_LAT.size, GRID_LON.size)
    t2m = 280.0 + 2.0 * _ar1(rng, 0.8, shape)
    tp = np.maximum(_ar1(rng, 0.8, shape), 0.0) * 1e-3  # metres per hour, about half the hours dry
    members = {
        "t2m": t2m + 0.5 * rng.normal(size=(MEMBERS, *shape)),
        "tp": np.abs(tp + 2e-4 * rng.normal(size=(MEMBERS, *shape))),
    }
    coords = {"time": times, "latitude": GRID_LAT, "longitude": GRID_LON}
    xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), t2m, {"units": "K"}),
            "tp": (("time", "latitude", "longitude"), tp, {"units": "m"}),
        },
        coords=coords,
    ).to_netcdf(root / "truth.nc")
    dims = ("member", "time", "latitude", "longitude")
    xr.Dataset(
        {"t2m": (dims, members["t2m"], {"units": "K"}), "tp": (dims, members["tp"], {"units": "m"})},
        coords={"member": np.arange(MEMBERS), **coords},
        attrs={"coarsening_factor": FACTOR},
    ).to_netcdf(root / "ensemble.nc")
    return {"root": root, "truth": {"t2m": t2m, "tp": tp}, "members": members}


def _fair_crps(members: np.ndarray, truth: np.ndarray) -> float:
    count = members.shape[0]
    pairwise = np.abs(members[:, None] - members[None]).sum(axis=(0, 1)) / (count * (count - 1))
    pointwise = np.abs(members - truth).mean(axis=0) - 0.5 * pairwise
    weights = np.cos(np.deg2rad(GRID_LAT))[:, None]
    return float((pointwise * weights).sum(axis=(-2, -1)).mean() / (weights.sum() * GRID_LON.size))


def test_evaluate_prints_and_stores_the_temporal_scores(
    files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = files["root"]
    out = tmp_path / "report"
    assert run_cli(["evaluate", str(root / "ensemble.nc"), "--truth", str(root / "truth.nc"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "t2m residual autocorrelation (members' mean/truth, step 1 h)" in printed
    assert "t2m daily [K] over 1 whole day: max CRPS" in printed
    assert "t2m spells above the truth's 90th percentile: mean length" in printed
    assert "tp wet spells" in printed and "tp dry spells" in printed
    assert (out / "t2m_temporal.png").is_file() and (out / "tp_temporal.png").is_file()
    document = json.loads((out / "scores.json").read_text())
    report = document["variables"]["t2m"]["temporal"]
    assert report["lag_hours"] == [float(k) for k in range(1, 25)] and report["daily"]["whole_days"] == 1
    # the daily maximum's fair CRPS, computed independently over the first day
    members, truth = files["members"]["t2m"], files["truth"]["t2m"]
    expected = _fair_crps(members[:, :24].max(axis=1, keepdims=True), truth[:24].max(axis=0, keepdims=True))
    assert report["daily"]["statistics"]["max"]["ensemble"]["crps"] == pytest.approx(expected, rel=1e-5)
    assert "sum" in document["variables"]["tp"]["temporal"]["daily"]["statistics"]
    assert document["variables"]["tp"]["temporal"]["spells"]["wet_threshold"] == pytest.approx(1e-3 / 24)

    import diffscale

    scores = diffscale.evaluate(root / "ensemble.nc", truth=root / "truth.nc")
    assert scores["autocorrelation"].dims == ("variable", "lag") and scores.sizes["lag"] == 24
    assert scores["autocorrelation_member"].sizes["member"] == MEMBERS
    assert float(scores["daily_max_crps"].sel(variable="t2m", prediction="ensemble")) == pytest.approx(
        expected, rel=1e-5
    )
    assert math.isnan(float(scores["daily_sum_crps"].sel(variable="t2m", prediction="ensemble")))
    assert np.isfinite(scores["daily_sum_bias"].sel(variable="tp").values).all()
    assert np.isfinite(scores["wet_spell_length_truth"].sel(variable="tp").values)
    assert math.isnan(float(scores["wet_spell_length_truth"].sel(variable="t2m")))
    assert scores.attrs["temporal_whole_days"] == 1 and scores.attrs["temporal_step_hours"] == 1.0
    assert float(scores["spell_length"].sel(variable="t2m", prediction="ensemble")) > 0

    without = diffscale.evaluate(root / "ensemble.nc", truth=root / "truth.nc", temporal=False)
    assert "autocorrelation" not in without and "lag" not in without.dims

    from diffscale.runs import plots

    assert isinstance(plots.temporal(root / "ensemble.nc", root / "truth.nc", variable="t2m"), Figure)
    with pytest.raises(ConfigError, match="variable='t2m'"):
        plots.temporal(root / "ensemble.nc", root / "truth.nc")  # two variables: which one?


def test_one_time_or_no_temporal_flag_leaves_the_temporal_scores_out(
    files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = files["root"]
    out = tmp_path / "off"
    argv = [str(root / "ensemble.nc"), "--truth", str(root / "truth.nc"), "--no-figures", "--variable", "t2m"]
    assert run_cli(["evaluate", *argv, "--no-temporal", "--out", str(out)]) == 0
    assert "autocorrelation" not in capsys.readouterr().out
    assert "temporal" not in json.loads((out / "scores.json").read_text())["variables"]["t2m"]
    import diffscale

    one = xr.open_dataset(root / "ensemble.nc").isel(time=[0])
    scores = diffscale.evaluate(one, truth=root / "truth.nc", variables=["t2m"])
    assert "autocorrelation" not in scores and "at least two" in scores.attrs["temporal_note"]


def test_a_noleap_calendar_is_scored_like_the_standard_one(files: dict) -> None:
    import diffscale

    root = files["root"]
    with xr.open_dataset(root / "ensemble.nc") as ensemble, xr.open_dataset(root / "truth.nc") as truth:
        standard = diffscale.evaluate(ensemble, truth, variables=["t2m"])
        # 28 February 2001 00:00 to 1 March 05:00 in a 365-day calendar: one whole day, as in the standard file
        times = np.array([cftime.DatetimeNoLeap(2001, 2, 28) + datetime.timedelta(hours=h) for h in range(STEPS)])
        noleap = diffscale.evaluate(
            ensemble.assign_coords(time=times), truth.assign_coords(time=times), variables=["t2m"]
        )
    assert noleap.attrs["temporal_whole_days"] == 1
    for name in ("autocorrelation", "autocorrelation_truth", "daily_max_crps", "spell_length"):
        np.testing.assert_allclose(noleap[name].values, standard[name].values, rtol=1e-12)
