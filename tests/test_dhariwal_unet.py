"""Tests of DhariwalUNet (ADM) and the ``adm`` preset."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from diffscale.networks.dhariwal_unet import DhariwalUNet
from diffscale.networks.presets import ADMParams, build_network
from diffscale.networks.unet_base import count_parameters

TINY: dict[str, Any] = {
    "model_channels": 8,
    "channel_mult": (1, 2, 3),
    "num_blocks": 1,
    "img_resolution": 16,
    "attn_resolutions": (8, 4),
    "channels_per_head": 8,
    "dropout": 0.0,
}


def _tiny(**options: Any) -> DhariwalUNet:
    network = build_network("adm", **{**TINY, **options})
    assert isinstance(network, DhariwalUNet)
    return network


def _randomise(network: nn.Module, std: float = 0.2) -> None:
    generator = torch.Generator().manual_seed(321)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std + (parameter.ndim == 1) * 0.5)


def test_parameter_count_matches_published_imagenet64_configuration() -> None:
    """ImageNet-64 ADM with 1000 classes: 295.9 M parameters (EDM, Karras et al. 2022, Table 7)."""
    with torch.device("meta"):
        network = build_network("adm", in_channels=3, label_dim=1000)
    assert count_parameters(network) == pytest.approx(295.9e6, rel=0.01)


def test_preset_defaults_follow_the_paper() -> None:
    params = ADMParams()
    assert (params.model_channels, params.channel_mult, params.num_blocks) == (192, (1, 2, 3, 4), 3)
    assert (params.attn_resolutions, params.channels_per_head, params.img_resolution) == ((32, 16, 8), 64, 64)
    for field in ADMParams.model_fields.values():
        assert field.description


def test_attention_heads_have_the_requested_width() -> None:
    network = _tiny()
    heads = {block.attention.num_heads for block in network.modules() if getattr(block, "attention", None)}
    assert heads == {2, 3}  # attention at 16 and 24 channels, 8 channels per head


@pytest.mark.parametrize("grid", [(16, 16), (33, 49), (8, 20)])
@pytest.mark.parametrize("conditioning", ["none", "fields", "labels", "augment", "all"])
def test_output_shape_for_any_grid_and_conditioning(grid: tuple[int, int], conditioning: str) -> None:
    height, width = grid
    fields = conditioning in ("fields", "all")
    labels = conditioning in ("labels", "all")
    augment = conditioning in ("augment", "all")
    network = _tiny(in_channels=3, cond_channels=2 * fields, label_dim=5 * labels, augment_dim=4 * augment)
    cond: dict[str, torch.Tensor] = {}
    if fields:
        cond["cond_fields"] = torch.randn(2, 2, height, width)
    if labels:
        cond["class_labels"] = torch.randn(2, 5)
    if augment:
        cond["augment_labels"] = torch.randn(2, 4)
    x = torch.randn(2, 3, height, width)
    assert network(x, torch.randn(2), **cond).shape == x.shape


def test_learned_variance_doubles_the_output_channels() -> None:
    network = _tiny(in_channels=3, learned_variance=True)
    assert network(torch.randn(1, 3, 16, 16), torch.randn(1)).shape == (1, 6, 16, 16)


def test_gradients_reach_every_parameter() -> None:
    network = _tiny(in_channels=1, cond_channels=1, label_dim=3, augment_dim=2)
    _randomise(network)
    out = network(
        torch.randn(2, 1, 12, 20),
        torch.randn(2),
        cond_fields=torch.randn(2, 1, 12, 20),
        class_labels=torch.randn(2, 3),
        augment_labels=torch.randn(2, 2),
    )
    out.square().mean().backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_periodic_longitude_equivariance() -> None:
    """Rolls along W by multiples of the downsampling factor 2^(L-1) = 4 commute with the network."""
    network = _tiny(in_channels=2, periodic_longitude=True).eval()
    _randomise(network, std=0.1)
    x, c_noise = torch.randn(2, 2, 9, 16), torch.randn(2)
    out = network(x, c_noise)
    for shift in (4, -8):
        torch.testing.assert_close(network(x.roll(shift, -1), c_noise), out.roll(shift, -1), atol=1e-4, rtol=1e-4)
    with pytest.raises(
        ValueError, match=r"width \(longitude\) is not padded and must be a multiple of 4, e\.g\. 16 or 20"
    ):
        network(torch.randn(1, 2, 9, 18), torch.randn(1))


def test_determinism_under_a_fixed_seed() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(3)
        network = _tiny(in_channels=1, label_dim=2, dropout=0.2, label_dropout=0.5).train()
        return network(torch.randn(2, 1, 8, 8), torch.randn(2), class_labels=torch.randn(2, 2))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_bad_input_names_expected_and_given_shapes() -> None:
    network = _tiny(in_channels=1, label_dim=4)
    x, c_noise = torch.randn(2, 1, 16, 16), torch.randn(2)
    with pytest.raises(ValueError, match=r"class_labels: expected shape \(2, 4\), got \(2, 3\)"):
        network(x, c_noise, class_labels=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"class_labels: expected shape \(2, 4\), got None"):
        network(x, c_noise)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 1, height, width\), got \(2, 16, 16\)"):
        network(x[:, 0], c_noise, class_labels=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"cond_fields of shape \(2, 1, 16, 16\) given, but cond_channels=0"):
        network(x, c_noise, class_labels=torch.randn(2, 4), cond_fields=x)
