"""diffscale.training.data: batches read by worker processes are bitwise those read in the training process,
the batch order stays a pure function of (seed, step) (a checkpoint after read-ahead, a SIGKILL and a resume
change nothing), and a worker that dies, stalls or cannot read its file stops training with one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

import diffscale
from diffscale.config import config_from_dict
from diffscale.data.batch import Batch
from diffscale.runs import METRICS_NAME, prepare_training, train
from diffscale.training import DataLoadingError, Trainer, TrainingSettings
from diffscale.training.checkpoint import list_checkpoints, load_checkpoint
from diffscale.validation import ConfigError
from tests.test_resume import assert_same_run, kill_after, latest_step, start

TIMES = pd.date_range("2020-01-01", periods=24, freq="3h").values
VOLATILE = ("seconds", "samples_per_second", "data_wait_seconds", "data_wait_fraction")


def write_store(path: Path) -> None:
    """A small Zarr store, one chunk per time (as large reanalysis stores are chunked)."""
    rng = np.random.default_rng(5)
    values = 280.0 + np.cumsum(rng.normal(size=(TIMES.size, 16, 24)), axis=-1)
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values.astype(np.float32), {"units": "K"})},
        coords={"time": TIMES, "latitude": 50.0 + 0.25 * np.arange(16), "longitude": -3.0 + 0.25 * np.arange(24)},
    ).to_zarr(path, mode="w", encoding={"t2m": {"chunks": (1, 16, 24)}}, consolidated=False)


def climate_config(store: Path, steps: int, workers: int, **training: Any) -> dict[str, Any]:
    return {
        "data": {
            "kind": "climate",
            "paths": [str(store)],
            "variables": ["t2m"],
            "coarsen_factor": 4,
            "patch": [8, 12],
            "channels": {"latlon": True, "hour": True},
        },
        "model": {
            "arch": "ddpmpp",
            "model_channels": 8,
            "channel_mult": [1, 2],
            "num_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "training": {
            "steps": steps,
            "batch_size": 4,
            "warmup_steps": 1,
            "log_every": 2,
            "ema_halflife": 10.0,
            "tensorboard": False,
            "device": "cpu",
            "num_workers": workers,
            **training,
        },
        "sampling": {"steps": 4, "sampler": "heun"},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("streaming") / "fine.zarr"
    write_store(path)
    return path


def strip(lines: list[dict]) -> list[dict]:
    return [{key: value for key, value in line.items() if key not in VOLATILE} for line in lines]


# -- identical batches ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_workers_train_bitwise_as_the_training_process_and_checkpoint_the_same_generator(
    store: Path, tmp_path: Path
) -> None:
    """Two workers reading ahead (draws made early) end where reading in-process ends, checkpoints included."""
    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path / f"workers{workers}"
        config = climate_config(store, steps=6, workers=workers, checkpoint_every=3, keep_checkpoints=2)
        train(prepare_training(config_from_dict(config), run_dir), progress=False)
        runs[workers] = run_dir
    for step in (3, 6):
        a = load_checkpoint(runs[0] / f"checkpoint-{step:08d}.json")
        b = load_checkpoint(runs[2] / f"checkpoint-{step:08d}.json")
        assert torch.equal(a.generator_state, b.generator_state), step  # not the state after the read-ahead
        for key, value in a.weights.items():
            assert torch.equal(b.weights[key], value), key
    lines = [json.loads(line) for line in (runs[2] / METRICS_NAME).read_text().splitlines()]
    assert strip(lines) == strip([json.loads(line) for line in (runs[0] / METRICS_NAME).read_text().splitlines()])
    assert all(0.0 <= line["data_wait_fraction"] <= 1.0 and line["data_wait_seconds"] >= 0.0 for line in lines)


@pytest.mark.slow
def test_a_run_with_workers_killed_and_resumed_is_bitwise_identical(store: Path, tmp_path: Path) -> None:
    config = climate_config(store, steps=14, workers=2, checkpoint_every=1, keep_checkpoints=2)
    config_path = tmp_path / "streaming.yaml"
    config_path.write_text(yaml.safe_dump(config))
    reference = tmp_path / "reference"
    uninterrupted = {**config, "training": {**config["training"], "checkpoint_every": 0}}
    train(prepare_training(config_from_dict(uninterrupted), reference), progress=False)
    run_dir = tmp_path / "killed"
    process = start(config_path, run_dir)
    kill_after(process, run_dir, 4, 0.05)
    assert process.exitcode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert 4 <= latest_step(run_dir) < 14
    process = start(config_path, run_dir)  # resumes
    process.join(timeout=240)
    assert process.exitcode == 0
    assert_same_run(run_dir, reference)
    assert [step for step, _ in list_checkpoints(run_dir)] == [14, 13]


# -- failures -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_damaged_chunk_mid_training_names_file_and_time_and_the_run_resumes(store: Path, tmp_path: Path) -> None:
    data = tmp_path / "fine.zarr"
    shutil.copytree(store, data)
    config = config_from_dict(climate_config(data, steps=10, workers=2, checkpoint_every=1, keep_checkpoints=3))
    plan = prepare_training(config, tmp_path / "run")
    # the times each step will read (the draws depend on the generator alone): damage one first read at step 4
    replay = prepare_training(config, tmp_path / "replay").trainer
    steps = [[int(t) for t in replay.draw_step().data.times] for _ in range(10)]
    earlier = {t for times in steps[:3] for t in times}
    damaged = next(t for t in steps[3] if t not in earlier)
    chunk = data / "t2m" / "c" / str(damaged) / "0" / "0"
    intact = chunk.read_bytes()
    chunk.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ConfigError) as caught:
        train(plan, progress=False)
    message = str(caught.value)
    when = np.datetime_as_string(TIMES[damaged], unit="m")
    assert message.startswith(f"cannot read 't2m' from {data} at {when}: ") and "\n" not in message
    assert load_checkpoint(tmp_path / "run").step == 3  # the last good step's checkpoint, intact
    chunk.write_bytes(intact)  # repaired: the run resumes and ends where an undisturbed one ends
    train(prepare_training(config, tmp_path / "run"), progress=False)
    train(prepare_training(config, tmp_path / "reference"), progress=False)
    assert_same_run(tmp_path / "run", tmp_path / "reference")


class VectorSource:
    """An indexed source of 1-D samples: draws seeds, reads N(0, 1) values from them. Its reader can kill the
    worker process that runs it, or stall, at the n-th batch a process reads (for the failure tests)."""

    sample_shape = (1,)

    def __init__(self, die_at: int | None = None, stall_at: int | None = None) -> None:
        self.reader = VectorReader(die_at, stall_at)

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2**31, (batch_size,), generator=generator)

    def batch_reader(self) -> VectorReader:
        return self.reader


class VectorReader:
    def __init__(self, die_at: int | None, stall_at: int | None) -> None:
        self.die_at, self.stall_at, self.count = die_at, stall_at, 0

    def read(self, drawn: torch.Tensor, start: int, stop: int) -> Batch:
        self.count += 1
        if self.count == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.count == self.stall_at:
            time.sleep(60)
        values = [torch.randn(1, generator=torch.Generator().manual_seed(int(seed))) for seed in drawn[start:stop]]
        return Batch(torch.stack(values))


def vector_trainer(source: VectorSource, **settings: Any) -> Trainer:
    torch.manual_seed(0)
    denoiser = diffscale.PreconditionedDenoiser(
        diffscale.networks.MLP(1, width=8, depth=1), diffscale.formulation("EDM")
    )
    options = {"steps": 20, "batch_size": 8, "device": "cpu", "num_workers": 2, "worker_start_method": "spawn"}
    return Trainer(denoiser, source, TrainingSettings(**{**options, **settings}))


def test_a_worker_that_dies_is_reported_not_waited_for() -> None:
    trainer = vector_trainer(VectorSource(die_at=3), data_timeout=120.0)
    started = time.monotonic()
    try:
        with pytest.raises(
            DataLoadingError, match=r"^data loading stopped: (a )?DataLoader worker .*(exited|killed)"
        ) as e:
            trainer.run(progress=False)
    finally:
        trainer.close_data()
    assert "\n" not in str(e.value) and time.monotonic() - started < 100  # well before the timeout


def test_a_stalled_worker_times_out_with_one_line() -> None:
    trainer = vector_trainer(VectorSource(stall_at=2), data_timeout=3.0, num_workers=1)
    try:
        with pytest.raises(DataLoadingError, match=r"DataLoader timed out after 3(\.0)? seconds.*data_timeout = 3 s"):
            trainer.run(progress=False)
    finally:
        trainer.close_data()


def test_an_indexed_source_read_in_process_equals_workers_and_a_plain_callable() -> None:
    """Draws made ahead by the workers' sampler are the draws the loop makes itself, step for step."""
    in_process = vector_trainer(VectorSource(), num_workers=0, steps=6)
    in_process.run(progress=False)
    workers = vector_trainer(VectorSource(), num_workers=2, steps=6)
    try:
        workers.run(progress=False)
        assert not torch.equal(workers.generator.get_state(), in_process.generator.get_state())  # drawn ahead
        assert torch.equal(workers.checkpoint_generator().get_state(), in_process.generator.get_state())
    finally:
        workers.close_data()
    assert torch.equal(workers.generator.get_state(), in_process.generator.get_state())  # rewound on close
    source = VectorSource()
    plain = vector_trainer(source, num_workers=0, steps=6)
    plain.source = lambda n, g: source.reader.read(source.draw(n, g), 0, n)  # type: ignore[assignment]
    plain.run(progress=False)
    for a, b, c in zip(
        in_process.model.parameters(), workers.model.parameters(), plain.model.parameters(), strict=True
    ):
        assert torch.equal(a, b) and torch.equal(a, c)
