"""Validated training settings (the ``training:`` section of a configuration)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from diffscale.validation import StrictModel

__all__ = ["TrainingSettings"]


class TrainingSettings(StrictModel):
    """Optimisation and bookkeeping of one training run."""

    steps: int = Field(4000, ge=1, strict=True, description="number of optimiser steps")
    batch_size: int = Field(
        512, ge=1, strict=True, description="samples per optimiser step (the global batch, whatever the process count)"
    )
    objective: Literal["diffusion", "regression"] = Field(
        "diffusion", description="training objective: diffusion (denoising loss) or regression"
    )
    optimizer: Literal["adam", "adamw"] = Field("adam", description="optimiser: adam or adamw (decoupled decay)")
    learning_rate: float = Field(2e-3, gt=0, description="learning rate after warm-up")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (L2 for adam, decoupled for adamw)")
    warmup_steps: int = Field(100, ge=0, strict=True, description="linear learning-rate warm-up, in steps")
    lr_decay: Literal["none", "cosine", "inverse_sqrt"] = Field(
        "none", description="after warm-up: none, cosine (to 0 at the last step) or inverse_sqrt (sqrt(warmup/step))"
    )
    grad_accumulation: int = Field(
        1, ge=1, strict=True, description="micro-batches per optimiser step and process (same result, less memory)"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm to this value (None: off)")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32",
        description="autocast precision: fp32, bf16 (CUDA, or a CPU with bf16 instructions), fp16 (CUDA, with a "
        "gradient scaler) or auto (bf16 where the device computes in it, else fp32)",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="grid networks' weights and activations in channels_last layout: auto (on a CPU, and on CUDA "
        "with bf16/fp16), true or false",
    )
    compile: bool = Field(
        False, description="compile the model with torch.compile (slow first steps; pays off in long runs)"
    )
    threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU threads of torch: a count, or auto (the CPUs this process may use that other processes "
        "leave idle, at most torch's count)",
    )
    max_nonfinite_steps: int = Field(
        20, ge=1, strict=True, description="stop after this many skipped (non-finite) steps in a row"
    )
    ema_halflife: float = Field(
        20_000.0, ge=0, description="half-life of the weight EMA, in training samples (0: no averaging)"
    )
    ema_rampup: float | None = Field(
        0.05, gt=0, description="EMA half-life at most this fraction of the samples seen so far (None: off)"
    )
    posthoc_ema_stds: tuple[float, ...] = Field(
        (),
        description="relative widths sigma_rel of the power-function EMA profiles whose snapshots are saved for "
        "post-hoc EMA (e.g. [0.05, 0.10]; each in (0, 0.2887)); empty: off",
    )
    posthoc_ema_every: int = Field(
        100, ge=1, strict=True, description="steps between post-hoc EMA snapshots (and one at the last step)"
    )
    seed: int = Field(0, ge=0, strict=True, description="seed of the data, noise and initialisation")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    checkpoint_every: int = Field(0, ge=0, strict=True, description="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, strict=True, description="number of most recent checkpoints kept")
    log_every: int = Field(100, ge=1, strict=True, description="steps between logged scalars")
    tensorboard: bool = Field(True, description="also write the logged scalars to TensorBoard (run_dir/tensorboard)")
    sample_every: int = Field(0, ge=0, strict=True, description="steps between figures of EMA-model samples (0: none)")
    num_workers: int = Field(
        0, ge=0, strict=True, description="data loading worker processes reading batches ahead (0: read in the loop)"
    )
    prefetch_factor: int = Field(2, ge=1, strict=True, description="batches each data loading worker reads ahead")
    worker_start_method: Literal["spawn", "forkserver", "fork"] = Field(
        "spawn",
        description="how data loading workers start: spawn (safe), forkserver, or fork (fastest; not with netCDF/HDF5)",
    )
    data_timeout: float = Field(
        600.0, gt=0, description="seconds to wait for one batch from the workers before stopping with an error"
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _thread_count_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise PydanticCustomError("thread_count", "must be an integer >= 1 or 'auto'")

    @field_validator("posthoc_ema_stds")
    @classmethod
    def _power_profile_widths(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        limit = 12**-0.5
        for std in value:
            if not 0 < std < limit:
                raise PydanticCustomError(
                    "posthoc_ema_std", "each std must be in (0, {limit}) (got {std})", {"limit": 0.2887, "std": std}
                )
        if len(set(value)) != len(value):
            raise PydanticCustomError("posthoc_ema_std", "stds must differ from each other")
        return value

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self) -> TrainingSettings:
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"training.batch_size = {self.batch_size} is not divisible by "
                f"training.grad_accumulation = {self.grad_accumulation}"
            )
        return self
