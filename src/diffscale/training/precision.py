"""Mixed precision: autocast to bf16/fp16 around the forward pass, and for fp16 a dynamic gradient scaler.

With fp16 the loss is multiplied by a scale S before the backward pass, so that small gradients do not
underflow; the gradients are divided by S again before clipping and the optimiser step. A step whose
unscaled gradients are not finite is skipped and S is halved; after ``growth_interval`` finite steps S is
doubled (torch's :class:`torch.amp.GradScaler`). bf16 has fp32's exponent range and needs no scaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from diffscale.validation import ConfigError

__all__ = ["PRECISIONS", "MixedPrecision"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_supports_bf16() -> bool:
    """Whether autocast to bf16 runs on this CPU (a tiny matrix product in autocast)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            product = torch.ones(2, 2) @ torch.ones(2, 2)
    except (RuntimeError, TypeError):
        return False
    return product.dtype == torch.bfloat16


class MixedPrecision:
    """Autocast and (fp16 only) gradient scaling for ``precision`` on ``device``.

    Raises ConfigError for fp16 off CUDA and bf16 where the device cannot run it.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"training.precision = {precision!r}: allowed: {', '.join(PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"training.precision = 'fp16': needs a CUDA device (training on {device.type}); use bf16 or fp32"
            )
        if precision == "bf16":
            supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_supports_bf16()
            if not supported:
                raise ConfigError(f"training.precision = 'bf16': not supported on this {device.type}; use fp32")
        self.precision = precision
        self.device = device
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass in ``self.dtype`` where autocast allows it (a no-op for fp32)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.precision != "fp32"):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """d(S loss)/d theta (S = 1 without a scaler)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by S (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, take: bool) -> None:
        """The optimiser step when ``take`` (finite loss and gradients), then the scaler's update of S."""
        if take:
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (JSON-able: scale, growth tracker, factors), or None without a scaler."""
        if self.scaler is None:
            return None
        return dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s output (ignored without a scaler)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))
