"""``diffscale evaluate`` block by block over time: the scores of the whole record at once, and memory that does
not grow with the record."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.runs.blockwise_evaluation import evaluate_sources
from diffscale.runs.evaluation import evaluate_inputs, open_inputs
from tests.test_evaluation_blockwise import assert_same

MEMBERS, FACTOR = 3, 4


def _ensemble_and_truth(
    times: int, height: int, width: int, seed: int = 0, members: int = MEMBERS
) -> tuple[xr.Dataset, xr.Dataset]:
    """tasmin <= tasmax (a tied pair) and u10, v10 (so ws10 is derived) on a global grid (the seam is measured)."""
    rng = np.random.default_rng(seed)
    latitude = np.linspace(-80.0, 80.0, height)
    longitude = np.arange(width) * (360.0 / width)
    time = pd.date_range("2001-01-01", periods=times, freq="6h")
    shape = (times, height, width)
    truth_values = {
        "tasmin": 10.0 + 3.0 * rng.standard_normal(shape),
        "u10": 2.0 * rng.standard_normal(shape),
        "v10": 2.0 * rng.standard_normal(shape),
    }
    truth_values["tasmax"] = truth_values["tasmin"] + 5.0 + rng.random(shape)
    units = {"tasmin": "degC", "tasmax": "degC", "u10": "m s-1", "v10": "m s-1"}
    coords = {"time": time, "latitude": latitude, "longitude": longitude}
    truth = xr.Dataset(
        {
            name: (("time", "latitude", "longitude"), values, {"units": units[name]})
            for name, values in truth_values.items()
        },
        coords=coords,
    )
    ensemble = xr.Dataset(
        {
            name: (
                ("member", "time", "latitude", "longitude"),
                values + 1.5 * rng.standard_normal((members, *shape)),
                {"units": units[name]},
            )
            for name, values in truth_values.items()
        },
        coords=coords,
        attrs={"coarsening_factor": FACTOR},
    )
    return ensemble, truth


@pytest.mark.parametrize("block", [1, 4, 7])
def test_block_by_block_evaluation_equals_the_whole_record(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every score of scores.json (per variable, the derived ws10, the seam, the energy score, the ordered pair,
    the temporal scores) for blocks of 1, 4 and 7 of 18 times equals the evaluation of every time at once."""
    ensemble, truth = _ensemble_and_truth(18, 8, 16)
    sources = open_inputs(ensemble, truth)
    per_time = 8 * MEMBERS * len(sources.variables) * 8 * 16
    monkeypatch.setattr("diffscale.runs.blockwise_evaluation.EVALUATION_BLOCK_BYTES", block * per_time)
    direct = evaluate_inputs(sources.read(), seed=2).document
    blockwise = evaluate_sources(sources, seed=2).document
    assert set(direct["variables"]) == {"tasmin", "tasmax", "u10", "v10", "ws10"}
    assert {"joint", "ordered_pairs"} <= set(direct) and {"seam", "temporal"} <= set(direct["variables"]["ws10"])
    assert direct["variables"]["tasmin"]["temporal"]["daily"]["whole_days"] == 4
    assert_same(blockwise, direct)


def _peak_traced_bytes(directory: Path, times: int, whole_record: bool = False) -> int:
    ensemble, truth = _ensemble_and_truth(times, 32, 64, members=1)
    ensemble.to_netcdf(directory / f"ensemble_{times}.nc")
    truth.to_netcdf(directory / f"truth_{times}.nc")
    gc.collect()
    tracemalloc.start()
    try:
        sources = open_inputs(directory / f"ensemble_{times}.nc", directory / f"truth_{times}.nc", variables=["tasmin"])
        evaluate_sources(sources, whole_record=whole_record)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_of_the_evaluation_does_not_grow_with_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 times more times (24 vs 240 of one member on 32 x 64 cells: 0.4 vs 3.8 MiB of ensemble values, 11 MiB
    with the truth and the baseline in float64) cost under 3 MiB more: blocks of 4 times are read, and what is
    kept per time is the percentiles' tails (1 % of the times at either end of four sets of samples, and the
    truth's upper tenth for the spells of the temporal scores), the time index and the dask graph's tasks per
    chunk of 4 times. Reading every time at once costs the whole record and more. (With two
    members or more, the spread-error relation keeps three numbers a case: not measured here.)"""
    block = 4 * 8 * 32 * 64
    monkeypatch.setattr("diffscale.runs.blockwise_evaluation.EVALUATION_BLOCK_BYTES", block)
    monkeypatch.setattr("diffscale.runs.evaluation.READ_CHUNK_BYTES", block)
    _peak_traced_bytes(tmp_path, 24)  # what the first run imports and caches is not the record's
    short = _peak_traced_bytes(tmp_path, 24)
    long = _peak_traced_bytes(tmp_path, 240)
    assert long - short < 3 * 2**20, (short, long)
    whole = _peak_traced_bytes(tmp_path, 240, whole_record=True)
    assert whole - short > 10 * 2**20, (short, whole)  # what the bound above tells apart


@pytest.mark.parametrize("sampled", [False, True])
def test_figures_draw_every_time_of_a_short_record_and_a_spread_of_a_long_one(
    sampled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures' inputs (blocks of 5 of 18 times): every time when they fit in FIGURE_SAMPLE_BYTES, else 4
    times spread from the first to the last; the temporal figure's series at the centre has every time."""
    ensemble, truth = _ensemble_and_truth(18, 8, 16)
    sources = open_inputs(ensemble, truth, variables=["tasmin"])
    per_time = 8 * (MEMBERS + 3) * 8 * 16
    monkeypatch.setattr("diffscale.runs.blockwise_evaluation.EVALUATION_BLOCK_BYTES", 5 * 8 * MEMBERS * 8 * 16)
    if sampled:
        monkeypatch.setattr("diffscale.runs.blockwise_evaluation.FIGURE_SAMPLE_BYTES", 4 * per_time)
    evaluation = evaluate_sources(sources, figures=True)
    everything = sources.read()
    index = np.array([0, 6, 11, 17]) if sampled else np.arange(18)
    np.testing.assert_array_equal(evaluation.inputs.times, everything.times[index])
    for field in ("truth", "coarse", "baseline"):
        np.testing.assert_array_equal(
            getattr(evaluation.inputs, field)["tasmin"], getattr(everything, field)["tasmin"][index]
        )
    np.testing.assert_array_equal(evaluation.inputs.ensemble["tasmin"], everything.ensemble["tasmin"][:, index])
    series = evaluation.series
    assert series is not None and (series.row, series.column) == (4, 8)
    np.testing.assert_array_equal(series.times, everything.times)
    np.testing.assert_array_equal(series.truth["tasmin"], everything.truth["tasmin"][:, 4, 8])
    np.testing.assert_array_equal(series.members["tasmin"], everything.ensemble["tasmin"][:3, :, 4, 8])
