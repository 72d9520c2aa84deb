"""Data: toy mixtures (closed-form densities and denoisers), later gridded fields."""

from diffscale.data.mixtures import GaussianMixture, ring_2d, two_gaussians_1d

__all__ = ["GaussianMixture", "ring_2d", "two_gaussians_1d"]
