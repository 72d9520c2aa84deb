"""The training loop: learning-rate warm-up, determinism, failure on non-finite losses, learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import diffscale
from diffscale.data import two_gaussians_1d
from diffscale.loss import LossTerms
from diffscale.training import NonFiniteTrainingError, Trainer, TrainingSettings
from diffscale.training.loop import optimizer_implementation, use_channels_last
from diffscale.training.precision import cpu_bf16
from diffscale.validation import ConfigError

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


def test_non_finite_steps_are_skipped_then_stop_training() -> None:
    trainer = make_trainer(max_nonfinite_steps=3)
    trainer.run(2, progress=False)
    before = {key: value.clone() for key, value in trainer.denoiser.state_dict().items()}
    ema_before = {key: value.clone() for key, value in trainer.ema_denoiser.state_dict().items()}
    clean = trainer.source
    trainer.source = lambda n, g: torch.full((n, 1), float("nan"))
    for expected in (1, 2):
        record = trainer.train_step()
        assert record.skipped and not math.isfinite(record.loss)
        assert trainer.skipped_steps == trainer.nonfinite_in_a_row == expected
    for key, value in trainer.denoiser.state_dict().items():  # weights and EMA untouched
        assert torch.equal(value, before[key]) and torch.equal(trainer.ema_denoiser.state_dict()[key], ema_before[key])
    trainer.source = clean
    assert not trainer.train_step().skipped
    assert trainer.nonfinite_in_a_row == 0 and trainer.skipped_steps == 2  # the streak resets, the count does not
    trainer.source = lambda n, g: torch.full((n, 1), float("inf"))
    trainer.train_step()
    trainer.train_step()
    with pytest.raises(NonFiniteTrainingError, match="3 non-finite steps in a row"):
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


@pytest.mark.parametrize(
    ("decay", "expected"),
    [
        # warm-up of 4 steps to 1e-2, then: constant; (1 + cos(pi (k - 4) / 16)) / 2; sqrt(4 / (k + 1))
        ("none", [2.5e-3, 1e-2, 1e-2, 1e-2]),
        (
            "cosine",
            [
                2.5e-3,
                1e-2 * 0.5 * (1 + math.cos(math.pi * 4 / 16)),
                1e-2 * 0.5 * (1 + math.cos(math.pi * 15 / 16)),
                1e-2 * 0.5 * (1 + math.cos(math.pi * 12 / 16)),
            ],
        ),
        ("inverse_sqrt", [2.5e-3, 1e-2 * math.sqrt(4 / 9), 1e-2 * math.sqrt(4 / 20), 1e-2 * math.sqrt(4 / 17)]),
    ],
)
def test_learning_rate_schedules(decay: str, expected: list[float]) -> None:
    trainer = make_trainer(steps=20, warmup_steps=4, learning_rate=1e-2, lr_decay=decay)
    assert [trainer.learning_rate(step) for step in (0, 8, 19, 16)] == pytest.approx(expected)


def test_gradient_accumulation_gives_the_same_steps() -> None:
    """Four micro-batches of 16 take the same optimiser steps as one batch of 64 (up to summation order)."""
    whole, split = make_trainer(steps=6), make_trainer(steps=6, grad_accumulation=4)
    whole.run(progress=False)
    split.run(progress=False)
    for p, q in zip(whole.denoiser.parameters(), split.denoiser.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"not divisible by training\.grad_accumulation = 5"):
        TrainingSettings(batch_size=64, grad_accumulation=5)


def zero_gradient_objective(model, target, generator, **cond) -> LossTerms:
    """A loss of 0 * D(y; 1): every gradient is exactly zero, and there is no noise level."""
    output = model(target, torch.ones(target.shape[0]))
    return LossTerms(per_sample=0.0 * output.reshape(target.shape[0], -1).mean(dim=1), sigma=None)


def test_adamw_decays_decoupled_and_adam_adds_l2_to_the_gradient() -> None:
    """With zero loss gradients one step gives AdamW: theta (1 - eta lambda); Adam: g = lambda theta, so
    m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps) and theta - eta sign(theta) (to eps)."""
    lr, decay = 0.1, 0.5
    for optimizer in ("adamw", "adam"):
        trainer = make_trainer(
            steps=1, optimizer=optimizer, learning_rate=lr, weight_decay=decay, warmup_steps=0, grad_clip=None
        )
        trainer.objective = zero_gradient_objective
        before = [p.detach().clone() for p in trainer.denoiser.parameters()]
        record = trainer.train_step()
        assert record.sigma is None and record.grad_norm == 0.0
        for old, new in zip(before, trainer.denoiser.parameters(), strict=True):
            if optimizer == "adamw":
                expected = old * (1 - lr * decay)
            else:
                g = decay * old
                expected = old - lr * g / (g.abs() + 1e-8)
            torch.testing.assert_close(new.detach(), expected, rtol=1e-6, atol=1e-7)


def test_fp16_needs_cuda() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="precision = 'fp16': needs a CUDA device"):
            make_trainer(precision="fp16")


@pytest.mark.skipif(
    not (cpu_bf16().native or cpu_bf16().emulated), reason="this CPU has no bf16 instructions (bf16 is refused)"
)
@pytest.mark.filterwarnings("ignore:training.precision = 'bf16'")
def test_bf16_autocast_on_cpu() -> None:
    trainer = make_trainer(steps=3, precision="bf16")
    dtypes = []
    linear = next(module for module in trainer.denoiser.modules() if isinstance(module, nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    trainer.run(progress=False)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.denoiser.parameters())  # master weights stay fp32
    reference = make_trainer(steps=3)
    reference.run(progress=False)
    for p, q in zip(trainer.denoiser.parameters(), reference.denoiser.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0.05, atol=2e-3)  # close to fp32, not equal
    assert any(
        not torch.equal(p, q)
        for p, q in zip(trainer.denoiser.parameters(), reference.denoiser.parameters(), strict=True)
    )


def test_a_split_objective_on_slices_equals_the_whole_batch() -> None:
    """DenoisingLoss draws sigma and n for the whole batch once; evaluating rows apart gives the same losses."""
    trainer = make_trainer()
    loss = trainer.objective
    target = MIXTURE.sample(64, torch.Generator().manual_seed(1))
    drawn = loss.draw(target, torch.Generator().manual_seed(2))
    whole = loss.evaluate(trainer.denoiser, target, drawn)
    parts = [loss.evaluate(trainer.denoiser, target[i : i + 16], {k: v[i : i + 16] for k, v in drawn.items()})
             for i in range(0, 64, 16)]  # fmt: skip
    torch.testing.assert_close(torch.cat([part.per_sample for part in parts]), whole.per_sample)
    direct = loss(trainer.denoiser, target, torch.Generator().manual_seed(2))
    assert torch.equal(direct.per_sample, whole.per_sample) and torch.equal(direct.sigma, drawn["sigma"])


@pytest.mark.parametrize(("threads", "expected"), [(1, 1), (2, 2), ("auto", 1)])
def test_run_trains_on_the_configured_threads_and_restores_them(threads: int | str, expected: int) -> None:
    """A count is set for the run; auto never goes above torch's count (1 here, as in every test)."""
    trainer = make_trainer(steps=2, threads=threads)
    seen: list[int] = []
    trainer.run(progress=False, callback=lambda record: seen.append(torch.get_num_threads()))
    assert seen == [expected, expected]
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(
    ("setting", "device", "precision", "expected"),
    [
        ("auto", "cpu", "fp32", True),
        ("auto", "cpu", "bf16", True),
        ("auto", "cuda", "fp32", False),
        ("auto", "cuda", "bf16", True),
        ("auto", "cuda", "fp16", True),
        (False, "cpu", "fp32", False),
        (True, "cuda", "fp32", True),
    ],
)
def test_channels_last_choice(setting: bool | str, device: str, precision: str, expected: bool) -> None:
    assert use_channels_last(setting, torch.device(device), precision) is expected


