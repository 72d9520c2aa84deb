"""What every solver shares: the record a callback receives after each step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplerStep"]


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler callback sees after step i: the state x_{i+1} = s(t_{i+1}) (y + sigma n) at t_{i+1},
    and the last denoised estimate D."""

    index: int
    t: torch.Tensor
    sigma: torch.Tensor
    x: torch.Tensor
    denoised: torch.Tensor
