"""Scores accumulated block by block over time equal the scores of the whole record at once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from diffscale.evaluation.blockwise import OrderStatistics, SpreadErrorCases, VariableScores
from diffscale.evaluation.blockwise_temporal import TemporalScores
from diffscale.evaluation.calibration import binned_spread_error
from diffscale.evaluation.climate_report import evaluate_variable
from diffscale.evaluation.temporal import temporal_report

TIMES, HEIGHT, WIDTH = 23, 8, 12
LATITUDE = np.linspace(40.0, 47.0, HEIGHT)
LONGITUDE = np.linspace(5.0, 16.0, WIDTH)


def assert_same(blockwise: Any, direct: Any, where: str = "") -> None:
    """Equal structure; numbers equal to float rounding (NaN equals NaN)."""
    if isinstance(direct, Mapping):
        assert set(blockwise) == set(direct), where
        for key in direct:
            assert_same(blockwise[key], direct[key], f"{where}.{key}")
    elif isinstance(direct, list | tuple):
        assert len(blockwise) == len(direct), where
        for index, (left, right) in enumerate(zip(blockwise, direct, strict=True)):
            assert_same(left, right, f"{where}[{index}]")
    elif isinstance(direct, float) and math.isnan(direct):
        assert isinstance(blockwise, float) and math.isnan(blockwise), where
    elif isinstance(direct, int | float | np.floating | np.integer) and not isinstance(direct, bool):
        assert blockwise == pytest.approx(direct, rel=1e-9, abs=1e-12), where
    else:
        assert blockwise == direct, where


def _fields(members: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = 280.0 + 5.0 * rng.standard_normal((TIMES, HEIGHT, WIDTH))
    baseline = truth + rng.standard_normal((TIMES, HEIGHT, WIDTH))
    ensemble = truth + 1.3 * rng.standard_normal((members, TIMES, HEIGHT, WIDTH)) + 0.2
    ensemble[:, 3, 2, :4] = truth[3, 2, :4]  # ties of the truth with every member: random tie-breaking
    return ensemble, truth, baseline


@pytest.mark.parametrize("members", [1, 3, 5])
@pytest.mark.parametrize("block", [1, 5, 7, TIMES])
def test_blockwise_scores_equal_the_scores_of_the_whole_record(members: int, block: int) -> None:
    """Every number of evaluate_variable (RMSE, CRPS, spread, rank histogram and flatness, spread-error bins,
    percentile errors, spectra), for blocks that divide the record (1, 23) and blocks that do not (5, 7)."""
    ensemble, truth, baseline = _fields(members)
    direct = evaluate_variable("t2m", ensemble, truth, baseline, LATITUDE, LONGITUDE, 4, units="K", seed=3)
    scores = VariableScores("t2m", members, TIMES, LATITUDE, LONGITUDE, 4, units="K", seed=3)
    for start in range(0, TIMES, block):
        stop = start + block
        scores.add(ensemble[:, start:stop], truth[start:stop], baseline[start:stop])
    blockwise = scores.result()
    assert_same(blockwise.scores, direct.scores)
    assert blockwise.k_nyquist_coarse == direct.k_nyquist_coarse
    for label, spectrum in direct.spectra.items():
        np.testing.assert_allclose(blockwise.spectra[label].power, spectrum.power, rtol=1e-12)


@pytest.mark.parametrize("total", [1, 2, 3, 50, 101, 250])
def test_order_statistics_give_numpys_percentiles_whatever_the_blocks(total: int) -> None:
    """The kept tails give np.percentile exactly, with ties and blocks of 1, 3 and all the samples."""
    rng = np.random.default_rng(total)
    samples = np.round(rng.standard_normal((total, 3, 4)), 1)  # rounded: many ties
    percentiles = (0.0, 1.0, 10.0, 50.0, 90.0, 99.0, 100.0)
    for block in (1, 3, total):
        order = OrderStatistics(total, percentiles)
        for start in range(0, total, block):
            order.add(samples[start : start + block])
        assert order.low.shape[0] <= max(2, math.floor(0.5 * (total - 1)) + 2)
        for p in percentiles:
            np.testing.assert_array_equal(order.percentile(p), np.percentile(samples, p, axis=0))


def test_order_statistics_keep_a_small_share_of_a_long_record() -> None:
    """The 1st and 99th percentiles of 10,000 samples keep 101 + 101 of them per cell, not 10,000."""
    order = OrderStatistics(10_000, (1.0, 99.0))
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((10_000, 2))
    for start in range(0, 10_000, 700):
        order.add(samples[start : start + 700])
    assert (order.low.shape[0], order.high.shape[0]) == (101, 101)
    for p in (1.0, 99.0):
        np.testing.assert_array_equal(order.percentile(p), np.percentile(samples, p, axis=0))


def _series(times: pd.DatetimeIndex, members: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Persistent truth and members (an AR(1) residual on a smooth baseline), non-negative like precipitation."""
    rng = np.random.default_rng(seed)
    count = times.size
    baseline = np.abs(2.0 + np.sin(np.arange(count) / 5.0)[:, None, None] + 0.1 * rng.random((count, 4, 6)))
    noise = rng.standard_normal((members + 1, count, 4, 6))
    residual = np.zeros_like(noise)
    for step in range(count):
        residual[:, step] = (0.8 * residual[:, step - 1] if step else 0.0) + noise[:, step]
    fields = np.clip(baseline + residual, 0.0, None)
    fields[:, :, 0, 0] = 0.0  # a dry cell: ties and a series that does not vary
    return fields[1:], fields[0], baseline