def test_optimizer_implementation_is_fused_on_cuda_and_foreach_elsewhere() -> None:
    assert optimizer_implementation("cuda:1") == {"fused": True}
    assert optimizer_implementation(torch.device("cpu")) == {"foreach": True}
    trainer = make_trainer(steps=1, optimizer="adamw")
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert all(group["foreach"] is True for group in trainer.optimizer.param_groups)


def _unet_trainer(channels_last: bool) -> Trainer:
    settings = TrainingSettings(steps=2, batch_size=4, device="cpu", channels_last=channels_last, warmup_steps=0)
    torch.manual_seed(0)
    network = diffscale.networks.build_network(
        "ddpmpp", model_channels=8, channel_mult=(1, 2), num_blocks=1, img_resolution=8, attn_resolutions=(4,)
    )
    denoiser = diffscale.PreconditionedDenoiser(network, diffscale.formulation("EDM"))
    return Trainer(denoiser, lambda n, g: torch.randn(n, 1, 8, 8, generator=g), settings)


def test_channels_last_training_matches_contiguous_training() -> None:
    """The layout changes the order of floating-point sums only: the first step in channels_last and in contiguous
    layout (same weights, batch, sigma and noise) gives the same per-sample losses and gradient norm to rounding;
    the weights, their EMA copy and Adam's moments stay channels_last."""
    fast, plain = _unet_trainer(True), _unet_trainer(False)
    fast_record, plain_record = fast.train_step(), plain.train_step()
    torch.testing.assert_close(fast_record.per_sample, plain_record.per_sample, rtol=1e-5, atol=1e-6)
    assert fast_record.grad_norm == pytest.approx(plain_record.grad_norm, rel=1e-5)
    name, convolution = next(
        (name, p) for name, p in fast.denoiser.named_parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1
    )
    assert convolution.is_contiguous(memory_format=torch.channels_last) and not convolution.is_contiguous()
    assert fast.optimizer.state[convolution]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    ema_convolution = dict(fast.ema_denoiser.named_parameters())[name]
    assert ema_convolution.is_contiguous(memory_format=torch.channels_last) and not ema_convolution.is_contiguous()
    assert all(p.is_contiguous() for p in plain.denoiser.parameters())
