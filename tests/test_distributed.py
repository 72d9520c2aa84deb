"""Data parallelism: two gloo processes under torchrun train the same model as one process on the same global
batch (up to the order of floating-point sums), and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffscale.config import config_from_dict
from diffscale.runs import METRICS_NAME, prepare_training, train
from diffscale.training import DistributedContext
from diffscale.training.checkpoint import load_checkpoint
from diffscale.validation import ConfigError

CONFIG = {
    "model": {"width": 16, "depth": 1, "embedding_dim": 8},
    "training": {
        "steps": 8,
        "batch_size": 32,
        "device": "cpu",
        "log_every": 4,
        "warmup_steps": 2,
        "tensorboard": False,
        "ema_halflife": 200.0,
        "grad_clip": 0.5,
    },
    "sampling": {"steps": 6, "sampler": "heun"},
}


def _torchrun_train(config: dict, run_dir: Path, name: str) -> str:
    """``diffscale train`` under ``torchrun --nproc-per-node 2`` (gloo, one thread per process); its stdout."""
    config_path = run_dir.parent / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "diffscale", "train", str(config_path), "--out", str(run_dir), "--no-progress"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    # the distributed run also accumulates 2 micro-batches per process: 4 shards of 8 samples each
    distributed = {**CONFIG, "training": {**CONFIG["training"], "grad_accumulation": 2}}
    run_dir = tmp_path / "ddp"
    output = _torchrun_train(distributed, run_dir, "ddp")
    assert output.count("trained 8 steps") == 1  # rank 0 alone reports

    single_dir = tmp_path / "single"
    train(prepare_training(config_from_dict(CONFIG), single_dir), progress=False)

    ddp, single = load_checkpoint(run_dir), load_checkpoint(single_dir)
    assert ddp.step == single.step == 8
    assert ddp.trainer_state["world_size"] == 2 and single.trainer_state["world_size"] == 1
    for part in ("weights", "ema_weights"):
        for key, value in getattr(single, part).items():
            torch.testing.assert_close(getattr(ddp, part)[key], value, rtol=1e-4, atol=1e-6)
    # the global RNG state of both ranks is kept for an exact resume
    assert {"rng.cpu.rank0", "rng.cpu.rank1"} <= ddp.training_state.keys()
    ddp_lines = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    single_lines = [json.loads(line) for line in (single_dir / METRICS_NAME).read_text().splitlines()]
    assert [line["step"] for line in ddp_lines] == [line["step"] for line in single_lines] == [4, 8]
    for ddp_line, single_line in zip(ddp_lines, single_lines, strict=True):
        assert ddp_line["samples"] == single_line["samples"] == 4 * 32  # the whole global batch is logged
        assert ddp_line["loss"] == pytest.approx(single_line["loss"], rel=1e-4)
        assert ddp_line["loss_by_sigma"].keys() == single_line["loss_by_sigma"].keys()


@pytest.mark.slow
def test_two_gloo_processes_resume_exactly(tmp_path: Path) -> None:
    """Two processes trained 4 steps, then resumed by two processes to 8 steps, end bitwise where two processes
    trained for 8 steps in one go (weights, EMA, optimiser, data generator and both ranks' RNG states restored)."""
    config = {**CONFIG, "training": {**CONFIG["training"], "lr_decay": "none"}}
    short = {**config, "training": {**config["training"], "steps": 4}}
    _torchrun_train(short, tmp_path / "resumed", "short")
    _torchrun_train(config, tmp_path / "resumed", "long")  # the same --out: resumes from step 4
    _torchrun_train(config, tmp_path / "straight", "straight")
    resumed, straight = load_checkpoint(tmp_path / "resumed"), load_checkpoint(tmp_path / "straight")
    assert resumed.step == straight.step == 8
    for part in ("weights", "ema_weights"):
        for key, value in getattr(straight, part).items():
            assert torch.equal(getattr(resumed, part)[key], value), (part, key)
    for key in ("rng.cpu.rank0", "rng.cpu.rank1"):
        assert torch.equal(resumed.training_state[key], straight.training_state[key])


def test_batch_must_split_evenly_over_processes_and_micro_batches() -> None:
    config = config_from_dict({**CONFIG, "training": {**CONFIG["training"], "grad_accumulation": 2}})
    with pytest.raises(ConfigError, match=r"batch_size = 32 must be divisible .* \(3\) times .* \(2\)"):
        prepare_training(config, Path("unused"), distributed=DistributedContext(rank=0, world_size=3))


def test_rows_of_each_rank_tile_the_batch() -> None:
    rows = [DistributedContext(rank=rank, world_size=4).rows(32) for rank in range(4)]
    assert rows == [(0, 8), (8, 16), (16, 24), (24, 32)]


READ_LOGGING_SCRIPT = '''
"""Train under torchrun, logging every batch read: the drawn indices, the rows read and the samples assembled."""
import json
import os
import sys
from pathlib import Path

from diffscale.config import config_from_dict
from diffscale.data.climate.assembly import SampleAssembler
from diffscale.data.climate.dataset import ClimateBatchReader
from diffscale.runs import prepare_training, train
from diffscale.training.distributed import init_distributed, shutdown_distributed

assembled = [0]
original_sample, original_read = SampleAssembler.sample, ClimateBatchReader.read


def counting_sample(self, *args, **kwargs):
    assembled[0] += 1
    return original_sample(self, *args, **kwargs)


def logged_read(self, drawn, start=0, stop=None):
    before = assembled[0]
    batch = original_read(self, drawn, start, stop)
    record = {"times": drawn.times.tolist(), "tops": drawn.tops.tolist(), "lefts": drawn.lefts.tolist(),
              "start": start, "stop": stop, "assembled": assembled[0] - before, "pid": os.getpid()}
    with open(Path(sys.argv[2]) / f"rank{os.environ['RANK']}.jsonl", "a") as log:
        log.write(json.dumps(record) + "\\n")
    return batch


SampleAssembler.sample, ClimateBatchReader.read = counting_sample, logged_read

if __name__ == "__main__":
    context, device = init_distributed("cpu")
    config = config_from_dict(json.loads(Path(sys.argv[1]).read_text()))
    plan = prepare_training(config, Path(sys.argv[3]), distributed=context, device=device)
    train(plan, progress=False)
    del plan
    shutdown_distributed(synchronise=True)
'''


@pytest.mark.slow
def test_each_rank_reads_only_its_rows_of_every_climate_batch(tmp_path: Path) -> None:
    """Two gloo ranks, each with two (forked) data loading workers: every rank draws the same global batches
    and its workers assemble only that rank's half of each."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    rng = np.random.default_rng(0)
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), (280 + rng.normal(size=(20, 16, 16))).astype(np.float32))},
        coords={
            "time": pd.date_range("2020-01-01", periods=20, freq="h").values,
            "latitude": 50.0 + 0.25 * np.arange(16),
            "longitude": 0.25 * np.arange(16),
        },
    ).to_zarr(tmp_path / "fine.zarr", encoding={"t2m": {"chunks": (1, 16, 16)}}, consolidated=False)
    config = {
        **CONFIG,
        "data": {"kind": "climate", "paths": [str(tmp_path / "fine.zarr")], "coarsen_factor": 4, "patch": [8, 8]},
        "model": {
            "arch": "ddpmpp",
            "model_channels": 8,
            "channel_mult": [1, 2],
            "num_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "training": {
            **CONFIG["training"],
            "steps": 4,
            "batch_size": 8,
            "num_workers": 2,
            "worker_start_method": "fork",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "train.py").write_text(READ_LOGGING_SCRIPT)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += [str(tmp_path / "train.py"), str(tmp_path / "config.json"), str(logs), str(tmp_path / "run")]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
    reads = [[json.loads(line) for line in (logs / f"rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)]
    for rank, rows in ((0, (0, 4)), (1, (4, 8))):
        assert all((read["start"], read["stop"]) == rows and read["assembled"] == 4 for read in reads[rank])
        assert len({read["pid"] for read in reads[rank]}) == 2  # read by the rank's two workers
    # workers finish in any order: the same global batches, as sets (beyond the 4 steps: what was read ahead)
    draws = [{json.dumps([read["times"], read["tops"], read["lefts"]]) for read in rank_reads} for rank_reads in reads]
    assert len(draws[0] & draws[1]) >= 4
    assert load_checkpoint(tmp_path / "run").step == 4
