"""diffscale: diffusion models of gridded data, with the EDM view of diffusion at its core.

>>> import torch, diffscale
>>> f = diffscale.formulation("EDM", sigma_data=0.5)
>>> mixture = diffscale.data.two_gaussians_1d()
>>> x = diffscale.sample(mixture.ideal_denoiser, torch.randn(1000, 1), f, steps=18)

Trained runs (:mod:`diffscale.runs`, imported on first use):

>>> run = diffscale.load_run("runs/era5_uk")                     # a Run or a ClimateRun
>>> shipped = diffscale.load_run("era5-uk-t2m")                  # a pretrained model, by name (diffscale.pretrained)
>>> ensemble = run.downscale("coarse.nc", members=32)             # an xarray.Dataset
>>> scores = diffscale.evaluate(ensemble, truth="truth.nc")        # an xarray.Dataset of scores
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

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

_RUNS_API = {"ClimateRun", "Run", "evaluate", "load_run", "prepare_training", "train"}
"""Names of :mod:`diffscale.runs` offered at the top level; the module (xarray, netCDF) loads on first use."""


def __getattr__(name: str) -> Any:
    if name == "runs":
        return import_module("diffscale.runs")
    if name in _RUNS_API:
        return getattr(import_module("diffscale.runs"), name)
    raise AttributeError(f"module 'diffscale' has no attribute {name!r}")


__all__ = [
    "ClassifierFreeGuidance",
    "ClimateRun",
    "ConfigError",
    "DenoisingLoss",
    "Formulation",
    "LossTerms",
    "PreconditionedDenoiser",
    "Run",
    "SamplerSettings",
    "__version__",
    "data",
    "evaluate",
    "formulation",
    "formulations",
    "load_run",
    "networks",
    "number_of_evaluations",
    "prepare_training",
    "runs",
    "sample",
    "sampling",
    "train",
]
