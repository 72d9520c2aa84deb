"""diffscale.data.climate.series: many files as one lazily read time axis; bad sets of files and failed reads
are one-line errors naming the file (and the time)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.data.climate.series import FieldSeries, GridWindow
from diffscale.validation import ConfigError

TIMES = pd.date_range("2021-06-01", periods=12, freq="6h").values
LATITUDE = np.arange(50.0, 46.0, -0.5)  # descending, as in ERA5 files
LONGITUDE = np.arange(350.0, 356.0, 0.5)  # 0..360 convention: harmonised to -10 .. -4.5


def values(times: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """A field that says where it is: 1000 * hour index + 10 * row + column (+ offset)."""
    hours = ((times - TIMES[0]) / np.timedelta64(6, "h")).astype(float)
    rows, columns = np.meshgrid(np.arange(LATITUDE.size), np.arange(LONGITUDE.size), indexing="ij")
    return (1000.0 * hours[:, None, None] + 10.0 * rows + columns + offset).astype(np.float32)


def write(path: Path, times: np.ndarray, name: str = "t2m", latitude: np.ndarray = LATITUDE, **attrs: str) -> Path:
    xr.Dataset(
        {name: (("time", "latitude", "longitude"), values(times), dict(attrs))},
        coords={"time": times, "latitude": latitude, "longitude": LONGITUDE},
    ).to_netcdf(path)
    return path


def test_files_in_any_order_form_one_sorted_time_axis_read_lazily(tmp_path: Path) -> None:
    late = write(tmp_path / "b.nc", TIMES[6:])
    early = write(tmp_path / "a.nc", TIMES[:6])
    series = FieldSeries([late, early], ["t2m"], period=(TIMES[2], TIMES[9]))
    np.testing.assert_array_equal(series.times, TIMES[2:10])
    assert [series.path_of(i) for i in (0, 3, 4, 7)] == [str(early)] * 2 + [str(late)] * 2
    # a window of the harmonised grid (latitude ascending, longitude -10 .. -4.5): raw row 7 - r, column c
    rows, columns = slice(1, 4), np.array([5, 6, 11])
    (read,) = series.read(5, rows, columns)
    expected = values(TIMES[7:8])[0][::-1][1:4][:, [5, 6, 11]]
    np.testing.assert_array_equal(read, expected)
    windowed = FieldSeries(tmp_path / "*.nc", ["t2m"], window=GridWindow(latitude=(2, 6), longitude=(1, 9)))
    np.testing.assert_array_equal(windowed.latitude, np.sort(LATITUDE)[2:6])
    np.testing.assert_array_equal(windowed.read(11)[0], values(TIMES[11:])[0][::-1][2:6, 1:9])
    # what a worker process receives: the time index, no open file
    copy = pickle.loads(pickle.dumps(series))
    assert series._open and not copy._open
    np.testing.assert_array_equal(copy.read(5, rows, columns)[0], expected)


def test_units_are_converted_per_file(tmp_path: Path) -> None:
    write(tmp_path / "a.nc", TIMES[:6], units="K")
    write(tmp_path / "b.nc", TIMES[6:], units="degC")
    series = FieldSeries(tmp_path / "*.nc", ["t2m"])
    series.convert_to({"t2m": "K"})
    np.testing.assert_array_equal(series.read(0)[0], values(TIMES[:1])[0][::-1])
    np.testing.assert_allclose(series.read(7)[0], values(TIMES[7:8])[0][::-1] + 273.15, rtol=1e-6)
    write(tmp_path / "c.nc", pd.date_range("2021-07-01", periods=2).values, units="m")
    with pytest.raises(ConfigError, match=r"c\.nc: variable 't2m' is in 'm', expected 'K'"):
        FieldSeries(tmp_path / "*.nc", ["t2m"]).convert_to({"t2m": "K"})


def test_bad_sets_of_files_are_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.nc", TIMES[:6])
    cases = {
        "grid": (
            write(tmp_path / "grid.nc", TIMES[6:], latitude=LATITUDE + 0.25),
            r"grid\.nc has a different latitude",
        ),
        "variables": (write(tmp_path / "vars.nc", TIMES[6:], name="msl"), r"variable 't2m' not in .*vars\.nc"),
        "duplicate": (
            write(tmp_path / "dup.nc", TIMES[5:8]),
            rf"time 2021-06-02T06:00 is in both {a} and .*dup\.nc",
        ),
    }
    for path, pattern in cases.values():
        with pytest.raises(ConfigError, match=pattern) as caught:
            FieldSeries([a, path], ["t2m"])
        assert "\n" not in str(caught.value)
    unsorted = write(tmp_path / "unsorted.nc", TIMES[[6, 8, 7, 9]])
    with pytest.raises(ConfigError, match=r"unsorted\.nc: its times must increase, but 2021-06-02T18:00 comes after "):
        FieldSeries([a, unsorted], ["t2m"])


def test_a_failed_read_and_non_finite_values_name_the_file_and_the_time(tmp_path: Path) -> None:
    bad = values(TIMES[6:])
    bad[2, 3, 4] = np.nan
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), bad)},
        coords={"time": TIMES[6:], "latitude": LATITUDE, "longitude": LONGITUDE},
    ).to_netcdf(tmp_path / "nan.nc")
    damaged = write(tmp_path / "damaged.nc", TIMES[:6])
    series = FieldSeries([damaged, tmp_path / "nan.nc"], ["t2m"])
    with pytest.raises(ConfigError, match=r"^variable 't2m' has NaN/inf values in .*nan\.nc at 2021-06-03T00:00$"):
        series.read(8)
    series.read(8, slice(0, 2))  # the rows without the NaN
    content = damaged.read_bytes()
    damaged.write_bytes(content[: len(content) // 2])  # truncated after the series was opened
    with pytest.raises(ConfigError) as caught:
        pickle.loads(pickle.dumps(series)).read(1)
    message = str(caught.value)
    assert message.startswith(f"cannot read 't2m' from {damaged} at 2021-06-01T06:00: ") and "\n" not in message


def test_read_times_reads_a_block_of_one_file_consecutive_or_not(tmp_path: Path) -> None:
    write(tmp_path / "a.nc", TIMES[:6], units="K")
    write(tmp_path / "b.nc", TIMES[6:], units="degC")
    series = FieldSeries(tmp_path / "*.nc", ["t2m"], period=(TIMES[1], TIMES[10]))
    for indices in ([0, 1, 2], [0, 2, 4], [5, 8]):  # consecutive (a slice), with gaps (an index array), file b
        (read,) = series.read_times(np.array(indices))
        np.testing.assert_array_equal(read, values(series.times[indices])[:, ::-1])
    series.convert_to({"t2m": "K"})
    np.testing.assert_allclose(series.read_times(np.array([5]))[0], values(TIMES[6:7])[:, ::-1] + 273.15, rtol=1e-6)
    with pytest.raises(ValueError, match="in 2 files"):
        series.read_times(np.array([3, 6]))
    copy = pickle.loads(pickle.dumps(series))  # the lock that guards the open files is a new one
    np.testing.assert_array_equal(copy.read_times(np.array([0]))[0], series.read_times(np.array([0]))[0])
