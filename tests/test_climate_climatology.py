"""The coarse climatology (diffscale.data.climate.climatology): pools of months, seasons and the whole record, one
read per pool, quantiles equal to numpy's of each month, a safetensors + JSON round trip that refuses damaged arrays,
cftime calendars, and on real ERA5 (the UK file coarsened) a known bias mapped back onto it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.data.climate.climatology import (
    CLIMATOLOGY_ARRAYS,
    CoarseClimatology,
    calendar_months,
    fit_coarse_climatology,
    month_pools,
)
from diffscale.data.climate.grid import coarsen
from diffscale.data.climate.quantile_mapping import empirical_quantiles, quantile_mapping
from diffscale.validation import ConfigError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UK = DATA / "era5_t2m_uk_2019-03.nc"


def test_calendar_months_of_datetime64_and_of_a_360_day_calendar() -> None:
    times = pd.date_range("2019-12-31T23:00", periods=3, freq="h").values
    np.testing.assert_array_equal(calendar_months(times), [12, 1, 1])
    dates = [cftime.Datetime360Day(2050, 2, 30), cftime.Datetime360Day(2050, 3, 1)]
    np.testing.assert_array_equal(calendar_months(np.array(dates, dtype=object)), [2, 3])


def test_a_month_with_too_few_times_takes_its_season_then_every_month() -> None:
    months = np.array([3] * 60 + [4] * 10 + [12] * 20 + [1] * 5)
    pools = month_pools(months, min_times=50)
    assert pools[2][1] == "month" and pools[2][0].size == 60
    assert pools[3][1] == "season MAM" and pools[3][0].size == 70  # April: 10 of its own, March's 60
    assert pools[4][1] == "season MAM"  # May has none, its season enough
    assert pools[0][1] == "season DJF (fewer than 50 times)" and pools[0][0].size == 25  # 5 + 20, what there is
    assert pools[6][1] == "none" and pools[6][0].size == 0  # no time of JJA


def _reader(values: np.ndarray, calls: list[list[int]]) -> Callable[[Sequence[int]], np.ndarray]:
    def read(indices: Sequence[int]) -> np.ndarray:
        calls.append(list(indices))
        return values[np.asarray(indices)]

    return read


def test_the_quantiles_are_each_months_and_each_pool_is_read_once_in_chunks(tmp_path: Path) -> None:
    times = pd.date_range("2021-01-01", "2021-03-31T18:00", freq="6h").values  # Jan 124, Feb 112, Mar 124
    rng = np.random.default_rng(0)
    values = rng.normal(size=(times.size, 2, 3, 4)) + calendar_months(times)[:, None, None, None]
    calls: list[list[int]] = []
    climatology = fit_coarse_climatology(
        _reader(values, calls),
        times,
        ["t2m", "msl"],
        np.array([50.0, 51.0, 52.0]),
        np.arange(4.0),
        {"t2m": "K", "msl": "Pa"},
        levels=21,
        min_times=100,
        chunk=50,
    )
    months = calendar_months(times)
    for month in (1, 2, 3):
        expected = np.quantile(values[months == month], np.linspace(0, 1, 21), axis=0)  # (21, 2, 3, 4)
        np.testing.assert_allclose(climatology.quantiles["msl"][month - 1], expected[:, 1], rtol=1e-6)
        assert climatology.pools[month - 1] == "month"
    # December: DJF (January and February, 236 times); April and May: MAM (March's 124); summer, autumn: none
    assert climatology.pools[11] == "season DJF" and climatology.counts[11] == 236
    assert climatology.pools[3] == climatology.pools[4] == "season MAM" and climatology.counts[3] == 124
    np.testing.assert_array_equal(climatology.quantiles["t2m"][3], climatology.quantiles["t2m"][2])
    assert climatology.pools[5] == "none" and climatology.counts[5] == 0
    assert np.isnan(climatology.quantiles["t2m"][5]).all()
    assert climatology.month_counts == (124, 112, 124, *[0] * 9)
    # each distinct pool read once (MAM is March's times: not again), at most 50 times per call
    read = [index for call in calls for index in call]
    assert len(read) == 124 + 112 + 124 + 236 and max(len(call) for call in calls) <= 50
    assert climatology.period == ("2021-01-01T00:00", "2021-03-31T18:00")
    # saved and loaded: the same arrays in float32 and the same description
    climatology.save(tmp_path)
    loaded = CoarseClimatology.load(tmp_path)
    assert loaded is not None and loaded.source == str(tmp_path)
    assert loaded.pools == climatology.pools and loaded.counts == climatology.counts
    assert loaded.month_counts == climatology.month_counts and loaded.units["msl"] == "Pa"
    for name in ("t2m", "msl"):
        assert loaded.quantiles[name].dtype == np.float32 and loaded.quantiles[name].shape == (12, 21, 3, 4)
        np.testing.assert_array_equal(loaded.quantiles[name], climatology.quantiles[name])
    np.testing.assert_array_equal(loaded.levels, np.linspace(0, 1, 21))
    assert CoarseClimatology.load(tmp_path / "elsewhere") is None
    data = bytearray((tmp_path / CLIMATOLOGY_ARRAYS).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / CLIMATOLOGY_ARRAYS).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its recorded sha256; compute the climatology again"):
        CoarseClimatology.load(tmp_path)


def test_nan_in_the_training_coarse_fields_is_refused() -> None:
    times = pd.date_range("2021-01-01", periods=10, freq="D").values
    values = np.ones((10, 1, 2, 2))
    values[3, 0, 1, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN/inf"):
        fit_coarse_climatology(lambda i: values[np.asarray(i)], times, ["t2m"], np.zeros(2), np.zeros(2), {})


@pytest.mark.skipif(not UK.exists(), reason="shared ERA5 data not available")
def test_real_era5_coarse_fields_with_a_known_bias_are_mapped_back_onto_their_climatology() -> None:
    """ERA5 t2m over the UK (744 hourly fields of March 2019) coarsened 4x: the climatology of March, then an input
    2 K warmer with 1.3 x the variability about each cell's mean, mapped by QM over the same period: back within
    0.1 K in mean and 5 % in standard deviation in every cell."""
    fine = xr.open_dataset(UK)[["t2m"]].sortby("latitude").isel(latitude=slice(1, 33), longitude=slice(0, 48))
    observed = coarsen(fine.load(), 4)["t2m"].values.astype(np.float64)  # (744, 8, 12)
    times = fine["time"].values
    climatology = fit_coarse_climatology(
        lambda indices: observed[np.asarray(indices)][:, None],
        times,
        ["t2m"],
        np.zeros(8),
        np.zeros(12),
        {"t2m": "K"},
    )
    assert climatology.pools[2] == "month" and climatology.counts[2] == 744
    mean = observed.mean(axis=0)
    model = mean + 1.3 * (observed - mean) + 2.0
    assert np.abs(model.mean(axis=0) - mean).min() > 1.9
    march = climatology.quantiles["t2m"][2].astype(np.float64)  # (51, 8, 12)
    adjusted = quantile_mapping(model, empirical_quantiles(model, climatology.levels), march, climatology.levels)
    assert np.abs(adjusted.mean(axis=0) - mean).max() < 0.1
    assert np.abs(adjusted.std(axis=0) / observed.std(axis=0) - 1).max() < 0.05
    # the climatology is float32: the map is back to within its rounding (2e-5 K at 280 K), not bitwise
    assert np.abs(adjusted - observed).max() < 1e-3