@pytest.mark.parametrize(("name", "units"), [("t2m", "K"), ("tp", "m"), ("pr", "kg m-2 s-1")])
@pytest.mark.parametrize("block", [1, 5, 7, 30, 1000])
def test_blockwise_temporal_scores_equal_the_report_of_the_whole_record(name: str, units: str, block: int) -> None:
    """Autocorrelations, daily aggregates (unfinished days at both ends, a gap of 7 hours that breaks a day) and
    spells (above the truth's 90th percentile; wet and dry for precipitation) equal temporal_report's, whatever
    the blocks."""
    hours = pd.date_range("2001-03-01T05:00", periods=120, freq="h")
    times = hours.delete(range(45, 52))  # a gap: pairs and spells across it are left out
    members, truth, baseline = _series(times, 3)
    latitude = np.linspace(40.0, 43.0, 4)
    direct = temporal_report(name, members, truth, baseline, latitude, times.values, units)
    scores = TemporalScores(name, times.values, latitude, units)
    for add in (scores.add, scores.add_spells):
        for start in range(0, times.size, block):
            stop = start + block
            add(members[:, start:stop], truth[start:stop], baseline[start:stop])
    assert direct["daily"]["whole_days"] == 3
    assert_same(scores.result(), direct)


def test_spread_error_past_the_exact_cases_is_binned_on_the_fine_grid_with_bounded_memory() -> None:
    """Past its exact budget the spread-error relation keeps a fixed-size fine histogram, and its bins are those
    of the exact sort to the fine grid's resolution (1.2 % in variance)."""
    generator = np.random.default_rng(3)
    cases = 40_000
    sort_variance = np.exp(generator.normal(0.0, 2.0, cases))  # spans several decades
    sort_variance[:50] = 0.0  # zero spread goes to the lowest bin
    variance = sort_variance * np.exp(generator.normal(0.0, 0.3, cases))
    squared_error = sort_variance * generator.chisquare(1, cases)
    weights = generator.uniform(0.5, 1.5, cases)
    exact = binned_spread_error(sort_variance, variance, squared_error, weights, 8, 10, "held_out")
    accumulated = SpreadErrorCases(exact_cases=5_000)
    for block in np.array_split(np.arange(cases), 13):
        accumulated.add(sort_variance[block], variance[block], squared_error[block], weights[block])
        assert accumulated.kept_count <= 5_000
    assert accumulated.fine is not None and not accumulated.kept
    binned = accumulated.result(8, 10, "held_out")
    assert binned["bins"] == exact["bins"] == 10
    assert sum(binned["counts"]) == cases
    assert binned["weight_share"] == pytest.approx(exact["weight_share"], abs=2e-3)
    assert binned["spread"] == pytest.approx(exact["spread"], rel=0.02)
    assert binned["rmse"] == pytest.approx(exact["rmse"], rel=0.05)
    within_budget = SpreadErrorCases(exact_cases=cases)
    within_budget.add(sort_variance, variance, squared_error, weights)
    assert within_budget.fine is None
    assert_same(within_budget.result(8, 10, "held_out"), exact)
