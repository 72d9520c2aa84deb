"""The preconditioned denoiser D = c_skip x + c_out F(c_in x; c_noise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffscale
from diffscale.denoiser import PreconditionedDenoiser, expand_sigma
from tests.conftest import FORMULATION_NAMES


class OracleNetwork(nn.Module):
    """Returns F's training target (y - c_skip x) / c_out, knowing y, sigma and the formulation."""

    def __init__(self, clean: torch.Tensor, sigma: torch.Tensor, formulation: diffscale.Formulation) -> None:
        super().__init__()
        self.clean, self.sigma, self.formulation = clean, sigma, formulation
        self.weight = nn.Parameter(torch.zeros(()))  # gives the module a dtype
        self.seen_noise: torch.Tensor | None = None

    def forward(self, network_input: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.seen_noise = c_noise
        c_skip, c_out, c_in, _ = (c.double()[:, None] for c in self.formulation.preconditioning(self.sigma))
        x = network_input.double() / c_in
        return ((self.clean - c_skip * x) / c_out).to(network_input.dtype)


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_network_returning_its_target_gives_the_clean_data(name: str) -> None:
    f = diffscale.formulation(name)
    clean = torch.randn(6, 3, dtype=torch.float64)
    sigma = f.round_sigma(torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0, 60.0], dtype=torch.float64))
    network = OracleNetwork(clean, sigma, f).double()
    denoiser = PreconditionedDenoiser(network, f)
    x = clean + sigma[:, None] * torch.randn_like(clean)
    torch.testing.assert_close(denoiser(x, sigma), clean)
    torch.testing.assert_close(network.seen_noise, f.preconditioning(sigma)[3])


def test_float32_network_serves_a_float64_sampler() -> None:
    f = diffscale.formulation("EDM")
    network = diffscale.networks.MLP(2, width=16, depth=1)
    out = PreconditionedDenoiser(network, f)(torch.randn(4, 2, dtype=torch.float64), 0.7)
    assert out.dtype == torch.float64 and out.shape == (4, 2)


def test_conditioning_is_passed_unscaled() -> None:
    f = diffscale.formulation("EDM")
    network = diffscale.networks.MLP(1, width=8, depth=1, label_dim=2)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    denoiser = PreconditionedDenoiser(network, f)
    x, sigma = torch.randn(2, 1), torch.tensor([1.0, 1.0])
    _, c_out, c_in, c_noise = f.preconditioning(sigma)
    raw = network(c_in[:, None] * x, c_noise, labels=labels)
    torch.testing.assert_close(
        denoiser(x, sigma, labels=labels) - f.preconditioning(sigma)[0][:, None] * x, c_out[:, None] * raw
    )


def test_expand_sigma() -> None:
    x = torch.zeros(3, 2, 4, 4)
    assert expand_sigma(0.5, x).shape == (3,)
    assert expand_sigma(torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1, 1, 1), x).tolist() == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="sigma has 2 values; expected 1 or the batch length 3"):
        expand_sigma(torch.tensor([0.1, 0.2]), x)


def test_wrong_network_output_shape_is_reported() -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return x[:, :1]

    with pytest.raises(ValueError, match=r"network returned shape \(2, 1\), expected \(2, 3\)"):
        PreconditionedDenoiser(Bad(), diffscale.formulation("VE"))(torch.zeros(2, 3), 1.0)
