"""Data: toy mixtures and stationary Gaussian random fields (closed-form densities and denoisers)."""

from diffscale.data.fields import GaussianRandomField, radial_power_spectrum, spectrum_log_error
from diffscale.data.mixtures import GaussianMixture, ring_2d, two_gaussians_1d

__all__ = [
    "GaussianMixture",
    "GaussianRandomField",
    "radial_power_spectrum",
    "ring_2d",
    "spectrum_log_error",
    "two_gaussians_1d",
]
