"""iDDPM's learned variance: the variational-bound term, the hybrid loss and the ancestral sampler."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import diffscale
from diffscale.data import two_gaussians_1d
from diffscale.formulations.posterior import (
    interpolated_log_variance,
    posterior_log_variance_bounds,
    posterior_mean_weights,
)
from diffscale.loss import DenoisingLoss, variational_bound_term
from diffscale.training import Trainer, TrainingSettings
from tests.conftest import wasserstein1_1d

MIXTURE = two_gaussians_1d()
CLIPPED = torch.tensor(-9.0, dtype=torch.float64)


def test_bound_is_the_gaussian_kl_in_bits() -> None:
    generator = torch.Generator().manual_seed(0)
    clean, denoised = torch.randn(6, 3, generator=generator, dtype=torch.float64).unbind(0)[:2]
    clean, denoised = clean.reshape(1, 3).repeat(4, 1), denoised.reshape(1, 3).repeat(4, 1)
    v = torch.rand(4, 3, generator=generator, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.5, 2.0, 10.0, 0.1], dtype=torch.float64)
    sigma_next = torch.tensor([0.4, 1.0, 9.0, 0.05], dtype=torch.float64)
    bound = variational_bound_term(clean, denoised, v, sigma, sigma_next, CLIPPED)
    _, b = posterior_mean_weights(sigma[:, None], sigma_next[:, None])
    log_beta, log_beta_tilde = posterior_log_variance_bounds(sigma[:, None], sigma_next[:, None])
    model_std = (0.5 * interpolated_log_variance(v, log_beta, log_beta_tilde)).exp()
    # Compare q = N(b y, beta_tilde) with p = N(b D, Sigma) (the common a x_hat shift cancels).
    expected = kl_divergence(Normal(b * clean, (0.5 * log_beta_tilde).exp()), Normal(b * denoised, model_std))
    torch.testing.assert_close(bound, expected.mean(dim=1) / math.log(2))


def test_final_step_is_the_decoder_negative_log_likelihood() -> None:
    clean = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    denoised = torch.tensor([[0.1, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    sigma, zero = torch.tensor([0.01], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    bound = variational_bound_term(clean, denoised, v, sigma, zero, CLIPPED)
    log_beta = (sigma**2 / (1 + sigma**2)).log()  # DDPM's beta at the last step, for x_hat
    log_variance = interpolated_log_variance(v, log_beta, CLIPPED)
    expected = -Normal(denoised, (0.5 * log_variance).exp()).log_prob(clean).mean() / math.log(2)
    torch.testing.assert_close(bound, expected.reshape(1))


def test_bound_vanishes_for_a_perfect_model() -> None:
    clean = torch.randn(3, 2, dtype=torch.float64)
    sigma, sigma_next = torch.full((3,), 2.0, dtype=torch.float64), torch.full((3,), 1.5, dtype=torch.float64)
    bound = variational_bound_term(clean, clean, -torch.ones_like(clean), sigma, sigma_next, CLIPPED)
    torch.testing.assert_close(bound, torch.zeros(3, dtype=torch.float64))


def test_iddpm_transition_follows_the_table() -> None:
    f = diffscale.formulation("iDDPM", learned_variance=True)
    sigma = f.table[[0, 8, 500, 998, 999]]
    sigma_next, clipped, weight = f.variance_transition(sigma)
    torch.testing.assert_close(sigma_next, f.table[[1, 9, 501, 999, 1000]])
    assert weight == pytest.approx(0.001 * 1000)
    assert torch.isfinite(clipped)


def test_learned_variance_needs_twice_the_channels() -> None:
    f = diffscale.formulation("iDDPM", learned_variance=True)
    denoiser = diffscale.PreconditionedDenoiser(diffscale.networks.MLP(2, width=8, depth=1), f)
    with pytest.raises(ValueError, match=r"expected \(4, 4\) \(mean and variance channels"):
        denoiser(torch.zeros(4, 2), 1.0)


def test_hybrid_loss_trains_the_variance_and_the_ancestral_sampler_uses_it() -> None:
    f = diffscale.formulation("iDDPM", learned_variance=True)
    torch.manual_seed(0)
    denoiser = diffscale.PreconditionedDenoiser(diffscale.networks.MLP(1, width=64, depth=2, out_dim=2), f)
    trainer = Trainer(
        denoiser, lambda n, g: MIXTURE.sample(n, g), TrainingSettings(steps=600, batch_size=256, device="cpu")
    )
    losses: list[float] = []
    trainer.run(progress=False, callback=lambda record: losses.append(record.loss))
    assert sum(losses[-50:]) / 50 < 0.6 * sum(losses[:50]) / 50
    model = trainer.ema_denoiser
    calls: list[bool] = []
    original = model.denoise_with_variance

    def spy(*args, **kwargs):
        calls.append(True)
        return original(*args, **kwargs)

    model.denoise_with_variance = spy
    samples = diffscale.sample(
        model,
        torch.randn(10_000, 1, generator=torch.Generator().manual_seed(1)),
        f,
        steps=50,
        solver="ancestral",
        generator=torch.Generator().manual_seed(2),
    )
    assert len(calls) == 50
    assert wasserstein1_1d(samples, MIXTURE) < 0.06  # 600 steps of a small MLP; a single Gaussian is at 0.37
    assert float(DenoisingLoss(f)(model, MIXTURE.sample(64)).mean) > 0


@pytest.mark.parametrize("name", ["VE", "VP", "EDM", "iDDPM"])
def test_ancestral_sampler_with_the_exact_denoiser_reproduces_the_mixture(name: str) -> None:
    noise = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    samples = diffscale.sample(
        MIXTURE.ideal_denoiser,
        noise,
        diffscale.formulation(name),
        steps=256,
        solver="ancestral",
        schedule="edm",
        generator=torch.Generator().manual_seed(4),
    )
    assert wasserstein1_1d(samples, MIXTURE) < 0.02


def test_ancestral_step_variance_is_the_posterior_variance() -> None:
    """One step from sigma_0 with D = 0: x_hat_1 = a x_hat_0 + sqrt(beta_tilde) z."""
    f = diffscale.formulation("EDM")
    noise = torch.randn(200_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    steps: list[diffscale.sampling.SamplerStep] = []
    diffscale.sample(
        lambda x, s: torch.zeros_like(x),
        noise,
        f,
        steps=3,
        solver="ancestral",
        callback=steps.append,
        generator=torch.Generator().manual_seed(6),
    )
    sigma, sigma_next = torch.tensor(f.sigma_max, dtype=torch.float64), steps[0].sigma
    a, _ = posterior_mean_weights(sigma, sigma_next)
    expected_std = math.sqrt(
        float(a) ** 2 * float(sigma) ** 2 + float(posterior_log_variance_bounds(sigma, sigma_next)[1].exp())
    )
    assert float(steps[0].x.std()) == pytest.approx(expected_std, rel=0.01)
    assert diffscale.number_of_evaluations(3, "ancestral") == 3
