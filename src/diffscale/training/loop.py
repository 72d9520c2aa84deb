"""The training loop: minimise the formulation's weighted denoising loss with Adam and keep a weight EMA."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from diffscale.data.batch import Batch, as_batch
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.loss import DenoisingLoss
from diffscale.training.ema import ExponentialMovingAverage
from diffscale.training.settings import TrainingSettings

__all__ = ["BatchSource", "StepRecord", "Trainer", "resolve_device"]

BatchSource = Callable[[int, torch.Generator], "torch.Tensor | Batch"]
"""``source(batch_size, generator)`` returns clean training samples y, or a :class:`Batch` (y and conditioning)."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; anything else is passed to torch.device (and checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"training.device = {name!r}: CUDA is not available on this machine")
    return device


@dataclass(frozen=True)
class StepRecord:
    """Scalars of one optimiser step."""

    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    per_sample: torch.Tensor
    sigma: torch.Tensor


class Trainer:
    """Trains a :class:`PreconditionedDenoiser` on batches from ``source``.

    The generator that draws data and noise is seeded from ``settings.seed``; the network should be
    initialised by the caller (under the same seed) before it is handed over.
    """

    def __init__(self, denoiser: PreconditionedDenoiser, source: BatchSource, settings: TrainingSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.denoiser = denoiser.to(self.device).train()
        self.source = source
        self.loss = DenoisingLoss(denoiser.formulation)
        self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=settings.learning_rate)
        self.ema = ExponentialMovingAverage(self.denoiser, settings.ema_halflife, settings.ema_rampup)
        self.generator = torch.Generator(self.device).manual_seed(settings.seed)
        self.step = 0

    @property
    def ema_denoiser(self) -> nn.Module:
        """The EMA copy of the denoiser (what sampling should use)."""
        return self.ema.model

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to the base learning rate."""
        warmup = self.settings.warmup_steps
        factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return self.settings.learning_rate * factor

    def train_step(self) -> StepRecord:
        settings = self.settings
        batch = as_batch(self.source(settings.batch_size, self.generator)).to(self.device)
        learning_rate = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        terms = self.loss(self.denoiser, batch.target, self.generator, **batch.cond)
        loss = terms.mean
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = settings.grad_clip if settings.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), max_norm))
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.denoiser, self.step * settings.batch_size, settings.batch_size)
        return StepRecord(
            step=self.step,
            loss=float(loss.detach()),
            learning_rate=learning_rate,
            grad_norm=grad_norm,
            per_sample=terms.per_sample.detach(),
            sigma=terms.sigma.detach(),
        )

    def run(
        self,
        steps: int | None = None,
        *,
        progress: bool = True,
        callback: Callable[[StepRecord], None] | None = None,
        description: str = "training",
    ) -> None:
        """Train until ``steps`` (default: settings.steps) optimiser steps have been taken in total."""
        target = self.settings.steps if steps is None else steps
        with tqdm(total=target, initial=self.step, desc=description, unit="step", disable=not progress) as bar:
            while self.step < target:
                record = self.train_step()
                if callback is not None:
                    callback(record)
                if record.step % self.settings.log_every == 0 or record.step == target:
                    bar.set_postfix(loss=f"{record.loss:.4f}")
                bar.update(1)
