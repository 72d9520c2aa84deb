"""Configuration: YAML -> validated objects (:class:`Config`) for the layers above.

>>> from diffscale.config import load_config
>>> config = load_config("configs/mixture_1d_edm.yaml", overrides=["training.steps=100"])
>>> config.formulation(), config.sampling.to_sampler_settings()
"""

from diffscale.config.images import ImageData
from diffscale.config.loader import apply_overrides, load_config, parse_override, read_yaml_mapping
from diffscale.config.models import GRID_ARCHS, build_model, data_shape, describe_model, resolve_model
from diffscale.config.reference import config_reference
from diffscale.config.schema import DATA, DIFFUSION, MODEL, SECTIONS, TAGGED_SECTIONS, Config, config_from_dict
from diffscale.config.sections import (
    MIXTURE_PRESETS,
    GaussianFieldsData,
    MixtureData,
    MLPModel,
    OutputSection,
    SamplingSection,
)
from diffscale.config.tagged import TaggedSection

__all__ = [
    "DATA",
    "DIFFUSION",
    "GRID_ARCHS",
    "MIXTURE_PRESETS",
    "MODEL",
    "SECTIONS",
    "TAGGED_SECTIONS",
    "Config",
    "GaussianFieldsData",
    "ImageData",
    "MLPModel",
    "MixtureData",
    "OutputSection",
    "SamplingSection",
    "TaggedSection",
    "apply_overrides",
    "build_model",
    "config_from_dict",
    "config_reference",
    "data_shape",
    "describe_model",
    "load_config",
    "parse_override",
    "read_yaml_mapping",
    "resolve_model",
]
