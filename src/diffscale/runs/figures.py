"""Figures of a run while it trains (every ``training.sample_every`` steps): samples of the EMA model beside the
data, drawn with the run's sampler settings and their own generator (the training state is left untouched).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffscale.config import Config
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.calendars import time_text
from diffscale.data.climate.cf import CF_ATTRIBUTES
from diffscale.evaluation.sample_plots import check_plottable, plot_samples
from diffscale.runs.building import DataDistribution, is_climate, is_images, is_regression
from diffscale.sampling import sample
from diffscale.validation import ConfigError

__all__ = ["FIGURE_SAMPLES", "check_figure", "climate_sample_figure", "image_sample_figure", "sample_figure"]

FIGURE_SAMPLES = 2000
"""Samples drawn for a figure of a vector-data run (fields: the figure's few panels)."""
CF_UNITS = {name: attributes["units"] for name, attributes in CF_ATTRIBUTES.items()}


def sample_figure(
    config: Config, model: torch.nn.Module, data: DataDistribution, path: str | Path, *, step: int, seed: int = 0
) -> Path:
    """A figure of samples from ``model`` (the EMA denoiser) with the run's sampler settings, beside the data.

    The sampler has its own generator (``seed``), so drawing a figure leaves the training state untouched.
    """
    if is_climate(config):
        return climate_sample_figure(config, model, data, path, step=step, seed=seed)
    if is_images(config):
        return image_sample_figure(config, model, path, step=step, seed=seed)
    settings = config.sampling.to_sampler_settings()
    shape = config.data_shape()
    device = next(model.parameters()).device
    num = FIGURE_SAMPLES if len(shape) == 1 else 4
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((num, *shape), generator=generator, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        samples = sample(model, noise, model.formulation, **settings.model_dump(), generator=generator)
    model.train(was_training)
    title = f"{config.diffusion.type}, EMA weights, step {step}"
    return plot_samples(path, samples.float().cpu(), data, title=title)


def check_figure(config: Config, data: DataDistribution) -> None:
    """With ``training.sample_every``, the data must be plottable (ConfigError otherwise)."""
    if config.training.sample_every and not is_climate(config):
        try:
            check_plottable(data, option="training.sample_every")
        except ConfigError as error:
            raise ConfigError(f"{error} (set training.sample_every = 0)") from None


FIGURE_MEMBERS = 2
FIGURE_IMAGES_PER_CLASS = 4


def image_sample_figure(config: Config, model: nn.Module, path: str | Path, *, step: int, seed: int = 0) -> Path:
    """A grid of images, ``FIGURE_IMAGES_PER_CLASS`` per class (conditional, guidance 1; an unconditional run: one
    row), drawn with the run's sampler settings and their own generator."""
    import numpy as np

    from diffscale.evaluation.sample_plots import figure_bytes
    from diffscale.files import atomic_write_bytes
    from diffscale.runs.images import ImageSamples, class_names_of

    section = config.data
    classes = list(range(section.num_classes)) or [0]
    names = class_names_of(section) or ("samples",)
    labels = torch.tensor(classes).repeat_interleave(FIGURE_IMAGES_PER_CLASS)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((labels.shape[0], *config.data_shape()), generator=generator, device=device)
    cond = {}
    if section.num_classes:
        cond["class_labels"] = torch.nn.functional.one_hot(labels, section.num_classes).float().to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        settings = config.sampling.to_sampler_settings()
        x = sample(model, noise, model.formulation, **settings.model_dump(), generator=generator, cond=cond)
    model.train(was_training)
    x = section.transform().crop(x.float().cpu(), section.height, section.width)
    drawn = ImageSamples(
        images=((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(),
        labels=labels.numpy(),
        guidance=np.ones(labels.shape[0]),
        class_names=names,
        classes=classes,
        weights=[1.0],
        per_class=FIGURE_IMAGES_PER_CLASS,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"{config.diffusion.type}, EMA weights, step {step}"
    atomic_write_bytes(path, figure_bytes(drawn.figure(title=title), path))
    return path


def climate_sample_figure(
    config: Config, model: nn.Module, dataset: ClimateDataset, path: str | Path, *, step: int, seed: int = 0
) -> Path:
    """Maps of one training time (the first), one row per variable: the truth, the coarse field upsampled, and the
    model's output (two members of a diffusion model with the run's sampler settings, or the regression
    prediction), in physical units on one colour scale per row. The sampler has its own generator, so the training
    state is left untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    extent = (dataset.longitude[0], dataset.longitude[-1], dataset.latitude[0], dataset.latitude[-1])
    rows = len(dataset.variables)
    figure = Figure(figsize=(3.2 * len(panels), 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(panels), squeeze=False)
    for row, variable in enumerate(dataset.variables):
        images = [values[0, row].numpy() for _, values in panels]
        low, high = min(image.min() for image in images), max(image.max() for image in images)
        for axis, (label, _), image in zip(axes[row], panels, images, strict=True):
            mappable = axis.imshow(image, origin="lower", extent=extent, vmin=low, vmax=high, cmap="RdYlBu_r")
            axis.set_title(label if row == 0 else "")
            axis.set_xlabel("longitude [deg]")
        axes[row, 0].set_ylabel("latitude [deg]")
        units = CF_UNITS.get(variable, "")
        figure.colorbar(mappable, ax=axes[row], shrink=0.8, label=f"{variable} [{units}]" if units else variable)
    time = time_text(fields.times[0])
    figure.suptitle(f"{', '.join(dataset.variables)} at {time}, EMA weights, step {step}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
