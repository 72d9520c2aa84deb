"""Runs: build from a configuration without writing, train into a run directory, load it back and sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import diffscale
from diffscale.cli.runs import (
    CONFIG_NAME,
    METRICS_NAME,
    build_denoiser,
    check_device,
    default_run_dir,
    load_run,
    loss_by_sigma_decade,
    prepare_training,
    resolve_run_dir,
    sample_run,
    train,
)
from diffscale.config import config_from_dict, load_config
from diffscale.formulations import VP
from diffscale.training.checkpoint import SIDECAR_NAME, load_checkpoint
from diffscale.validation import ConfigError

TINY = {
    "model": {"width": 16, "depth": 1, "embedding_dim": 8},
    "training": {"steps": 20, "batch_size": 64, "device": "cpu", "log_every": 8, "warmup_steps": 5},
    "sampling": {"steps": 6, "sampler": "heun"},
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(prepare_training(config_from_dict(TINY), run_dir), progress=False)
    return run_dir


def test_prepare_writes_nothing(tmp_path: Path) -> None:
    plan = prepare_training(config_from_dict(TINY), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert plan.config.output.dir == str(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_training_writes_config_metrics_and_checkpoint(trained_run: Path) -> None:
    assert (trained_run / CONFIG_NAME).is_file() and (trained_run / SIDECAR_NAME).is_file()
    resolved = load_config(trained_run / CONFIG_NAME)
    assert resolved.training.steps == 20 and resolved.model.width == 16
    assert resolved.output.dir == str(trained_run)
    lines = [json.loads(line) for line in (trained_run / METRICS_NAME).read_text().splitlines()]
    assert [line["step"] for line in lines] == [8, 16, 20]
    assert [line["samples"] for line in lines] == [8 * 64, 8 * 64, 4 * 64]
    for line in lines:
        assert {"step", "loss", "learning_rate", "grad_norm", "loss_by_sigma"} <= line.keys()
        assert line["loss"] > 0 and line["grad_norm"] > 0 and line["learning_rate"] > 0
        assert line["loss_by_sigma"] and all(key.startswith("[1e") for key in line["loss_by_sigma"])
    assert lines[0]["learning_rate"] == pytest.approx(2e-3)  # warm-up of 5 steps is over at step 8
    assert load_checkpoint(trained_run).step == 20


def test_refuses_a_directory_with_a_checkpoint(trained_run: Path) -> None:
    before = sorted(path.name for path in trained_run.iterdir())
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        prepare_training(config_from_dict(TINY), trained_run)
    assert sorted(path.name for path in trained_run.iterdir()) == before


def test_loss_by_sigma_decade_averages_per_bin() -> None:
    sigma = torch.tensor([0.5, 0.2, 3.0, 5.0, 9.99, 1e-6, 1e6])
    losses = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0, 7.0, 8.0])
    assert loss_by_sigma_decade(losses, sigma) == {
        "[1e-03,1e-02)": 7.0,  # below the range: first bin
        "[1e-01,1e+00)": 2.0,
        "[1e+00,1e+01)": 20.0,
        "[1e+02,1e+03)": 8.0,  # above the range: last bin
    }


def test_load_run_and_sample(trained_run: Path) -> None:
    run = load_run(trained_run, device="cpu")
    assert run.weights == "ema" and run.step == 20
    settings = run.config.sampling.to_sampler_settings()
    first = sample_run(run, 50, settings, seed=3, batch_size=16)
    second = sample_run(run, 50, settings, seed=3, batch_size=16)
    assert first.shape == (50, 1) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, sample_run(run, 50, settings, seed=4, batch_size=16))


def test_sample_run_uses_every_sampler_setting(trained_run: Path) -> None:
    """schedule (and every other SamplerSettings field) reaches the sampler: the same run and noise on another
    time grid gives other samples, identical to calling diffscale.sample directly with those settings."""
    run = load_run(trained_run, device="cpu")
    base = run.config.sampling.to_sampler_settings().model_copy(update={"solver": "dpmpp_2m", "s_churn": 0.0})
    native = sample_run(run, 20, base, seed=5, batch_size=20)
    tuned_settings = base.model_copy(update={"schedule": "tuned"})
    tuned = sample_run(run, 20, tuned_settings, seed=5, batch_size=20)
    assert not torch.equal(native, tuned)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn((20, *run.data_shape), generator=generator)
    expected = diffscale.sample(
        run.denoiser, noise, run.formulation, **tuned_settings.model_dump(), generator=generator
    )
    torch.testing.assert_close(tuned, expected)


def test_ema_and_raw_weights_differ(trained_run: Path) -> None:
    ema, raw = load_run(trained_run, weights="ema"), load_run(trained_run, weights="raw")
    checkpoint = load_checkpoint(trained_run)
    for key, value in raw.denoiser.state_dict().items():
        assert torch.equal(value, checkpoint.weights[key])
    assert any(
        not torch.equal(value, ema.denoiser.state_dict()[key]) for key, value in raw.denoiser.state_dict().items()
    )


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_run(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="allowed: ema, raw"):
        load_run(tmp_path, weights="best")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "message"), [("foo", "not a device"), ("meta", "unsupported device")])
def test_check_device_refuses_bad_names(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_device(name, "training.device")


def test_check_device_refuses_cuda_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_device("cuda", "--device")


def test_run_directory_resolution(tmp_path: Path) -> None:
    config = config_from_dict({})
    assert default_run_dir("configs/ring_2d_vp.yaml") == Path("runs/ring_2d_vp")
    assert resolve_run_dir(config, "configs/x.yaml") == Path("runs/x")
    assert resolve_run_dir(config, "configs/x.yaml", tmp_path) == tmp_path
    assert resolve_run_dir(config_from_dict({"output": {"dir": "elsewhere"}}), "c.yaml") == Path("elsewhere")


def test_network_initialisation_follows_the_seed_only() -> None:
    config = config_from_dict({**TINY, "diffusion": {"type": "vp"}})
    torch.manual_seed(1)
    first = build_denoiser(config, 2)
    state_after = torch.get_rng_state()
    torch.manual_seed(2)
    second = build_denoiser(config, 2)
    assert isinstance(first.formulation, VP)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    torch.manual_seed(1)
    assert torch.equal(torch.get_rng_state(), state_after)  # the global generator was left alone


def test_periodic_checkpoints_during_training(tmp_path: Path) -> None:
    config = config_from_dict({**TINY, "training": {**TINY["training"], "steps": 12, "checkpoint_every": 5}})
    seen: dict[int, int] = {}

    def watch(record) -> None:
        if (tmp_path / "run" / SIDECAR_NAME).exists():
            seen[record.step] = load_checkpoint(tmp_path / "run", parts=()).step

    summary = train(prepare_training(config, tmp_path / "run"), progress=False, callback=watch)
    assert summary.steps == 12
    assert seen[5] == 5 and seen[9] == 5 and seen[10] == 10
    assert load_checkpoint(tmp_path / "run").step == 12
    assert len(list((tmp_path / "run").glob("weights-*.safetensors"))) == 1


def test_stored_config_equals_config_yaml(trained_run: Path) -> None:
    assert load_run(trained_run).config == load_config(trained_run / CONFIG_NAME)
