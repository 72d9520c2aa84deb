"""The CF-netCDF ensemble writer and the merge of rank parts (diffscale.downscaling.writer), read back with xarray
(an independent reader) and netCDF4."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

import diffscale
from diffscale.devices import standard_normal
from diffscale.downscaling import (
    Block,
    EnsembleWriter,
    ZarrEnsembleWriter,
    blocks_for_rank,
    discard_shared,
    member_generators,
    merge_parts,
    part_path,
    publish_shared,
    shared_temporary_path,
    time_key,
    work_blocks,
)
from diffscale.validation import ConfigError

DATA = Path(__file__).parents[2] / "shared" / "data"
LATITUDE = np.linspace(58.0, 50.0, 5)  # descending, as ERA5
LONGITUDE = np.linspace(-10.0, 2.0, 7)
TIMES = np.arange("2019-03-01T00", "2019-03-01T04", dtype="datetime64[h]")
VARIABLES = {
    "t2m": {"units": "K", "standard_name": "air_temperature", "long_name": "2 metre temperature"},
    "tp": {"units": "m", "standard_name": "precipitation_amount", "long_name": "total precipitation"},
}
GLOBALS = {
    "sampling": {"steps": 18, "sampler": "heun", "s_churn": 0.0, "s_max": float("inf")},
    "seed": 7,
    "checkpoint_sha256": "ab" * 32,
    "institution": "test",
    "history": "2026-01-01T00:00:00Z: diffscale downscale run --members 3",
    "guidance": None,
    "ema": True,
}


def _layout(**overrides) -> dict:
    """The writers' keyword arguments for the test grid, times and variables."""
    layout = dict(
        latitude=LATITUDE,
        longitude=LONGITUDE,
        times=TIMES,
        num_members=3,
        variables=VARIABLES,
        global_attributes=GLOBALS,
    )
    return {**layout, **overrides}


def _writer(path: Path, **overrides) -> EnsembleWriter:
    return EnsembleWriter(path, **_layout(**overrides))


def _field(name: str, member: int, time: int) -> np.ndarray:
    """A known value per (variable, member, time, lat, lon)."""
    lat, lon = np.meshgrid(np.arange(LATITUDE.size), np.arange(LONGITUDE.size), indexing="ij")
    base = 280.0 if name == "t2m" else 0.001
    return (base + member + 0.1 * time + 0.01 * lat + 0.001 * lon).astype(np.float32)


