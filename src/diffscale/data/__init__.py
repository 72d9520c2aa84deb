"""Data: toy mixtures and stationary Gaussian random fields (closed-form densities and denoisers), and labelled
image data sets read from IDX, PNG or NumPy files (:mod:`diffscale.data.images`)."""

from diffscale.data.fields import GaussianRandomField, radial_power_spectrum, spectrum_log_error
from diffscale.data.images import ImageDataset, load_image_dataset, read_idx
from diffscale.data.mixtures import GaussianMixture, ring_2d, two_gaussians_1d

__all__ = [
    "GaussianMixture",
    "GaussianRandomField",
    "ImageDataset",
    "load_image_dataset",
    "radial_power_spectrum",
    "read_idx",
    "ring_2d",
    "spectrum_log_error",
    "two_gaussians_1d",
]
