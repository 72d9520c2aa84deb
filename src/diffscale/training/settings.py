"""Validated training settings (the ``training:`` section of a configuration)."""

from __future__ import annotations

from pydantic import Field

from diffscale.validation import StrictModel

__all__ = ["TrainingSettings"]


class TrainingSettings(StrictModel):
    """Optimisation and bookkeeping of one training run."""

    steps: int = Field(4000, ge=1, strict=True, description="number of optimiser steps")
    batch_size: int = Field(512, ge=1, strict=True, description="samples per optimiser step")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate after warm-up")
    warmup_steps: int = Field(100, ge=0, strict=True, description="linear learning-rate warm-up, in steps")
    ema_halflife: float = Field(
        20_000.0, ge=0, description="half-life of the weight EMA, in training samples (0: no averaging)"
    )
    ema_rampup: float | None = Field(
        0.05, gt=0, description="EMA half-life at most this fraction of the samples seen so far (None: off)"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm to this value (None: off)")
    seed: int = Field(0, ge=0, strict=True, description="seed of the data, noise and initialisation")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    checkpoint_every: int = Field(0, ge=0, strict=True, description="steps between checkpoints (0: only at the end)")
    log_every: int = Field(100, ge=1, strict=True, description="steps between logged scalars")
