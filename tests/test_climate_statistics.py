"""diffscale.data.climate.statistics: the streaming statistics pass equals the two-pass statistics of the whole
record, and what a climate run holds while it fits its statistics and input range and draws batches does not
grow with the length of the record."""

from __future__ import annotations

import gc
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.series import FieldSeries
from diffscale.data.climate.statistics import StatisticsPass, streaming_variable_stats
from diffscale.data.climate.transforms import Moments, fit_stats
from diffscale.runs.stats import training_input_range
from diffscale.validation import ConfigError, validate

HEIGHT, WIDTH = 64, 128
TIME_BYTES = 4 * HEIGHT * WIDTH
"""One time of one variable, float32 (32 KiB)."""
BLOCK_TIMES = 2
"""Times per block of the statistics pass and the input range here: the defaults (16 MiB) hold four global 0.25
degree fields, and the tests scale them down to this small grid so that a few blocks are a small part of the
record."""


def write_store(path: Path, times: int, seed: int = 0) -> Path:
    """A Zarr store of t2m (K) and tp (m) on a global HEIGHT x WIDTH grid, one time per chunk."""
    rng = np.random.default_rng(seed)
    t2m = (280.0 + 10.0 * rng.standard_normal((times, HEIGHT, WIDTH))).astype(np.float32)
    tp = rng.exponential(1e-3, (times, HEIGHT, WIDTH)).astype(np.float32)
    xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), t2m, {"units": "K"}),
            "tp": (("time", "latitude", "longitude"), tp, {"units": "m"}),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=times, freq="h").values,
            "latitude": np.linspace(-88.59375, 88.59375, HEIGHT),
            "longitude": np.arange(WIDTH) * (360.0 / WIDTH),
        },
    ).to_zarr(path, mode="w", encoding={name: {"chunks": (1, HEIGHT, WIDTH)} for name in ("t2m", "tp")})
    return path


def test_moments_merge_exactly_as_the_two_pass_statistics() -> None:
    rng = np.random.default_rng(3)
    values = 1e4 + rng.standard_normal(10_001)  # a large mean: the naive sum of squares would lose digits
    parts = np.split(values, [1, 7, 4000, 4001, 9000])
    merged = Moments()
    for part in parts:
        merged = merged.merge(Moments.of(part))
    assert merged.count == values.size
    assert merged.mean == pytest.approx(values.mean(), rel=1e-15)
    assert merged.variance == pytest.approx(values.var(), rel=1e-12)
    assert Moments().merge(Moments()).count == 0 and math.isnan(Moments().variance)
    logs = Moments.of(np.array([0.0, 1.0, 3.0]), {"name": "log1p", "scale": 2.0})
    assert logs.mean == pytest.approx(np.log1p(np.array([0.0, 0.5, 1.5])).mean(), rel=1e-15)


def test_streaming_statistics_equal_the_in_memory_ones_whatever_the_blocks_and_threads(tmp_path: Path) -> None:
    store = write_store(tmp_path / "a.zarr", 23)
    series = FieldSeries(store, ["t2m", "tp"])
    with xr.open_zarr(store) as ds:
        expected = fit_stats({"t2m": ds["t2m"].values, "tp": ds["tp"].values}, {"tp": "log1p"})
    for chunk_bytes, threads in ((TIME_BYTES * 5, 1), (TIME_BYTES, 3), (TIME_BYTES * 100, 2)):
        report: list[StatisticsPass] = []
        stats = streaming_variable_stats(
            series, {"tp": "log1p"}, chunk_bytes=chunk_bytes, threads=threads, report=report
        )
        for name in ("t2m", "tp"):
            assert stats[name]["mean"] == pytest.approx(expected[name]["mean"], rel=1e-12)
            assert stats[name]["std"] == pytest.approx(expected[name]["std"], rel=1e-9)
        (done,) = report
        assert done.times == 23 and done.nbytes == 2 * 23 * TIME_BYTES
        assert done.blocks == math.ceil(23 / max(1, min(23, chunk_bytes // TIME_BYTES)))
        assert done.most_in_flight <= threads
        assert "times/s" in done.describe() and "MB/s" in done.describe()


def test_a_non_finite_value_names_the_file_the_first_time_and_the_count(tmp_path: Path) -> None:
    store = write_store(tmp_path / "a.zarr", 12)
    with xr.open_zarr(store) as ds:
        damaged = ds.load()
    damaged["t2m"][[5, 9], 3, 4] = np.nan
    damaged.to_zarr(tmp_path / "b.zarr", mode="w")
    series = FieldSeries(tmp_path / "b.zarr", ["t2m", "tp"])
    message = r"b\.zarr: variable 't2m' has NaN/inf values at time 2000-01-01T05:00 \(2 of 12 times affected\)$"
    with pytest.raises(ConfigError, match=message):
        streaming_variable_stats(series, chunk_bytes=TIME_BYTES * 3, threads=2)


def _section(store: Path) -> ClimateData:
    data: dict[str, Any] = {
        "paths": [str(store)],
        "variables": ["t2m", "tp"],
        "transforms": {"tp": "log1p"},
        "coarsen_factor": 4,
        "patch": [16, 16],
    }
    return validate(ClimateData, data, prefix="data")


def _peak_traced_bytes(store: Path) -> tuple[int, ClimateDataset]:
    """The most memory Python and numpy held at once while a training dataset was built on ``store`` (statistics
    pass included), its input range fitted and a few batches drawn and read."""
    import torch

    section = _section(store)
    gc.collect()
    tracemalloc.start()
    try:
        dataset = ClimateDataset(section, "train")
        training_input_range(dataset)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            dataset.sample(4, generator)
        return tracemalloc.get_traced_memory()[1], dataset
    finally:
        tracemalloc.stop()


def test_memory_of_statistics_input_range_and_batches_does_not_grow_with_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record 10 times longer (20 vs 200 times; 1.2 vs 12.5 MiB of values) costs at most a few blocks more:
    the statistics pass and the input range read a bounded number of blocks of times at once, and nothing kept
    per time is more than the time index. Reading the whole record at once (one dask graph or one reduction over
    every time), or keeping a field per time, adds megabytes."""
    monkeypatch.setattr("diffscale.data.climate.statistics.STATS_CHUNK_BYTES", BLOCK_TIMES * TIME_BYTES, raising=False)
    monkeypatch.setattr("diffscale.runs.stats.RANGE_CHUNK_BYTES", BLOCK_TIMES * 2 * TIME_BYTES, raising=False)
    short_store = write_store(tmp_path / "short.zarr", 20)
    _peak_traced_bytes(short_store)  # what the first run imports and caches is not the record's
    short_peak, short = _peak_traced_bytes(short_store)
    long_peak, long = _peak_traced_bytes(write_store(tmp_path / "long.zarr", 200))
    assert (len(short), len(long)) == (20, 200)
    growth = long_peak - short_peak
    # 180 more times are 11.2 MiB of values; allow what 16 times would take
    assert growth < 16 * 2 * TIME_BYTES, f"peak traced memory grew by {growth / 2**20:.2f} MiB with the record"
    passes = [dataset.statistics_pass for dataset in (short, long)]
    assert all(done is not None and done.most_in_flight <= 2 for done in passes)
    assert [done.blocks for done in passes if done is not None] == [20 // BLOCK_TIMES, 200 // BLOCK_TIMES]
