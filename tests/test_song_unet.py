"""Tests of SongUNet (DDPM++ / NCSN++), the presets, the grid handling and its use inside a denoiser."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import diffscale
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.networks.learned_variance import MeanOutput, split_learned_variance
from diffscale.networks.presets import PRESETS, DDPMppParams, build_network, describe_network
from diffscale.networks.song_unet import SongUNet
from diffscale.networks.unet_base import count_parameters, drop_labels
from diffscale.validation import ConfigError

TINY: dict[str, Any] = {
    "model_channels": 8,
    "channel_mult": (1, 2, 2),
    "num_blocks": 1,
    "img_resolution": 16,
    "attn_resolutions": (8,),
    "dropout": 0.0,
}
SONG_PRESETS = ("ddpmpp", "ncsnpp")


def _tiny(arch: str, **options: Any) -> SongUNet:
    network = build_network(arch, **{**TINY, **options})
    assert isinstance(network, SongUNet)
    return network


def _randomise(network: nn.Module, std: float = 0.2) -> None:
    """Replace the (partly zero) initialisation by random weights so that every path carries signal."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std + (parameter.ndim == 1) * 0.5)


# -- architecture ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "options", "published"),
    [
        ("ddpmpp", {"in_channels": 3, "label_dim": 10, "augment_dim": 9}, 55.74e6),
        ("ncsnpp", {"in_channels": 3}, 56.40e6),
    ],
)
def test_parameter_count_matches_published_configuration(arch: str, options: dict, published: float) -> None:
    """CIFAR-10 32x32 configurations of EDM (Karras et al. 2022), Table 7 / Appendix F.2."""
    with torch.device("meta"):
        network = build_network(arch, **options)
    assert count_parameters(network) == pytest.approx(published, rel=0.01)


def test_preset_defaults_follow_the_papers() -> None:
    ddpmpp, ncsnpp = PRESETS["ddpmpp"](), PRESETS["ncsnpp"]()
    assert (ddpmpp.model_channels, ddpmpp.channel_mult, ddpmpp.num_blocks, ddpmpp.attn_resolutions) == (
        128,
        (2, 2, 2),
        4,
        (16,),
    )
    assert (ddpmpp.embedding_type, ddpmpp.encoder_type, ddpmpp.resample_filter) == ("positional", "standard", (1, 1))
    assert (ncsnpp.embedding_type, ncsnpp.encoder_type, ncsnpp.resample_filter) == ("fourier", "residual", (1, 3, 3, 1))
    assert ncsnpp.channel_mult_noise == 2
    for field in DDPMppParams.model_fields.values():
        assert field.description, "every preset option carries a description"


@pytest.mark.parametrize("arch", SONG_PRESETS)
@pytest.mark.parametrize("grid", [(16, 16), (33, 49), (12, 20)])
@pytest.mark.parametrize("conditioning", ["none", "fields", "labels", "augment", "all"])
def test_output_shape_for_any_grid_and_conditioning(arch: str, grid: tuple[int, int], conditioning: str) -> None:
    height, width = grid
    fields = conditioning in ("fields", "all")
    labels = conditioning in ("labels", "all")
    augment = conditioning in ("augment", "all")
    network = _tiny(
        arch, in_channels=2, cond_channels=3 if fields else 0, label_dim=4 if labels else 0, augment_dim=5 * augment
    )
    cond: dict[str, torch.Tensor] = {}
    if fields:
        cond["cond_fields"] = torch.randn(2, 3, height, width)
    if labels:
        cond["class_labels"] = torch.nn.functional.one_hot(torch.tensor([1, 3]), 4).float()
    if augment:
        cond["augment_labels"] = torch.randn(2, 5)
    x = torch.randn(2, 2, height, width)
    assert network(x, torch.randn(2), **cond).shape == x.shape


@pytest.mark.parametrize("encoder_type", ["standard", "skip", "residual"])
@pytest.mark.parametrize("decoder_type", ["standard", "skip"])
def test_gradients_reach_every_parameter(encoder_type: str, decoder_type: str) -> None:
    network = _tiny(
        "ncsnpp",
        in_channels=1,
        cond_channels=2,
        label_dim=3,
        augment_dim=2,
        encoder_type=encoder_type,
        decoder_type=decoder_type,
    )
    _randomise(network)
    x = torch.randn(2, 1, 16, 24)
    out = network(
        x,
        torch.randn(2),
        cond_fields=torch.randn(2, 2, 16, 24),
        class_labels=torch.randn(2, 3),
        augment_labels=torch.randn(2, 2),
    )
    out.square().mean().backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", SONG_PRESETS)
