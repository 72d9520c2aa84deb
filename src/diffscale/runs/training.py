"""Training a run: validate and build everything from a :class:`~diffscale.config.Config` without touching the
disk (:func:`prepare_training`), then train into the run directory with metrics and checkpoints (:func:`train`).

A run directory holds ``config.yaml`` (the resolved configuration, every key written out), for climate runs
``data_stats.json`` (:mod:`~diffscale.runs.stats`) and the training coarse climatology
(``coarse_climatology.safetensors`` and ``.json``, :mod:`~diffscale.data.climate.climatology`, which bias adjustment
maps inputs onto),
``metrics.jsonl`` (one JSON object per logged step, the time spent waiting for data included),
``tensorboard/`` (the same scalars, with
``training.tensorboard``), ``samples/step-<step>.png`` (figures of EMA-model samples, every
``training.sample_every`` steps) and the last ``training.keep_checkpoints`` checkpoints (see
:mod:`diffscale.training.checkpoint`). Training into a directory that holds a checkpoint resumes it exactly.

>>> plan = prepare_training(load_config("configs/mixture_1d_edm.yaml"), "runs/mixture_1d_edm")
>>> summary = train(plan)                       # nothing is written before this call
>>> run = diffscale.load_run(summary.run_dir)   # EMA weights by default

The data is a Gaussian mixture (vectors, shape (D,), for the MLP), a Gaussian random field (grids, shape
(C, H, W), for the U-Nets) or climate fields read from files (:mod:`diffscale.runs.climate`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffscale.config import Config, OutputSection
from diffscale.config.schema import encode_non_finite, stored_config
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.climatology import CoarseClimatology
from diffscale.devices import check_device
from diffscale.files import atomic_write_bytes, check_output
from diffscale.runs.bias_adjustment import fit_run_climatology, load_climatology
from diffscale.runs.building import (
    DataDistribution,
    build_distribution,
    build_model_for,
    is_climate,
    model_summary,
    training_objective,
)
from diffscale.runs.climate import BASE_STORE_NAME, build_climate_data, write_pending_base
from diffscale.runs.figures import check_figure, sample_figure
from diffscale.runs.metrics import MetricsLog
from diffscale.runs.stats import STATS_NAME, save_stats, stats_content
from diffscale.training.checkpoint import (
    SIDECAR_NAME,
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    restore_trainer,
    save_trainer_checkpoint,
)
from diffscale.training.distributed import DistributedContext
from diffscale.training.loop import BatchSource, StepRecord, Trainer
from diffscale.validation import ConfigError, option_name

__all__ = [
    "CONFIG_NAME",
    "METRICS_NAME",
    "TrainingPlan",
    "TrainingSummary",
    "build_data_source",
    "incompatible_changes",
    "prepare_training",
    "train",
]

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"


def build_data_source(
    config: Config,
    run_dir: Path | None = None,
    device: torch.device | str = "cpu",
    base_store: Path | None = None,
    distributed: DistributedContext | None = None,
) -> tuple[DataDistribution | ClimateDataset, BatchSource]:
    """The ``data:`` section built: (the data, ``source(batch_size, generator)`` drawing training batches).

    Climate data is read lazily from its files (statistics: those saved in ``run_dir`` when resuming, else one
    streaming pass, by rank 0 alone under torchrun (``distributed``); a CorrDiff base is computed on ``device``,
    into ``base_store`` when given: see :func:`~diffscale.runs.climate.build_climate_data`); the source is the
    dataset itself, which draws indices apart from reading them, so ``training.num_workers`` worker processes can
    read ahead. Missing or unreadable data files raise ConfigError naming the key and the file.
    """
    if is_climate(config):
        dataset = build_climate_data(config, run_dir, device, base_store=base_store, distributed=distributed)
        return dataset, dataset
    data = build_distribution(config)

    def source(batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return data.sample(batch_size, generator)

    return data, source


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
    statistics: dict[str, Any] | None = None
    """A climate run's ``data_stats.json`` content (:func:`~diffscale.runs.stats.stats_content`), computed while
    preparing (it reads the training inputs once, before any training step) and written by :func:`train`; None
    where there is nothing to write (other data, a resumed run that has its file, ranks other than 0)."""
    climatology: CoarseClimatology | None = None
    """A climate run's coarse climatology (:mod:`~diffscale.data.climate.climatology`, what bias adjustment maps
    inputs onto), computed while preparing and written by :func:`train`; None where there is nothing to write (as
    for ``statistics``, and a resumed run that has one)."""

    @property
    def statistics_rate(self) -> str | None:
        """A climate run's statistics pass in one line (times, MB, seconds, times/s and MB/s:
        :meth:`~diffscale.data.climate.statistics.StatisticsPass.describe`); None where no pass ran (other data,
        statistics reused from the run)."""
        done = getattr(self.data, "statistics_pass", None)
        return None if done is None else done.describe()

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
    """The mean loss of the last logged window (as metrics.jsonl's last line has it; None if every step of it was
    skipped)."""
    checkpoint: Path
    metrics: Path
    resumed_from: int | None = None
    """The step the run resumed from (None: a fresh run)."""
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss or gradient, over the whole run."""
    final_window_steps: int = 0
    """The steps that window averaged."""