def test_roundtrip_through_xarray(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.nc"
    with _writer(path) as writer:
        for name in VARIABLES:
            for time in range(TIMES.size - 1):  # member blocks of 2 + 1, one time each
                writer.write(name, range(0, 2), time, np.stack([_field(name, m, time) for m in (0, 1)]))
                writer.write(name, slice(2, 3), time, _field(name, 2, time)[None])
            last = TIMES.size - 1  # a block of all members over a time slice
            block = np.stack([[_field(name, m, last)] for m in range(3)])
            writer.write(name, slice(0, 3), slice(last, last + 1), torch.from_numpy(block))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble.nc"]  # no temporary file left

    with xr.open_dataset(path) as dataset:
        dataset.load()
    assert dataset["t2m"].dims == ("member", "time", "latitude", "longitude")
    assert dataset["t2m"].dtype == np.float32
    expected = np.stack([[_field("t2m", m, t) for t in range(TIMES.size)] for m in range(3)])
    np.testing.assert_array_equal(dataset["t2m"].values, expected)
    np.testing.assert_array_equal(dataset["latitude"].values, LATITUDE)
    np.testing.assert_array_equal(dataset["longitude"].values, LONGITUDE)
    np.testing.assert_array_equal(dataset["time"].values, TIMES.astype("datetime64[ns]"))
    np.testing.assert_array_equal(dataset["member"].values, np.arange(3))
    assert dataset["member"].attrs["standard_name"] == "realization"
    assert dataset["latitude"].attrs == {
        "standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"
    }  # fmt: skip
    assert dataset["longitude"].attrs["units"] == "degrees_east" and dataset["longitude"].attrs["axis"] == "X"
    assert dataset["time"].encoding["units"] == "hours since 1970-01-01 00:00:00"
    assert dataset["time"].encoding["calendar"] == "proleptic_gregorian"
    for name, attributes in VARIABLES.items():
        assert dataset[name].attrs == attributes
        assert dataset[name].encoding["zlib"] and dataset[name].encoding["chunksizes"] == (1, 1, 5, 7)
    attrs = dataset.attrs
    assert attrs["Conventions"] == "CF-1.8"
    assert attrs["sampling_steps"] == 18 and attrs["sampling_sampler"] == "heun" and attrs["sampling_s_max"] == np.inf
    assert attrs["seed"] == 7 and attrs["checkpoint_sha256"] == "ab" * 32
    assert (
        attrs["diffscale_version"] == diffscale.__version__ and attrs["source"] == f"diffscale {diffscale.__version__}"
    )
    assert attrs["history"] == GLOBALS["history"] and attrs["institution"] == "test"
    assert attrs["guidance"] == "none" and attrs["ema"] == "true"


def test_subhourly_times_use_minutes(tmp_path: Path) -> None:
    times = np.array(["2019-03-01T00:00", "2019-03-01T00:30"], dtype="datetime64[m]")
    with _writer(tmp_path / "a.nc", times=times, num_members=1, variables={"t2m": VARIABLES["t2m"]}) as writer:
        writer.write("t2m", range(1), slice(0, 2), np.zeros((1, 2, 5, 7)))
    with xr.open_dataset(tmp_path / "a.nc") as dataset:
        assert dataset["time"].encoding["units"] == "minutes since 1970-01-01 00:00:00"
        np.testing.assert_array_equal(dataset["time"].values, times.astype("datetime64[ns]"))


def test_an_error_inside_the_block_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.nc"
    with pytest.raises(RuntimeError, match="sampler failed"), _writer(path) as writer:
        writer.write("t2m", range(3), 0, np.zeros((3, 5, 7)))
        raise RuntimeError("sampler failed")
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_file_is_refused_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.nc"
    message = r"23 slab.*the first: variable t2m, member 0, time 2019-03-01T01:00"
    with pytest.raises(ValueError, match=message), _writer(path) as writer:
        writer.write("t2m", range(1), 0, np.zeros((1, 5, 7)))
    assert list(tmp_path.iterdir()) == []


def test_bad_blocks_fail_fast_naming_the_variable_and_time(tmp_path: Path) -> None:
    with _writer(tmp_path / "e.nc", part=(0, 1)) as writer:
        with pytest.raises(ConfigError, match=r"variable t2m at time 2019-03-01T02:00 \(index 2\): block has shape"):
            writer.write("t2m", range(2), 2, np.zeros((2, 7, 5)))
        bad = np.zeros((2, 5, 7))
        bad[1, 3, 4] = np.nan
        with pytest.raises(ConfigError, match=r"variable tp at time 2019-03-01T01:00 \(index 1\): 1 non-finite"):
            writer.write("tp", range(2), 1, bad)
        with pytest.raises(ConfigError, match=r"t2m at time 2019-03-01T03:00 .*non-finite.*float32"):
            writer.write("t2m", range(1), slice(3, 4), np.full((1, 1, 5, 7), 1e39))
        with pytest.raises(ConfigError, match="variable 'u10': not in the file; its variables: t2m, tp"):
            writer.write("u10", range(1), 0, np.zeros((1, 5, 7)))
        with pytest.raises(ConfigError, match="members = range"):
            writer.write("t2m", range(2, 4), 0, np.zeros((2, 5, 7)))
        with pytest.raises(ConfigError, match="time_index = 4"):
            writer.write("t2m", range(1), 4, np.zeros((1, 5, 7)))
    (tmp_path / "e.nc").unlink()
    with pytest.raises(ConfigError, match="latitude: must be strictly monotonic"):
        _writer(tmp_path / "f.nc", latitude=np.array([50.0, 51.0, 50.5]))
    with pytest.raises(ConfigError, match="times: must be numpy datetime64 or cftime dates"):
        _writer(tmp_path / "f.nc", times=np.arange(3))
    with pytest.raises(ConfigError, match="variable t2m: needs its attributes as a mapping with 'units'"):
        _writer(tmp_path / "f.nc", variables={"t2m": {"standard_name": "air_temperature"}})
    with pytest.raises(ConfigError, match=r"directory .* does not exist"):
        _writer(tmp_path / "missing" / "f.nc")
    (tmp_path / "exists.nc").write_bytes(b"")
    with pytest.raises(ConfigError, match="exists"):
        _writer(tmp_path / "exists.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.nc"]


def _noise(seed: int, block: Block) -> torch.Tensor:
    """Each member's own noise (a stand-in for the sampler), from its own generator."""
    generators = member_generators(seed, time_key(TIMES[block.time_index]), block)
    return standard_normal((block.size, LATITUDE.size, LONGITUDE.size), generators, dtype=torch.float32, device="cpu")


def _run_rank(out: Path, rank: int, world_size: int, seed: int) -> Path:
    """One simulated rank of a downscaling run: its blocks (a stand-in for the sampler: 280 K plus each member's
    noise), written to its part file."""
    blocks = work_blocks(TIMES.size, num_members=3, member_batch=2)
    path = part_path(out, rank, world_size)
    with _writer(path, part=(rank, world_size)) as writer:
        for block in blocks_for_rank(blocks, rank, world_size):
            for name in VARIABLES:
                writer.write(name, block.members, block.time_index, 280.0 + _noise(seed, block))
    return path


def _single_process(out: Path, seed: int) -> Path:
    with _writer(out) as writer:
        for block in work_blocks(TIMES.size, num_members=3, member_batch=2):
            for name in VARIABLES:
                writer.write(name, block.members, block.time_index, 280.0 + _noise(seed, block))
    return out


def _raw(path: Path) -> tuple[dict, dict]:
    with netCDF4.Dataset(path) as dataset:
        attributes = {key: dataset.getncattr(key) for key in dataset.ncattrs()}
        variables = {
            name: (np.asarray(v[:]), v.dtype, v.dimensions, {k: v.getncattr(k) for k in v.ncattrs()}, v.chunking())
            for name, v in dataset.variables.items()
        }
    return attributes, variables


@pytest.mark.parametrize("world_size", [1, 2, 5])
def test_merged_parts_equal_a_single_process_write(tmp_path: Path, world_size: int) -> None:
    single = _single_process(tmp_path / "single.nc", seed=3)
    out = tmp_path / "merged.nc"
    parts = [_run_rank(out, rank, world_size, seed=3) for rank in reversed(range(world_size))]
    assert merge_parts(parts, out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.nc", "single.nc"]  # parts removed
    with xr.open_dataset(single) as a, xr.open_dataset(out) as b:
        xr.testing.assert_identical(a.load(), b.load())
    (attrs_a, vars_a), (attrs_b, vars_b) = _raw(single), _raw(out)
    assert attrs_a.keys() == attrs_b.keys()
    assert all(np.array_equal(attrs_a[k], attrs_b[k]) if not isinstance(attrs_a[k], str) else attrs_a[k] == attrs_b[k]
               for k in attrs_a)  # fmt: skip
    assert vars_a.keys() == vars_b.keys()
    for name, (values, dtype, dims, attributes, chunking) in vars_a.items():
        other = vars_b[name]
        assert np.array_equal(values, other[0]) and (dtype, dims, chunking) == (other[1], other[2], other[4])
        assert {k: str(v) for k, v in attributes.items()} == {k: str(v) for k, v in other[3].items()}
    with xr.open_dataset(out) as merged:
        assert float(merged["t2m"].std()) > 0.5  # noise was written, not a constant


def test_merge_refuses_missing_duplicate_or_foreign_parts(tmp_path: Path) -> None:
    out = tmp_path / "merged.nc"
    parts = [_run_rank(out, rank, 2, seed=0) for rank in range(2)]
    with pytest.raises(ConfigError, match=r"expected ranks 0\.\.0 of world size 1"):
        merge_parts(parts[:1], out, remove_parts=False)
    duplicate = tmp_path / "dup.nc"
    with _writer(duplicate, part=(1, 2)) as writer:
        writer.write("t2m", range(1), 0, np.zeros((1, 5, 7)))
    with pytest.raises(ConfigError, match=r"variable t2m, member 0, time 2019-03-01T00:00 \(index 0\) is held by 2"):
        merge_parts([parts[0], duplicate], out, remove_parts=False)
    other = tmp_path / "other.nc"
    with _writer(other, part=(1, 2), global_attributes={**GLOBALS, "seed": 8}):
        pass
    with pytest.raises(ConfigError, match=re.escape(f"part {other}: its global_attributes differ")):
        merge_parts([parts[0], other], out, remove_parts=False)
    with pytest.raises(ConfigError, match="not a diffscale part file"):
        merge_parts([_single_process(tmp_path / "s.nc", 0)], out)
    assert not out.exists() and all(p.exists() for p in parts)


@pytest.mark.skipif(not (DATA / "era5_t2m_uk_2019-03.nc").exists(), reason="shared ERA5 data absent")
def test_era5_fields_roundtrip(tmp_path: Path) -> None:
    """Real coordinates and values (ERA5 t2m over the UK, latitude descending) survive a write and read."""
    with xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc") as source:
        t2m = source["t2m"]
        lat_name, lon_name = (d for d in t2m.dims[-2:])
        time_name = t2m.dims[0]
        fields = t2m.isel({time_name: slice(0, 3)}).load()
    path = tmp_path / "era5.nc"
    values = fields.values.astype(np.float32)
    with EnsembleWriter(
        path,
        latitude=fields[lat_name].values,
        longitude=fields[lon_name].values,
        times=fields[time_name].values,
        num_members=2,
        variables={"t2m": {"units": "K", "standard_name": "air_temperature"}},
        global_attributes={"seed": 0},
    ) as writer:
        for time in range(3):
            writer.write("t2m", range(2), time, np.stack([values[time], values[time] + 1.0]))
    with xr.open_dataset(path) as dataset:
        np.testing.assert_array_equal(dataset["t2m"].values[0], values)
        np.testing.assert_array_equal(dataset["t2m"].values[1], values + np.float32(1.0))
        np.testing.assert_array_equal(dataset["latitude"].values, fields[lat_name].values)
        np.testing.assert_array_equal(dataset["time"].values, fields[time_name].values)


def test_parts_with_their_own_default_history_merge_keeping_rank_0s(tmp_path: Path) -> None:
    out = tmp_path / "merged.nc"
    no_history = {k: v for k, v in GLOBALS.items() if k != "history"}
    histories = []
    for rank in (1, 0):
        with _writer(part_path(out, rank, 2), num_members=1, part=(rank, 2), global_attributes=no_history) as writer:
            for name in VARIABLES:
                writer.write(name, range(1), slice(rank * 2, rank * 2 + 2), np.full((1, 2, 5, 7), float(rank)))
        with netCDF4.Dataset(part_path(out, rank, 2)) as dataset:
            histories.append(dataset.getncattr("history"))
        assert "written by diffscale" in histories[-1]
    merge_parts([part_path(out, 0, 2), part_path(out, 1, 2)], out, overwrite=False)
    with xr.open_dataset(out) as merged:
        assert merged.attrs["history"] == histories[1]  # rank 0's
        np.testing.assert_array_equal(merged["tp"].values[0, :, 0, 0], [0.0, 0.0, 1.0, 1.0])


# -- Zarr stores ---------------------------------------------------------------------------------------------------
def _fill(writer: EnsembleWriter, blocks: list[Block] | None = None) -> None:
    """Every (or the given) block's slabs, each member's known field."""
    for block in blocks if blocks is not None else work_blocks(TIMES.size, num_members=3, member_batch=2):
        for name in VARIABLES:
            values = np.stack([_field(name, m, block.time_index) for m in block.members])
            writer.write(name, block.members, block.time_index, values)


def _peak_bytes_of_creating_a_store(path: Path, times: int) -> int:
    """Peak traced bytes of creating a Zarr store of one member at ``times`` hourly times (nothing written)."""
    stamps = np.datetime64("2019-03-01T00", "h") + np.arange(times)
    gc.collect()
    tracemalloc.start()
    try:
        writer = ZarrEnsembleWriter(path, **_layout(times=stamps, num_members=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    writer.abort()
    return peak


def test_creating_a_zarr_store_takes_memory_that_does_not_grow_with_the_record(tmp_path: Path) -> None:
    """16 times more times (96 vs 1,536 of one member: one chunk each) cost under 0.5 MiB more to create the store:
    what grows is the time coordinate and the record of written slabs (9 bytes a time), not a task per chunk of a
    dask graph (about 7 kB each: 11 MiB for 1,536 times)."""
    _peak_bytes_of_creating_a_store(tmp_path / "warm.zarr", 96)  # what the first run imports and caches
    short = _peak_bytes_of_creating_a_store(tmp_path / "short.zarr", 96)
    long = _peak_bytes_of_creating_a_store(tmp_path / "long.zarr", 1536)
    assert long - short < 2**19, (short, long)


_WRITE_RECORD = """
import sys
import numpy as np
from diffscale.downscaling.writer import EnsembleWriter

def high_water_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

times = int(sys.argv[1])
stamps = np.datetime64("2000-01-01T00", "h") + np.arange(times)
field = np.full((1, 32, 64), 280.0, dtype=np.float32)
before = high_water_mib()
with EnsembleWriter(sys.argv[2], latitude=np.arange(32.0), longitude=np.arange(64.0), times=stamps, num_members=1,
                    variables={"t2m": {"units": "K"}}) as writer:
    for time in range(times):
        writer.write("t2m", range(1), time, field + time)
print(high_water_mib() - before)
"""


def _peak_rss_of_writing(path: Path, times: int) -> float:
    """MiB the peak resident memory of a fresh process grows by while writing ``times`` fields of 32 x 64."""
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_RECORD, str(times), str(path)], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) for the peak RSS")
def test_writing_a_netcdf_ensemble_does_not_keep_its_chunks(tmp_path: Path) -> None:
    """1,536 times of one member on 32 x 64 cells (8 kB a chunk, 12.6 MB in all) raise the writing process's peak
    resident memory by under 2 MiB more than 96 times: HDF5's chunk cache of each variable is 1 MiB, where its
    64 MiB default kept every written chunk until the file closed (+4 to 8 MiB measured)."""
    short = _peak_rss_of_writing(tmp_path / "short.nc", 96)
    long = _peak_rss_of_writing(tmp_path / "long.nc", 1536)
    assert long - short < 2.0, (short, long)


def test_a_zarr_store_holds_what_the_netcdf_file_holds(tmp_path: Path) -> None:
    with _writer(tmp_path / "e.nc") as writer:
        _fill(writer)
    with ZarrEnsembleWriter(tmp_path / "e.zarr", **_layout()) as writer:
        _fill(writer)
    netcdf, store = xr.open_dataset(tmp_path / "e.nc"), xr.open_zarr(tmp_path / "e.zarr", consolidated=True)
    for name in ("member", "time", "latitude", "longitude", *VARIABLES):
        np.testing.assert_array_equal(store[name].values, netcdf[name].values)
        assert store[name].attrs == netcdf[name].attrs, name
    assert store["t2m"].dtype == np.float32 and store["t2m"].encoding["chunks"] == (1, 1, 5, 7)
    assert {k: str(v) for k, v in store.attrs.items()} == {k: str(v) for k, v in netcdf.attrs.items()}
    assert store.time.encoding["units"].startswith("hours since 1970-01-01")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["e.nc", "e.zarr"]  # no temporary left
    netcdf.close()


def test_a_zarr_store_is_complete_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "e.zarr"
    with pytest.raises(ValueError, match="slab"), ZarrEnsembleWriter(path, **_layout()) as writer:
        _fill(writer, work_blocks(TIMES.size, num_members=3, member_batch=2)[:-1])
    with pytest.raises(RuntimeError, match="boom"), ZarrEnsembleWriter(path, **_layout()) as writer:
        _fill(writer)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    path.mkdir()
    with pytest.raises(ConfigError, match="exists"):
        ZarrEnsembleWriter(path, **_layout())
    with pytest.raises(ConfigError, match=r"must end in \.zarr"):
        ZarrEnsembleWriter(tmp_path / "e.zip", **_layout())


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_write_one_shared_zarr_store(tmp_path: Path, world_size: int) -> None:
    """Rank 0 creates the store, the others open it, each writes its own blocks; published, it equals a single
    process's store; discarded, nothing is left."""
    with ZarrEnsembleWriter(tmp_path / "single.zarr", **_layout()) as writer:
        _fill(writer)
    out = tmp_path / "shared.zarr"
    with pytest.raises(ConfigError, match="was not created by rank 0"):
        ZarrEnsembleWriter(out, shared=(1, world_size), **_layout())
    blocks = work_blocks(TIMES.size, num_members=3, member_batch=2)
    writers = [ZarrEnsembleWriter(out, shared=(rank, world_size), **_layout()) for rank in range(world_size)]
    for rank in reversed(range(world_size)):
        with writers[rank] as writer:
            _fill(writer, blocks_for_rank(blocks, rank, world_size))
    assert not out.exists() and shared_temporary_path(out).is_dir()  # not published yet
    publish_shared(out)
    single, shared = xr.open_zarr(tmp_path / "single.zarr"), xr.open_zarr(out)
    for name in VARIABLES:
        np.testing.assert_array_equal(shared[name].values, single[name].values)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shared.zarr", "single.zarr"]
    other = tmp_path / "failed.zarr"
    with ZarrEnsembleWriter(other, shared=(0, world_size), **_layout()) as writer:
        _fill(writer, blocks[:1])
    discard_shared(other)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shared.zarr", "single.zarr"]


# -- per-time variables (e.g. the extrapolation measure of the input) ---------------------------------------------
PER_TIME = {
    "t2m_outside_training_range": (
        np.array([0.0, 1.0 / 3.0, 0.1, 2.5e-8], dtype=np.float32),
        {"units": "1", "long_name": "a fraction", "valid_range": np.array([0.0, 1.0], dtype=np.float32)},
    ),
    "excess": (np.array([0.0, np.pi, np.e, 1e-300], dtype=np.float64), {"units": "1"}),
    "count": (np.array([1, -2, 2**40, 0], dtype=np.int64), {"long_name": "a count"}),
}


def _write_all(writer: EnsembleWriter, members: range = range(3)) -> None:
    for name in VARIABLES:
        for time in range(TIMES.size):
            writer.write(name, members, time, np.stack([_field(name, m, time) for m in members]))


def _assert_per_time(dataset: xr.Dataset) -> None:
    for name, (values, attributes) in PER_TIME.items():
        assert dataset[name].dims == ("time",)
        assert dataset[name].dtype == values.dtype
        assert dataset[name].values.tobytes() == values.tobytes()  # bitwise
        for key, value in attributes.items():
            assert np.array_equal(np.asarray(dataset[name].attrs[key]), np.asarray(value))
    for name in VARIABLES:
        assert dataset[name].dims == ("member", "time", "latitude", "longitude")


def test_per_time_variables_round_trip_bitwise_through_every_writer_and_the_merge(tmp_path: Path) -> None:
    layout = _layout(time_variables=PER_TIME)
    with EnsembleWriter(tmp_path / "one.nc", **layout) as writer:
        _write_all(writer)
    with xr.open_dataset(tmp_path / "one.nc") as dataset:
        _assert_per_time(dataset)
    with ZarrEnsembleWriter(tmp_path / "one.zarr", **layout) as writer:
        _write_all(writer)
    with xr.open_zarr(tmp_path / "one.zarr") as dataset:
        _assert_per_time(dataset.load())
    memory = diffscale.downscaling.MemoryEnsembleWriter(**layout)
    with memory as writer:
        _write_all(writer)
    _assert_per_time(memory.dataset)
    parts = [part_path(tmp_path / "merged.nc", rank, 2) for rank in range(2)]
    for rank, members in enumerate((range(0, 2), range(2, 3))):
        with EnsembleWriter(parts[rank], part=(rank, 2), **layout) as writer:
            _write_all(writer, members)
    merge_parts(parts, tmp_path / "merged.nc")
    with xr.open_dataset(tmp_path / "merged.nc") as merged, xr.open_dataset(tmp_path / "one.nc") as one:
        _assert_per_time(merged)
        for name in VARIABLES:
            assert np.array_equal(merged[name].values, one[name].values)


def test_merge_refuses_parts_whose_per_time_variables_differ(tmp_path: Path) -> None:
    parts = [part_path(tmp_path / "merged.nc", rank, 2) for rank in range(2)]
    for rank, members in enumerate((range(0, 2), range(2, 3))):
        changed = dict(PER_TIME)
        if rank == 1:
            values, attributes = PER_TIME["excess"]
            changed["excess"] = (values + 1.0, attributes)
        with EnsembleWriter(parts[rank], part=(rank, 2), **_layout(time_variables=changed)) as writer:
            _write_all(writer, members)
    with pytest.raises(ConfigError, match="time_variables differ"):
        merge_parts(parts, tmp_path / "merged.nc")


@pytest.mark.parametrize(
    ("time_variables", "message"),
    [
        ({"t2m": (np.zeros(4), {})}, "must be a new non-empty name"),
        ({"time": (np.zeros(4), {})}, "must be a new non-empty name"),
        ({"flag": (np.zeros(3), {})}, r"values of shape \(3,\)"),
        ({"flag": (np.array(["a"] * 4), {})}, "dtype <U1"),
        ({"flag": np.zeros(4)}, r"give \(values, attributes\)"),
        ({"flag": (np.zeros(4), {"_FillValue": 0.0})}, "set by the writer"),
    ],
)
def test_bad_per_time_variables_are_refused_in_one_line(tmp_path: Path, time_variables: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        EnsembleWriter(tmp_path / "e.nc", **_layout(time_variables=time_variables))
    assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())
