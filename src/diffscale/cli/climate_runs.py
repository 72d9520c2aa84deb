"""Climate runs: the model, the training data and the saved statistics of a ``data: {kind: climate}`` run, and
loading such a run back for downscaling.

A climate run directory holds, beside the usual files (config.yaml, checkpoints, metrics), ``data_stats.json``:
the per-variable transform statistics fitted on the training period (:class:`~diffscale.data.climate.Transforms`),
which validation, testing and downscaling reuse unchanged.

Two objectives (``training.objective``):

* ``regression``: mu(c) = F(0; 0, c) trained with the MSE (:mod:`diffscale.regression`); deterministic;
* ``diffusion``: a denoiser D(r; sigma, c) of the target r = T(y) - b, with b per ``data.target``: 0, the
  upsampled coarse field, or (``regression_residual``, CorrDiff) a regression run's prediction R(c).

It belongs to the bottom layer (config, cli): it joins the configuration to the layers above it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.config.models import build_initial_model, build_model
from diffscale.config.schema import stored_config
from diffscale.data.climate import ClimateDataset, ConditioningBuilder
from diffscale.data.climate.cf import CF_ATTRIBUTES
from diffscale.data.climate.grid import grid_spacing
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.regression import RegressionLoss, RegressionModel
from diffscale.training.checkpoint import EMA, SIDECAR_NAME, WEIGHTS, atomic_write_bytes, load_checkpoint
from diffscale.validation import ConfigError

__all__ = [
    "STATS_NAME",
    "ClimateRun",
    "build_climate_data",
    "build_climate_model",
    "climate_sample_figure",
    "is_climate",
    "load_climate_run",
    "load_stats",
    "regression_predictor",
    "save_stats",
    "training_objective",
]

STATS_NAME = "data_stats.json"
CF_UNITS = {name: attributes["units"] for name, attributes in CF_ATTRIBUTES.items()}
RegressionFn = Callable[[torch.Tensor], torch.Tensor]
_SAME_DATA_EXCEPT = frozenset({"target", "regression_run", "patch"})
"""Keys of ``data:`` in which a CorrDiff diffusion run may differ from its regression run."""


def is_climate(config: Config) -> bool:
    """Whether the run models climate fields (``data.kind: climate``)."""
    return isinstance(config.data, ClimateData)


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


# -- statistics ------------------------------------------------------------------------------------------------
def save_stats(run_dir: Path, dataset: ClimateDataset) -> None:
    """Write ``data_stats.json`` atomically: the transform statistics and the training grid (its spacing and
    extent, which downscaling checks a coarse input against)."""
    grid = {
        "latitude_spacing": grid_spacing(dataset.latitude, "latitude"),
        "longitude_spacing": grid_spacing(dataset.longitude, "longitude"),
        "height": int(dataset.latitude.size),
        "width": int(dataset.longitude.size),
        "latitude_range": [float(dataset.latitude.min()), float(dataset.latitude.max())],
        "longitude_range": [float(dataset.longitude.min()), float(dataset.longitude.max())],
    }
    content = {"transforms": dataset.stats, "grid": grid}
    atomic_write_bytes(run_dir / STATS_NAME, (json.dumps(content, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def load_stats(run_dir: Path) -> dict[str, Any] | None:
    """``{"transforms": ..., "grid": ...}`` saved with a run, or None when it has none yet."""
    path = Path(run_dir) / STATS_NAME
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"'{path}': unreadable statistics ({error})") from None
    if not isinstance(content, dict) or not {"transforms", "grid"} <= set(content):
        raise ConfigError(f"'{path}': expected the keys 'transforms' and 'grid'")
    return content


# -- training data ---------------------------------------------------------------------------------------------
def build_climate_data(
    config: Config, run_dir: Path | None = None, device: torch.device | str = "cpu"
) -> ClimateDataset:
    """The training split of a climate run, ready to draw batches from (``dataset.sample``).

    The statistics are, in order of preference: those saved in ``run_dir`` (a resumed run), those of the
    regression run (``regression_residual``: both models must see the same conditioning), or fitted on the
    training period. For ``regression_residual`` the base b = R(c) is precomputed with the regression run's EMA
    model. The grid is checked against the network here when the configuration could not know it.
    """
    section: ClimateData = config.data
    saved = load_stats(run_dir) if run_dir is not None else None
    stats = saved["transforms"] if saved is not None else None
    regression: ClimateRun | None = None
    if section.target == "regression_residual":
        regression = load_climate_run(section.regression_run, device=str(device), key="data.regression_run")
        check_same_data(regression.config, config)
        stats = stats or regression.stats
    dataset = ClimateDataset(section, "train", stats)
    check_grid(config, dataset.latitude.size, dataset.longitude.size)
    if regression is not None:
        dataset.set_base(regression_predictor(regression), device=device)
    return dataset


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


# -- watching a run ----------------------------------------------------------------------------------------------
FIGURE_MEMBERS = 2


def climate_sample_figure(
    config: Config, model: nn.Module, dataset: ClimateDataset, path: str | Path, *, step: int, seed: int = 0
) -> Path:
    """Maps of one training time (the first): the truth, the coarse field upsampled, and the model's output
    (two members of a diffusion model with the run's sampler settings, or the regression prediction), in physical
    units on one colour scale. The sampler has its own generator, so the training state is left untouched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffscale.sampling import sample

    fields = dataset.fields([0])
    device = next(model.parameters()).device
    cond = fields.cond_fields.to(device)
    base = fields.base.to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if is_regression(config):
            outputs = [model(cond) + base]
            labels = ["regression"]
        else:
            generator = torch.Generator(device).manual_seed(seed)
            count = FIGURE_MEMBERS
            noise = torch.randn((count, *base.shape[1:]), generator=generator, device=device)
            settings = config.sampling.to_sampler_settings()
            residual = sample(
                model,
                noise,
                model.formulation,
                **settings.model_dump(),
                generator=generator,
                cond={"cond_fields": cond.expand(count, -1, -1, -1)},
            )
            outputs = list((residual + base).split(1))
            labels = [f"member {index + 1}" for index in range(count)]
    model.train(was_training)
    upsampled = dataset.to_physical(fields.cond_fields[:, : len(dataset.variables)])
    panels = [("truth", fields.fine), ("coarse, upsampled", upsampled)]
    for label, output in zip(labels, outputs, strict=True):
        panels.append((label, dataset.to_physical(output.float().cpu())))
    variable = dataset.variables[0]
    images = [values[0, 0].numpy() for _, values in panels]
    low, high = min(image.min() for image in images), max(image.max() for image in images)
    extent = (dataset.longitude[0], dataset.longitude[-1], dataset.latitude[0], dataset.latitude[-1])
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), constrained_layout=True)
    for axis, (label, _), image in zip(axes, panels, images, strict=True):
        mappable = axis.imshow(image, origin="lower", extent=extent, vmin=low, vmax=high, cmap="RdYlBu_r")
        axis.set_title(label)
        axis.set_xlabel("longitude [deg]")
    axes[0].set_ylabel("latitude [deg]")
    units = CF_UNITS.get(variable, "")
    figure.colorbar(mappable, ax=axes, shrink=0.8, label=f"{variable} [{units}]" if units else variable)
    time = str(fields.times[0])[:16]
    figure.suptitle(f"{variable} at {time}, EMA weights, step {step}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# -- loading a run ---------------------------------------------------------------------------------------------
@dataclass
class ClimateRun:
    """A trained climate run ready to downscale: its configuration, statistics and model (EMA by default)."""

    run_dir: Path
    config: Config
    step: int
    stats: dict[str, Any]
    grid: dict[str, Any]
    model: nn.Module
    weights_sha256: str
    device: torch.device

    @property
    def deterministic(self) -> bool:
        """A regression run: one prediction, no ensemble."""
        return is_regression(self.config)

    @property
    def section(self) -> ClimateData:
        """The run's ``data:`` section."""
        return self.config.data

    def builder(self) -> ConditioningBuilder:
        """The conditioning builder of the run (its statistics; reads the static files)."""
        return ConditioningBuilder.from_section(self.section, self.stats)


def load_climate_run(
    run_dir: str | Path, *, weights: str = "ema", device: str = "cpu", key: str = "run directory"
) -> ClimateRun:
    """Load a climate run for downscaling; ConfigError (one line, naming ``key``) for anything missing or wrong."""
    run_dir = Path(run_dir)
    if weights not in ("ema", "raw"):
        raise ConfigError(f"weights = {weights!r}: allowed: ema, raw")
    if not run_dir.exists():
        raise ConfigError(f"{key} '{run_dir}' not found")
    if not run_dir.is_dir():
        raise ConfigError(f"{key} '{run_dir}' is not a directory (give the run directory written by 'diffscale train')")
    checkpoint = load_checkpoint(run_dir, parts=(EMA if weights == "ema" else WEIGHTS,))
    config = stored_config(checkpoint.config, f"'{run_dir / SIDECAR_NAME}'")
    if not is_climate(config):
        raise ConfigError(f"{key} '{run_dir}' is not a climate run (its data.kind is {config.data.kind!r})")
    saved = load_stats(run_dir)
    if saved is None:
        raise ConfigError(f"{key} '{run_dir}' has no {STATS_NAME} (was it trained by this version of diffscale?)")
    state = checkpoint.ema_weights if weights == "ema" else checkpoint.weights
    model = build_climate_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"'{run_dir}': the checkpoint does not fit the configured model ({first})") from None
    torch_device = torch.device(device)
    model = model.to(torch_device).eval().requires_grad_(False)
    digest = hashlib.sha256(safetensors.torch.save({name: value.contiguous() for name, value in state.items()}))
    return ClimateRun(
        run_dir, config, checkpoint.step, saved["transforms"], saved["grid"], model, digest.hexdigest(), torch_device
    )


def regression_predictor(run: ClimateRun) -> RegressionFn:
    """R(c): the regression run's prediction of the normalised fine field T(y) from the conditioning c.

    The regression model learnt the target of its own ``data.target``: T(y) itself (``fine``), or the residual
    over the upsampled coarse field U(T(x)) (``residual``), which is the first C channels of c.
    """
    if not run.deterministic:
        raise ConfigError(f"'{run.run_dir}' is not a regression run")
    channels = len(run.section.variables)
    target = run.section.target
    if target not in ("fine", "residual"):
        raise ConfigError(f"'{run.run_dir}': a regression run with data.target = {target!r} cannot serve as a base")
    model = run.model

    def predict(cond_fields: torch.Tensor) -> torch.Tensor:
        cond_fields = cond_fields.to(run.device)
        prediction = model(cond_fields)
        return prediction + cond_fields[:, :channels] if target == "residual" else prediction

    return predict