def test_periodic_longitude_equivariance(arch: str) -> None:
    """F(roll(x, r)) = roll(F(x), r) for rolls r along W by multiples of the downsampling factor 2^(L-1) = 4
    (any other roll moves the stride-2 sampling grids, so it is equivariant only up to aliasing)."""
    network = _tiny(arch, in_channels=1, cond_channels=1, periodic_longitude=True).eval()
    _randomise(network)
    x, fields, c_noise = torch.randn(1, 1, 13, 24), torch.randn(1, 1, 13, 24), torch.randn(1)
    out = network(x, c_noise, cond_fields=fields)
    for shift in (4, 8, -12):
        rolled = network(x.roll(shift, -1), c_noise, cond_fields=fields.roll(shift, -1))
        torch.testing.assert_close(rolled, out.roll(shift, -1), atol=1e-4, rtol=1e-4)
    non_periodic = _tiny(arch, in_channels=1, cond_channels=1).eval()
    non_periodic.load_state_dict(network.state_dict())
    rolled = non_periodic(x.roll(4, -1), c_noise, cond_fields=fields.roll(4, -1))
    assert not torch.allclose(rolled, non_periodic(x, c_noise, cond_fields=fields).roll(4, -1), atol=1e-3)


def test_determinism_under_a_fixed_seed() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(7)
        network = _tiny("ddpmpp", in_channels=1, label_dim=2, dropout=0.3, label_dropout=0.5).train()
        x = torch.randn(3, 1, 16, 16)
        return network(x, torch.randn(3), class_labels=torch.randn(3, 2))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_label_dropout_only_in_training() -> None:
    labels = torch.ones(1000, 3)
    dropped = drop_labels(labels, 0.25, torch.Generator().manual_seed(0))
    kept = dropped[:, 0] == 1
    assert torch.all(dropped[~kept] == 0) and torch.all(dropped[kept] == 1)
    assert kept.float().mean() == pytest.approx(0.75, abs=0.05)
    network = _tiny("ddpmpp", in_channels=1, label_dim=3, label_dropout=0.9).eval()
    _randomise(network)
    x, c_noise, class_labels = torch.randn(4, 1, 8, 8), torch.randn(4), torch.randn(4, 3)
    torch.testing.assert_close(
        network(x, c_noise, class_labels=class_labels), network(x, c_noise, class_labels=class_labels)
    )


# -- bad input ------------------------------------------------------------------------------------------


def test_bad_input_names_expected_and_given_shapes() -> None:
    network = _tiny("ddpmpp", in_channels=2, cond_channels=1, label_dim=3)
    x, c_noise = torch.randn(2, 2, 16, 16), torch.randn(2)
    fields, labels = torch.randn(2, 1, 16, 16), torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 2, height, width\), got \(2, 3, 16, 16\)"):
        network(torch.randn(2, 3, 16, 16), c_noise, cond_fields=fields, class_labels=labels)
    with pytest.raises(ValueError, match=r"cond_fields: expected shape \(2, 1, 16, 16\), got \(2, 2, 16, 16\)"):
        network(x, c_noise, cond_fields=torch.randn(2, 2, 16, 16), class_labels=labels)
    with pytest.raises(ValueError, match=r"cond_fields: expected shape \(2, 1, 16, 16\), got None"):
        network(x, c_noise, class_labels=labels)
    with pytest.raises(ValueError, match=r"class_labels: expected shape \(2, 3\), got \(2, 10\)"):
        network(x, c_noise, cond_fields=fields, class_labels=torch.randn(2, 10))
    with pytest.raises(
        ValueError, match=r"augment_labels of shape \(2, 4\) given to a network built with augment_dim=0"
    ):
        network(x, c_noise, cond_fields=fields, class_labels=labels, augment_labels=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"c_noise: expected shape \(2,\), got \(3,\)"):
        network(x, torch.randn(3), cond_fields=fields, class_labels=labels)
    with pytest.raises(ValueError, match=r"grid 3 x 16 is too small .* at least 4"):
        network(x[..., :3, :], c_noise, cond_fields=fields[..., :3, :], class_labels=labels)
    strict = _tiny("ddpmpp", in_channels=1, pad_mode="none")
    with pytest.raises(ValueError, match=r"multiples of 4, e\.g\. 32 or 36 x 48 or 52"):
        strict(torch.randn(1, 1, 33, 49), torch.randn(1))


def test_build_network_validates_options() -> None:
    with pytest.raises(ConfigError, match=r"model: unknown key 'channels'"):
        build_network("ddpmpp", channels=3)
    with pytest.raises(ConfigError, match=r"model.encoder_type = 'fancy'"):
        build_network("ncsnpp", encoder_type="fancy")
    with pytest.raises(ValueError, match=r"arch = 'unet': must be one of \['ddpmpp', 'ncsnpp', 'adm', 'edm2'\]"):
        build_network("unet")
    network = build_network("DDPMpp", **TINY)
    assert describe_network(network, "ddpmpp").startswith("ddpmpp: 0.")


# -- inside the denoiser ----------------------------------------------------------------------------------


