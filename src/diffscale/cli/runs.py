"""Runs: build everything from a :class:`~diffscale.config.Config`, train into a run directory, and load a
run back for sampling.

A run directory holds ``config.yaml`` (the resolved configuration, every key written out),
``metrics.jsonl`` (one JSON object per logged step) and a checkpoint (see :mod:`diffscale.training.checkpoint`).

>>> plan = prepare_training(load_config("configs/mixture_1d_edm.yaml"), Path("runs/mixture_1d_edm"))
>>> summary = train(plan)                       # nothing is written before this call
>>> run = load_run(summary.run_dir)              # EMA weights by default
>>> samples = sample_run(run, 1000, run.config.sampling.to_sampler_settings())   # (1000, *run.data_shape)

The data is a Gaussian mixture (vectors, shape (D,), for the MLP) or a Gaussian random field (grids, shape
(C, H, W), for the U-Nets); everything here works on a sample shape and never looks inside it.

It belongs to the bottom layer (config, cli): it joins the configuration to the layers above it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import torch
from tqdm.auto import tqdm

from diffscale.config import Config, OutputSection, config_from_dict
from diffscale.config.models import build_model, describe_model
from diffscale.config.schema import decode_non_finite, encode_non_finite
from diffscale.data.fields import GaussianRandomField
from diffscale.data.mixtures import GaussianMixture
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.formulations import Formulation
from diffscale.sampling import SamplerSettings, SamplerStep, sample
from diffscale.training.checkpoint import (
    EMA,
    SIDECAR_NAME,
    WEIGHTS,
    Checkpoint,
    atomic_write_bytes,
    has_checkpoint,
    load_checkpoint,
    save_trainer_checkpoint,
)
from diffscale.training.loop import StepRecord, Trainer
from diffscale.validation import ConfigError

__all__ = [
    "CONFIG_NAME",
    "METRICS_NAME",
    "DataDistribution",
    "LoadedRun",
    "MetricsLog",
    "TrainingPlan",
    "TrainingSummary",
    "build_denoiser",
    "check_device",
    "default_run_dir",
    "load_run",
    "loss_by_sigma_decade",
    "model_summary",
    "prepare_training",
    "resolve_run_dir",
    "sample_run",
    "train",
]

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
LOG10_SIGMA_RANGE = (-3, 3)
"""Decades of sigma in the per-noise-level loss: [1e-3, 1e-2), ..., [1e2, 1e3); values outside go to the ends."""

WeightsChoice = Literal["ema", "raw"]
DataDistribution = GaussianMixture | GaussianRandomField
"""What a ``data:`` section builds: a distribution with ``sample(n, generator)`` and ``ideal_denoiser``."""


# -- building -------------------------------------------------------------------------------------------------
def default_run_dir(config_path: str | Path | None) -> Path:
    """``runs/<config file name without extension>`` (``runs/run`` without a file)."""
    return Path("runs") / (Path(config_path).stem if config_path is not None else "run")


def resolve_run_dir(config: Config, config_path: str | Path | None = None, out: str | Path | None = None) -> Path:
    """The run directory: ``out`` if given, else ``output.dir``, else :func:`default_run_dir`."""
    if out is not None:
        return Path(out)
    if config.output.dir is not None:
        return Path(config.output.dir)
    return default_run_dir(config_path)


def check_device(name: str, key: str) -> torch.device:
    """``name`` as a usable torch device ('auto' picks CUDA when available); ConfigError naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key} = {name!r}: not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} = {name!r}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key} = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"{key} = {name!r}: unsupported device; allowed: auto, cpu, cuda, cuda:N")
    return device


def build_denoiser(config: Config, shape: int | tuple[int, ...] | None = None) -> PreconditionedDenoiser:
    """D = preconditioning of ``diffusion:`` around the ``model:`` network, initialised from ``training.seed``.

    ``shape`` is one sample's shape, (D,) (or D) for vectors or (C, H, W) for grids (default: the data's).
    With a formulation that learns the variance the network emits twice the channels (mean and variance
    halves), which the denoiser splits. The initialisation uses a forked global RNG, so the caller's
    random state is left untouched.
    """
    formulation = config.formulation()
    shape = config.data_shape() if shape is None else shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed)
        network = build_model(config.resolved_model(), shape, formulation.learned_variance)
    return PreconditionedDenoiser(network, formulation)


def model_summary(config: Config, denoiser: PreconditionedDenoiser) -> str:
    """One line: the network (architecture, parameter count, ...) and the shape of the data it models."""
    shape = " x ".join(map(str, config.data_shape()))
    return f"model {describe_model(denoiser.network, config.model.arch)}; data {config.data.kind} ({shape})"


