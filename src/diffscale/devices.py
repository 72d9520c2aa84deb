"""Devices: the one a user names (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked against this machine, and where
random draws happen (every layer that draws from a ``torch.Generator`` resolves the device here)."""

from __future__ import annotations

import torch

from diffscale.validation import ConfigError

__all__ = ["check_device", "draw_device"]


def draw_device(generator: torch.Generator | None, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else the generator's device (a generator only draws on its own), else torch's default."""
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.get_default_device()


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
