"""The weighted denoising loss, checked with the ideal denoiser of Gaussian data, whose error is known."""

from __future__ import annotations

import pytest
import torch

import diffscale
from diffscale.data import GaussianMixture
from diffscale.loss import DenoisingLoss
from tests.conftest import FORMULATION_NAMES


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_ideal_denoiser_loss_equals_the_posterior_variance(name: str) -> None:
    """For y ~ N(0, s^2) the ideal denoiser's squared error is the posterior variance s^2 sigma^2 / (s^2 + sigma^2),
    so E[loss | sigma] = lambda(sigma) s^2 sigma^2 / (s^2 + sigma^2) (= 1 for EDM with sigma_data = s)."""
    s = 0.8
    gaussian = GaussianMixture(means=[[0.0] * 8], stds=[s])
    f = diffscale.formulation(name, **({"sigma_data": s} if name == "EDM" else {}))
    clean = gaussian.sample(40_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    terms = DenoisingLoss(f)(gaussian.ideal_denoiser, clean, torch.Generator().manual_seed(2))
    assert terms.per_sample.shape == (40_000,) and terms.sigma.shape == (40_000,)
    expected = f.loss_weight(terms.sigma) * s**2 * terms.sigma**2 / (s**2 + terms.sigma**2)
    ratio = terms.per_sample.sum() / expected.sum()
    assert float(ratio) == pytest.approx(1.0, abs=0.01)
    if name == "EDM":
        assert float(terms.mean) == pytest.approx(1.0, abs=0.01)


def test_a_worse_denoiser_has_a_larger_loss() -> None:
    gaussian = GaussianMixture(means=[[0.0, 0.0]], stds=[1.0])
    f = diffscale.formulation("EDM", sigma_data=1.0)
    clean = gaussian.sample(20_000, torch.Generator().manual_seed(3))
    ideal = DenoisingLoss(f)(gaussian.ideal_denoiser, clean, torch.Generator().manual_seed(4)).mean
    identity = DenoisingLoss(f)(lambda x, sigma: x, clean, torch.Generator().manual_seed(4)).mean
    assert float(identity) > 2 * float(ideal)


def test_loss_is_reproducible_and_differentiable() -> None:
    f = diffscale.formulation("VP")
    denoiser = diffscale.PreconditionedDenoiser(diffscale.networks.MLP(2, width=8, depth=1), f)
    clean = torch.randn(16, 2)
    a = DenoisingLoss(f)(denoiser, clean, torch.Generator().manual_seed(5))
    b = DenoisingLoss(f)(denoiser, clean, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.per_sample, b.per_sample, rtol=0, atol=0)
    a.mean.backward()
    assert all(p.grad is not None for p in denoiser.parameters())


def test_row_weights_give_the_row_weighted_mean_and_stay_out_of_the_denoiser() -> None:
    """The identity denoiser D(x) = x errs by sigma n, so the loss is lambda(sigma) sigma^2 times the (weighted)
    mean of n^2 over the sample's elements, with n the noise drawn from the same generator."""
    f = diffscale.formulation("EDM", sigma_data=1.0)
    clean = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    weights = torch.tensor([[0.0, 1.0, 1.5, 1.5], [1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]], dtype=torch.float64)

    def identity(x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        assert "row_weights" not in cond and set(cond) == {"cond_fields"}
        return x

    loss = DenoisingLoss(f)
    cond_fields = torch.zeros(3, 1, 4, 5)
    drawn = loss.draw(clean, torch.Generator().manual_seed(0))
    terms = loss.evaluate(identity, clean, drawn, cond_fields=cond_fields, row_weights=weights)
    noise, sigma = drawn["noise"], drawn["sigma"]
    per_row = noise.square().mean(dim=(1, 3))  # (B, H): mean over channels and columns
    expected = f.loss_weight(sigma) * sigma**2 * (weights * per_row).mean(dim=1)
    torch.testing.assert_close(terms.per_sample, expected.float(), rtol=1e-6, atol=0)
    # without weights the loss is the plain mean, and weights of 1 give exactly the same numbers
    plain = loss.evaluate(identity, clean, drawn, cond_fields=cond_fields)
    ones = loss.evaluate(identity, clean, drawn, cond_fields=cond_fields, row_weights=torch.ones(3, 4))
    torch.testing.assert_close(ones.per_sample, plain.per_sample, rtol=0, atol=0)
    unweighted = f.loss_weight(sigma) * sigma**2 * noise.square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(plain.per_sample, unweighted.float(), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"row_weights of shape \(3, 5\) do not fit a batch of grids"):
        loss.evaluate(identity, clean, drawn, cond_fields=cond_fields, row_weights=torch.ones(3, 5))
