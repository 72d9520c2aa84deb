"""Downscaling that survives interruption: a run killed with SIGKILL at random points and resumed each time writes
the ensemble of an uninterrupted run bit for bit; a resume with other settings is refused in one line; temporaries
of dead processes are removed (those of live ones kept); a full disk ends in one line with a resumable state (or
nothing); a damaged input chunk is named with its time and, once repaired, the run resumes to the same ensemble."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

import diffscale
from diffscale.data.climate.series import format_time
from diffscale.downscaling.resumable import read_state, state_path
from diffscale.evaluation import single_thread
from diffscale.runs import load_climate_run
from diffscale.validation import ConfigError
from tests.conftest import run_cli
from tests.test_climate_runs import (
    FACTOR,
    LATITUDE,
    LONGITUDE,
    TIMES,
    climate_config,
    train_run,
    write_coarse,
    write_inputs,
)

pytestmark = pytest.mark.slow
COARSE_TIMES = TIMES[-24:]
MEMBERS = 2
OPTIONS: dict[str, Any] = {"members": MEMBERS, "member_batch": 1, "batch_size": 2, "steps": 2, "seed": 3}
BLOCKS = COARSE_TIMES.size * MEMBERS  # blocks of one member, two per network call: many small groups
FLAGS = ["--members", "2", "--member-batch", "1", "--batch-size", "2", "--steps", "2", "--seed", "3"]
FLAGS += ["--threads", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A diffusion run trained for 2 steps, its coarse input (24 times) as netCDF and as a Zarr store with one
    chunk per time, and the ensemble of an uninterrupted run (netCDF and Zarr)."""
    root = tmp_path_factory.mktemp("resume")
    with torch.random.fork_rng(devices=[]), single_thread():
        inputs = write_inputs(root)
        run_dir = train_run(root, "diffusion", climate_config(root, "diffusion", "residual", 2))
        fine = inputs["fine"][-COARSE_TIMES.size :].astype(np.float64)
        t, h, w = fine.shape
        coarse = fine.reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(2, 4))
        latitude = LATITUDE.reshape(-1, FACTOR).mean(axis=1)
        longitude = LONGITUDE.reshape(-1, FACTOR).mean(axis=1)
        write_coarse(root / "coarse.nc", coarse, latitude, longitude, COARSE_TIMES)
        with xr.open_dataset(root / "coarse.nc") as dataset:
            chunks = {"t2m": {"chunks": (1, h // FACTOR, w // FACTOR)}}
            dataset.load().to_zarr(root / "coarse.zarr", encoding=chunks, zarr_format=2, consolidated=True)
        run = load_climate_run(run_dir, device="cpu")
        reference = root / "reference" / "e.nc"
        run.downscale(root / "coarse.nc", out=reference, threads=1, **OPTIONS).close()
        reference_zarr = root / "reference" / "e.zarr"
        run.downscale(root / "coarse.zarr", out=reference_zarr, threads=1, **OPTIONS).close()
    return {
        "root": root,
        "run": run,
        "run_dir": run_dir,
        "coarse_nc": root / "coarse.nc",
        "coarse_zarr": root / "coarse.zarr",
        "reference": reference,
        "reference_zarr": reference_zarr,
    }


def _members(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        with xr.open_zarr(path) as dataset:
            return dataset["t2m"].values
    with netCDF4.Dataset(path) as dataset:
        return np.asarray(dataset["t2m"][:])


def assert_same_ensemble(path: Path, reference: Path, other_input: bool = False) -> None:
    """The members bitwise, the coordinates, per-time variables and attributes (but the writing time, and the
    input's name when ``other_input``) equal."""
    ignored = ("history", "coarse_input") if other_input else ("history",)
    np.testing.assert_array_equal(_members(path), _members(reference))
    opened = xr.open_zarr if path.suffix == ".zarr" else xr.open_dataset
    with opened(path) as ours, opened(reference) as theirs:
        for name in ("time", "latitude", "longitude", "member", *[v for v in theirs.data_vars if v != "t2m"]):
            np.testing.assert_array_equal(ours[name].values, theirs[name].values)
        assert {k: str(v) for k, v in ours.attrs.items() if k not in ignored} == {
            k: str(v) for k, v in theirs.attrs.items() if k not in ignored
        }


def error_lines(err: str) -> list[str]:
    """stderr without the one-line warning the synthetic input earns (it lies partly outside the training range)."""
    return [line for line in err.strip().splitlines() if not line.startswith("warning: the coarse input lies")]


def _done(out: Path) -> int:
    with contextlib.suppress(ConfigError, OSError, ValueError):
        state = read_state(out)
        return len(state.done) if state is not None else 0
    return 0


def _downscale_in_child(argv: list[str], log: Path) -> None:
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    sys.stdout = sys.stderr = open(descriptor, "w", buffering=1)  # noqa: SIM115 - the child's streams until os._exit
    import dask

    dask.config.set(scheduler="synchronous")  # dask's shared thread pool does not survive a fork
    os._exit(run_cli(argv))


def start(argv: list[str], log: Path) -> multiprocessing.process.BaseProcess:
    """``diffscale downscale`` in a forked process (torch already imported: it starts in a fraction of a second)."""
    process = multiprocessing.get_context("fork").Process(target=_downscale_in_child, args=(argv, log))
    process.start()
    return process


def kill_at(process: multiprocessing.process.BaseProcess, out: Path, done: int | None, delay: float) -> None:
    """SIGKILL ``process`` ``delay`` seconds after its output's progress records hold ``done`` blocks (None: after
    ``delay`` seconds from now)."""
    deadline = time.monotonic() + 60
    while done is not None and _done(out) < done and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    assert process.pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.join()


def _argv(setup: dict[str, Any], coarse: Path, out: Path, *extra: str) -> list[str]:
    return ["downscale", str(setup["run_dir"]), "--input", str(coarse), "--out", str(out), *FLAGS, *extra]


def test_sigkill_at_ten_random_points_then_resume_gives_the_uninterrupted_ensemble(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    out = tmp_path / "killed.nc"
    argv = _argv(setup, setup["coarse_nc"], out, "--resume")
    log = tmp_path / "child.log"
    # increasing progress targets, each followed by a random delay (mid-group, mid-record, mid-completion...), and
    # now and then a kill on a timer alone (during start-up: loading, checking, creating the store)
    targets = sorted(rng.sample(range(1, BLOCKS - 4), 10))
    seen = []
    for target in targets:
        process = start(argv, log)
        on_timer = rng.random() < 0.3
        kill_at(process, out, None if on_timer else target, rng.uniform(0.0, 0.4 if on_timer else 0.03))
        assert process.exitcode == -signal.SIGKILL, f"(seed {seed}) exit {process.exitcode}: {log.read_text()[-2000:]}"
        seen.append(_done(out))
        if out.exists():  # on a busy machine a late kill can land after the output was put in place: it is done
            break
    assert max(seen) > 0, f"(seed {seed}) no kill came after a block was written: {seen}"
    leftovers = out.with_name(f".{out.name}.partial").exists()  # killed between putting out in place and tidying
    if not out.exists() or leftovers:
        process = start(argv, log)
        process.join(timeout=120)
        assert process.exitcode == 0, f"(seed {seed}) {log.read_text()[-3000:]}"
    assert_same_ensemble(out, setup["reference"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["child.log", "killed.nc"]  # no store, no temporary


def _interrupted_state(setup: dict[str, Any], coarse: Path, out: Path, blocks: int) -> int:
    """Kill a downscaling of ``coarse`` into ``out`` once ``blocks`` blocks are durable; the blocks done."""
    process = start(_argv(setup, coarse, out), out.parent / "child.log")
    kill_at(process, out, blocks, 0.0)
    assert process.exitcode == -signal.SIGKILL
    done = _done(out)
    assert blocks <= done < BLOCKS and done % 2 == 0 and not out.exists()  # whole groups of two blocks
    return done


def test_ctrl_c_keeps_the_blocks_done_and_says_how_to_resume(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "e.zarr"
    log = tmp_path / "child.log"
    process = start(_argv(setup, setup["coarse_zarr"], out), log)
    deadline = time.monotonic() + 60
    while _done(out) < 2 and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGINT)
    process.join(timeout=60)
    assert process.exitcode == 130, log.read_text()[-2000:]
    lines = error_lines(log.read_text())
    done = _done(out)
    assert 2 <= done < BLOCKS and not out.exists()
    assert lines[-1] == (
        f"diffscale: interrupted; {done} of {BLOCKS} blocks done, in '{state_path(out)}': rerun with --resume to "
        "continue"
    ), lines
    assert "Traceback" not in log.read_text()
    with single_thread():
        assert run_cli(_argv(setup, setup["coarse_zarr"], out, "--resume")) == 0
    assert_same_ensemble(out, setup["reference_zarr"])


def test_a_resume_that_differs_is_refused_in_one_line_and_a_plain_rerun_names_the_state(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "e.zarr"
    done = _interrupted_state(setup, setup["coarse_zarr"], out, 3)
    store = state_path(out)
    argv = ["downscale", str(setup["run_dir"]), "--input", str(setup["coarse_zarr"]), "--out", str(out)]
    changed = {  # the last of a repeated option counts
        "--seed": [*FLAGS, "--seed", "4"],
        "--members": [*FLAGS, "--members", "3"],
        "sampler": [*FLAGS, "--steps", "3"],
        "--batch-size": [*FLAGS, "--batch-size", "4"],
    }
    for what, flags in changed.items():
        capsys.readouterr()
        assert run_cli([*argv, *flags, "--resume"]) == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1, lines
        assert f"differs: {what}" in lines[0] and "rerun without --resume, with --overwrite" in lines[0], lines
    other_input = ["downscale", str(setup["run_dir"]), "--input", str(setup["coarse_nc"]), "--out", str(out)]
    capsys.readouterr()
    assert run_cli([*other_input, *FLAGS, "--resume"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "differs: input:" in line and "coarse.zarr" in line and "coarse.nc" in line
    # without --resume: the state is named with both ways out, and nothing is touched
    assert run_cli([*argv, *FLAGS]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "resumable state" in line and f"{done} of {BLOCKS} blocks done" in line, line
    assert "--resume to continue it" in line and "--overwrite to start again" in line
    assert _done(out) == done
    # temporaries: a dead process's are removed with one log line, a live one's kept
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = [tmp_path / f".e.zarr.{finished.pid}.0123abcd.tmp", tmp_path / f".notes.txt.{finished.pid}.0123456789ab.tmp"]
    dead[0].mkdir()
    dead[1].write_text("x")
    dead.append(store / f".diffscale-done-00000-of-00001.json.{finished.pid}.abcdef012345.tmp")
    dead[2].write_text("{")
    live = tmp_path / f".other.nc.{os.getpid()}.89abcdef.tmp"
    live.write_text("being written")
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="diffscale.runs.downscaling"):
        assert run_cli([*argv, *FLAGS, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming: {done} of {BLOCKS} blocks done" in printed, printed
    (record,) = [r for r in caplog.records if "temporary" in r.getMessage()]
    assert "removed 3 temporary file(s) of processes that no longer run" in record.getMessage()
    assert all(str(path) in record.getMessage() for path in dead) and str(live) not in record.getMessage()
    assert live.exists() and not any(path.exists() for path in dead)
    assert_same_ensemble(out, setup["reference_zarr"])
    assert sorted(path.name for path in tmp_path.iterdir()) == [live.name, "child.log", "e.zarr"]
    assert not [path for path in out.iterdir() if path.name.startswith("diffscale-")]  # no bookkeeping left
    # --overwrite over a state starts again
    _interrupted_state(setup, setup["coarse_zarr"], tmp_path / "again.zarr", 2)
    assert run_cli(["downscale", str(setup["run_dir"]), "--input", str(setup["coarse_zarr"]), "--out",
                    str(tmp_path / "again.zarr"), *FLAGS, "--overwrite"]) == 0  # fmt: skip
    assert_same_ensemble(tmp_path / "again.zarr", setup["reference_zarr"])
    assert not state_path(tmp_path / "again.zarr").exists()
    # a store without its bookkeeping is named, and replaced with --overwrite
    stray = tmp_path / "stray.zarr"
    (state_path(stray) / "t2m").mkdir(parents=True)
    stray_argv = ["downscale", str(setup["run_dir"]), "--input", str(setup["coarse_zarr"]), "--out", str(stray)]
    capsys.readouterr()
    assert run_cli([*stray_argv, *FLAGS, "--resume"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"'{state_path(stray)}': a store without its diffscale-resume.json" in line and "--overwrite" in line
    assert run_cli([*stray_argv, *FLAGS, "--overwrite"]) == 0
    assert_same_ensemble(stray, setup["reference_zarr"])


def test_a_damaged_input_chunk_is_named_with_its_time_and_the_run_resumes_once_repaired(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """The coarse input in three Zarr stores (one chunk per time; the reader takes each store's times in one
    dask chunk, so the damage lies in a store that the first blocks do not read)."""
    parts = [tmp_path / f"coarse-{index}.zarr" for index in range(3)]
    with xr.open_dataset(setup["coarse_nc"]) as dataset:
        coarse = dataset.load()
    for path, times in zip(parts, (slice(0, 16), slice(16, 22), slice(22, 24)), strict=True):
        part = coarse.isel(time=times)
        encoding = {"t2m": {"chunks": (1, *part["t2m"].shape[1:])}}
        part.to_zarr(path, encoding=encoding, zarr_format=2, consolidated=True)
    run = setup["run"]
    with single_thread():
        job = run.prepare_downscaling(parts, threads=1, **OPTIONS)  # checks read every time: the input is sound
        damaged_time = 20
        chunk = parts[1] / "t2m" / f"{damaged_time - 16}.0.0"
        sound = chunk.read_bytes()
        chunk.write_bytes(b"\x02damaged" * 8)  # damaged after the checks, while the run goes on
        out = tmp_path / "e.nc"
        with pytest.raises(ConfigError) as caught:
            job.write(out)
    message = str(caught.value)
    assert "\n" not in message
    assert f"'{chunk}' cannot be read at time {format_time(COARSE_TIMES[damaged_time])}" in message, message
    state = read_state(out)
    assert state is not None and 0 < len(state.done) < BLOCKS and not out.exists()
    assert f"{state.describe()}: rerun with resume=True to continue" in message, message
    chunk.write_bytes(sound)
    with single_thread():
        run.downscale(parts, out=out, resume=True, threads=1, **OPTIONS).close()
    assert_same_ensemble(out, setup["reference"], other_input=True)  # the same values, from Zarr, not netCDF
    assert sorted(path.name for path in tmp_path.iterdir()) == [*(path.name for path in parts), "e.nc"]


def _mount_small_disk(folder: Path, size_kib: int) -> str | None:
    """Mount a ``size_kib`` KiB filesystem at ``folder``: tmpfs, else an ext2 loop device; None when neither is
    permitted (the reason is in the skip)."""
    folder.mkdir()
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = folder.parent / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(size_kib * 1024)
    made = subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], capture_output=True, text=True)
    loop = subprocess.run(["mount", "-o", "loop", str(image), str(folder)], capture_output=True, text=True)
    if made.returncode == 0 and loop.returncode == 0:
        return "loop"
    pytest.skip(f"cannot mount a small filesystem: tmpfs: {tmpfs.stderr.strip()}; loop: {loop.stderr.strip()}")
    return None


@pytest.mark.parametrize(("suffix", "size_kib"), [(".zarr", 160), (".nc", 160), (".nc", 12)])
def test_a_full_disk_ends_in_one_line_with_a_resumable_state_that_completes_with_room(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, size_kib: int
) -> None:
    """160 KiB: full after some blocks (a resumable state); 12 KiB: full before the store exists (nothing)."""
    disk = tmp_path / "disk"
    kind = _mount_small_disk(disk, size_kib)
    try:
        out = disk / f"e{suffix}"
        argv = _argv(setup, setup["coarse_zarr"], out)
        capsys.readouterr()
        with single_thread():
            status = run_cli(argv)
        err = capsys.readouterr().err
        lines = error_lines(err)
        assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "No space left on device" in lines[0] or "no space" in lines[0].lower(), lines
        state = read_state(out)
        assert not out.exists()
        assert (state is None) == (size_kib < 16), lines
        if state is None:  # nothing kept: nothing at all
            assert "no output was written" in lines[0] and not any(disk.iterdir()), lines
        else:
            assert "rerun with --resume to continue" in lines[0], lines
            # room again: the same command with --resume completes the ensemble of an uninterrupted run
            if kind == "tmpfs":
                subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
            else:
                pytest.skip("a loop device cannot grow here: the resumable state was checked")
            with single_thread():
                assert run_cli([*argv, "--resume"]) == 0
            reference = setup["reference_zarr"].with_suffix(suffix)
            assert_same_ensemble(out, reference, other_input=suffix == ".nc")
            assert sorted(path.name for path in disk.iterdir()) == [out.name]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not available")
def test_two_processes_under_torchrun_resume_a_killed_single_process_run(setup: dict[str, Any], tmp_path: Path) -> None:
    """The progress records are per rank and read as a union: two ranks share the groups left by one process."""
    out = tmp_path / "e.nc"
    done = _interrupted_state(setup, setup["coarse_nc"], out, 5)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "diffscale"]
    argv += _argv(setup, setup["coarse_nc"], out, "--resume")
    source = str(Path(diffscale.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming: {done} of {BLOCKS} blocks done" in result.stdout and result.stdout.count("wrote ") == 1
    assert_same_ensemble(out, setup["reference"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["child.log", "e.nc"]
