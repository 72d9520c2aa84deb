"""The training loop: learning-rate warm-up, determinism, failure on non-finite losses, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffscale
from diffscale.data import two_gaussians_1d
from diffscale.training import Trainer, TrainingSettings

MIXTURE = two_gaussians_1d()


def make_trainer(steps: int = 30, **overrides) -> Trainer:
    settings = TrainingSettings(steps=steps, batch_size=64, device="cpu", **overrides)
    torch.manual_seed(settings.seed)
    denoiser = diffscale.PreconditionedDenoiser(
        diffscale.networks.MLP(1, width=16, depth=1), diffscale.formulation("EDM")
    )
    return Trainer(denoiser, lambda n, g: MIXTURE.sample(n, g), settings)


def test_warmup_is_linear() -> None:
    trainer = make_trainer(warmup_steps=10, learning_rate=1e-2)
    assert [trainer.learning_rate(step) for step in (0, 4, 9, 50)] == pytest.approx([1e-3, 5e-3, 1e-2, 1e-2])


def test_same_seed_same_weights() -> None:
    a, b = make_trainer(), make_trainer()
    a.run(progress=False)
    b.run(progress=False)
    for p, q in zip(a.ema_denoiser.parameters(), b.ema_denoiser.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert a.step == 30


def test_training_lowers_the_loss() -> None:
    trainer = make_trainer(steps=300, learning_rate=3e-3)
    losses: list[float] = []
    trainer.run(progress=False, callback=lambda record: losses.append(record.loss))
    assert sum(losses[-50:]) / 50 < 0.7 * sum(losses[:20]) / 20


def test_non_finite_loss_stops_training() -> None:
    trainer = make_trainer()
    trainer.source = lambda n, g: torch.full((n, 1), float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.train_step()


def test_unavailable_device_is_reported() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Trainer(
            diffscale.PreconditionedDenoiser(nn.Linear(1, 1), diffscale.formulation("EDM")),
            lambda n, g: torch.zeros(n, 1),
            TrainingSettings(device="cuda"),
        )
