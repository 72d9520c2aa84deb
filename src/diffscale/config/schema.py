"""The validated configuration of a diffscale run: ``diffusion``, ``sampling``, ``model``, ``data``,
``training`` and ``output`` sections.

``diffusion:`` is one of the formulations' own parameter models (:class:`~diffscale.formulations.EDMParams`,
...), chosen by ``type`` in any case; ``model:`` is chosen by ``arch`` and ``data:`` by ``kind``. Validate
raw data with :func:`config_from_dict` (or ``diffscale.validation.validate(Config, data)``): every error is
a :class:`~diffscale.validation.ConfigError` with one line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, Field, model_validator

from diffscale.config.climate import ClimateData
from diffscale.config.images import ImageData
from diffscale.config.models import data_shape, resolve_model
from diffscale.config.sections import GaussianFieldsData, MixtureData, MLPModel, OutputSection, SamplingSection
from diffscale.config.tagged import TaggedSection
from diffscale.formulations import FORMULATIONS, EDMParams, Formulation, FormulationParams, from_params
from diffscale.networks.presets import ADMParams, DDPMppParams, EDM2Params, NCSNppParams
from diffscale.training.settings import TrainingSettings
from diffscale.validation import ConfigError, StrictModel, validate

__all__ = [
    "DATA",
    "DIFFUSION",
    "MODEL",
    "SECTIONS",
    "TAGGED_SECTIONS",
    "Config",
    "config_from_dict",
    "decode_non_finite",
    "encode_non_finite",
]

DIFFUSION = TaggedSection(
    name="diffusion",
    key="type",
    members={name: cls.Params for name, cls in FORMULATIONS.items()},
    default="EDM",
    kind_of_thing="formulation",
)
"""``diffusion:``: a formulation's own parameters, chosen by ``type`` (VE, VP, EDM, iDDPM; any case)."""

MODEL = TaggedSection(
    name="model",
    key="arch",
    members={"mlp": MLPModel, "ddpmpp": DDPMppParams, "ncsnpp": NCSNppParams, "adm": ADMParams, "edm2": EDM2Params},
    default="mlp",
    kind_of_thing="architecture",
)
"""``model:``: the network F, chosen by ``arch``: the MLP for vectors, the U-Net presets of
:mod:`diffscale.networks.presets` (their own parameter models) for grids."""

DATA = TaggedSection(
    name="data",
    key="kind",
    members={
        "mixture": MixtureData,
        "gaussian_fields": GaussianFieldsData,
        "climate": ClimateData,
        "images": ImageData,
    },
    default="mixture",
    kind_of_thing="kind",
)
"""``data:``: the training data, chosen by ``kind``: Gaussian mixtures (vectors), Gaussian random fields (grids),
climate fields or labelled images read from files."""

TAGGED_SECTIONS: dict[str, TaggedSection] = {section.name: section for section in (DIFFUSION, MODEL, DATA)}

if TYPE_CHECKING:
    DiffusionSection = FormulationParams
    ModelSection = MLPModel | DDPMppParams | NCSNppParams | ADMParams | EDM2Params
    DataSection = MixtureData | GaussianFieldsData | ClimateData | ImageData
else:
    DiffusionSection = DIFFUSION.annotation()
    ModelSection = MODEL.annotation()
    DataSection = DATA.annotation()


class Config(StrictModel):
    """A whole run: what to learn (data), how (diffusion, model, training), how to sample, where to write."""

    diffusion: DiffusionSection = Field(
        default_factory=EDMParams, description="formulation: type (VE, VP, EDM, iDDPM) and its own parameters"
    )
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="default sampler settings")
    model: ModelSection = Field(default_factory=MLPModel, description="the network F(x, c_noise)")
    data: DataSection = Field(default_factory=MixtureData, description="the training data")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="optimisation and bookkeeping")
    output: OutputSection = Field(default_factory=OutputSection, description="where the run is written")

    @model_validator(mode="before")
    @classmethod
    def _validate_tagged_sections(cls, data: Any) -> Any:
        """Validate the tagged sections first, so their errors read ``diffusion.sigma_data = ...`` (no tag)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for name, section in TAGGED_SECTIONS.items():
            if name in data:
                data[name] = section.validate(data[name])  # ConfigError -> one-line message, no location
        # Cross-section checks (the network suits the data's shape and the formulation's outputs); a U-Net's
        # section is stored resolved (in_channels, learned_variance), so that it round-trips through YAML.
        model = data.get("model", MODEL.validate({}))
        sample = data.get("data", DATA.validate({}))
        diffusion = data.get("diffusion", DIFFUSION.validate({}))
        resolved = resolve_model(model, sample, bool(getattr(diffusion, "learned_variance", False)))
        if resolved is not model:
            data["model"] = resolved
        return data

    @model_validator(mode="after")
    def _objective_fits_data(self) -> Config:
        if self.training.objective == "regression" and not isinstance(self.data, ClimateData):
            raise ValueError(
                f"training.objective = 'regression' predicts fields from conditioning fields: it needs "
                f"data.kind = 'climate' (data.kind is {self.data.kind!r})"
            )
        return self

    @property
    def learned_variance(self) -> bool:
        """Whether the formulation learns the variance (the network then emits 2C channels)."""
        return bool(getattr(self.diffusion, "learned_variance", False))

    def resolved_model(self) -> BaseModel:
        """The ``model:`` section with what the data and formulation decide filled in (a U-Net's
        ``in_channels`` and ``learned_variance``); what a run directory's config.yaml records."""
        return resolve_model(self.model, self.data, self.learned_variance)

    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (D,) for vectors, (C, H, W) for fields."""
        return data_shape(self.data)

    def formulation(self) -> Formulation:
        """The formulation of ``diffusion:``."""
        return from_params(self.diffusion)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (YAML-safe; ``s_max`` may be ``inf``), which validate back to this config."""
        return _lists(self.model_dump(mode="python"))

    def to_yaml(self) -> str:
        """The configuration as YAML, every key written out (what a run directory's config.yaml holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: tuple[str, ...] = tuple(Config.model_fields)
"""Names of the top-level sections, in file order."""


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """Validate raw configuration data; raise ConfigError with a one-line message."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"the configuration must be a mapping of sections ({', '.join(SECTIONS)}), got {data!r}")
    return validate(Config, data)


def stored_config(data: Mapping[str, Any] | None, where: str) -> Config:
    """The configuration a checkpoint sidecar stores (strict JSON, see :func:`encode_non_finite`), validated;
    ConfigError naming ``where`` (the sidecar) when it no longer validates."""
    try:
        return config_from_dict(decode_non_finite(data))
    except ConfigError as error:
        raise ConfigError(f"{where}: invalid stored configuration: {error}") from None


def _lists(value: Any) -> Any:
    """Tuples (e.g. ``channel_mult``) as lists, recursively, so that YAML's safe dumper writes them."""
    if isinstance(value, Mapping):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(item) for item in value]
    return value


def encode_non_finite(value: Any) -> Any:
    """Replace non-finite floats by the strings "inf", "-inf", "nan" (for strict JSON); recursive."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {key: encode_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_non_finite(item) for item in value]
    return value


def decode_non_finite(value: Any) -> Any:
    """Inverse of :func:`encode_non_finite`."""
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, Mapping):
        return {key: decode_non_finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_non_finite(item) for item in value]
    return value
