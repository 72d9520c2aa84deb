"""The magnitude-preserving layers and U-Net of EDM2 against their closed forms, the preset in configurations, and a
tiny training run whose held-out loss falls."""

from __future__ import annotations

import math

import pytest
import torch

import diffscale
from diffscale.config import config_from_dict
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.networks import EDM2UNet, build_network, renormalize_weights
from diffscale.networks.edm2_unet import EDM2Block
from diffscale.networks.mp_layers import SILU_RMS, MPConv, MPFourier, mp_cat, mp_silu, mp_sum, pixel_norm
from diffscale.training import Trainer
from diffscale.training.settings import TrainingSettings

TINY = {"model_channels": 8, "channel_mult": (1, 2), "num_blocks": 1, "img_resolution": 16, "attn_resolutions": (8,)}


def _normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.8])
def test_mp_sum_of_independent_unit_variances_has_unit_variance(t: float) -> None:
    a, b = _normal(400_000, seed=1), _normal(400_000, seed=2)
    # Var = ((1 - t)^2 + t^2) / ((1 - t)^2 + t^2) = 1; the sample std of 4e5 normals is within 0.5 % of it
    assert float(mp_sum(a, b, t).var()) == pytest.approx(1.0, abs=0.01)
    # and it is the normalised lerp exactly
    torch.testing.assert_close(mp_sum(a, b, t), ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t**2))


@pytest.mark.parametrize(("widths", "t"), [((8, 8), 0.5), ((4, 28), 0.5), ((16, 48), 0.3)])
def test_mp_cat_has_unit_mean_square_and_shares_by_t(widths: tuple[int, int], t: float) -> None:
    a, b = _normal(20_000, widths[0], seed=3), _normal(20_000, widths[1], seed=4)
    out = mp_cat(a, b, dim=1, t=t)
    assert out.shape == (20_000, sum(widths))
    assert float(out.square().mean()) == pytest.approx(1.0, abs=0.01)
    share_a = float(out[:, : widths[0]].square().sum() / out.square().sum())
    assert share_a == pytest.approx((1 - t) ** 2 / ((1 - t) ** 2 + t**2), abs=0.01)


def test_mp_silu_divisor_is_the_rms_of_silu_of_a_standard_normal() -> None:
    # E[SiLU(z)^2] by quadrature on a fine grid (the tails beyond |z| = 12 weigh below 1e-30)
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)
    second_moment = torch.trapezoid(torch.nn.functional.silu(z).square() * density, z)
    assert math.sqrt(float(second_moment)) == pytest.approx(0.59647, abs=1e-5)  # the paper rounds it to 0.596
    assert round(math.sqrt(float(second_moment)), 3) == SILU_RMS
    assert float(mp_silu(_normal(400_000, seed=5)).square().mean()) == pytest.approx(1.0, abs=0.01)


def test_forced_weight_normalisation_gives_unit_norm_rows_and_scale_invariance() -> None:
    torch.manual_seed(0)
    conv = MPConv(6, 5, kernel=3)
    with torch.no_grad():
        conv.weight.mul_(torch.arange(1, 6, dtype=torch.float32).reshape(5, 1, 1, 1))  # rows of unequal norms
    rows = conv.effective_weight().reshape(5, -1).norm(dim=1)
    torch.testing.assert_close(rows, torch.ones(5), atol=3e-4, rtol=0)  # 1 - eps sqrt(N) / ||w_i||, eps = 1e-4
    x = torch.randn(2, 6, 7, 7)
    before = conv(x)
    assert renormalize_weights(conv) == 1
    stored = conv.weight.reshape(5, -1).norm(dim=1)
    torch.testing.assert_close(stored, torch.full((5,), math.sqrt(6 * 9)), atol=1e-2, rtol=0)
    torch.testing.assert_close(conv(x), before, atol=1e-4, rtol=1e-4)  # the forward pass ignores row norms
    # a unit-norm row applied to independent unit-variance inputs keeps the variance (1x1 linear map)
    linear = MPConv(256, 64, kernel=0)
    with torch.no_grad():
        out = linear(torch.randn(4000, 256))
    assert float(out.var()) == pytest.approx(1.0, abs=0.05)


def test_pixel_norm_and_fourier_features_have_unit_mean_square() -> None:
    x = torch.randn(3, 16, 5, 5) * (torch.rand(3, 1, 5, 5) + 0.5) * 10
    torch.testing.assert_close(pixel_norm(x).square().mean(dim=1), torch.ones(3, 5, 5), atol=1e-3, rtol=0)
    features = MPFourier(4096)(torch.tensor([0.3, -1.7]))
    assert features.square().mean(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=0.05)


@pytest.mark.parametrize(
    ("flavor", "in_channels", "out_channels", "resample", "attention"),
    [
        ("enc", 64, 64, "keep", False),
        ("enc", 32, 64, "down", False),
        ("dec", 128, 64, "keep", False),
        ("dec", 64, 64, "up", False),
        ("enc", 32, 64, "down", True),
        ("dec", 128, 64, "keep", True),
    ],
)
def test_block_keeps_unit_variance_at_initialisation(
    flavor: str, in_channels: int, out_channels: int, resample: str, attention: bool
) -> None:
    """Unit-variance input, unit mean square output. Attention at initialisation averages v over nearly all positions
    (cosine logits are small), so its output is close to 0 and x = mp_sum(x, a, 0.3) has mean square down to
    0.7^2 / (0.7^2 + 0.3^2) = 0.845: the closed form bounds that case."""
    torch.manual_seed(0)
    block = EDM2Block(
        in_channels, out_channels, 32, flavor=flavor, resample=resample, attention=attention, channels_per_head=16
    ).eval()
    x = torch.randn(8, in_channels, 16, 16)
    emb = mp_silu(torch.randn(8, 32))
    with torch.no_grad():
        mean_square = float(block(x, emb).square().mean())
    if attention:
        assert 0.49 / 0.58 - 0.05 < mean_square < 1.1
    else:
        assert mean_square == pytest.approx(1.0, abs=0.1)


