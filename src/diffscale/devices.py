"""Devices: the one a user names (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked against this machine, and where
random draws happen (every layer that draws from a ``torch.Generator`` resolves the device here).

A generator draws on its own device; :func:`standard_normal` then moves the draw to where it is used. So a CPU
generator gives the same numbers to a sampler on the CPU and on a GPU (the ensembles then agree across devices
to floating-point rounding), and a list of generators, one per sample, makes every sample independent of the
batch it is drawn in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffscale.validation import ConfigError

__all__ = ["Generators", "check_device", "check_generators", "draw_devices", "standard_normal"]

Generators = torch.Generator | Sequence[torch.Generator] | None
"""The random source of a draw: torch's global generator (None), one generator, or one generator per sample."""


def draw_devices(
    generator: torch.Generator | None, device: torch.device | str | None = None
) -> tuple[torch.device, torch.device]:
    """(where to draw, where the result goes): a generator draws on its own device, and the result goes to
    ``device`` (default: the generator's device). Without a generator both are ``device`` (default: torch's
    default device)."""
    if generator is None:
        target = torch.device(device) if device is not None else torch.get_default_device()
        return target, target
    return generator.device, torch.device(device) if device is not None else generator.device


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


def check_generators(generator: Generators, batch: int, key: str = "generator") -> None:
    """ConfigError unless ``generator`` is None, a ``torch.Generator``, or ``batch`` of them (one per sample)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (str, bytes)) or not isinstance(generator, Sequence):
        raise ConfigError(f"{key}: expected a torch.Generator or a sequence of them, got {type(generator).__name__}")
    if len(generator) != batch:
        raise ConfigError(f"{key}: {len(generator)} generators for a batch of {batch} samples (one per sample)")
    for index, item in enumerate(generator):
        if not isinstance(item, torch.Generator):
            raise ConfigError(f"{key}[{index}]: expected a torch.Generator, got {type(item).__name__}")


def standard_normal(
    shape: Sequence[int], generator: Generators, *, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn by ``generator`` on the generator's own device.

    With one generator per sample (a sequence of ``shape[0]`` generators) row k is drawn by generator k alone,
    so a sample's noise does not depend on the other samples of its batch. With None, torch's generator of
    ``device`` draws.
    """
    shape = tuple(int(size) for size in shape)
    if generator is None or isinstance(generator, torch.Generator):
        source, target = draw_devices(generator, device)
        return torch.randn(shape, generator=generator, dtype=dtype, device=source).to(target)
    check_generators(generator, shape[0])
    if not generator:
        return torch.empty(shape, dtype=dtype, device=device)
    rows = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator]
    if len({row.device for row in rows}) == 1:
        return torch.stack(rows).to(device)  # one transfer for the batch
    return torch.stack([row.to(device) for row in rows])
