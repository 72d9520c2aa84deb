"""Tests of diffscale.evaluation.distances against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffscale.data import GaussianMixture, ring_2d, two_gaussians_1d
from diffscale.evaluation.distances import (
    component_weights,
    gaussian_cdf,
    sliced_wasserstein1,
    wasserstein1,
    wasserstein1_to_cdf,
)


def normal_quantiles(n: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """A deterministic "perfect" sample of N(mean, std^2): the quantiles at (i + 1/2) / n."""
    return mean + std * norm.ppf((np.arange(n) + 0.5) / n)


def expected_abs_deviation(c: float) -> float:
    """E|X - c| for X ~ N(0, 1): c (2 Phi(c) - 1) + 2 phi(c), the W1 between N(0, 1) and a point mass at c."""
    return c * (2.0 * norm.cdf(c) - 1.0) + 2.0 * norm.pdf(c)


class TestWasserstein1ToCdf:
    @pytest.mark.parametrize("mu", [0.0, 0.3, -1.5, 4.0])
    def test_shifted_normal_gives_the_shift(self, mu: float) -> None:
        # W1(N(0, 1), N(mu, 1)) = |mu|; the quantile sample has W1 to N(0, 1) of O(log(n) / n).
        samples = normal_quantiles(20_000)
        assert wasserstein1_to_cdf(samples, gaussian_cdf(mu, 1.0)) == pytest.approx(abs(mu), abs=2e-3)

    def test_random_normal_sample_converges(self) -> None:
        generator = torch.Generator().manual_seed(0)
        samples = torch.randn(200_000, generator=generator, dtype=torch.float64)
        # Statistical error of W1 for n draws of N(0, 1) is about 1 / sqrt(n) ~ 0.002.
        assert wasserstein1_to_cdf(samples, gaussian_cdf(0.7, 1.0)) == pytest.approx(0.7, abs=0.01)
        assert wasserstein1_to_cdf(samples, gaussian_cdf(0.0, 1.0)) < 0.01

    @pytest.mark.parametrize("c", [0.0, 0.5, -2.0])
    def test_point_mass(self, c: float) -> None:
        samples = np.full(10, c)
        assert wasserstein1_to_cdf(samples, gaussian_cdf()) == pytest.approx(expected_abs_deviation(c), rel=1e-6)

    def test_point_mass_at_zero_is_mean_absolute_value(self) -> None:
        assert wasserstein1_to_cdf(torch.zeros(3, 1), gaussian_cdf()) == pytest.approx(math.sqrt(2 / math.pi), 1e-6)

    def test_translation_and_scale(self) -> None:
        samples = normal_quantiles(500, 0.2, 1.3)  # a deliberately imperfect sample of N(0, 1)
        base = wasserstein1_to_cdf(samples, gaussian_cdf(0.0, 1.0))
        shifted = wasserstein1_to_cdf(samples + 5.0, gaussian_cdf(5.0, 1.0))
        scaled = wasserstein1_to_cdf(3.0 * samples, gaussian_cdf(0.0, 3.0))
        assert shifted == pytest.approx(base, rel=1e-6)
        assert scaled == pytest.approx(3.0 * base, rel=1e-6)

    def test_order_of_samples_is_irrelevant(self) -> None:
        samples = np.random.default_rng(1).normal(size=300)
        cdf = gaussian_cdf()
        assert wasserstein1_to_cdf(samples[::-1], cdf) == pytest.approx(wasserstein1_to_cdf(samples, cdf), 1e-12)

    def test_mixture_cdf_matches_sample_distance(self) -> None:
        mixture = two_gaussians_1d()
        samples = mixture.sample(100_000, torch.Generator().manual_seed(2), dtype=torch.float64)
        assert wasserstein1_to_cdf(samples, mixture.cdf) < 0.01
        # Moving every sample by 0.1 moves the distance by about 0.1.
        assert wasserstein1_to_cdf(samples + 0.1, mixture.cdf) == pytest.approx(0.1, abs=0.01)

    @pytest.mark.parametrize(
        ("samples", "message"),
        [
            (np.zeros(0), "no samples"),
            (np.zeros((4, 2)), "1-D samples"),
            (np.zeros((2, 2, 2)), "1-D samples"),
            (np.array([0.0, np.nan]), "finite"),
        ],
    )
    def test_bad_samples(self, samples: np.ndarray, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            wasserstein1_to_cdf(samples, gaussian_cdf())

    def test_not_a_cdf(self) -> None:
        with pytest.raises(ValueError, match="distribution function"):
            wasserstein1_to_cdf(np.zeros(3), lambda x: 0.5 * torch.ones_like(x))


class TestSampleDistances:
    def test_two_point_masses(self) -> None:
        assert wasserstein1([0.0, 0.0], [2.5]) == pytest.approx(2.5)

    def test_shift_between_samples(self) -> None:
        samples = np.random.default_rng(0).normal(size=1000)
        assert wasserstein1(samples, samples + 0.4) == pytest.approx(0.4, 1e-12)
        assert wasserstein1(samples, samples) == 0.0

    def test_uniform_grids(self) -> None:
        # {0, 1} against {0, 1, 2, 3}: integral of |F_a - F_b| = 0.25 + 0.5 + 0.25 ... = 1.0
        assert wasserstein1([0.0, 1.0], [0.0, 1.0, 2.0, 3.0]) == pytest.approx(1.0)

    def test_symmetric(self) -> None:
        rng = np.random.default_rng(3)
        a, b = rng.normal(size=50), rng.exponential(size=70)
        assert wasserstein1(a, b) == pytest.approx(wasserstein1(b, a), 1e-12)

    def test_sliced_in_one_dimension_is_exact(self) -> None:
        rng = np.random.default_rng(4)
        a, b = rng.normal(size=(200, 1)), rng.normal(1.0, size=(300, 1))
        assert sliced_wasserstein1(a, b) == pytest.approx(wasserstein1(a, b), 1e-12)

    def test_sliced_translation(self) -> None:
        # Every projection of a translation by v moves by theta^T v, so SW1 = E|theta^T v| = |v| 2 / pi in 2-D.
        rng = np.random.default_rng(5)
        a = rng.normal(size=(500, 2))
        v = np.array([0.6, -0.8])
        value = sliced_wasserstein1(a, a + v, projections=2000)
        assert value == pytest.approx(2.0 / math.pi, rel=0.03)

    def test_sliced_invariances(self) -> None:
        ring = ring_2d()
        generator = torch.Generator().manual_seed(6)
        a, b = ring.sample(1500, generator, dtype=torch.float64), ring.sample(1500, generator, dtype=torch.float64)
        base = sliced_wasserstein1(a, b + 0.2, projections=512)
        angle = 0.7
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        rotated = sliced_wasserstein1(a @ rotation.T.double(), (b + 0.2) @ rotation.T.double(), projections=512)
        shifted = sliced_wasserstein1(a + 3.0, b + 3.2, projections=512)
        scaled = sliced_wasserstein1(2.0 * a, 2.0 * (b + 0.2), projections=512)
        assert shifted == pytest.approx(base, rel=1e-9)
        assert scaled == pytest.approx(2.0 * base, rel=1e-9)
        assert rotated == pytest.approx(base, rel=0.05)  # different random slices of the same pair

    def test_sliced_separates_ring_from_its_noisy_version(self) -> None:
        ring = ring_2d()
        generator = torch.Generator().manual_seed(7)
        a, b = ring.sample(3000, generator), ring.sample(3000, generator)
        blurred = GaussianMixture(ring.means, stds=[0.3] * 8).sample(3000, generator)
        assert sliced_wasserstein1(a, b) < 0.5 * sliced_wasserstein1(a, blurred)

    def test_sliced_bad_input(self) -> None:
        with pytest.raises(ValueError, match="D = 2 but reference has D = 3"):
            sliced_wasserstein1(np.zeros((3, 2)), np.zeros((3, 3)))
        with pytest.raises(ValueError, match="no samples"):
            sliced_wasserstein1(np.zeros((0, 2)), np.zeros((3, 2)))
        with pytest.raises(ValueError, match="projections"):
            sliced_wasserstein1(np.zeros((3, 2)), np.zeros((3, 2)), projections=0)
        with pytest.raises(ValueError, match=r"shape \(n, D\)"):
            sliced_wasserstein1(np.zeros((3, 2, 1)), np.zeros((3, 2)))


class TestComponentWeights:
    def test_nearest_mean(self) -> None:
        samples = torch.tensor([[-1.2], [-0.1], [0.1], [0.9], [3.0]])
        weights = component_weights(samples, torch.tensor([[-1.0], [1.0]]))
        assert weights.tolist() == pytest.approx([0.4, 0.6])

    def test_mixture_sample_weights(self) -> None:
        mixture = GaussianMixture([[-1.0], [1.0]], [0.25, 0.25], weights=[0.3, 0.7])
        samples = mixture.sample(50_000, torch.Generator().manual_seed(8))
        weights = component_weights(samples, mixture.means, mixture.stds)
        assert weights.tolist() == pytest.approx([0.3, 0.7], abs=0.01)

    def test_bad_shapes(self) -> None:
        with pytest.raises(ValueError, match="means"):
            component_weights(torch.zeros(3, 2), torch.zeros(2, 1))
