"""Where random draws happen: every layer that draws from a ``torch.Generator`` resolves the device here."""

from __future__ import annotations

import torch

__all__ = ["draw_device"]


def draw_device(generator: torch.Generator | None, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else the generator's device (a generator only draws on its own), else torch's default."""
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.get_default_device()
