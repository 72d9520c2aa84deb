"""Building a run's parts from its configuration: the denoiser (or regression model), the data and its batch
source, the training objective, and the run directory's name.

Every data kind is built here, so a new kind is one more branch; climate data reads its files through
:mod:`diffscale.runs.climate`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.config.images import ImageData
from diffscale.config.models import build_initial_model, build_model, describe_model
from diffscale.data.fields import GaussianRandomField
from diffscale.data.images import ImageDataset
from diffscale.data.mixtures import GaussianMixture
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.regression import RegressionLoss, RegressionModel
from diffscale.validation import ConfigError

__all__ = [
    "DataDistribution",
    "build_climate_model",
    "build_denoiser",
    "build_distribution",
    "build_model_for",
    "check_grid",
    "check_same_data",
    "default_run_dir",
    "is_climate",
    "is_images",
    "is_regression",
    "model_summary",
    "resolve_run_dir",
    "training_objective",
]

DataDistribution = GaussianMixture | GaussianRandomField | ImageDataset
"""What a ``data:`` section other than climate builds: a distribution with ``sample(n, generator)`` (toy kinds
also have ``ideal_denoiser``) or a labelled image data set (its ``sample`` draws training batches)."""
_SAME_DATA_EXCEPT = frozenset({"target", "regression_run", "patch", "latitude_weighted_loss"})
"""Keys of ``data:`` in which a CorrDiff diffusion run may differ from its regression run."""


def is_climate(config: Config) -> bool:
    """Whether the run models climate fields (``data.kind: climate``)."""
    return isinstance(config.data, ClimateData)


def is_images(config: Config) -> bool:
    """Whether the run models images read from files (``data.kind: images``)."""
    return isinstance(config.data, ImageData)


def is_regression(config: Config) -> bool:
    """Whether the run trains the deterministic regression model (``training.objective: regression``)."""
    return getattr(config.training, "objective", "diffusion") == "regression"


# -- the model ------------------------------------------------------------------------------------------------
def build_climate_model(config: Config) -> nn.Module:
    """mu(c) (regression objective) or D(r; sigma, c) (diffusion objective), initialised from ``training.seed``
    with a forked global RNG (the caller's random state is left untouched)."""
    formulation = config.formulation()
    learned_variance = formulation.learned_variance and not is_regression(config)
    shape = config.data_shape()  # a climate config only validates with a grid network
    network = build_initial_model(config.resolved_model(), shape, learned_variance, config.training.seed)
    if is_regression(config):
        return RegressionModel(network, shape[0])
    return PreconditionedDenoiser(network, formulation)


def training_objective(config: Config) -> Callable[..., Any] | None:
    """The loss of ``training.objective``: the MSE for ``regression``; None (the trainer's default, the
    formulation's weighted denoising loss) for ``diffusion``."""
    return RegressionLoss() if is_regression(config) else None


def default_run_dir(config_path: str | Path | None) -> Path:
    """``runs/<config file name without extension>`` (``runs/run`` without a file)."""
    return Path("runs") / (Path(config_path).stem if config_path is not None else "run")


def resolve_run_dir(config: Config, config_path: str | Path | None = None, out: str | Path | None = None) -> Path:
    """The run directory: ``out`` if given, else ``output.dir``, else :func:`default_run_dir`."""
    if out is not None:
        return Path(out)
    if config.output.dir is not None:
        return Path(config.output.dir)
    return default_run_dir(config_path)


def build_denoiser(config: Config, shape: int | tuple[int, ...] | None = None) -> PreconditionedDenoiser:
    """D = preconditioning of ``diffusion:`` around the ``model:`` network, initialised from ``training.seed``.

    ``shape`` is one sample's shape, (D,) (or D) for vectors or (C, H, W) for grids (default: the data's).
    With a formulation that learns the variance the network emits twice the channels (mean and variance
    halves), which the denoiser splits. The initialisation uses a forked global RNG, so the caller's
    random state is left untouched.
    """
    formulation = config.formulation()
    shape = config.data_shape() if shape is None else shape
    network = build_initial_model(config.resolved_model(), shape, formulation.learned_variance, config.training.seed)
    return PreconditionedDenoiser(network, formulation)


def build_distribution(config: Config) -> DataDistribution:
    """The distribution of a toy ``data:`` section (a Gaussian mixture or a Gaussian random field) or the images of
    an ``images`` section; a missing or unreadable file it names raises ConfigError naming the file."""
    if is_climate(config):
        raise ConfigError("data.kind = 'climate': its data are files, not a distribution (ClimateDataset reads them)")
    try:
        return config.data.build()
    except FileNotFoundError as error:
        raise ConfigError(f"data: file '{error.filename}' not found") from None
    except OSError as error:
        raise ConfigError(f"data: file '{error.filename}' cannot be read ({error.strerror})") from None


def model_summary(config: Config, denoiser: torch.nn.Module, shape: tuple[int, ...] | None = None) -> str:
    """One line: the network (architecture, parameter count, ...) and the shape of the data it models (``shape``,
    default the configuration's; climate data give theirs once read: the patch or the fine grid)."""
    shape = shape if shape is not None else config.data_shape()
    network = getattr(denoiser, "network", denoiser)
    return (
        f"model {describe_model(network, config.model.arch)}; data {config.data.kind} ({' x '.join(map(str, shape))})"
    )


def build_model_for(config: Config) -> nn.Module:
    """The network a run of ``config`` trains: a climate model (:func:`build_climate_model`) or a denoiser."""
    return build_climate_model(config) if is_climate(config) else build_denoiser(config)


def check_grid(config: Config, height: int, width: int) -> None:
    """ConfigError when the network cannot take an (height, width) grid (its padding rules)."""
    shape = config.data_shape()
    if shape[1:] != (0, 0):
        return  # known from the configuration and checked when it was validated
    with torch.device("meta"):
        network = build_model(config.resolved_model(), (shape[0], height, width))
    try:
        network.grid.check(height, width)
    except ValueError as error:
        arch = config.model.arch
        raise ConfigError(f"the data grid {height} x {width} does not suit model.arch = {arch!r}: {error}") from None


def check_same_data(regression: Config, config: Config) -> None:
    """A CorrDiff diffusion run must read the same data as its regression run (apart from target and patch)."""
    if not is_regression(regression):
        raise ConfigError(
            f"data.regression_run = '{config.data.regression_run}': not a regression run "
            "(its training.objective is not 'regression')"
        )
    if not isinstance(regression.data, ClimateData):
        raise ConfigError(f"data.regression_run = '{config.data.regression_run}': not a climate run")
    ours, theirs = config.data.model_dump(), regression.data.model_dump()
    differing = sorted(key for key in ours if key not in _SAME_DATA_EXCEPT and ours[key] != theirs.get(key))
    if differing:
        raise ConfigError(
            f"data.regression_run = '{config.data.regression_run}' was trained on other data: "
            f"data.{', data.'.join(differing)} differ"
        )