INCOMPATIBLE_SECTIONS = ("diffusion", "model", "data")
INCOMPATIBLE_TRAINING_KEYS = ("objective", "optimizer", "posthoc_ema_stds")
"""A resumed run must keep these: the formulation, the architecture, the data, the objective and optimiser, and the
post-hoc EMA's profiles (their accumulators are in the checkpoint)."""


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
        raise ConfigError(f"{option_name('resume')} = '{source}': holds no checkpoint ({SIDECAR_NAME} not found)")
    if not source.exists():
        raise ConfigError(f"{option_name('resume')} = '{source}': no such run directory or checkpoint")
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
    run_dir = check_output(run_dir, "output.dir", directory=True)
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
    data, source = build_data_source(
        config,
        checkpoint.directory if checkpoint is not None else None,
        torch_device,
        base_store=run_dir / BASE_STORE_NAME,
        distributed=distributed,
    )
    check_figure(config, data)
    denoiser = build_model_for(config)
    settings = config.training if device is None else config.training.model_copy(update={"device": device})
    trainer = Trainer(denoiser, source, settings, objective=training_objective(config), distributed=distributed)
    if checkpoint is not None:
        restore_trainer(trainer, checkpoint)
    statistics = None
    fresh_statistics = checkpoint is None or not (Path(run_dir) / STATS_NAME).is_file()
    climatology = None
    if is_climate(config) and trainer.distributed.is_main:
        if fresh_statistics:
            statistics = stats_content(data)
        if checkpoint is None or not _has_climatology(run_dir):
            climatology = fit_run_climatology(data)
    return TrainingPlan(
        config=config,
        run_dir=run_dir,
        data=data,
        trainer=trainer,
        summary=model_summary(config, denoiser, getattr(data, "shape", None)),
        checkpoint=checkpoint,
        changes=changes,
        statistics=statistics,
        climatology=climatology,
    )


def _has_climatology(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a readable coarse climatology (a damaged one is computed again)."""
    try:
        return load_climatology(run_dir) is not None
    except ConfigError:
        return False


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
    ``training.keep_checkpoints`` are kept. With ``training.posthoc_ema_stds`` a snapshot of the power-function EMA
    profiles is written every ``training.posthoc_ema_every`` steps and at the end (``posthoc_ema/``, kept). A resumed
    plan continues the metrics where its checkpoint left them.
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
        if plan.statistics is not None:
            save_stats(run_dir, plan.statistics)
        elif is_climate(config) and (resumed is None or not (run_dir / STATS_NAME).is_file()):
            save_stats(run_dir, plan.data)  # a plan built by hand
        if plan.climatology is not None:
            plan.climatology.save(run_dir)
        if resumed is not None:
            # lines up to the last full logging window before the checkpoint; the checkpoint carries the rest
            _metrics_up_to(metrics_path, resumed - resumed % settings.log_every)
        stream = metrics_path.open("a" if resumed is not None else "w", encoding="utf-8")
        if settings.tensorboard:
            writer = _tensorboard_writer(run_dir / TENSORBOARD_DIR, None if resumed is None else resumed + 1)
    metrics = MetricsLog(stream, every=settings.log_every, last_step=settings.steps, tensorboard=writer)
    if plan.checkpoint is not None:
        metrics.load_state_dict(plan.checkpoint.sidecar.get("metrics_window"))
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

    def snapshot() -> None:
        if main and trainer.posthoc_ema is not None:
            trainer.posthoc_ema.save_snapshot(run_dir, trainer.step, trainer.denoiser)

    def on_step(record: StepRecord) -> None:
        metrics(record)
        if record.step % settings.posthoc_ema_every == 0:
            snapshot()  # before a checkpoint of the same step: a resumed run never lacks it
        if settings.checkpoint_every and record.step % settings.checkpoint_every == 0 and not record.skipped:
            save()
        if main and settings.sample_every and record.step % settings.sample_every == 0:
            figure = run_dir / SAMPLES_DIR / f"step-{record.step:08d}.png"
            sample_figure(config, trainer.ema_denoiser, plan.data, figure, step=record.step, seed=settings.seed)
        if callback is not None:
            callback(record)

    try:
        write_pending_base(plan.data, plan.distributed)
        trainer.run(progress=progress, callback=on_step)
        if trainer.step % settings.posthoc_ema_every:
            snapshot()
        if saved_step[0] != trainer.step:
            save()
    finally:
        trainer.close_data()
        metrics.flush()
        if stream is not None:
            stream.close()
        if writer is not None:
            writer.close()
    return TrainingSummary(
        run_dir=run_dir,
        steps=trainer.step,
        final_loss=metrics.last_line["loss"] if metrics.last_line is not None else None,
        final_window_steps=metrics.last_window_steps,
        checkpoint=checkpoint_path,
        metrics=metrics_path,
        resumed_from=resumed,
        skipped_steps=trainer.skipped_steps,
    )
