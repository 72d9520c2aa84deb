"""The ``model:`` section against the ``data:`` and ``diffusion:`` sections: which network suits which data,
the options the data and the formulation decide, and building the network.

* an MLP (``arch: mlp``) takes vectors (``data.kind: mixture``), shape (D,);
* a grid U-Net (``arch: ddpmpp | ncsnpp | adm | edm2``) takes fields (``data.kind: gaussian_fields``, ``climate``,
  ``images``), shape (C, H, W): its ``in_channels`` is C, its grid must suit its levels (the network's own check
  speaks), and it has no conditioning inputs the data does not provide (images give labels: ``label_dim`` follows
  ``data.num_classes``);
* a formulation that learns the variance (iDDPM with ``learned_variance: true``) needs 2C outputs: the U-Net
  is built with ``learned_variance=True``, the MLP with twice the output width.

Every mismatch is one line naming the keys and their values, raised before anything is built for real.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from diffscale.config.climate import ClimateData
from diffscale.config.images import ImageData
from diffscale.config.sections import GaussianFieldsData, MLPModel
from diffscale.networks.presets import PRESETS, describe_network
from diffscale.networks.unet_base import GridUNet, count_parameters

__all__ = [
    "GRID_ARCHS",
    "build_initial_model",
    "build_model",
    "check_model_fits_data",
    "data_shape",
    "describe_model",
    "resolve_model",
]

GRID_ARCHS: tuple[str, ...] = tuple(PRESETS)
"""Architectures that take gridded data (C, H, W)."""


def data_shape(data: BaseModel) -> tuple[int, ...]:
    """Shape of one sample of the ``data:`` section: (D,) for vectors, (C, H, W) for fields.

    Climate fields whose grid is only known from their files (no crop of both axes, no patch) give (C, 0, 0):
    their grid is checked against the network when the data is read.
    """
    if isinstance(data, GaussianFieldsData):
        return (data.channels, data.height, data.width)
    if isinstance(data, ImageData):
        return data.sample_shape()
    if isinstance(data, ClimateData):
        return data.sample_shape() or (len(data.variables), 0, 0)
    return (data.build().dims,)


def _describe_data(data: BaseModel) -> str:
    shape = data_shape(data)
    if len(shape) == 1:
        return f"data.kind = {data.kind!r} gives vectors of dimension {shape[0]}"
    return f"data.kind = {data.kind!r} gives {' x '.join(map(str, shape))} (channels x height x width) grids"


def resolve_model(model: BaseModel, data: BaseModel, learned_variance: bool) -> BaseModel:
    """The ``model:`` section with the options that follow from the data and the formulation filled in
    (a U-Net's ``in_channels`` = C and ``learned_variance``); ValueError (one line) when a given value
    contradicts them or the network does not suit the data.

    Args:
        model: the validated ``model:`` section.
        data: the validated ``data:`` section.
        learned_variance: whether the formulation learns the variance (2C outputs).
    """
    shape = data_shape(data)
    arch = model.arch
    if isinstance(model, MLPModel):
        if len(shape) != 1:
            raise ValueError(
                f"model.arch = 'mlp' needs vector data; {_describe_data(data)} "
                f"(use model.arch: {', '.join(GRID_ARCHS[:-1])} or {GRID_ARCHS[-1]})"
            )
        return model
    if len(shape) != 3:
        raise ValueError(f"model.arch = {arch!r} needs gridded data; {_describe_data(data)} (use model.arch: mlp)")
    channels, height, width = shape
    given = model.model_fields_set
    if "in_channels" in given and model.in_channels != channels:
        raise ValueError(
            f"model.in_channels = {model.in_channels} does not match data.channels = {channels} "
            "(leave model.in_channels out: it follows the data)"
        )
    if "learned_variance" in given and model.learned_variance != learned_variance:
        needs = "learns" if model.learned_variance else "does not learn"
        raise ValueError(
            f"model.learned_variance = {model.learned_variance} needs a formulation that {needs} the variance "
            f"(diffusion.type: iDDPM with diffusion.learned_variance: {str(model.learned_variance).lower()}); "
            "leave model.learned_variance out: it follows the formulation"
        )
    expected_out = 2 * channels if learned_variance else channels
    if model.out_channels is not None and model.out_channels != expected_out:
        raise ValueError(
            f"model.out_channels = {model.out_channels}: the denoiser needs {expected_out} output channels "
            f"(data.channels = {channels}{', times 2 for the learned variance' if learned_variance else ''}); "
            "leave it null"
        )
    conditioning = {"cond_channels": data.cond_channels} if isinstance(data, ClimateData) else {}
    if isinstance(data, ImageData) and data.num_classes:
        conditioning = {"label_dim": data.num_classes}
        if "label_dim" in given and model.label_dim != data.num_classes:
            raise ValueError(
                f"model.label_dim = {model.label_dim} does not match data.num_classes = {data.num_classes} (leave "
                "model.label_dim out: it follows the data)"
            )
    if (
        "cond_channels" in given
        and "cond_channels" in conditioning
        and model.cond_channels != conditioning["cond_channels"]
    ):
        raise ValueError(
            f"model.cond_channels = {model.cond_channels} does not match the {conditioning['cond_channels']} "
            f"conditioning channels of data ({', '.join(data.cond_channel_names())}); leave it out: it follows the data"
        )
    for key in ("cond_channels", "label_dim"):
        if key not in conditioning and getattr(model, key):
            raise ValueError(
                f"model.{key} = {getattr(model, key)}: data.kind = {data.kind!r} provides no "
                f"{'conditioning fields' if key == 'cond_channels' else 'labels'} (use 0)"
            )
    resolved = model.model_copy(update={"in_channels": channels, "learned_variance": learned_variance, **conditioning})
    if height == 0:  # a climate grid known only from its files: checked when they are read
        return resolved
    with torch.device("meta"):  # the network's own checks, without allocating its weights
        try:
            network = build_model(resolved, shape)
            network.grid.check(height, width)
        except ValueError as error:
            raise ValueError(
                f"data.height x data.width = {height} x {width} does not suit model.arch = {arch!r} "
                f"(channel_mult = {list(model.channel_mult)}): {error}"
            ) from None
    return resolved


def check_model_fits_data(model: BaseModel, data: BaseModel, learned_variance: bool) -> None:
    """Raise a one-line ValueError when the network of ``model`` cannot serve ``data`` (see :func:`resolve_model`)."""
    resolve_model(model, data, learned_variance)


def build_model(model: BaseModel, shape: tuple[int, ...] | int, learned_variance: bool = False) -> nn.Module:
    """The network F of a ``model:`` section for samples of ``shape``: (D,) (or D) for the MLP, which then
    emits 2D values when ``learned_variance``; (C, H, W) for a U-Net, built from its (resolved) section,
    whose ``learned_variance`` decides its 2C outputs."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if isinstance(model, MLPModel):
        return model.build(shape[0], 2 * shape[0] if learned_variance else shape[0])
    options: dict[str, Any] = {"in_channels": shape[0]}
    if learned_variance:
        options["learned_variance"] = True
    return model.build(**options)


def build_initial_model(model: BaseModel, shape: tuple[int, ...] | int, learned_variance: bool, seed: int) -> nn.Module:
    """:func:`build_model` initialised from ``seed`` (``training.seed``) under a forked global RNG, so the
    caller's random state is left untouched and a run's initial weights depend on its seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model, shape, learned_variance)


def describe_model(network: nn.Module, arch: str) -> str:
    """One line: the architecture and its parameter count (and, for a U-Net, channels and levels)."""
    if isinstance(network, GridUNet):
        return describe_network(network, arch)
    return f"{arch}: {count_parameters(network) / 1e6:.3f} M parameters"
