"""Devices: the one a user names (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked against this machine, and where
random draws happen (every layer that draws from a ``torch.Generator`` resolves the device here).

A generator draws on its own device; :func:`standard_normal` then moves the draw to where it is used. So a CPU
generator gives the same numbers to a sampler on the CPU and on a GPU (the ensembles then agree across devices
to floating-point rounding), and a list of generators, one per sample, makes every sample independent of the
batch it is drawn in. A :class:`BlendedGenerator` stands where a per-sample generator does: each of its draws is
a fixed unit-variance combination of draws of several generators (noise correlated between samples that share
generators).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffscale.validation import ConfigError

__all__ = ["BlendedGenerator", "Generators", "check_device", "check_generators", "draw_devices", "standard_normal"]


class BlendedGenerator:
    """A per-sample random source whose every draw is z = sum_i w_i x_i, x_i the next standard normal draw of
    generator g_i (all on one device) and sum_i w_i^2 = 1, so that z is standard normal too.

    Two samples that blend the same generators (seeded alike) get noises with correlation sum_i w_i w'_i, draw
    after draw: the first draw (a sampler's initial noise), then every churn or SDE draw.
    """

    def __init__(self, generators: Sequence[torch.Generator], weights: Sequence[float]) -> None:
        if not generators or len(generators) != len(weights):
            raise ValueError(f"BlendedGenerator: {len(generators)} generators for {len(weights)} weights")
        if any(not isinstance(g, torch.Generator) for g in generators):
            raise ValueError("BlendedGenerator: every source must be a torch.Generator")
        if len({g.device for g in generators}) != 1:
            raise ValueError("BlendedGenerator: the generators must be on one device")
        if not math.isclose(sum(float(w) ** 2 for w in weights), 1.0, rel_tol=1e-9):
            raise ValueError(f"BlendedGenerator: the squared weights {list(weights)} must sum to 1 (unit variance)")
        self.generators = list(generators)
        self.weights = [float(w) for w in weights]

    @property
    def device(self) -> torch.device:
        """Where the generators draw."""
        return self.generators[0].device

    def randn(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """One standard normal draw of ``shape`` on :attr:`device`: sum_i w_i randn(g_i)."""
        total = None
        for generator, weight in zip(self.generators, self.weights, strict=True):
            draw = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device)
            total = draw.mul_(weight) if total is None else total.add_(draw, alpha=weight)
        assert total is not None
        return total


Generators = torch.Generator | Sequence[torch.Generator | BlendedGenerator] | None
"""The random source of a draw: torch's global generator (None), one generator, or one random source per sample
(a generator, or a :class:`BlendedGenerator`)."""


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
    """ConfigError unless ``generator`` is None, a ``torch.Generator``, or ``batch`` per-sample sources (each a
    ``torch.Generator`` or a :class:`BlendedGenerator`)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (str, bytes)) or not isinstance(generator, Sequence):
        raise ConfigError(f"{key}: expected a torch.Generator or a sequence of them, got {type(generator).__name__}")
    if len(generator) != batch:
        raise ConfigError(f"{key}: {len(generator)} generators for a batch of {batch} samples (one per sample)")
    for index, item in enumerate(generator):
        if not isinstance(item, torch.Generator | BlendedGenerator):
            raise ConfigError(
                f"{key}[{index}]: expected a torch.Generator or a BlendedGenerator, got {type(item).__name__}"
            )


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
    rows = [
        g.randn(shape[1:], dtype)
        if isinstance(g, BlendedGenerator)
        else torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device)
        for g in generator
    ]
    if len({row.device for row in rows}) == 1:
        return torch.stack(rows).to(device)  # one transfer for the batch
    return torch.stack([row.to(device) for row in rows])
