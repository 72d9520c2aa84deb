"""Post-hoc EMA: the power-profile relations against the paper's values, the least-squares reconstruction against the
directly tracked power EMA of explicit parameter trajectories, snapshots and accumulators in training (exact
resume), and choosing and writing the EMA of a run (Python and command line)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diffscale.config import config_from_dict
from diffscale.runs import load_run, posthoc_ema, prepare_training, reconstruct_ema, train
from diffscale.training.checkpoint import TRAINED_EMA, load_checkpoint, read_safetensors
from diffscale.training.posthoc_ema import (
    SNAPSHOT_DIR,
    PowerEMA,
    gamma_from_std,
    list_snapshots,
    power_profile_inner,
    reconstruction_coefficients,
    std_from_gamma,
)
from diffscale.validation import ConfigError
from tests.conftest import run_cli

CONFIG = {
    "model": {"width": 16, "depth": 1, "embedding_dim": 8},
    "training": {
        "steps": 20,
        "batch_size": 32,
        "device": "cpu",
        "log_every": 5,
        "warmup_steps": 2,
        "checkpoint_every": 5,
        "tensorboard": False,
        "ema_halflife": 300.0,
        "lr_decay": "none",
        "threads": 1,
        "posthoc_ema_stds": [0.05, 0.1],
        "posthoc_ema_every": 5,
    },
    "sampling": {"steps": 4, "sampler": "heun"},
}


def test_gamma_and_std_follow_the_papers_relation() -> None:
    # Karras et al. 2024, Section 3.1: sigma_rel = 0.05 <-> gamma = 16.97, 0.10 <-> gamma = 6.94
    assert gamma_from_std(0.05) == pytest.approx(16.97, abs=0.005)
    assert gamma_from_std(0.10) == pytest.approx(6.94, abs=0.005)
    for gamma in (0.0, 1.0, 6.94, 16.97, 50.0):
        assert gamma_from_std(std_from_gamma(gamma)) == pytest.approx(gamma, rel=1e-9, abs=1e-9)
    assert std_from_gamma(0.0) == pytest.approx(1 / math.sqrt(12))
    with pytest.raises(ValueError, match="relative width"):
        gamma_from_std(0.3)


def test_profile_inner_product_matches_quadrature() -> None:
    tau = torch.linspace(0, 900, 900_001, dtype=torch.float64)

    def profile(t: float, gamma: float) -> torch.Tensor:
        return torch.where(tau <= t, (gamma + 1) * tau**gamma / t ** (gamma + 1), torch.zeros_like(tau))

    for (t_a, g_a), (t_b, g_b) in [((600.0, 6.94), (900.0, 16.97)), ((900.0, 3.0), (400.0, 0.5))]:
        numeric = float(torch.trapezoid(profile(t_a, g_a) * profile(t_b, g_b), tau))
        assert power_profile_inner(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-4)
    # a profile is exactly reproduced by itself
    coefficients = reconstruction_coefficients([(500.0, 6.94), (1000.0, 6.94), (1000.0, 16.97)], (1000.0, 16.97))
    assert coefficients.tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)


class _Trajectory(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(4, dtype=torch.float64))


def _trajectory(step: int, total: int) -> torch.Tensor:
    """An explicit parameter path: linear, quadratic, a slow oscillation and a decaying approach."""
    u = step / total
    return torch.tensor([u, u * u, math.sin(3 * u), 1 - math.exp(-5 * u)], dtype=torch.float64)


@pytest.mark.parametrize("target_std", [0.06, 0.075, 0.09])
def test_reconstruction_matches_the_direct_power_ema_of_a_known_trajectory(tmp_path: Path, target_std: float) -> None:
    total, every = 2000, 50
    model = _Trajectory()
    stored = PowerEMA(model, [0.05, 0.10])
    direct = PowerEMA(model, [target_std])
    for step in range(1, total + 1):
        with torch.no_grad():
            model.theta.copy_(_trajectory(step, total))
        stored.update(model, step)
        direct.update(model, step)
        if step % every == 0:
            stored.save_snapshot(tmp_path, step, model)
    expected = direct.accumulators[0]["theta"]
    # the linear component's power EMA has the closed form E[tau / T] = (gamma + 1) / (gamma + 2)
    gamma = gamma_from_std(target_std)
    assert float(expected[0]) == pytest.approx((gamma + 1) / (gamma + 2), abs=2e-3)
    reconstructed = reconstruct_ema(tmp_path, target_std)["theta"]
    spread = float((stored.accumulators[0]["theta"] - stored.accumulators[1]["theta"]).abs().max())
    error = float((reconstructed - expected).abs().max())
    assert error < 0.02 * spread, (error, spread)  # spread: how far apart the two stored profiles are
    assert error < 1e-4  # measured: about 2e-6
    # an earlier time: only the snapshots up to it count
    early = reconstruct_ema(tmp_path, 0.10, step=1000)["theta"]
    torch.testing.assert_close(early, _direct_at(1000, total, 0.10), atol=2e-3, rtol=0)


def _direct_at(stop: int, total: int, std: float) -> torch.Tensor:
    model = _Trajectory()
    direct = PowerEMA(model, [std])
    for step in range(1, stop + 1):
        with torch.no_grad():
            model.theta.copy_(_trajectory(step, total))
        direct.update(model, step)
    return direct.accumulators[0]["theta"]


def _train(config: dict, run_dir: Path) -> None:
    train(prepare_training(config_from_dict(config), run_dir), progress=False)


def test_training_writes_snapshots_and_resume_continues_them_exactly(tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    _train(CONFIG, whole)
    assert [s.step for s in list_snapshots(whole)] == [5, 5, 10, 10, 15, 15, 20, 20]
    short = {**CONFIG, "training": {**CONFIG["training"], "steps": 12}}
    _train(short, split)
    assert (split / SNAPSHOT_DIR / "snapshot-00000012.safetensors").is_file()  # the last step's
    _train(CONFIG, split)  # resumed from step 12 with steps raised to 20
    for step in (5, 10, 15, 20):  # tensors bitwise equal (the header's key order is the writer's own)
        name = f"snapshot-{step:08d}.safetensors"
        first, second = read_safetensors(whole / SNAPSHOT_DIR / name), read_safetensors(split / SNAPSHOT_DIR / name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), step
    a, b = load_checkpoint(whole), load_checkpoint(split)
    keys = [key for key in a.training_state if key.startswith("posthoc_ema.")]
    assert keys and all(torch.equal(a.training_state[key], b.training_state[key]) for key in keys)
    changed = {**CONFIG, "training": {**CONFIG["training"], "steps": 25, "posthoc_ema_stds": [0.05]}}
    with pytest.raises(ConfigError, match="posthoc_ema_stds"):
        prepare_training(config_from_dict(changed), split)


def test_validation_choice_becomes_the_runs_weights_and_resume_stays_exact(tmp_path: Path) -> None:
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    short = {**CONFIG, "training": {**CONFIG["training"], "steps": 10}}
    _train(short, run_dir)
    result = posthoc_ema(run_dir, [0.04, 0.08, 0.15], validation=True, repeats=1)
    losses = [c.validation_loss for c in result.candidates]
    assert all(loss is not None and math.isfinite(loss) for loss in losses)
    assert result.chosen.validation_loss == min(losses)
    assert result.step == 10 and result.snapshots == 4 and result.validation_samples == 256
    run = load_run(run_dir, device="cpu")
    expected = reconstruct_ema(run_dir, result.chosen.std)
    for name, value in run.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)
    sidecar = load_checkpoint(run_dir, parts=()).sidecar
    assert sidecar["posthoc_ema"]["std"] == result.chosen.std and TRAINED_EMA in sidecar["files"]
    first = sorted(path.name for path in run_dir.glob("ema_posthoc-*.safetensors"))
    posthoc_ema(run_dir, [0.2])  # another choice replaces the first one's file
    second = sorted(path.name for path in run_dir.glob("ema_posthoc-*.safetensors"))
    assert len(first) == len(second) == 1 and first != second
    assert load_checkpoint(run_dir, parts=()).sidecar["files"][TRAINED_EMA] == sidecar["files"][TRAINED_EMA]
    # the trainer's own EMA is what a resume continues: equal to an uninterrupted run
    _train(CONFIG, run_dir)
    _train(CONFIG, reference)
    a, b = load_checkpoint(run_dir), load_checkpoint(reference)
    for part in ("weights", "ema_weights"):
        for key, value in getattr(a, part).items():
            assert torch.equal(value, getattr(b, part)[key]), (part, key)
    # the same choice again (same noise): the same losses
    again = posthoc_ema(run_dir, [0.04, 0.08, 0.15], validation=True, repeats=1, step=10, write=False)
    assert [c.validation_loss for c in again.candidates] == losses


def test_named_variant_and_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    _train(CONFIG, run_dir)
    before = load_checkpoint(run_dir, parts=("ema",)).ema_weights
    assert run_cli(["ema", str(run_dir), "--std", "0.07", "--name", "narrow", "--threads", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    variant = load_run(run_dir, weights="narrow", device="cpu")
    for name, value in variant.model.state_dict().items():
        torch.testing.assert_close(value, reconstruct_ema(run_dir, 0.07)[name])
    after = load_checkpoint(run_dir, parts=("ema",)).ema_weights  # a variant leaves the run's EMA alone
    assert all(torch.equal(before[key], after[key]) for key in before)
    with pytest.raises(ConfigError, match="allowed: ema, raw, narrow"):
        load_run(run_dir, weights="wide", device="cpu")
    code = run_cli(["ema", str(run_dir), "--std", "0.05,0.1,0.12", "--validation", "--repeats", "1", "--dry-run"])
    output = capsys.readouterr().out
    assert code == 0 and output.count("validation loss") == 3 and "<- chosen" in output and "wrote" not in output
    assert run_cli(["ema", str(run_dir), "--std", "0.05,0.1"]) == 2
    assert "need --validation" in capsys.readouterr().err
    assert run_cli(["ema", str(run_dir), "--std", "0.4"]) == 2
    assert "--std" in capsys.readouterr().err


def test_a_run_without_snapshots_is_refused_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    training = {key: value for key, value in CONFIG["training"].items() if not key.startswith("posthoc")}
    _train({**CONFIG, "training": {**training, "steps": 3}}, run_dir)
    with pytest.raises(ConfigError, match=r"holds no post-hoc EMA snapshots \(train with training.posthoc_ema_stds"):
        posthoc_ema(run_dir, [0.05])
    with pytest.raises(ConfigError, match="posthoc_ema_stds"):
        config_from_dict({"training": {"posthoc_ema_stds": [0.05, 0.5]}})
