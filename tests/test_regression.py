"""The regression model mu(c) = F(0; 0, c) and its mean-squared-error objective."""

from __future__ import annotations

import pytest
import torch

from diffscale.networks.presets import build_network
from diffscale.regression import RegressionLoss, RegressionModel


def _network(cond_channels: int = 1) -> torch.nn.Module:
    return build_network(
        "ddpmpp",
        in_channels=1,
        cond_channels=cond_channels,
        model_channels=16,
        channel_mult=[1, 1],
        num_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
        img_resolution=8,
    )


def test_model_feeds_zero_state_and_zero_noise_level() -> None:
    network = _network()
    model = RegressionModel(network, channels=1).eval()
    cond = torch.randn(3, 1, 8, 12)
    expected = network(torch.zeros(3, 1, 8, 12), torch.zeros(3), cond_fields=cond)
    torch.testing.assert_close(model(cond), expected, rtol=0, atol=0)


def test_loss_is_the_per_sample_mean_squared_error() -> None:
    model = RegressionModel(_network(), channels=1)
    cond, target = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    terms = RegressionLoss()(model, target, None, cond_fields=cond)
    with torch.no_grad():
        explicit = ((model(cond) - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms.per_sample.detach(), explicit)
    assert terms.sigma is None


def test_training_reaches_the_conditional_mean_of_a_linear_gaussian_problem() -> None:
    """y = 2 c + 0.5 n: the regression function is E[y | c] = 2 c and the least achievable MSE is 0.25."""
    torch.manual_seed(0)
    model = RegressionModel(_network(), channels=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss = RegressionLoss()
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        cond = torch.randn(16, 1, 8, 8, generator=generator)
        target = 2 * cond + 0.5 * torch.randn(16, 1, 8, 8, generator=generator)
        value = loss(model, target, None, cond_fields=cond).mean
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    cond = torch.randn(64, 1, 8, 8, generator=generator)
    with torch.no_grad():
        error = (model(cond) - 2 * cond).square().mean().item()
    assert error < 0.25 * 0.2  # the fitted mean is far closer to 2c than the noise variance


def test_bad_inputs_are_named() -> None:
    model = RegressionModel(_network(), channels=1)
    with pytest.raises(ValueError, match="cond_fields"):
        RegressionLoss()(model, torch.zeros(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match="cond_fields: expected shape"):
        model(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="channels = 0"):
        RegressionModel(_network(), channels=0)


def test_row_weights_weight_the_squared_error_of_each_row() -> None:
    model = RegressionModel(_network(), channels=1)
    cond, target = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    weights = torch.linspace(0.0, 2.0, 8).expand(2, 8)  # mean 1 over the rows
    terms = RegressionLoss()(model, target, None, cond_fields=cond, row_weights=weights)
    with torch.no_grad():
        explicit = (((model(cond) - target) ** 2) * weights[:, None, :, None]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms.per_sample.detach(), explicit)
