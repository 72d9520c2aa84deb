"""Exponential moving average of network weights with a half-life in training samples (EDM paper, App. F.2)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """theta_ema <- beta theta_ema + (1 - beta) theta, beta = 0.5^(batch / halflife).

    With ``rampup`` the half-life is at most ``rampup`` times the number of samples seen so far, so the
    average forgets the random initialisation quickly early in training.
    """

    def __init__(self, model: nn.Module, halflife: float, rampup: float | None = None) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.halflife = halflife
        self.rampup = rampup

    def decay(self, samples_seen: int, batch_size: int) -> float:
        """beta for a step of ``batch_size`` samples after ``samples_seen`` samples in total."""
        halflife = self.halflife
        if self.rampup is not None:
            halflife = min(halflife, samples_seen * self.rampup)
        if halflife <= 0:
            return 0.0
        return 0.5 ** (batch_size / halflife)

    @torch.no_grad()
    def update(self, model: nn.Module, samples_seen: int, batch_size: int) -> None:
        beta = self.decay(samples_seen, batch_size)
        averages, currents = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if len(averages) != len(currents):
            raise ValueError(f"the EMA holds {len(averages)} parameters, the model {len(currents)}")
        if averages:
            torch._foreach_lerp_(averages, currents, 1.0 - beta)  # one multi-tensor call, not one per parameter
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)
