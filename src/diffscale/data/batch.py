"""A training batch: clean targets y and the conditioning the network sees beside the noisy state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["Batch", "as_batch"]


@dataclass(frozen=True)
class Batch:
    """``target`` (B, ...) holds the clean samples y; ``cond`` the keyword conditioning of the network
    (``cond_fields`` (B, C_cond, H, W), ``class_labels`` (B, L), ...), every tensor with the same batch length B.
    """

    target: torch.Tensor
    cond: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.cond.items():
            if value.shape[0] != self.target.shape[0]:
                raise ValueError(
                    f"conditioning {name!r} has batch length {value.shape[0]}, the targets {self.target.shape[0]}"
                )

    def __len__(self) -> int:
        return self.target.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (tensors already there are not copied)."""
        return Batch(self.target.to(device), {name: value.to(device) for name, value in self.cond.items()})

    def to_device(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device``; ``non_blocking`` copies from pinned memory asynchronously (CUDA)."""
        return Batch(
            self.target.to(device, non_blocking=non_blocking),
            {name: value.to(device, non_blocking=non_blocking) for name, value in self.cond.items()},
        )

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (what a DataLoader's ``pin_memory`` calls; CUDA copies then overlap)."""
        return Batch(self.target.pin_memory(), {name: value.pin_memory() for name, value in self.cond.items()})

    def slice(self, start: int, stop: int) -> Batch:
        """Samples ``start:stop`` (e.g. one rank's shard or one gradient-accumulation micro-batch)."""
        return Batch(self.target[start:stop], {name: value[start:stop] for name, value in self.cond.items()})


def as_batch(value: torch.Tensor | Batch) -> Batch:
    """A bare tensor of targets is a batch without conditioning."""
    return value if isinstance(value, Batch) else Batch(value)
