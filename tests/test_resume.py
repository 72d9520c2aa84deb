"""Exact resume: a run killed with SIGKILL (at whatever point, mid-checkpoint included) and resumed ends with
weights and metrics bitwise identical to an uninterrupted run; damaged checkpoints and incompatible
configurations are refused with one message and nothing overwritten."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from diffscale.config import config_from_dict
from diffscale.runs import METRICS_NAME, load_run, prepare_training, train
from diffscale.training.checkpoint import SIDECAR_NAME, CheckpointError, list_checkpoints, load_checkpoint
from diffscale.validation import ConfigError
from tests.conftest import run_cli, snapshot

CONFIG = {
    "model": {"width": 16, "depth": 1, "embedding_dim": 8},
    "training": {
        "steps": 30,
        "batch_size": 32,
        "device": "cpu",
        "log_every": 6,
        "warmup_steps": 5,
        "checkpoint_every": 1,
        "keep_checkpoints": 2,
        "tensorboard": False,
        "ema_halflife": 300.0,
        "lr_decay": "cosine",
    },
    "sampling": {"steps": 6, "sampler": "heun"},
}
VOLATILE = ("seconds", "samples_per_second", "data_wait_seconds", "data_wait_fraction")


def metrics_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    return [{key: value for key, value in line.items() if key not in VOLATILE} for line in lines]


def assert_same_run(left: Path, right: Path) -> None:
    a, b = load_checkpoint(left), load_checkpoint(right)
    assert a.step == b.step
    for part in ("weights", "ema_weights"):
        first, second = getattr(a, part), getattr(b, part)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), (part, key)
    assert metrics_lines(left) == metrics_lines(right)


def reference_run(root: Path, config: dict) -> Path:
    """The same run in one go (checkpoints only at the end: writing them changes nothing else)."""
    config = {**config, "training": {**config["training"], "checkpoint_every": 0}}
    run_dir = root / "reference"
    train(prepare_training(config_from_dict(config), run_dir), progress=False)
    return run_dir


def _train_in_child(argv: list[str], log: Path) -> None:
    """The child process: ``diffscale train`` (forked, so torch is already imported), exit status as its own;
    its output goes to ``log``."""
    sys.stdout = sys.stderr = open(log, "a")  # noqa: SIM115 - the child exits right after
    torch.set_num_threads(1)  # as the parent (a spawned child does not inherit it)
    try:
        status = run_cli(argv)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    os._exit(status)


def start(config_path: Path, run_dir: Path) -> multiprocessing.process.BaseProcess:
    """``diffscale train CONFIG --out RUN_DIR`` in a forked (or, after CUDA work, spawned) child process, its
    output in RUN_DIR's parent's child.log."""
    argv = ["train", str(config_path), "--out", str(run_dir), "--no-progress"]
    log = run_dir.parent / "child.log"
    # fork is fast (torch already imported), but autograd refuses a fork once CUDA autograd threads exist
    method = "spawn" if torch.cuda.is_available() and torch.cuda.is_initialized() else "fork"
    process = multiprocessing.get_context(method).Process(target=_train_in_child, args=(argv, log))
    process.start()
    return process


def latest_step(run_dir: Path) -> int:
    try:
        return load_checkpoint(run_dir, parts=()).step
    except CheckpointError:
        return -1


def kill_after(process: multiprocessing.process.BaseProcess, run_dir: Path, min_step: int, seconds: float) -> None:
    """SIGKILL ``process`` ``seconds`` after its run directory holds a checkpoint of ``min_step``."""
    deadline = time.monotonic() + 120
    while latest_step(run_dir) < min_step and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(seconds)
    assert process.pid is not None
    if not process.is_alive() and process.exitcode != 0:  # it failed before the kill: say why
        log = run_dir.parent / "child.log"
        output = log.read_text()[-3000:] if log.exists() else ""
        pytest.fail(f"training exited with status {process.exitcode}: {output}")
    with contextlib.suppress(ProcessLookupError):  # it may have finished in the meantime
        os.kill(process.pid, signal.SIGKILL)
    process.join()


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    reference = reference_run(tmp_path, CONFIG)  # first: the forked children inherit torch's lazy imports
    run_dir = tmp_path / "killed"
    rng = random.Random()
    kills = 0
    for min_step in (6, 16):
        process = start(config_path, run_dir)
        kill_after(process, run_dir, min_step, rng.uniform(0.0, 0.1))
        if process.exitcode == -signal.SIGKILL:
            kills += 1
            assert min_step <= latest_step(run_dir) < 30, "killed mid-run: the run is not complete"
    process = start(config_path, run_dir)  # resumes automatically
    process.join(timeout=180)
    assert process.exitcode == 0
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    assert_same_run(run_dir, reference)
    assert [step for step, _ in list_checkpoints(run_dir)] == [30, 29]  # keep_checkpoints = 2
    assert not list(run_dir.glob(".*.tmp"))  # temporary files of killed writers are cleaned up


def test_resume_in_process_with_more_steps_matches_one_long_run(tmp_path: Path) -> None:
    """Stopping at step 12 and resuming with training.steps raised to 20 equals 20 steps in one go (no decay,
    so the learning rate does not depend on training.steps)."""
    config = {**CONFIG, "training": {**CONFIG["training"], "lr_decay": "none", "checkpoint_every": 5}}
    short = {**config, "training": {**config["training"], "steps": 12}}
    long = {**config, "training": {**config["training"], "steps": 20}}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict(short), run_dir), progress=False)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        prepare_training(config_from_dict(long), run_dir, resume=False)
    plan = prepare_training(config_from_dict(long), run_dir)
    assert plan.checkpoint is not None and plan.checkpoint.step == 12
    assert plan.changes == ["training.steps: 12 -> 20"]
    summary = train(plan, progress=False)
    assert summary.resumed_from == 12 and summary.steps == 20
    assert_same_run(run_dir, reference_run(tmp_path, long))


def test_damaged_latest_checkpoint_offers_the_previous_one(tmp_path: Path) -> None:
    config = {**CONFIG, "training": {**CONFIG["training"], "steps": 6, "checkpoint_every": 3}}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict(config), run_dir), progress=False)
    weights = run_dir / "weights-00000006.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])  # truncated
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="previous checkpoint") as caught:
        prepare_training(config_from_dict(config), run_dir)
    message = str(caught.value)
    assert "weights-00000006.safetensors" in message and "step 3" in message
    assert str(run_dir / "checkpoint-00000003.json") in message and "\n" not in message
    assert snapshot(run_dir) == before
    # the offered checkpoint resumes; the damaged later one is then replaced
    longer = {**config, "training": {**config["training"], "steps": 6}}
    plan = prepare_training(config_from_dict(longer), run_dir, resume=run_dir / "checkpoint-00000003.json")
    assert plan.checkpoint is not None and plan.checkpoint.step == 3
    train(plan, progress=False)
    assert load_checkpoint(run_dir).step == 6
    assert_same_run(run_dir, reference_run(tmp_path, config))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": {"width": 32, "depth": 1, "embedding_dim": 8}}, "model.width: 16 -> 32"),
        ({"diffusion": {"type": "VP"}}, "diffusion.type: 'EDM' -> 'VP'"),
        ({"data": {"kind": "mixture", "preset": "ring_2d"}}, "data.preset"),
        ({"training": {**CONFIG["training"], "optimizer": "adamw"}}, "training.optimizer"),
    ],
    ids=["architecture", "formulation", "data", "optimizer"],
)
def test_incompatible_configuration_is_refused(tmp_path: Path, change: dict, expected: str) -> None:
    config = {**CONFIG, "training": {**CONFIG["training"], "steps": 2}}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict(config), run_dir), progress=False)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="changed incompatibly") as caught:
        prepare_training(config_from_dict({**config, **change}), run_dir)
    assert expected in str(caught.value)
    assert snapshot(run_dir) == before


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    """A checkpoint whose weights do not fit the model (its sidecar claims the same configuration)."""
    config = {**CONFIG, "training": {**CONFIG["training"], "steps": 2}}
    other = {**config, "model": {"width": 8, "depth": 1, "embedding_dim": 8}}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict(other), run_dir), progress=False)
    sidecar = json.loads((run_dir / SIDECAR_NAME).read_text())
    sidecar["config"]["model"]["width"] = 16
    (run_dir / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=r"do not fit this model .* another shape"):
        prepare_training(config_from_dict(config), run_dir)
    with pytest.raises(CheckpointError, match=r"do not fit this model .* another shape"):
        load_run(run_dir)  # sampling refuses it the same way


def test_resume_requires_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        prepare_training(config_from_dict(CONFIG), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="no such run directory"):
        prepare_training(config_from_dict(CONFIG), tmp_path / "x", resume=tmp_path / "x" / "checkpoint-00000001.json")


UNET_CONFIG = {
    "diffusion": {"type": "EDM", "sigma_data": 1.0},
    "model": {
        "arch": "ddpmpp",
        "model_channels": 8,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "img_resolution": 8,
        "attn_resolutions": [4],
        "dropout": 0.1,
    },
    "data": {"kind": "gaussian_fields", "channels": 1, "height": 8, "width": 8, "length_scale": 2.0},
    "training": {
        "steps": 6,
        "batch_size": 4,
        "device": "cpu",
        "log_every": 2,
        "warmup_steps": 2,
        "checkpoint_every": 2,
        "tensorboard": False,
        "ema_halflife": 40.0,
        "lr_decay": "none",
        "channels_last": True,
    },
    "sampling": {"steps": 4, "sampler": "heun"},
}


def test_channels_last_unet_resumes_bitwise(tmp_path: Path) -> None:
    """A U-Net trained in channels_last (weights, Adam moments) and stopped at step 4 resumes, from contiguous
    checkpoint tensors, to the same weights, EMA and metrics as 6 steps in one go."""
    short = {**UNET_CONFIG, "training": {**UNET_CONFIG["training"], "steps": 4}}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict(short), run_dir), progress=False)
    plan = prepare_training(config_from_dict(UNET_CONFIG), run_dir)
    trainer = plan.trainer
    convolutions = [p for p in trainer.denoiser.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not any(p.is_contiguous() for p in convolutions)
    moments = [trainer.optimizer.state[p]["exp_avg"] for p in convolutions]
    assert all(m.is_contiguous(memory_format=torch.channels_last) and not m.is_contiguous() for m in moments)
    assert all(group["foreach"] for group in trainer.optimizer.param_groups)
    train(plan, progress=False)
    assert_same_run(run_dir, reference_run(tmp_path, UNET_CONFIG))
