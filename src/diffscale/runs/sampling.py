"""Sampling a loaded run: the sampler settings (the run's ``sampling:`` section with overrides) and unconditional
samples drawn in batches from one seeded generator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from diffscale.config import SamplingSection
from diffscale.devices import standard_normal
from diffscale.sampling import SamplerSettings, SamplerStep, sample
from diffscale.threads import Threads, check_threads, thread_policy
from diffscale.validation import ConfigError, option_name, validate

if TYPE_CHECKING:
    from diffscale.runs.run import Run

__all__ = ["SAMPLER_KEYS", "sample_run", "sampler_settings"]

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


def sample_run(
    run: Run,
    num: int,
    settings: SamplerSettings,
    *,
    seed: int = 0,
    batch_size: int = 10_000,
    progress: bool = False,
    threads: Threads = "auto",
) -> torch.Tensor:
    """``num`` samples from a loaded run, drawn in batches from one CPU generator seeded with ``seed`` (the same
    numbers whatever the run's device, so a GPU gives the CPU's samples to floating-point rounding). torch's CPU
    threads follow ``threads`` (:func:`~diffscale.threads.thread_policy`, re-checked every sampler step).

    Returns a float32 CPU tensor of shape (num, D) for vectors or (num, C, H, W) for fields.
    """
    if num < 1 or batch_size < 1:
        raise ConfigError(
            f"{option_name('num')} = {num}, {option_name('batch_size')} = {batch_size}: both must be >= 1"
        )
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

        for size in sizes:
            noise = standard_normal((size, *run.data_shape), generator, dtype=torch.float32, device=run.device)
            samples = sample(
                run.denoiser, noise, run.formulation, **settings.model_dump(), generator=generator, callback=advance
            )
            chunks.append(samples.cpu())
    return torch.cat(chunks)
