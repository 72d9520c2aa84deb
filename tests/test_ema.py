"""Weight EMA with a half-life in samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffscale.training import ExponentialMovingAverage


def test_half_life_in_samples() -> None:
    ema = ExponentialMovingAverage(nn.Linear(1, 1), halflife=1000.0, rampup=None)
    beta = ema.decay(samples_seen=10_000, batch_size=100)
    assert beta**10 == pytest.approx(0.5)  # 10 steps of 100 samples = one half-life


def test_rampup_limits_the_half_life_early() -> None:
    ema = ExponentialMovingAverage(nn.Linear(1, 1), halflife=1e6, rampup=0.05)
    assert ema.decay(samples_seen=2000, batch_size=100) == pytest.approx(0.5 ** (100 / 100))
    assert ExponentialMovingAverage(nn.Linear(1, 1), halflife=0.0).decay(100, 10) == 0.0


def test_average_converges_to_a_constant_target() -> None:
    model = nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, halflife=50.0, rampup=None)
    start = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, samples_seen=50, batch_size=50)  # one half-life: half-way
    torch.testing.assert_close(ema.model.weight, 0.5 * start + 0.5 * 3.0)
    assert not ema.model.weight.requires_grad