# -- metrics --------------------------------------------------------------------------------------------------
def _decade_label(decade: int) -> str:
    return f"[1e{decade:+03d},1e{decade + 1:+03d})"


def loss_by_sigma_decade(per_sample: torch.Tensor, sigma: torch.Tensor) -> dict[str, float]:
    """Mean per-sample loss in each decade of sigma (bins of log10 sigma, outer bins open-ended).

    Keys are ``"[1e-01,1e+00)"``-style labels, in increasing sigma; empty bins are left out.
    """
    low, high = LOG10_SIGMA_RANGE
    decade = sigma.detach().double().log10().floor().clamp(low, high - 1).long().cpu()
    losses = per_sample.detach().double().cpu()
    result = {}
    for value in range(low, high):
        mask = decade == value
        if mask.any():
            result[_decade_label(value)] = float(losses[mask].mean())
    return result


@dataclass
class MetricsLog:
    """Aggregates :class:`StepRecord` s and writes one JSON line every ``every`` steps (and at ``last_step``).

    Each line holds ``step``, ``loss`` (mean over the window), ``learning_rate`` (at the step),
    ``grad_norm`` (mean over the window, before clipping), ``loss_by_sigma`` (see
    :func:`loss_by_sigma_decade`), ``samples`` (per-sample losses in the window) and ``seconds`` since start.
    """

    stream: IO[str]
    every: int
    last_step: int
    started: float = field(default_factory=time.perf_counter)
    _records: list[StepRecord] = field(default_factory=list)

    def __call__(self, record: StepRecord) -> None:
        self._records.append(record)
        if record.step % self.every == 0 or record.step >= self.last_step:
            self.flush()

    def flush(self) -> None:
        """Write the pending window (if any) as one line."""
        if not self._records:
            return
        records, self._records = self._records, []
        per_sample = torch.cat([record.per_sample.reshape(-1) for record in records])
        sigma = torch.cat([record.sigma.reshape(-1) for record in records])
        line = {
            "step": records[-1].step,
            "loss": sum(record.loss for record in records) / len(records),
            "learning_rate": records[-1].learning_rate,
            "grad_norm": sum(record.grad_norm for record in records) / len(records),
            "loss_by_sigma": loss_by_sigma_decade(per_sample, sigma),
            "samples": int(per_sample.numel()),
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()


# -- training -------------------------------------------------------------------------------------------------
@dataclass
class TrainingPlan:
    """Everything a training run needs, built and validated; nothing written yet."""

    config: Config
    run_dir: Path
    data: DataDistribution
    trainer: Trainer
    summary: str = ""
    """One line describing the network and the data (see :func:`model_summary`)."""

    @property
    def mixture(self) -> DataDistribution:
        """The data distribution (name kept from when every run modelled a mixture)."""
        return self.data


@dataclass(frozen=True)
class TrainingSummary:
    """What a finished training run left behind."""

    run_dir: Path
    steps: int
    final_loss: float | None
    checkpoint: Path
    metrics: Path


def prepare_training(config: Config, run_dir: str | Path) -> TrainingPlan:
    """Validate and build a run (data, formulation, network, trainer) without touching the disk.

    Raises ConfigError when ``run_dir`` is a file or already holds a checkpoint (resuming is not
    supported yet), or when ``training.device`` is unusable.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output.dir = '{run_dir}': exists and is not a directory")
    if has_checkpoint(run_dir):
        raise ConfigError(
            f"output.dir = '{run_dir}': already holds a checkpoint ({SIDECAR_NAME}); refusing to overwrite it "
            "(choose another --out or delete it; resuming is not supported yet)"
        )
    check_device(config.training.device, "training.device")
    # The resolved model section (a U-Net's in_channels and learned_variance follow the data and formulation)
    # is what config.yaml records.
    config = config.model_copy(update={"output": OutputSection(dir=str(run_dir)), "model": config.resolved_model()})
    data = config.data.build()
    denoiser = build_denoiser(config)

    def source(batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return data.sample(batch_size, generator)

    return TrainingPlan(
        config=config,
        run_dir=run_dir,
        data=data,
        trainer=Trainer(denoiser, source, config.training),
        summary=model_summary(config, denoiser),
    )


def _sidecar_config(config: Config) -> dict:
    """The configuration as strict-JSON values (``inf`` written as the string "inf")."""
    return encode_non_finite(config.to_dict())


def train(
    plan: TrainingPlan, *, progress: bool = True, callback: Callable[[StepRecord], None] | None = None
) -> TrainingSummary:
    """Create the run directory, write config.yaml, train with metrics and checkpoints, return a summary.

    A checkpoint is written every ``training.checkpoint_every`` steps (if > 0) and at the end.
    """
    config, run_dir, trainer = plan.config, plan.run_dir, plan.trainer
    settings = config.training
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / CONFIG_NAME, config.to_yaml().encode("utf-8"))
    sidecar_config = _sidecar_config(config)
    metrics_path = run_dir / METRICS_NAME
    last_loss: list[float] = []
    checkpoint_path = run_dir / SIDECAR_NAME
    with metrics_path.open("w", encoding="utf-8") as stream:
        metrics = MetricsLog(stream, every=settings.log_every, last_step=settings.steps)

        def on_step(record: StepRecord) -> None:
            metrics(record)
            last_loss[:] = [record.loss]
            if settings.checkpoint_every and record.step % settings.checkpoint_every == 0:
                save_trainer_checkpoint(run_dir, trainer, sidecar_config)
            if callback is not None:
                callback(record)

        trainer.run(progress=progress, callback=on_step)
        metrics.flush()
    if not (settings.checkpoint_every and trainer.step % settings.checkpoint_every == 0):
        save_trainer_checkpoint(run_dir, trainer, sidecar_config)
    return TrainingSummary(
        run_dir=run_dir,
        steps=trainer.step,
        final_loss=last_loss[0] if last_loss else None,
        checkpoint=checkpoint_path,
        metrics=metrics_path,
    )


# -- loading and sampling ---------------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A trained run ready for sampling."""

    run_dir: Path
    config: Config
    step: int
    weights: WeightsChoice
    denoiser: PreconditionedDenoiser
    data: DataDistribution
    device: torch.device

    @property
    def formulation(self) -> Formulation:
        """The run's formulation."""
        return self.denoiser.formulation

    @property
    def mixture(self) -> DataDistribution:
        """The data distribution (name kept from when every run modelled a mixture)."""
        return self.data

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (D,) for vectors, (C, H, W) for fields."""
        return self.config.data_shape()


def load_run(run_dir: str | Path, *, weights: WeightsChoice = "ema", device: str = "cpu") -> LoadedRun:
    """Load a run directory for sampling: its configuration and the EMA (default) or raw weights.

    Raises ConfigError (CheckpointError) for a missing run, a missing or corrupt checkpoint, or a bad device.
    """
    run_dir = Path(run_dir)
    if weights not in ("ema", "raw"):
        raise ConfigError(f"weights = {weights!r}: allowed: ema, raw")
    torch_device = check_device(device, "--device")
    if not run_dir.exists():
        raise ConfigError(f"run directory '{run_dir}' not found")
    checkpoint: Checkpoint = load_checkpoint(run_dir, parts=(EMA if weights == "ema" else WEIGHTS,))
    try:
        config = config_from_dict(decode_non_finite(checkpoint.config))
    except ConfigError as error:
        raise ConfigError(f"'{run_dir / SIDECAR_NAME}': invalid stored configuration: {error}") from None
    state = checkpoint.ema_weights if weights == "ema" else checkpoint.weights
    if not state:
        raise ConfigError(f"'{run_dir / SIDECAR_NAME}': holds no {weights} weights")
    data = config.data.build()
    denoiser = build_denoiser(config)
    denoiser.load_state_dict(state)
    denoiser = denoiser.to(torch_device).eval().requires_grad_(False)
    return LoadedRun(
        run_dir=run_dir,
        config=config,
        step=checkpoint.step,
        weights=weights,
        denoiser=denoiser,
        data=data,
        device=torch_device,
    )


def sample_run(
    run: LoadedRun,
    num: int,
    settings: SamplerSettings,
    *,
    seed: int = 0,
    batch_size: int = 10_000,
    progress: bool = False,
) -> torch.Tensor:
    """``num`` samples from a loaded run, drawn in batches from one generator seeded with ``seed``.

    Returns a float32 CPU tensor of shape (num, D) for vectors or (num, C, H, W) for fields.
    """
    if num < 1 or batch_size < 1:
        raise ConfigError(f"num = {num}, batch_size = {batch_size}: both must be >= 1")
    generator = torch.Generator(run.device).manual_seed(seed)
    sizes = [min(batch_size, num - start) for start in range(0, num, batch_size)]
    chunks = []
    with tqdm(total=len(sizes) * settings.steps, desc="sampling", unit="step", disable=not progress) as bar:

        def advance(_: SamplerStep) -> None:
            bar.update(1)

        for size in sizes:
            noise = torch.randn((size, *run.data_shape), generator=generator, device=run.device)
            samples = sample(
                run.denoiser, noise, run.formulation, **settings.model_dump(), generator=generator, callback=advance
            )
            chunks.append(samples.cpu())
    return torch.cat(chunks)