def test_network_output_starts_at_zero_and_has_unit_scale_with_unit_gain() -> None:
    torch.manual_seed(0)
    network = EDM2UNet(2, cond_channels=3, label_dim=4, **TINY).eval()
    x, fields = torch.randn(4, 2, 16, 16), torch.randn(4, 3, 16, 16)
    labels = torch.nn.functional.one_hot(torch.arange(4), 4).float()
    with torch.no_grad():
        assert torch.count_nonzero(network(x, torch.randn(4), cond_fields=fields, class_labels=labels)) == 0
        network.out_gain.fill_(1.0)
        out = network(x, torch.randn(4), cond_fields=fields, class_labels=labels)
    assert 0.3 < float(out.square().mean()) < 3.0


@pytest.mark.parametrize(("grid", "conditioning"), [((16, 16), "none"), ((13, 22), "fields"), ((8, 12), "all")])
def test_edm2_takes_the_conditioning_of_the_other_presets(grid: tuple[int, int], conditioning: str) -> None:
    options = dict(TINY)
    if conditioning != "none":
        options["cond_channels"] = 5
    if conditioning == "all":
        options.update(label_dim=3, augment_dim=2)
    network = build_network("edm2", in_channels=2, **options)
    with torch.no_grad():
        network.out_gain.fill_(1.0)
    cond = {}
    if conditioning != "none":
        cond["cond_fields"] = torch.randn(2, 5, *grid)
    if conditioning == "all":
        cond.update(class_labels=torch.rand(2, 3), augment_labels=torch.randn(2, 2))
    out = network(torch.randn(2, 2, *grid), torch.randn(2), **cond)
    assert out.shape == (2, 2, *grid)
    out.square().mean().backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name


def test_periodic_longitude_equivariance() -> None:
    torch.manual_seed(0)
    network = EDM2UNet(1, cond_channels=1, periodic_longitude=True, **TINY).eval()
    with torch.no_grad():
        network.out_gain.fill_(1.0)
        for block in network.modules():
            if isinstance(block, EDM2Block):
                block.emb_gain.fill_(0.5)
    x, fields, c_noise = torch.randn(1, 1, 12, 24), torch.randn(1, 1, 12, 24), torch.randn(1)
    with torch.no_grad():
        out = network(x, c_noise, cond_fields=fields)
        for shift in (2, 6, -10):
            rolled = network(x.roll(shift, -1), c_noise, cond_fields=fields.roll(shift, -1))
            torch.testing.assert_close(rolled, out.roll(shift, -1), atol=1e-4, rtol=1e-4)


def test_configuration_names_the_preset_and_builds_it() -> None:
    config = config_from_dict(
        {
            "model": {
                "arch": "edm2",
                **{key: list(value) if isinstance(value, tuple) else value for key, value in TINY.items()},
            },
            "data": {"kind": "gaussian_fields", "channels": 2, "height": 8, "width": 12},
            "training": {"device": "cpu"},
        }
    )
    denoiser = diffscale.runs.build_denoiser(config)
    assert isinstance(denoiser.network, EDM2UNet) and denoiser.network.in_channels == 2
    with pytest.raises(diffscale.ConfigError, match=r"model\.res_balance"):
        config_from_dict({"model": {"arch": "edm2", "res_balance": 1.5}, "data": {"kind": "gaussian_fields"}})


def test_tiny_training_lowers_the_held_out_loss_and_keeps_rows_normalised() -> None:
    torch.manual_seed(0)
    f = diffscale.formulation("EDM", sigma_data=0.5)
    network = build_network("edm2", in_channels=1, **{**TINY, "attn_resolutions": ()})
    denoiser = PreconditionedDenoiser(network, f)
    yy, xx = torch.meshgrid(torch.linspace(0, 2 * math.pi, 16), torch.linspace(0, 2 * math.pi, 16), indexing="ij")

    def fields(count: int, gen: torch.Generator) -> torch.Tensor:
        phase = torch.rand(count, 1, 1, 1, generator=gen) * 2 * math.pi
        return 0.5 * torch.sin(xx + phase) * torch.cos(yy)

    held_out = fields(64, torch.Generator().manual_seed(9))
    loss = diffscale.DenoisingLoss(f)

    def evaluate() -> float:
        with torch.no_grad():
            return float(loss(denoiser, held_out, torch.Generator().manual_seed(1)).mean)

    before = evaluate()
    settings = TrainingSettings(
        steps=60, batch_size=16, learning_rate=1e-2, warmup_steps=10, device="cpu", ema_halflife=0, threads=1
    )
    trainer = Trainer(denoiser, lambda n, gen: fields(n, gen), settings)
    trainer.run(progress=False)
    after = evaluate()
    print(f"held-out loss {before:.4f} -> {after:.4f}")
    assert after < 0.6 * before, (before, after)
    for module in network.modules():
        if isinstance(module, MPConv):
            norms = module.weight.reshape(module.out_channels, -1).norm(dim=1)
            expected = math.sqrt(module.weight[0].numel())
            torch.testing.assert_close(norms, torch.full_like(norms, expected), atol=1e-2 * expected, rtol=0)
