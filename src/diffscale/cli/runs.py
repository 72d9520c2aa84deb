"""Runs: build everything from a :class:`~diffscale.config.Config`, train into a run directory, and load a
run back for sampling.

A run directory holds ``config.yaml`` (the resolved configuration, every key written out),
``metrics.jsonl`` (one JSON object per logged step), ``tensorboard/`` (the same scalars, with
``training.tensorboard``), ``samples/step-<step>.png`` (figures of EMA-model samples, every
``training.sample_every`` steps) and the last ``training.keep_checkpoints`` checkpoints (see
:mod:`diffscale.training.checkpoint`). Training into a directory that holds a checkpoint resumes it exactly.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import torch
from tqdm.auto import tqdm

from diffscale.cli.climate_runs import (
    STATS_NAME,
    build_climate_data,
    build_climate_model,
    climate_sample_figure,
    is_climate,
    save_stats,
    training_objective,
)
from diffscale.config import Config, OutputSection
from diffscale.config.models import build_initial_model, describe_model
from diffscale.config.schema import encode_non_finite, stored_config
from diffscale.data.climate import ClimateDataset
from diffscale.data.fields import GaussianRandomField
from diffscale.data.mixtures import GaussianMixture
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.devices import check_device, standard_normal
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
    load_weights,
    restore_trainer,
    save_trainer_checkpoint,
)
from diffscale.training.distributed import DistributedContext
from diffscale.training.loop import BatchSource, StepRecord, Trainer
from diffscale.validation import ConfigError

__all__ = [
    "CONFIG_NAME",
    "METRICS_NAME",
    "DataDistribution",
    "LoadedRun",
    "MetricsLog",
    "TrainingPlan",
    "TrainingSummary",
    "build_data_source",
    "build_denoiser",
    "default_run_dir",
    "incompatible_changes",
    "load_run",
    "loss_by_sigma_decade",
    "model_summary",
    "prepare_training",
    "resolve_run_dir",
    "sample_figure",
    "sample_run",
    "train",
]

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
FIGURE_SAMPLES = 2000
"""Samples drawn for a figure of a vector-data run (fields: the figure's few panels)."""
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


def build_denoiser(config: Config, shape: int | tuple[int, ...] | None = None) -> PreconditionedDenoiser:
    """D = preconditioning of ``diffusion:`` around the ``model:`` network, initialised from ``training.seed``.

    ``shape`` is one sample's shape, (D,) (or D) for vectors or (C, H, W) for grids (default: the data's).
    With a formulation that learns the variance the network emits twice the channels (mean and variance
    halves), which the denoiser splits. The initialisation uses a forked global RNG, so the caller's
    random state is left untouched.
    """
    formulation = config.formulation()
    shape = config.data_shape() if shape is None else shape
    network = build_initial_model(config.resolved_model(), shape, formulation.learned_variance, config.training.seed)
    return PreconditionedDenoiser(network, formulation)


def build_data_source(
    config: Config, run_dir: Path | None = None, device: torch.device | str = "cpu"
) -> tuple[DataDistribution | ClimateDataset, BatchSource]:
    """The ``data:`` section built: (the data, ``source(batch_size, generator)`` drawing training batches).

    Every data kind is built here (and only here), so a new kind is one more branch. Climate data reads its
    files (statistics: those saved in ``run_dir`` when resuming; a CorrDiff base is computed on ``device``).
    Missing or unreadable data files raise ConfigError naming the key and the file.
    """
    if is_climate(config):
        dataset = build_climate_data(config, run_dir, device)
        return dataset, dataset.sample
    try:
        data = config.data.build()
    except FileNotFoundError as error:
        raise ConfigError(f"data: file '{error.filename}' not found") from None
    except OSError as error:
        raise ConfigError(f"data: file '{error.filename}' cannot be read ({error.strerror})") from None

    def source(batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return data.sample(batch_size, generator)

    return data, source


def model_summary(config: Config, denoiser: torch.nn.Module) -> str:
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


def _sigma_bucket_sums(per_sample: torch.Tensor, sigma: torch.Tensor) -> dict[str, tuple[float, int]]:
    """Per decade of sigma: (sum of the per-sample losses, count)."""
    low, high = LOG10_SIGMA_RANGE
    decade = sigma.detach().double().log10().floor().clamp(low, high - 1).long().cpu()
    losses = per_sample.detach().double().cpu()
    sums = {}
    for value in range(low, high):
        mask = decade == value
        if mask.any():
            sums[_decade_label(value)] = (float(losses[mask].sum()), int(mask.sum()))
    return sums


@dataclass
class MetricsLog:
    """Aggregates :class:`StepRecord` s and writes one JSON line every ``every`` steps (and at ``last_step``).

    Each line holds ``step``, ``loss`` (mean over the window's finite steps; null if none), ``learning_rate``,
    ``grad_norm`` (mean over the window, before clipping), ``loss_by_sigma`` (see :func:`loss_by_sigma_decade`;
    absent for objectives without noise levels), ``samples`` (per-sample losses in the window), ``ema_beta``
    (the EMA decay of the step), ``skipped_steps`` (non-finite steps in the window), ``samples_per_second`` and
    ``seconds`` since the start. With ``tensorboard`` (a SummaryWriter) the scalars go there too. The window is
    kept as running sums, so :meth:`state_dict` (stored in checkpoints) lets a resumed run write the same lines.
    """

    stream: IO[str] | None
    every: int
    last_step: int
    tensorboard: Any = None
    started: float = field(default_factory=time.perf_counter)
    seconds_before: float = 0.0
    _window: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._window = self._window or self._empty()
        self._window_started = time.perf_counter()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"steps": 0, "finite_steps": 0, "loss": 0.0, "grad_norm": 0.0, "samples": 0, "skipped": 0, "sigma": {}}

    def __call__(self, record: StepRecord) -> None:
        window = self._window
        window["steps"] += 1
        window["samples"] += int(record.per_sample.numel())
        window["learning_rate"] = record.learning_rate
        window["ema_beta"] = record.ema_beta
        window["step"] = record.step
        if record.skipped:
            window["skipped"] += 1
        else:
            window["finite_steps"] += 1
            window["loss"] += record.loss
            window["grad_norm"] += record.grad_norm
            if record.sigma is not None:
                for label, (total, count) in _sigma_bucket_sums(record.per_sample, record.sigma).items():
                    old_total, old_count = window["sigma"].get(label, (0.0, 0))
                    window["sigma"][label] = (old_total + total, old_count + count)
        if record.step % self.every == 0 or record.step >= self.last_step:
            self.flush()

    def flush(self) -> None:
        """Write the pending window (if any) as one line."""
        window = self._window
        if not window["steps"]:
            return
        now = time.perf_counter()
        finite = window["finite_steps"]
        line = {
            "step": window["step"],
            "loss": window["loss"] / finite if finite else None,  # None (null): every step was skipped
            "learning_rate": window["learning_rate"],
            "grad_norm": window["grad_norm"] / finite if finite else None,
            "loss_by_sigma": {
                label: total / count for label, (total, count) in sorted(window["sigma"].items(), key=_bucket_order)
            },
            "samples": window["samples"],
            "ema_beta": window["ema_beta"],
            "skipped_steps": window["skipped"],
            "samples_per_second": round(window["samples"] / max(now - self._window_started, 1e-9), 1),
            "seconds": round(self.seconds_before + now - self.started, 3),
        }
        if not line["loss_by_sigma"]:
            del line["loss_by_sigma"]
        self._window = self._empty()
        self._window_started = now
        if self.stream is not None:
            self.stream.write(json.dumps(line) + "\n")
            self.stream.flush()
        if self.tensorboard is not None:
            step = line["step"]
            for key in ("loss", "learning_rate", "grad_norm", "ema_beta", "skipped_steps", "samples_per_second"):
                if line[key] is not None:
                    self.tensorboard.add_scalar(f"train/{key}", line[key], step)
            for label, value in line.get("loss_by_sigma", {}).items():
                self.tensorboard.add_scalar(f"loss_by_sigma/{label}", value, step)
            self.tensorboard.flush()

    def state_dict(self) -> dict[str, Any]:
        """The pending window, the elapsed time and the time spent in the window (JSON-able)."""
        window = dict(self._window)
        window["sigma"] = {label: list(pair) for label, pair in window["sigma"].items()}
        now = time.perf_counter()
        return {
            "window": window,
            "seconds": self.seconds_before + now - self.started,
            "window_seconds": now - self._window_started,
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Continue the window of :meth:`state_dict`'s output."""
        if not state:
            return
        window = {**self._empty(), **dict(state["window"])}
        window["sigma"] = {label: (float(pair[0]), int(pair[1])) for label, pair in window["sigma"].items()}
        self._window = window
        self.seconds_before = float(state.get("seconds", 0.0))
        # the window's samples were drawn in its seconds before the checkpoint: the rate counts them, not the pause
        self._window_started = time.perf_counter() - float(state.get("window_seconds", 0.0))


def _bucket_order(item: tuple[str, Any]) -> float:
    """Sort ``[1e-01,1e+00)`` labels by their lower edge."""
    return float(item[0][1:].split(",")[0])


def sample_figure(
    config: Config, model: torch.nn.Module, data: DataDistribution, path: str | Path, *, step: int, seed: int = 0
) -> Path:
    """A figure of samples from ``model`` (the EMA denoiser) with the run's sampler settings, beside the data.

    The sampler has its own generator (``seed``), so drawing a figure leaves the training state untouched.
    """
    from diffscale.cli.plot import plot_samples

    if is_climate(config):
        return climate_sample_figure(config, model, data, path, step=step, seed=seed)
    settings = config.sampling.to_sampler_settings()
    shape = config.data_shape()
    device = next(model.parameters()).device
    num = FIGURE_SAMPLES if len(shape) == 1 else 4
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((num, *shape), generator=generator, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        samples = sample(model, noise, model.formulation, **settings.model_dump(), generator=generator)
    model.train(was_training)
    title = f"{config.diffusion.type}, EMA weights, step {step}"
    return plot_samples(path, samples.float().cpu(), data, title=title)


def _check_figure(config: Config, data: DataDistribution) -> None:
    """With ``training.sample_every``, the data must be plottable (ConfigError otherwise)."""
    if config.training.sample_every and not is_climate(config):
        from diffscale.cli.plot import check_plottable

        try:
            check_plottable(data, option="training.sample_every")
        except ConfigError as error:
            raise ConfigError(f"{error} (set training.sample_every = 0)") from None


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
    checkpoint: Checkpoint | None = None
    """The checkpoint the run resumes from (already restored into the trainer), or None for a fresh run."""
    changes: list[str] = field(default_factory=list)
    """Compatible configuration changes since the checkpoint (``training.steps: 100 -> 200``)."""

    @property
    def mixture(self) -> DataDistribution:
        """The data distribution (name kept from when every run modelled a mixture)."""
        return self.data

    @property
    def distributed(self) -> DistributedContext:
        """This process's place among the training processes."""
        return self.trainer.distributed


@dataclass(frozen=True)
class TrainingSummary:
    """What a finished training run left behind."""

    run_dir: Path
    steps: int
    final_loss: float | None
    checkpoint: Path
    metrics: Path
    resumed_from: int | None = None
    """The step the run resumed from (None: a fresh run)."""
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss or gradient, over the whole run."""


INCOMPATIBLE_SECTIONS = ("diffusion", "model", "data")
INCOMPATIBLE_TRAINING_KEYS = ("objective", "optimizer")
"""A resumed run must keep these: the formulation, the architecture, the data, the objective and optimiser."""


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}


def incompatible_changes(stored: Config, config: Config) -> tuple[list[str], list[str]]:
    """(incompatible, compatible) differences between a checkpoint's configuration and a new one, each as
    ``key: old -> new``. Incompatible: anything in diffusion, model or data, and training.objective/optimizer."""
    old = {section: stored.to_dict()[section] for section in ("diffusion", "model", "data", "training")}
    new = {section: config.to_dict()[section] for section in ("diffusion", "model", "data", "training")}
    old_flat, new_flat = _flat(old, ""), _flat(new, "")
    incompatible, compatible = [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(key, "(absent)"), new_flat.get(key, "(absent)")
        if before == after:
            continue
        name = key.lstrip(".")
        change = f"{name}: {before!r} -> {after!r}"
        section, _, rest = name.partition(".")
        if section in INCOMPATIBLE_SECTIONS or rest in INCOMPATIBLE_TRAINING_KEYS:
            incompatible.append(change)
        else:
            compatible.append(change)
    return incompatible, compatible


def _resume_source(run_dir: Path, resume: bool | str | Path | None) -> Path | None:
    """Where the run resumes from (a run directory or a checkpoint sidecar), or None for a fresh run."""
    if resume is None:
        return run_dir if has_checkpoint(run_dir) else None
    if resume is False:
        if has_checkpoint(run_dir):
            raise ConfigError(
                f"output.dir = '{run_dir}': already holds a checkpoint ({SIDECAR_NAME}); refusing to overwrite it "
                "(resume it, choose another --out or delete it)"
            )
        return None
    source = run_dir if resume is True else Path(resume)
    if source.is_dir() and not has_checkpoint(source):
        raise ConfigError(f"--resume '{source}': holds no checkpoint ({SIDECAR_NAME} not found)")
    if not source.exists():
        raise ConfigError(f"--resume '{source}': no such run directory or checkpoint")
    return source


def prepare_training(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool | str | Path | None = None,
    distributed: DistributedContext | None = None,
    device: str | None = None,
) -> TrainingPlan:
    """Validate and build a run (data, formulation, network, trainer) without touching the disk.

    ``resume``: None resumes when ``run_dir`` holds a checkpoint (else starts afresh); False refuses a
    ``run_dir`` with a checkpoint; True requires one; a path names the run directory or checkpoint sidecar
    (``checkpoint-<step>.json``) to resume from. Resuming loads and verifies the checkpoint, refuses a
    configuration whose formulation, architecture, data, objective or optimiser changed, and restores the
    trainer exactly. ``distributed``/``device`` come from :func:`~diffscale.training.distributed.init_distributed`
    under torchrun. Raises ConfigError (CheckpointError) for any of these problems.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output.dir = '{run_dir}': exists and is not a directory")
    source_path = _resume_source(run_dir, resume)
    torch_device = check_device(config.training.device if device is None else device, "training.device")
    # The resolved model section (a U-Net's in_channels and learned_variance follow the data and formulation)
    # is what config.yaml records.
    # Climate file paths are stored absolute, so that the run can be resumed and downscaled from anywhere.
    update = {"output": OutputSection(dir=str(run_dir)), "model": config.resolved_model()}
    if is_climate(config):
        update["data"] = config.data.with_absolute_paths()
    config = config.model_copy(update=update)
    checkpoint = None
    changes: list[str] = []
    if source_path is not None:
        checkpoint = load_checkpoint(source_path)
        stored = stored_config(checkpoint.config, f"'{checkpoint.directory / SIDECAR_NAME}'")
        incompatible, changes = incompatible_changes(stored, config)
        if incompatible:
            raise ConfigError(
                f"cannot resume '{checkpoint.directory}' (step {checkpoint.step}): the configuration changed "
                f"incompatibly: {'; '.join(incompatible)} (train into another --out instead)"
            )
    data, source = build_data_source(config, checkpoint.directory if checkpoint is not None else None, torch_device)
    _check_figure(config, data)
    denoiser = build_climate_model(config) if is_climate(config) else build_denoiser(config)
    settings = config.training if device is None else config.training.model_copy(update={"device": device})
    trainer = Trainer(denoiser, source, settings, objective=training_objective(config), distributed=distributed)
    if checkpoint is not None:
        restore_trainer(trainer, checkpoint)
    return TrainingPlan(
        config=config,
        run_dir=run_dir,
        data=data,
        trainer=trainer,
        summary=model_summary(config, denoiser),
        checkpoint=checkpoint,
        changes=changes,
    )


def _sidecar_config(config: Config) -> dict:
    """The configuration as strict-JSON values (``inf`` written as the string "inf")."""
    return encode_non_finite(config.to_dict())


def _metrics_up_to(path: Path, step: int) -> None:
    """Keep the lines of ``path`` up to ``step`` (those a resumed run would otherwise write twice)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    atomic_write_bytes(path, "".join(kept).encode("utf-8"))


def _tensorboard_writer(directory: Path, purge_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(directory), purge_step=purge_step)


def train(
    plan: TrainingPlan, *, progress: bool = True, callback: Callable[[StepRecord], None] | None = None
) -> TrainingSummary:
    """Create the run directory, write config.yaml, train with metrics and checkpoints, return a summary.

    A checkpoint is written every ``training.checkpoint_every`` steps (if > 0) and at the end; the last
    ``training.keep_checkpoints`` are kept. A resumed plan continues the metrics where its checkpoint left them.
    Only rank 0 writes. Raises :class:`~diffscale.training.NonFiniteTrainingError` (after writing the metrics so
    far, and no checkpoint) when too many steps in a row were not finite.
    """
    config, run_dir, trainer = plan.config, plan.run_dir, plan.trainer
    settings = config.training
    main = plan.distributed.is_main
    resumed = plan.checkpoint.step if plan.checkpoint is not None else None
    if resumed is None:
        # dropout and the like draw from the global generators: seeded per process, saved in checkpoints
        torch.manual_seed(settings.seed + plan.distributed.rank)
    sidecar_config = _sidecar_config(config)
    metrics_path = run_dir / METRICS_NAME
    checkpoint_path = run_dir / SIDECAR_NAME
    stream = None
    writer = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / CONFIG_NAME, config.to_yaml().encode("utf-8"))
        if is_climate(config) and (resumed is None or not (run_dir / STATS_NAME).is_file()):
            save_stats(run_dir, plan.data)
        if resumed is not None:
            # lines up to the last full logging window before the checkpoint; the checkpoint carries the rest
            _metrics_up_to(metrics_path, resumed - resumed % settings.log_every)
        stream = metrics_path.open("a" if resumed is not None else "w", encoding="utf-8")
        if settings.tensorboard:
            writer = _tensorboard_writer(run_dir / TENSORBOARD_DIR, None if resumed is None else resumed + 1)
    metrics = MetricsLog(stream, every=settings.log_every, last_step=settings.steps, tensorboard=writer)
    if plan.checkpoint is not None:
        metrics.load_state_dict(plan.checkpoint.sidecar.get("metrics_window"))
    last_loss: list[float] = []
    saved_step = [resumed]

    def save() -> None:
        save_trainer_checkpoint(
            run_dir,
            trainer,
            sidecar_config,
            keep=settings.keep_checkpoints,
            metadata={"metrics_window": metrics.state_dict()},
        )
        saved_step[0] = trainer.step

    def on_step(record: StepRecord) -> None:
        metrics(record)
        if not record.skipped:
            last_loss[:] = [record.loss]
        if settings.checkpoint_every and record.step % settings.checkpoint_every == 0 and not record.skipped:
            save()
        if main and settings.sample_every and record.step % settings.sample_every == 0:
            figure = run_dir / SAMPLES_DIR / f"step-{record.step:08d}.png"
            sample_figure(config, trainer.ema_denoiser, plan.data, figure, step=record.step, seed=settings.seed)
        if callback is not None:
            callback(record)

    try:
        trainer.run(progress=progress, callback=on_step)
        if saved_step[0] != trainer.step:
            save()
    finally:
        metrics.flush()
        if stream is not None:
            stream.close()
        if writer is not None:
            writer.close()
    return TrainingSummary(
        run_dir=run_dir,
        steps=trainer.step,
        final_loss=last_loss[0] if last_loss else None,
        checkpoint=checkpoint_path,
        metrics=metrics_path,
        resumed_from=resumed,
        skipped_steps=trainer.skipped_steps,
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
    config = stored_config(checkpoint.config, f"'{run_dir / SIDECAR_NAME}'")
    state = checkpoint.ema_weights if weights == "ema" else checkpoint.weights
    if not state:
        raise ConfigError(f"'{run_dir / SIDECAR_NAME}': holds no {weights} weights")
    data, _ = build_data_source(config)
    denoiser = build_denoiser(config)
    load_weights(denoiser, state, f"'{run_dir / SIDECAR_NAME}'")
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
    """``num`` samples from a loaded run, drawn in batches from one CPU generator seeded with ``seed`` (the same
    numbers whatever the run's device, so a GPU gives the CPU's samples to floating-point rounding).

    Returns a float32 CPU tensor of shape (num, D) for vectors or (num, C, H, W) for fields.
    """
    if num < 1 or batch_size < 1:
        raise ConfigError(f"num = {num}, batch_size = {batch_size}: both must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, num - start) for start in range(0, num, batch_size)]
    chunks = []
    with tqdm(total=len(sizes) * settings.steps, desc="sampling", unit="step", disable=not progress) as bar:

        def advance(_: SamplerStep) -> None:
            bar.update(1)

        for size in sizes:
            noise = standard_normal((size, *run.data_shape), generator, dtype=torch.float32, device=run.device)
            samples = sample(
                run.denoiser, noise, run.formulation, **settings.model_dump(), generator=generator, callback=advance
            )
            chunks.append(samples.cpu())
    return torch.cat(chunks)
