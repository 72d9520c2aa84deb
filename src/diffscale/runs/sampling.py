"""Sampling a loaded run: the sampler settings (the run's ``sampling:`` section with overrides) and samples drawn in
batches from one seeded generator: unconditional, or (a class-conditional run) of given classes with
classifier-free guidance

    D_w(x; sigma, c) = D(x; sigma, 0) + w (D(x; sigma, c) - D(x; sigma, 0))    (Ho & Salimans 2022),

w = 0 the unconditional model (labels dropped), w = 1 the conditional one, w > 1 guided further."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from diffscale.config import SamplingSection
from diffscale.devices import standard_normal
from diffscale.guidance import ClassifierFreeGuidance
from diffscale.sampling import SamplerSettings, SamplerStep, sample
from diffscale.threads import Threads, check_threads, thread_policy
from diffscale.validation import ConfigError, option_name, validate

if TYPE_CHECKING:
    from diffscale.runs.run import Run

__all__ = ["SAMPLER_KEYS", "check_labels", "guided_denoiser", "sample_run", "sampler_settings"]

SAMPLER_KEYS: tuple[str, ...] = ("steps", "sampler", "s_churn", "s_min", "s_max", "s_noise")
"""Keys of the ``sampling:`` section a caller may override (beside ``schedule``, a key of the sampler alone)."""


def sampler_settings(
    section: SamplingSection, settings: SamplerSettings | None = None, **overrides: Any
) -> SamplerSettings:
    """``settings`` (default: the ``sampling:`` section's) with ``overrides`` of :data:`SAMPLER_KEYS` and
    ``schedule`` (None keeps a key), validated like the configuration; a bad value is named as the caller spelled
    it (``steps = 0`` in Python, ``--steps = 0`` on the command line)."""
    unknown = sorted(set(overrides) - {*SAMPLER_KEYS, "schedule"})
    if unknown:
        raise ConfigError(
            f"unknown sampler option(s) {', '.join(unknown)}; allowed: {', '.join(SAMPLER_KEYS)}, schedule"
        )
    given = [key for key, value in overrides.items() if value is not None]
    schedule = overrides.get("schedule")
    values = {key: overrides.get(key) for key in SAMPLER_KEYS}
    try:
        if settings is None:
            settings = section.with_overrides(**values).to_sampler_settings()
        else:
            renamed = {("solver" if key == "sampler" else key): value for key, value in values.items()}
            settings = validate(
                SamplerSettings, {**settings.model_dump(), **{k: v for k, v in renamed.items() if v is not None}}
            )
        if schedule is not None:
            settings = validate(SamplerSettings, {**settings.model_dump(), "schedule": schedule})
    except ConfigError as error:
        raise ConfigError(_name_the_option(str(error), given)) from None
    except ValueError as error:  # SamplingSection.to_sampler_settings raises a plain one-line ValueError
        raise ConfigError(_name_the_option(str(error), given)) from None
    return settings


def _name_the_option(message: str, given: list[str]) -> str:
    """A validation message about ``sampling.<key>`` (or the schedule) names the option that set it."""
    for key in (*given, "schedule"):
        prefixes = [f"sampling.{key} =", f"{key} ="] + (["solver ="] if key == "sampler" else [])
        for prefix in prefixes:
            if message.startswith(prefix):
                return f"{option_name(key)} =" + message[len(prefix) :]
    return message


def _label_settings(run: Run) -> tuple[int, float]:
    """(K, label dropout) of the run's network: K one-hot classes (0: unconditional)."""
    model = run.config.model
    return int(getattr(model, "label_dim", 0) or 0), float(getattr(model, "label_dropout", 0.0) or 0.0)


def check_labels(run: Run, labels: torch.Tensor | None, guidance: float) -> torch.Tensor | None:
    """The class indices ``labels`` (N,) as int64, checked against the run: a class-conditional run needs them
    (0 <= label < K), an unconditional run takes none, and guidance w != 1 needs a network trained with label
    dropout (else its unconditional branch was never trained). ConfigError naming the option otherwise."""
    classes, dropout = _label_settings(run)
    if labels is None:
        if classes:
            raise ConfigError(
                f"'{run.run_dir}' is class-conditional ({classes} classes): give the classes to draw "
                f"({option_name('labels')})"
            )
        if guidance != 1.0:
            raise ConfigError(
                f"{option_name('guidance')} = {guidance:g}: the run is unconditional (no labels to guide with)"
            )
        return None
    if not classes:
        raise ConfigError(f"{option_name('labels')}: '{run.run_dir}' is unconditional (model.label_dim = 0)")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise ConfigError(f"{option_name('labels')}: expected integer class indices of shape (N,), got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ConfigError(
            f"{option_name('labels')}: classes {int(labels.min())}..{int(labels.max())} outside 0..{classes - 1}"
        )
    if guidance < 0 or not torch.isfinite(torch.tensor(guidance)):
        raise ConfigError(f"{option_name('guidance')} = {guidance:g}: must be a finite number >= 0")
    if guidance != 1.0 and dropout == 0.0:
        raise ConfigError(
            f"{option_name('guidance')} = {guidance:g}: '{run.run_dir}' was trained without label dropout "
            "(model.label_dropout = 0), so it has no unconditional model to guide with; use guidance 1"
        )
    return labels.long()


def guided_denoiser(run: Run, guidance: float) -> Any:
    """The run's denoiser, wrapped in :class:`~diffscale.guidance.ClassifierFreeGuidance` when w != 1."""
    return run.denoiser if guidance == 1.0 else ClassifierFreeGuidance(run.denoiser, guidance)


def sample_run(
    run: Run,
    num: int,
    settings: SamplerSettings,
    *,
    seed: int = 0,
    batch_size: int = 10_000,
    progress: bool = False,
    threads: Threads = "auto",
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """``num`` samples from a loaded run, drawn in batches from one CPU generator seeded with ``seed`` (the same
    numbers whatever the run's device, so a GPU gives the CPU's samples to floating-point rounding). torch's CPU
    threads follow ``threads`` (:func:`~diffscale.threads.thread_policy`, re-checked every sampler step).

    A class-conditional run draws sample i of class ``labels[i]`` (``labels``: ``num`` class indices) with
    classifier-free guidance weight ``guidance`` (see :func:`check_labels`). The noise depends on the seed and
    the sample's position only, so the same seed gives the same noise for every guidance weight.

    Returns a float32 CPU tensor of shape (num, D) for vectors or (num, C, H, W) for fields.
    """
    if num < 1 or batch_size < 1:
        raise ConfigError(
            f"{option_name('num')} = {num}, {option_name('batch_size')} = {batch_size}: both must be >= 1"
        )
    guidance = float(guidance)
    labels = check_labels(run, labels, guidance)
    if labels is not None and labels.shape[0] != num:
        raise ConfigError(f"{option_name('labels')}: {labels.shape[0]} labels for {num} samples")
    classes, _ = _label_settings(run)
    denoiser = guided_denoiser(run, guidance)
    generator = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, num - start) for start in range(0, num, batch_size)]
    chunks = []
    with (
        thread_policy(check_threads(threads, option_name("threads"))) as governor,
        tqdm(total=len(sizes) * settings.steps, desc="sampling", unit="step", disable=not progress) as bar,
    ):

        def advance(_: SamplerStep) -> None:
            governor.tick()
            bar.update(1)

        start = 0
        for size in sizes:
            noise = standard_normal((size, *run.data_shape), generator, dtype=torch.float32, device=run.device)
            cond = {}
            if labels is not None:
                one_hot = torch.nn.functional.one_hot(labels[start : start + size], classes)
                cond["class_labels"] = one_hot.to(device=run.device, dtype=torch.float32)
            samples = sample(
                denoiser,
                noise,
                run.formulation,
                **settings.model_dump(),
                generator=generator,
                callback=advance,
                cond=cond,
            )
            chunks.append(samples.cpu())
            start += size
    return torch.cat(chunks)
