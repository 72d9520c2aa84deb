"""Post-hoc EMA of a trained run (Karras et al. 2024, Section 3): the EMA of any relative width sigma_rel,
reconstructed from the snapshots that training saved (``training.posthoc_ema_stds``), optionally chosen by the
validation loss, and written as the run's EMA weights or as a named variant.

>>> weights = diffscale.runs.reconstruct_ema("runs/era5_uk", 0.08)              # a state_dict
>>> result = diffscale.runs.posthoc_ema("runs/era5_uk", [0.04, 0.06, 0.08, 0.1, 0.12], validation=True)
>>> result.chosen.std, result.chosen.validation_loss, result.written

The reconstruction is :mod:`diffscale.training.posthoc_ema`'s least-squares fit of the requested power profile by the
snapshots' profiles; the validation loss is the training objective (the formulation's weighted denoising loss, or
the regression MSE) on the run's validation period (climate runs; ``data.validation_period``) or on fresh samples of
its distribution (toy runs), with the same noise levels and noise for every candidate (common random numbers), so
the comparison has none of the noise of separate draws.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffscale.config import Config
from diffscale.config.schema import stored_config
from diffscale.data.batch import Batch, as_batch
from diffscale.devices import check_device
from diffscale.loss import DenoisingLoss
from diffscale.pretrained import writable_run
from diffscale.runs.building import build_distribution, build_model_for, is_climate, training_objective
from diffscale.runs.run import EMA_VARIANTS_DIR
from diffscale.runs.stats import load_stats
from diffscale.training.checkpoint import (
    SIDECAR_NAME,
    load_checkpoint,
    load_weights,
    replace_ema_weights,
    write_safetensors,
)
from diffscale.training.posthoc_ema import gamma_from_std, list_snapshots, reconstruction_coefficients
from diffscale.validation import ConfigError, option_name

__all__ = [
    "EMACandidate",
    "PosthocEMAResult",
    "posthoc_ema",
    "reconstruct_ema",
    "validation_batches",
    "validation_loss",
]

_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class EMACandidate:
    """One reconstructed EMA: its relative width, exponent, the snapshot profiles it combines and (with
    validation) its validation loss."""

    std: float
    gamma: float
    coefficients: tuple[float, ...]
    validation_loss: float | None = None


@dataclass(frozen=True)
class PosthocEMAResult:
    """What :func:`posthoc_ema` did: the candidates, the one chosen, and where it was written (None: nowhere)."""

    run_dir: Path
    step: int
    """The step the EMAs are reconstructed at (the last snapshot's, or the one asked for)."""
    snapshots: int
    """Snapshot profiles combined (snapshot files times profiles per file)."""
    candidates: list[EMACandidate]
    chosen: EMACandidate
    written: Path | None = None
    validation_samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _run_directory(run_dir: str | Path) -> Path:
    path = writable_run(run_dir)  # a shipped pretrained model is read-only and keeps no snapshots
    if not path.is_dir():
        raise ConfigError(f"run directory '{path}' not found (give the directory 'diffscale train' wrote)")
    return path


def _reconstruct(
    run_dir: Path, stds: Sequence[float], step: int | None
) -> tuple[int, int, list[EMACandidate], list[dict[str, torch.Tensor]]]:
    """The reconstructed state_dicts of ``stds`` at ``step``, streaming over the snapshot files once."""
    snapshots = list_snapshots(run_dir, up_to=step)
    if not snapshots:
        where = f" at steps <= {step}" if step is not None else ""
        raise ConfigError(
            f"'{run_dir}' holds no post-hoc EMA snapshots{where} (train with training.posthoc_ema_stds, "
            "e.g. [0.05, 0.10])"
        )
    target_step = snapshots[-1].step if step is None else step
    profiles = [(float(s.step), s.gamma) for s in snapshots]
    candidates = []
    for std in stds:
        try:
            gamma = gamma_from_std(float(std))
        except ValueError as error:
            raise ConfigError(f"{option_name('std')}: {error}") from None
        coefficients = reconstruction_coefficients(profiles, (float(target_step), gamma))
        candidates.append(EMACandidate(float(std), gamma, tuple(float(x) for x in coefficients)))
    states: list[dict[str, torch.Tensor]] = [{} for _ in stds]
    by_file: dict[Path, list[int]] = {}  # each file is read once per profile it holds
    for index, snapshot in enumerate(snapshots):
        by_file.setdefault(snapshot.path, []).append(index)
    for indices in by_file.values():
        for index in indices:
            profile = snapshots[index].load()
            for state, candidate in zip(states, candidates, strict=True):
                weight = candidate.coefficients[index]
                for name in snapshots[index].parameters:
                    term = profile[name].double() * weight
                    state[name] = term if name not in state else state[name] + term
    latest = snapshots[-1].load()  # buffers (and the like) are the latest snapshot's
    for state in states:
        for name, value in latest.items():
            state[name] = state[name].to(value.dtype) if name in state else value
    return target_step, len(snapshots), candidates, states


def reconstruct_ema(run_dir: str | Path, std: float, *, step: int | None = None) -> dict[str, torch.Tensor]:
    """The post-hoc EMA of relative width ``std`` (a state_dict of the run's model) at ``step`` (default: the last
    snapshot's), the least-squares combination sum_i x_i theta_hat_i of the run's snapshots at steps <= ``step``."""
    _, _, _, states = _reconstruct(_run_directory(run_dir), [std], step)
    return states[0]


# -- validation ----------------------------------------------------------------------------------------------------
def validation_batches(
    config: Config, run_dir: Path, *, batch_size: int, repeats: int, seed: int, device: torch.device
) -> tuple[int, Callable[[], Iterator[Batch]]]:
    """(number of samples, a function yielding the validation batches): each time of a climate run's validation
    period ``repeats`` times (windows and alignments drawn from ``seed`` when the run trains on patches), or
    ``repeats * 256`` fresh samples of a toy run's distribution drawn from ``seed``."""
    if not is_climate(config):
        data = build_distribution(config)
        count = 256 * repeats

        def toy() -> Iterator[Batch]:
            generator = torch.Generator().manual_seed(seed)
            for start in range(0, count, batch_size):
                yield as_batch(data.sample(min(batch_size, count - start), generator)).to(device)

        return count, toy

    from diffscale.data.climate import ClimateDataset
    from diffscale.data.climate.dataset import SampleIndices
    from diffscale.runs.run import load_climate_run

    section = config.data
    if not section.validation_period:
        raise ConfigError(
            f"'{run_dir}' has no data.validation_period: choosing the EMA by validation loss needs one "
            f"(or give the std without {option_name('validation')})"
        )
    saved = load_stats(run_dir)
    if saved is None:
        raise ConfigError(f"'{run_dir}' has no saved statistics (was it trained by this version of diffscale?)")
    dataset = ClimateDataset(section, "validation", saved["transforms"])
    if section.target == "regression_residual":
        regression = load_climate_run(section.regression_run, device=str(device), key="data.regression_run")
        dataset.set_base(regression.regression_predictor(), device=device)
    times = torch.arange(len(dataset)).repeat(repeats)
    drawn = dataset.draw(times.numel(), torch.Generator().manual_seed(seed))
    drawn = SampleIndices(times, drawn.tops, drawn.lefts, drawn.alignments)
    count = len(drawn)

    def climate() -> Iterator[Batch]:
        for start in range(0, count, batch_size):
            yield dataset.read(drawn, start, min(start + batch_size, count)).to_device(device)

    return count, climate


@torch.no_grad()
def validation_loss(
    config: Config,
    models: Sequence[nn.Module],
    batches: Callable[[], Iterator[Batch]],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """The training objective's mean over the validation batches for each model, every model seeing the same noise
    levels and noise (the objective's draws come from one generator per batch seeded from ``seed``)."""
    objective = training_objective(config) or DenoisingLoss(config.formulation())
    totals = [0.0 for _ in models]
    count = 0
    for index, batch in enumerate(batches()):
        for position, model in enumerate(models):
            generator = torch.Generator(device).manual_seed(seed + 1_000_003 * (index + 1))
            terms = objective(model, batch.target, generator, **dict(batch.cond))
            totals[position] += float(terms.per_sample.double().sum())
        count += len(batch)
    return [total / count for total in totals]


# -- the whole job -----------------------------------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if not _VARIANT_NAME.match(name) or name in ("ema", "raw"):
        raise ConfigError(
            f"{option_name('name')} = {name!r}: a variant name is letters, digits, '_', '.', '-' (not 'ema' or 'raw')"
        )


def posthoc_ema(
    run_dir: str | Path,
    stds: Sequence[float],
    *,
    validation: bool = False,
    name: str | None = None,
    write: bool = True,
    step: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
    repeats: int = 4,
    seed: int = 0,
) -> PosthocEMAResult:
    """Reconstruct the EMA of each std in ``stds`` from the run's snapshots and write one of them.

    With ``validation`` every candidate's validation loss is computed and the lowest is chosen; without it ``stds``
    must name one std. ``write`` puts the chosen weights in place: as the EMA weights of the run's latest checkpoint
    (what ``load_run`` and every command use; the trainer's own EMA stays in the checkpoint for a resume) or, with
    ``name``, as the variant ``<run_dir>/ema_variants/<name>.safetensors`` (``load_run(run_dir, weights=name)``).
    """
    run_dir = _run_directory(run_dir)
    stds = [float(std) for std in stds]
    if not stds:
        raise ConfigError(f"{option_name('std')}: give at least one std")
    if len(set(stds)) != len(stds):
        raise ConfigError(f"{option_name('std')} = {stds}: each std once")
    if not validation and len(stds) != 1:
        raise ConfigError(
            f"{option_name('std')} = {stds}: several stds need {option_name('validation')} to choose among them"
        )
    if name is not None:
        _check_name(name)
    checkpoint = load_checkpoint(run_dir, parts=())
    config = stored_config(checkpoint.config, f"'{checkpoint.directory / SIDECAR_NAME}'")
    target_step, count, candidates, states = _reconstruct(run_dir, stds, step)
    samples = 0
    if validation:
        torch_device = check_device(device, option_name("device"))
        models = []
        for state in states:
            model = build_model_for(config)
            load_weights(model, state, f"the post-hoc EMA of '{run_dir}'")
            models.append(model.to(torch_device).eval())
        samples, batches = validation_batches(
            config, run_dir, batch_size=batch_size, repeats=repeats, seed=seed, device=torch_device
        )
        losses = validation_loss(config, models, batches, seed=seed, device=torch_device)
        candidates = [
            EMACandidate(c.std, c.gamma, c.coefficients, loss) for c, loss in zip(candidates, losses, strict=True)
        ]
        best = min(range(len(candidates)), key=lambda i: candidates[i].validation_loss or math.inf)
    else:
        best = 0
    chosen = candidates[best]
    record = {
        "std": chosen.std,
        "gamma": chosen.gamma,
        "step": target_step,
        "snapshots": count,
        "validation_loss": chosen.validation_loss,
        "candidates": [{"std": c.std, "validation_loss": c.validation_loss} for c in candidates],
    }
    written = None
    if write:
        if name is None:
            written = replace_ema_weights(run_dir, states[best], record)
        else:
            folder = run_dir / EMA_VARIANTS_DIR
            folder.mkdir(exist_ok=True)
            written = folder / f"{name}.safetensors"
            metadata = {"posthoc_ema": json.dumps(record), "config_step": str(checkpoint.step)}
            write_safetensors(written, states[best], metadata=metadata)
    return PosthocEMAResult(run_dir, target_step, count, candidates, chosen, written, samples)
