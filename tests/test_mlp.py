"""The toy MLP network and the noise embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from diffscale.networks import MLP, FourierEmbedding, PositionalEmbedding


def test_shapes_and_gradients_reach_every_parameter() -> None:
    network = MLP(3, width=16, depth=2, label_dim=4)
    out = network(torch.randn(5, 3), torch.randn(5), labels=torch.randn(5, 4))
    assert out.shape == (5, 3)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_output_depends_on_the_noise_level() -> None:
    network = MLP(1, width=16, depth=1)
    x = torch.zeros(2, 1)
    out = network(x, torch.tensor([0.0, 3.0]))
    assert not torch.allclose(out[0], out[1])


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2\), got \(4, 3\)"):
        MLP(2)(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels: expected shape \(4, 2\), got \(4, 3\)"):
        MLP(2, label_dim=2)(torch.zeros(4, 2), torch.zeros(4), labels=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="label_dim = 0"):
        MLP(2)(torch.zeros(4, 2), torch.zeros(4), labels=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="width = 0"):
        MLP(2, width=0)


def test_positional_embedding_closed_form() -> None:
    embedding = PositionalEmbedding(4, max_positions=100)
    c = torch.tensor([0.5, 2.0])
    out = embedding(c)
    for i, value in enumerate(c.tolist()):
        expected = [math.cos(value), math.cos(value / 10), math.sin(value), math.sin(value / 10)]
        assert out[i].tolist() == pytest.approx(expected, rel=1e-6)


def test_fourier_embedding_is_seeded_and_bounded() -> None:
    a, b = FourierEmbedding(8, seed=3), FourierEmbedding(8, seed=3)
    c = torch.linspace(-2, 2, 7)
    torch.testing.assert_close(a(c), b(c))
    assert a(c).shape == (7, 8) and a(c).abs().max() <= 1.0
    with pytest.raises(ValueError, match="even number"):
        FourierEmbedding(3)