class _TargetNetwork(nn.Module):
    """F that returns its training target (y - c_skip x) / c_out for known y and sigma (EDM Eq. 8)."""

    def __init__(self, formulation: diffscale.Formulation, clean: torch.Tensor, sigma: torch.Tensor) -> None:
        super().__init__()
        self.formulation, self.clean, self.sigma = formulation, clean, sigma

    def forward(self, scaled_x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, c_in, _ = (c.reshape(-1, 1, 1, 1) for c in self.formulation.preconditioning(self.sigma))
        x = scaled_x / c_in
        return (self.clean - c_skip * x) / c_out


@pytest.mark.parametrize("name", ["EDM", "VP", "VE", "iDDPM"])
def test_preconditioner_identity(name: str) -> None:
    """If F returns its training target, D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) is the clean data."""
    f = diffscale.formulation(name)
    clean = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    sigma = f.round_sigma(torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64))
    x = clean + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(clean)
    denoiser = PreconditionedDenoiser(_TargetNetwork(f, clean, sigma), f)
    torch.testing.assert_close(denoiser(x, sigma), clean)


def test_unet_inside_the_denoiser_receives_scaled_state_and_unscaled_fields() -> None:
    f = diffscale.formulation("EDM", sigma_data=0.5)
    network = _tiny("ddpmpp", in_channels=1, cond_channels=1)
    _randomise(network)
    denoiser = PreconditionedDenoiser(network, f)
    x, fields, sigma = torch.randn(2, 1, 12, 20), torch.randn(2, 1, 12, 20), torch.tensor([0.3, 3.0])
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in f.preconditioning(sigma))
    expected = c_skip * x + c_out * network(c_in * x, c_noise.reshape(-1), cond_fields=fields)
    torch.testing.assert_close(denoiser(x, sigma, cond_fields=fields), expected)


def test_learned_variance_for_iddpm() -> None:
    network = _tiny("ddpmpp", in_channels=2, learned_variance=True)
    assert network.out_channels == 4
    x = torch.randn(2, 2, 16, 16)
    mean, variance = split_learned_variance(network(x, torch.randn(2)))
    assert mean.shape == variance.shape == x.shape
    sigma = torch.tensor([1.0, 5.0])
    denoiser = PreconditionedDenoiser(MeanOutput(network), diffscale.formulation("iDDPM"))
    assert denoiser(x, sigma).shape == x.shape
    if getattr(diffscale.formulation("iDDPM"), "learned_variance", None) is not None:
        # A formulation that learns the variance splits F's 2C channels itself: the same D, plus v.
        learned = PreconditionedDenoiser(network, diffscale.formulation("iDDPM", learned_variance=True))
        torch.testing.assert_close(learned(x, sigma), denoiser(x, sigma))
    with pytest.raises(ValueError, match="out_channels = 2 \\* in_channels = 4"):
        _tiny("ddpmpp", in_channels=2, learned_variance=True, out_channels=3)


def test_bf16_autocast_and_channels_last_follow_float32() -> None:
    network = _tiny("ddpmpp", in_channels=1).eval()
    _randomise(network, std=0.05)
    x, c_noise = torch.randn(2, 1, 16, 16), torch.randn(2)
    reference = network(x, c_noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = network(x, c_noise)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()
    network = network.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        network(x.to(memory_format=torch.channels_last), c_noise), reference, atol=1e-4, rtol=1e-4
    )


def _smooth_fields(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random smooth periodic fields: sums of three low-wavenumber waves with random phases."""
    grid = torch.arange(size) * (2 * math.pi / size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    fields = torch.zeros(count, 1, size, size)
    for _ in range(3):
        kx, ky = torch.randint(0, 3, (2, count, 1, 1, 1), generator=generator).float()
        phase = torch.rand(count, 1, 1, 1, generator=generator) * 2 * math.pi
        fields += torch.cos(kx * xx + ky * yy + phase) / math.sqrt(3)
    return fields


def test_small_unet_learns_toy_fields() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    f = diffscale.formulation("EDM", sigma_data=0.5)
    network = build_network(
        "ddpmpp",
        in_channels=1,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        img_resolution=16,
        attn_resolutions=(),
        dropout=0.0,
    )
    denoiser = PreconditionedDenoiser(network, f)
    loss = diffscale.DenoisingLoss(f)
    data = _smooth_fields(512, 16, generator)
    held_out = _smooth_fields(64, 16, generator)

    def evaluate() -> float:
        with torch.no_grad():
            return float(loss(denoiser, held_out, torch.Generator().manual_seed(1)).mean)

    before = evaluate()
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    for _ in range(200):
        batch = data[torch.randint(0, len(data), (16,), generator=generator)]
        optimizer.zero_grad()
        loss(denoiser, batch, generator).mean.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.6 * before, (before, after)


def test_preset_model_builds_with_data_overrides_and_logs_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    params = PRESETS["ncsnpp"](**TINY)
    with caplog.at_level("INFO", logger="diffscale.networks.presets"):
        network = params.build(in_channels=2, cond_channels=3)
    assert (network.in_channels, network.cond_channels, network.out_channels) == (2, 3, 2)
    assert "ncsnpp: " in caplog.text and "M parameters" in caplog.text
    with pytest.raises(ConfigError, match=r"model\.in_channels = 0"):
        params.build(in_channels=0)
