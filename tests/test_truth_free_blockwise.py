"""``diffscale evaluate`` without a truth, block by block over time: the scores of the whole record at once (blocks
that do not divide the record), and memory that does not grow with the record."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.data.climate.extrapolation import EXTRAPOLATION_SUFFIXES
from diffscale.evaluation.spectra import latlon_power_spectrum
from diffscale.runs.truth_free import evaluate_truth_free_sources, evaluate_without_truth, open_truth_free_sources
from tests.test_evaluation_blockwise import assert_same

FACTOR = 4


def _ensemble_and_coarse(
    times: int, height: int, width: int, members: int, seed: int = 0
) -> tuple[xr.Dataset, xr.Dataset]:
    """t2m (K) members around a coarse field, some of them beyond the physical range, with the per-time share of
    the area outside the training range (some times over the warning threshold)."""
    rng = np.random.default_rng(seed)
    latitude = np.linspace(40.0, 60.0, height)
    longitude = np.linspace(-10.0, 10.0, width)
    time = pd.date_range("2001-01-01", periods=times, freq="6h")
    coarse = 280.0 + 5.0 * rng.standard_normal((times, height // FACTOR, width // FACTOR))
    fine = np.repeat(np.repeat(coarse, FACTOR, axis=1), FACTOR, axis=2)
    values = fine[None] + 0.5 + 2.0 * rng.standard_normal((members, times, height, width))
    values[0, ::5, 0, 0] = 400.0  # outside the plausible range of an air temperature
    share = rng.random(times)
    ensemble = xr.Dataset(
        {
            "t2m": (("member", "time", "latitude", "longitude"), values, {"units": "K"}),
            f"t2m{EXTRAPOLATION_SUFFIXES[0]}": (("time",), share),
        },
        coords={"member": np.arange(members), "time": time, "latitude": latitude, "longitude": longitude},
        attrs={"coarsening_factor": FACTOR},
    )
    coarse_latitude = latitude.reshape(-1, FACTOR).mean(axis=1)
    coarse_longitude = longitude.reshape(-1, FACTOR).mean(axis=1)
    coarse_dataset = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), coarse, {"units": "K"})},
        coords={"time": time, "latitude": coarse_latitude, "longitude": coarse_longitude},
    )
    return ensemble, coarse_dataset


@pytest.mark.parametrize("block", [1, 4, 7])
def test_block_by_block_truth_free_scores_equal_the_whole_record(block: int) -> None:
    """Coarse consistency (bias, RMSE, per member, largest difference), the extrapolation share, the count outside
    the physical range and the spectrum against a climatology, for blocks of 1, 4 and 7 of 18 times, equal the
    scores of every time at once."""
    ensemble, coarse = _ensemble_and_coarse(18, 16, 24, members=3)
    sources = open_truth_free_sources(ensemble, coarse)
    other = np.random.default_rng(9).standard_normal((10, 16, 24))  # any climatology will do
    wavenumber, power = latlon_power_spectrum(other, sources.latitude, sources.longitude)
    sources.climatology = {"wavenumber_per_km": wavenumber.tolist(), "power": {"t2m": power.tolist()}, "times": 10}
    direct = evaluate_without_truth(sources.read()).document
    blockwise = evaluate_truth_free_sources(sources, block=block).document
    scores = direct["variables"]["t2m"]
    assert scores["physical_range"]["outside_count"] == 4  # times 0, 5, 10, 15
    assert 0 < scores["extrapolation"]["times_over_threshold"] < 18
    assert scores["spectrum_vs_training"] is not None and scores["coarse_consistency"]["bias"] > 0.3
    assert_same(blockwise, direct)


def _peak_traced_bytes(directory: Path, times: int, whole_record: bool = False) -> int:
    ensemble, coarse = _ensemble_and_coarse(times, 32, 64, members=1)
    ensemble.to_netcdf(directory / f"ensemble_{times}.nc")
    coarse.to_netcdf(directory / f"coarse_{times}.nc")
    del ensemble, coarse
    gc.collect()
    tracemalloc.start()
    try:
        sources = open_truth_free_sources(directory / f"ensemble_{times}.nc", directory / f"coarse_{times}.nc")
        if whole_record:
            evaluate_without_truth(sources.read())
        else:
            evaluate_truth_free_sources(sources)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_of_the_truth_free_evaluation_does_not_grow_with_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 times more times (24 vs 240 of one member on 32 x 64 cells: 0.4 vs 3.8 MiB of float64 members) cost
    under 1.5 MiB more (0.8 MiB measured): blocks of 4 times are read, and what grows is the time index and the
    dask graphs' tasks of the ensemble's, the share's and the coarse input's chunks of 4 times (about 4 kB a time
    here, as many times fewer as a chunk of the default 1 MiB holds more times). Reading every time at once costs
    the whole record and more (7.9 MiB more)."""
    block = 4 * 8 * 32 * 64
    monkeypatch.setattr("diffscale.runs.blockwise_evaluation.EVALUATION_BLOCK_BYTES", block)
    monkeypatch.setattr("diffscale.runs.evaluation.READ_CHUNK_BYTES", block)
    _peak_traced_bytes(tmp_path, 24)  # what the first run imports and caches is not the record's
    short = _peak_traced_bytes(tmp_path, 24)
    long = _peak_traced_bytes(tmp_path, 240)
    assert long - short < 1.5 * 2**20, (short, long)
    whole = _peak_traced_bytes(tmp_path, 240, whole_record=True)
    assert whole - short > 4 * 2**20, (short, whole)  # what the bound above tells apart
