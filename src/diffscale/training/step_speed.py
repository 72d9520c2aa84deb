"""How a training step runs fast: the optimizer's implementation per device, the weights' memory layout
(channels_last), ``torch.compile``, and restoring an optimizer's state into its parameters' layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffscale.training.settings import TrainingSettings

__all__ = [
    "build_optimizer",
    "compile_model",
    "match_optimizer_state",
    "optimizer_implementation",
    "use_channels_last",
]


def optimizer_implementation(device: torch.device | str) -> dict[str, bool]:
    """torch's fastest implementation of Adam/AdamW on ``device``: ``fused`` (one kernel over every parameter)
    on CUDA, ``foreach`` (the update as a few multi-tensor operations, not a Python loop over parameters) elsewhere.
    Every implementation computes the same update; which one ran is stored with the optimizer's state."""
    return {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}


def build_optimizer(
    parameters: Any, settings: TrainingSettings, device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """Adam (weight decay as an L2 term in the gradient) or AdamW (decoupled decay, Loshchilov & Hutter 2019), in
    the :func:`optimizer_implementation` of ``device``."""
    kind = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return kind(
        parameters,
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        **optimizer_implementation(device),
    )


def use_channels_last(setting: bool | str, device: torch.device, precision: str) -> bool:
    """Whether grid networks train in channels_last layout: ``setting`` itself, or for ``auto`` on a CPU (oneDNN's
    convolutions and group norm run faster on it) and on CUDA with bf16/fp16 (tensor-core convolutions; in fp32
    cuDNN ran slower on it)."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cpu" or (device.type == "cuda" and precision != "fp32")


def compile_model(model: nn.Module) -> None:
    """Compile ``model``'s forward in place with ``torch.compile`` (TorchDynamo + Inductor: fused kernels, fewer
    passes over memory); its parameters and state_dict keys stay as they are. The first steps trace and compile
    (minutes for a large U-Net on a few CPU cores); a toolchain that cannot compile fails at the first step."""
    model.compile()


def match_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor of a parameter's shape (Adam's moments) its parameter's layout
    (channels_last or not), so that a restored optimizer steps exactly as the one that was saved (checkpoints
    store contiguous tensors); a fused optimizer's step counts go to its parameters' device (a checkpoint of an
    unfused one keeps them on the CPU)."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.shape == parameter.shape and value.ndim == 4:
                    state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
                elif key == "step" and group.get("fused"):
                    state[key] = value.to(parameter.device, torch.float32)
