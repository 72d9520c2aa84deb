"""Runs: build from a configuration without writing, train into a run directory, load it back and sample."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

import diffscale
from diffscale.config import config_from_dict, load_config
from diffscale.devices import check_device
from diffscale.formulations import VP
from diffscale.runs import (
    CONFIG_NAME,
    METRICS_NAME,
    MetricsLog,
    build_denoiser,
    default_run_dir,
    load_run,
    loss_by_sigma_decade,
    prepare_training,
    resolve_run_dir,
    sample_run,
    train,
)
from diffscale.training import StepRecord
from diffscale.training.checkpoint import SIDECAR_NAME, list_checkpoints, load_checkpoint
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


def test_refuses_a_directory_with_a_checkpoint_unless_resuming(trained_run: Path) -> None:
    before = sorted(path.name for path in trained_run.iterdir())
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        prepare_training(config_from_dict(TINY), trained_run, resume=False)
    plan = prepare_training(config_from_dict(TINY), trained_run)  # default: resume
    assert plan.checkpoint is not None and plan.trainer.step == 20 and plan.changes == []
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
    # training.keep_checkpoints = 2 (the default): steps 12 and 10 are kept, 5 is gone
    assert sorted(path.name for path in (tmp_path / "run").glob("weights-*.safetensors")) == [
        "weights-00000010.safetensors",
        "weights-00000012.safetensors",
    ]
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [12, 10]


def test_stored_config_equals_config_yaml(trained_run: Path) -> None:
    assert load_run(trained_run).config == load_config(trained_run / CONFIG_NAME)


def test_tensorboard_scalars_and_sample_figures(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    training = {**TINY["training"], "steps": 8, "log_every": 4, "tensorboard": True, "sample_every": 4}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict({**TINY, "training": training}), run_dir), progress=False)
    assert sorted(path.name for path in (run_dir / "samples").iterdir()) == ["step-00000004.png", "step-00000008.png"]
    assert (run_dir / "samples" / "step-00000004.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    lines = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    for key in ("loss", "learning_rate", "grad_norm", "ema_beta"):
        scalars = events.Scalars(f"train/{key}")
        assert [scalar.step for scalar in scalars] == [4, 8]
        assert [scalar.value for scalar in scalars] == pytest.approx([line[key] for line in lines], rel=1e-6)
    bucket = next(iter(lines[-1]["loss_by_sigma"]))
    assert events.Scalars(f"loss_by_sigma/{bucket}")[-1].value == pytest.approx(lines[-1]["loss_by_sigma"][bucket])


def test_metrics_window_means_skips_and_no_noise_levels() -> None:
    """Means over the window's finite steps; skipped steps are counted, not averaged; no sigma, no buckets."""
    stream = io.StringIO()
    log = MetricsLog(stream, every=3, last_step=10)
    losses = [(1.0, 2.0, False), (float("nan"), float("nan"), True), (4.0, 6.0, False)]
    for step, (loss, grad_norm, skipped) in enumerate(losses, start=1):
        log(StepRecord(step, loss, 0.1 * step, grad_norm, torch.full((5,), loss), None, skipped, 0.9, 5))
    line = json.loads(stream.getvalue())
    assert line["step"] == 3 and line["loss"] == 2.5 and line["grad_norm"] == 4.0 and line["skipped_steps"] == 1
    assert line["learning_rate"] == pytest.approx(0.3) and line["samples"] == 15 and "loss_by_sigma" not in line
    sigma = torch.tensor([0.5, 5.0])
    log(StepRecord(4, 2.0, 0.4, 1.0, torch.tensor([1.0, 3.0]), sigma))
    state = json.loads(json.dumps(log.state_dict()))  # what a checkpoint stores
    resumed = MetricsLog(io.StringIO(), every=3, last_step=10)
    resumed.load_state_dict(state)
    for target in (log, resumed):
        target(StepRecord(5, 4.0, 0.5, 1.0, torch.tensor([5.0, 7.0]), sigma))
        target(StepRecord(6, 6.0, 0.6, 1.0, torch.tensor([9.0]), torch.tensor([0.2])))
    first = json.loads(stream.getvalue().splitlines()[-1])
    second = json.loads(resumed.stream.getvalue())
    assert first["loss_by_sigma"] == {"[1e-01,1e+00)": (1.0 + 5.0 + 9.0) / 3, "[1e+00,1e+01)": (3.0 + 7.0) / 2}
    assert {k: v for k, v in first.items() if k not in ("seconds", "samples_per_second")} == {
        k: v for k, v in second.items() if k not in ("seconds", "samples_per_second")
    }


def test_samples_per_second_after_a_resume_counts_the_windows_time_before_the_checkpoint(monkeypatch) -> None:
    """4 samples in a window of 10 s before the checkpoint and 10 s after it: 0.2 samples/s, whatever the pause."""
    import diffscale.runs.metrics as runs_module

    clock = [0.0]
    monkeypatch.setattr(runs_module.time, "perf_counter", lambda: clock[0])
    log = MetricsLog(io.StringIO(), every=2, last_step=10, started=0.0)
    clock[0] = 10.0
    log(StepRecord(1, 1.0, 0.1, 1.0, torch.ones(2), None))
    state = json.loads(json.dumps(log.state_dict()))
    clock[0] = 1000.0  # the run was killed and resumed much later
    resumed = MetricsLog(io.StringIO(), every=2, last_step=10, started=1000.0)
    resumed.load_state_dict(state)
    clock[0] = 1010.0
    resumed(StepRecord(2, 1.0, 0.1, 1.0, torch.ones(2), None))
    line = json.loads(resumed.stream.getvalue())
    assert line["samples"] == 4 and line["samples_per_second"] == pytest.approx(0.2)
    assert line["seconds"] == pytest.approx(20.0)


def test_the_data_wait_is_summed_per_window_and_written_as_a_fraction_of_step_time() -> None:
    class Scalars:
        def __init__(self) -> None:
            self.written: dict[str, list[tuple[int, float]]] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.written.setdefault(tag, []).append((step, value))

        def flush(self) -> None:
            pass

    board = Scalars()
    log = MetricsLog(io.StringIO(), every=2, last_step=4, tensorboard=board)
    for step, (data, total) in enumerate([(0.5, 2.0), (0.1, 1.0), (0.0, 1.0), (0.3, 1.0)], start=1):
        log(StepRecord(step, 1.0, 0.1, 1.0, torch.ones(2), None, data_seconds=data, step_seconds=total))
    lines = [json.loads(line) for line in log.stream.getvalue().splitlines()]
    assert [line["data_wait_seconds"] for line in lines] == [0.6, 0.3]
    assert [line["data_wait_fraction"] for line in lines] == [0.2, 0.15]  # 0.6 / 3.0 and 0.3 / 2.0
    assert board.written["train/data_wait_fraction"] == [(2, 0.2), (4, 0.15)]


def test_sample_figures_need_plottable_data(tmp_path: Path) -> None:
    data = {"kind": "mixture", "preset": "custom", "means": [[0.0, 0.0, 0.0]], "stds": [[1.0, 1.0, 1.0]]}
    training = {**TINY["training"], "sample_every": 5}
    with pytest.raises(ConfigError, match=r"training\.sample_every.*3 dimensions"):
        prepare_training(config_from_dict({**TINY, "data": data, "training": training}), tmp_path / "run")
