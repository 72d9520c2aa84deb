"""diffscale: diffusion models of gridded data, with the EDM view of diffusion at its core.

>>> import torch, diffscale
>>> f = diffscale.formulation("EDM", sigma_data=0.5)
>>> mixture = diffscale.data.two_gaussians_1d()
>>> x = diffscale.sample(mixture.ideal_denoiser, torch.randn(1000, 1), f, steps=18)
"""

from importlib.metadata import PackageNotFoundError, version

from diffscale import data, formulations, networks, sampling
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.formulations import Formulation, formulation
from diffscale.guidance import ClassifierFreeGuidance
from diffscale.loss import DenoisingLoss, LossTerms
from diffscale.sampling import SamplerSettings, number_of_evaluations, sample
from diffscale.validation import ConfigError

try:
    __version__ = version("diffscale")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = [
    "ClassifierFreeGuidance",
    "ConfigError",
    "DenoisingLoss",
    "Formulation",
    "LossTerms",
    "PreconditionedDenoiser",
    "SamplerSettings",
    "__version__",
    "data",
    "formulation",
    "formulations",
    "networks",
    "number_of_evaluations",
    "sample",
    "sampling",
]
