"""Checkpoints: safetensors + JSON sidecar round trips bit for bit, corruption is caught by checksum, and
pickled files are refused without being unpickled."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from diffscale.config import config_from_dict
from diffscale.runs import prepare_training
from diffscale.training.checkpoint import (
    ALL_PARTS,
    FORMAT_VERSION,
    SIDECAR_NAME,
    CheckpointError,
    atomic_write_bytes,
    list_checkpoints,
    load_checkpoint,
    read_safetensors,
    restore_trainer,
    save_trainer_checkpoint,
)
from diffscale.training.loop import Trainer

TINY = {
    "model": {"width": 16, "depth": 1, "embedding_dim": 8},
    "training": {"steps": 20, "batch_size": 64, "device": "cpu", "warmup_steps": 5, "ema_halflife": 500.0},
}


def tiny_trainer(tmp_path: Path, seed: int = 0) -> Trainer:
    config = config_from_dict({**TINY, "training": {**TINY["training"], "seed": seed}})
    return prepare_training(config, tmp_path / "unused").trainer


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert torch.equal(left[key].cpu(), right[key].cpu()), key


def test_round_trip_restores_every_tensor_bit_for_bit(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(7, progress=False)
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {"note": "config here", "s_max": "inf"})

    checkpoint = load_checkpoint(tmp_path / "ckpt")
    assert checkpoint.step == 7
    assert checkpoint.format_version == FORMAT_VERSION
    assert checkpoint.config == {"note": "config here", "s_max": "inf"}
    assert_same_tensors(checkpoint.weights, trainer.denoiser.state_dict())
    assert_same_tensors(checkpoint.ema_weights, trainer.ema_denoiser.state_dict())
    assert torch.equal(checkpoint.generator_state, trainer.generator.get_state())
    assert checkpoint.generator_state.dtype == torch.uint8

    fresh = tiny_trainer(tmp_path, seed=123)  # different initialisation and generator
    restore_trainer(fresh, checkpoint)
    assert fresh.step == 7
    assert_same_tensors(fresh.denoiser.state_dict(), trainer.denoiser.state_dict())
    assert_same_tensors(fresh.ema_denoiser.state_dict(), trainer.ema_denoiser.state_dict())
    assert torch.equal(fresh.generator.get_state(), trainer.generator.get_state())
    saved, restored = trainer.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for index, values in saved["state"].items():
        assert_same_tensors(values, restored["state"][index])


def test_restored_trainer_continues_exactly(tmp_path: Path) -> None:
    """Everything an exact resume needs is in the format: both trainers take identical further steps."""
    trainer = tiny_trainer(tmp_path)
    trainer.run(5, progress=False)
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {})
    resumed = tiny_trainer(tmp_path, seed=99)
    restore_trainer(resumed, load_checkpoint(tmp_path / "ckpt"))
    for _ in range(3):
        assert trainer.train_step().loss == resumed.train_step().loss
    assert_same_tensors(trainer.denoiser.state_dict(), resumed.denoiser.state_dict())
    assert_same_tensors(trainer.ema_denoiser.state_dict(), resumed.ema_denoiser.state_dict())


def test_sidecar_records_checksums_names_and_format(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(2, progress=False)
    save_trainer_checkpoint(tmp_path, trainer, {})
    sidecar = json.loads((tmp_path / SIDECAR_NAME).read_text())
    assert sidecar["format_version"] == FORMAT_VERSION
    assert sidecar["step"] == 2
    assert set(sidecar["files"]) == set(ALL_PARTS)
    for entry in sidecar["files"].values():
        assert entry["path"].endswith(".safetensors")
        assert len(entry["sha256"]) == 64
        assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]
    assert sidecar["optimizer"]["class"] == "Adam"
    assert sidecar["optimizer"]["param_groups"][0]["lr"] == trainer.optimizer.param_groups[0]["lr"]
    state_keys = read_safetensors(tmp_path / sidecar["files"]["training_state"]["path"]).keys()
    assert "generator.state" in state_keys
    assert "optimizer.state.network.input.weight.exp_avg" in state_keys
    assert "optimizer.state.network.input.weight.exp_avg_sq" in state_keys


def test_a_later_checkpoint_replaces_the_earlier_files(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(2, progress=False)
    save_trainer_checkpoint(tmp_path, trainer, {})
    trainer.run(4, progress=False)
    save_trainer_checkpoint(tmp_path, trainer, {})
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["checkpoint-00000004.json", SIDECAR_NAME, "ema-00000004.safetensors",
                     "training_state-00000004.safetensors", "weights-00000004.safetensors"]  # fmt: skip
    assert load_checkpoint(tmp_path).step == 4
    assert (tmp_path / "checkpoint-00000004.json").read_bytes() == (tmp_path / SIDECAR_NAME).read_bytes()


def test_the_last_k_checkpoints_are_kept_and_later_ones_dropped(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    for steps in (1, 2, 3):
        trainer.run(steps, progress=False)
        save_trainer_checkpoint(tmp_path, trainer, {}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 2]
    assert sorted(path.name for path in tmp_path.glob("weights-*")) == [
        "weights-00000002.safetensors",
        "weights-00000003.safetensors",
    ]
    assert load_checkpoint(tmp_path / "checkpoint-00000002.json").step == 2
    # a run resumed from step 2 that checkpoints again at step 2 drops the abandoned step 3
    restore_trainer(trainer, load_checkpoint(tmp_path / "checkpoint-00000002.json"))
    save_trainer_checkpoint(tmp_path, trainer, {}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2]
    assert not list(tmp_path.glob("*-00000003.*")) and load_checkpoint(tmp_path).step == 2


def test_sidecar_records_counters_data_position_and_rng(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)

    class CountingSource:
        """A source with a data position (samples drawn so far)."""

        def __init__(self, inner) -> None:
            self.inner, self.drawn = inner, 0

        def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
            self.drawn += n
            return self.inner(n, generator)

        def state_dict(self) -> dict:
            return {"drawn": self.drawn}

        def load_state_dict(self, state: dict) -> None:
            self.drawn = state["drawn"]

    trainer.source = CountingSource(trainer.source)
    trainer.run(3, progress=False)
    torch.manual_seed(1234)
    global_state = torch.get_rng_state()
    save_trainer_checkpoint(tmp_path, trainer, {}, metadata={"note": 7})
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.data_position == {"drawn": 3 * 64}
    assert checkpoint.trainer_state == {"samples_seen": 3 * 64, "skipped_steps": 0, "nonfinite_in_a_row": 0,
                                        "grad_scaler": None, "world_size": 1}  # fmt: skip
    assert checkpoint.sidecar["note"] == 7
    assert checkpoint.sidecar["rng"] == {"generator": "generator.state", "global": ["rng.cpu.rank0"]}
    fresh = tiny_trainer(tmp_path, seed=5)
    fresh.source = CountingSource(fresh.source)
    torch.manual_seed(99)
    restore_trainer(fresh, checkpoint)
    assert fresh.source.drawn == 3 * 64
    assert torch.equal(torch.get_rng_state(), global_state)


def test_damaged_latest_names_an_intact_previous_checkpoint(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    for steps in (1, 2):
        trainer.run(steps, progress=False)
        save_trainer_checkpoint(tmp_path, trainer, {}, keep=3)
    _corrupt(tmp_path / "ema-00000002.safetensors")
    with pytest.raises(CheckpointError, match=r"ema-00000002.*corrupt.*previous checkpoint \(step 1\) is intact"):
        load_checkpoint(tmp_path)
    _corrupt(tmp_path / "ema-00000002.safetensors")  # the same byte flipped back: intact again
    (tmp_path / SIDECAR_NAME).write_text("{truncated")
    with pytest.raises(CheckpointError, match=r"not valid JSON.*checkpoint-00000002\.json"):
        load_checkpoint(tmp_path)  # the sidecar alone is damaged: the same step's copy is offered


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def test_ema_ramp_up_counts_samples_across_a_resume_with_another_batch_size(tmp_path: Path) -> None:
    """3 steps of 64 then one of 16: the ramp-up clock reads 3 x 64 + 16 samples, not 4 x 16."""
    rampup = {"ema_rampup": 0.5}
    config = config_from_dict({**TINY, "training": {**TINY["training"], **rampup}})
    trainer = prepare_training(config, tmp_path / "unused").trainer
    trainer.run(3, progress=False)
    assert trainer.samples_seen == 192
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {})
    smaller = config_from_dict({**TINY, "training": {**TINY["training"], **rampup, "batch_size": 16}})
    resumed = prepare_training(smaller, tmp_path / "unused2").trainer
    restore_trainer(resumed, load_checkpoint(tmp_path / "ckpt"))
    assert resumed.samples_seen == 192
    records = []
    resumed.run(4, progress=False, callback=records.append)  # up to step 4
    assert resumed.samples_seen == 208
    assert records[0].ema_beta == pytest.approx(0.5 ** (16 / (0.5 * 208)))  # halflife = rampup x samples seen


@pytest.mark.parametrize("damage", [_corrupt, _truncate], ids=["flipped-byte", "truncated"])
@pytest.mark.parametrize("part", ALL_PARTS)
def test_damaged_file_is_detected_and_named(tmp_path: Path, damage, part: str) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(1, progress=False)
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {})
    name = f"{part}-00000001.safetensors"
    damage(tmp_path / "ckpt" / name)
    with pytest.raises(CheckpointError, match=re.escape(name)) as caught:
        load_checkpoint(tmp_path / "ckpt")
    assert "corrupt" in str(caught.value)
    others = tuple(other for other in ALL_PARTS if other != part)
    load_checkpoint(tmp_path / "ckpt", parts=others)  # the undamaged files still load


def test_missing_and_invalid_sidecar(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)
    (tmp_path / SIDECAR_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / SIDECAR_NAME).write_text(json.dumps({"format": "diffscale-checkpoint", "format_version": 999}))
    with pytest.raises(CheckpointError, match="format_version 999"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": "ten"}, "step 'ten' is not a non-negative integer"),
        ({"step": -1}, "step -1 is not a non-negative integer"),
        ({"files": ["weights.safetensors"]}, "'files' must map each part"),
        ({"files": {"weights": "weights.safetensors"}}, "'files' must map each part"),
        ({"config": "EDM"}, "'config' is a str, not a mapping"),
        ({"trainer": [1, 2]}, "'trainer' is a list, not a mapping"),
    ],
)
def test_valid_json_sidecar_with_wrong_types_is_refused_in_one_line(tmp_path: Path, change: dict, message: str) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(1, progress=False)
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {})
    sidecar_path = tmp_path / "ckpt" / SIDECAR_NAME
    sidecar_path.write_text(json.dumps({**json.loads(sidecar_path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(sidecar_path)


class _Booby:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".pt", ".pkl", ".safetensors"])
def test_pickled_files_are_refused_without_unpickling(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "unpickled"
    payload = tmp_path / f"model{suffix}"
    payload.write_bytes(pickle.dumps(_Booby(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(payload)
    with pytest.raises(CheckpointError, match="not a safetensors file" if suffix == ".safetensors" else "refusing"):
        read_safetensors(payload)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "real.pt")  # a genuine torch checkpoint: refused as well
    with pytest.raises(CheckpointError, match="never loaded"):
        load_checkpoint(tmp_path / "real.pt")
    assert not marker.exists()


def test_sidecar_pointing_at_a_pickle_is_refused(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(1, progress=False)
    save_trainer_checkpoint(tmp_path, trainer, {})
    marker = tmp_path / "unpickled"
    (tmp_path / "weights.pkl").write_bytes(pickle.dumps(_Booby(marker)))
    sidecar = json.loads((tmp_path / SIDECAR_NAME).read_text())
    sidecar["files"]["weights"]["path"] = "weights.pkl"
    sidecar["files"]["weights"].pop("sha256")
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=r"weights\.pkl"):
        load_checkpoint(tmp_path)
    sidecar["files"]["weights"]["path"] = "../elsewhere.safetensors"
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="plain name"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [path.name for path in tmp_path.iterdir()] == ["file.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_temporary_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".weights-00000001.safetensors.999999.0123456789ab.tmp"
    foreign = tmp_path / ".notes.txt.999999.0123456789ab.tmp"
    stale.write_bytes(b"half a file")
    foreign.write_bytes(b"not ours")
    trainer = tiny_trainer(tmp_path)
    trainer.run(1, progress=False)
    save_trainer_checkpoint(tmp_path, trainer, {})
    assert not stale.exists() and foreign.exists()


def test_a_changed_weight_decay_takes_effect_on_resume(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(2, progress=False)
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {})
    config = config_from_dict({**TINY, "training": {**TINY["training"], "weight_decay": 0.1}})
    resumed = prepare_training(config, tmp_path / "other").trainer
    restore_trainer(resumed, load_checkpoint(tmp_path / "ckpt"))
    assert [group["weight_decay"] for group in resumed.optimizer.param_groups] == [0.1]


def test_a_generator_of_another_device_type_is_refused_in_one_line(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.run(1, progress=False)
    save_trainer_checkpoint(tmp_path / "ckpt", trainer, {})
    sidecar = tmp_path / "ckpt" / "checkpoint.json"
    content = json.loads(sidecar.read_text())
    content["generator"] = {"device": "cuda:0"}  # as written by a run on a GPU
    sidecar.write_text(json.dumps(content))
    checkpoint = load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="resume on the same kind of device"):
        restore_trainer(tiny_trainer(tmp_path), checkpoint)
