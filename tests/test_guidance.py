"""Tests of classifier-free guidance (diffscale.guidance) around a conditional U-Net denoiser."""

from __future__ import annotations

import pytest
import torch

import diffscale
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.guidance import ClassifierFreeGuidance, drop_conditioning
from diffscale.networks.presets import build_network


@pytest.fixture
def denoiser() -> PreconditionedDenoiser:
    torch.manual_seed(0)
    network = build_network(
        "ddpmpp",
        in_channels=1,
        cond_channels=1,
        label_dim=3,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        label_dropout=0.2,
    ).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return PreconditionedDenoiser(network, diffscale.formulation("EDM", sigma_data=0.5))


def _inputs() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.randn(4, 1, 8, 12)
    cond = {
        "class_labels": torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float(),
        "cond_fields": torch.randn(4, 1, 8, 12),
    }
    return x, torch.tensor([0.1, 0.5, 2.0, 10.0]), cond


def test_weight_zero_is_unconditional_and_one_is_conditional(denoiser: PreconditionedDenoiser) -> None:
    x, sigma, cond = _inputs()
    unconditional = {**cond, "class_labels": torch.zeros(4, 3)}
    with torch.no_grad():
        torch.testing.assert_close(
            ClassifierFreeGuidance(denoiser, 0.0)(x, sigma, **cond), denoiser(x, sigma, **unconditional)
        )
        torch.testing.assert_close(ClassifierFreeGuidance(denoiser, 1.0)(x, sigma, **cond), denoiser(x, sigma, **cond))
        # Without the shortcut (w slightly off 0 and 1) the combination stays continuous in w.
        near_zero = ClassifierFreeGuidance(denoiser, 1e-7, batched=False)(x, sigma, **cond)
        torch.testing.assert_close(near_zero, denoiser(x, sigma, **unconditional), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(denoiser(x, sigma, **cond), denoiser(x, sigma, **unconditional))


@pytest.mark.parametrize("batched", [True, False])
def test_guided_denoiser_extrapolates(denoiser: PreconditionedDenoiser, batched: bool) -> None:
    x, sigma, cond = _inputs()
    unconditional = {**cond, "class_labels": torch.zeros(4, 3)}
    with torch.no_grad():
        d_cond, d_uncond = denoiser(x, sigma, **cond), denoiser(x, sigma, **unconditional)
        guided = ClassifierFreeGuidance(denoiser, 2.5, batched=batched)(x, sigma, **cond)
    torch.testing.assert_close(guided, d_uncond + 2.5 * (d_cond - d_uncond), atol=1e-5, rtol=1e-5)


def test_guided_denoiser_works_with_the_samplers(denoiser: PreconditionedDenoiser) -> None:
    _, _, cond = _inputs()
    guided = ClassifierFreeGuidance(denoiser, 2.0)
    f = diffscale.formulation("EDM", sigma_data=0.5)
    with torch.no_grad():
        samples = diffscale.sample(guided, torch.randn(4, 1, 8, 12), f, steps=3, cond=cond)
    assert samples.shape == (4, 1, 8, 12) and torch.isfinite(samples).all()


def test_drop_conditioning_zeroes_only_the_named_entries() -> None:
    cond = {"class_labels": torch.ones(2, 3), "cond_fields": torch.ones(2, 1, 4, 4)}
    dropped = drop_conditioning(cond, ("class_labels",))
    assert torch.count_nonzero(dropped["class_labels"]) == 0
    assert dropped["cond_fields"] is cond["cond_fields"]
    with pytest.raises(
        ValueError, match=r"drops \['class_labels'\], but cond has no such tensors \(keys: \['cond_fields'\]\)"
    ):
        drop_conditioning({"cond_fields": torch.ones(1)}, ("class_labels",))
