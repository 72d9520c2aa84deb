"""The sections of a configuration other than ``diffusion:`` and ``training:`` (which reuse the formulation
parameter models and :class:`~diffscale.training.TrainingSettings`).

Every key has a default that works and a one-line description. Sections that will grow alternatives
(``model:`` by architecture, ``data:`` by kind) carry a tag key so that a new alternative is one more
model registered in :mod:`diffscale.config.schema`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field, FiniteFloat, ValidationInfo, field_validator, model_validator
from torch import nn

from diffscale.data.fields import GaussianRandomField
from diffscale.data.mixtures import GaussianMixture, ring_2d, two_gaussians_1d
from diffscale.networks.mlp import MLP
from diffscale.sampling.settings import SOLVERS, SamplerSettings, SChurn, SMax, SMin, SNoise, SolverName, Steps
from diffscale.validation import StrictModel, format_validation_error, validate

__all__ = ["MIXTURE_PRESETS", "GaussianFieldsData", "MLPModel", "MixtureData", "OutputSection", "SamplingSection"]


# -- sampling: ----------------------------------------------------------------------------------------------
class SamplingSection(StrictModel):
    """The ``sampling:`` section: the arguments of :func:`diffscale.sample` (``sampler`` is its ``solver``)."""

    steps: Steps = 18
    sampler: SolverName = Field("heun", description="ODE/SDE solver: " + ", ".join(SOLVERS))
    s_churn: SChurn = 0.0
    s_min: SMin = 0.0
    s_max: SMax = float("inf")
    s_noise: SNoise = 1.0

    @model_validator(mode="after")
    def _valid_sampler_settings(self) -> SamplingSection:
        """Cross-field checks (s_min <= s_max) are those of :class:`SamplerSettings`."""
        self.to_sampler_settings()
        return self

    def to_sampler_settings(self) -> SamplerSettings:
        """The equivalent :class:`SamplerSettings`."""
        values = self.model_dump()
        values["solver"] = values.pop("sampler")
        try:
            return SamplerSettings.model_validate(values)
        except pydantic.ValidationError as error:  # re-raised as a plain one-line ValueError
            raise ValueError(format_validation_error(error)) from None

    def with_overrides(self, **overrides: Any) -> SamplingSection:
        """A copy with the given keys replaced (None values are ignored), validated like the file."""
        values = {**self.model_dump(), **{key: value for key, value in overrides.items() if value is not None}}
        return validate(SamplingSection, values, prefix="sampling")


# -- model: -------------------------------------------------------------------------------------------------
class MLPModel(StrictModel):
    """``model: {arch: mlp}``: the residual MLP of :class:`diffscale.networks.MLP`, for vector data."""

    arch: Literal["mlp"] = Field(
        "mlp", description="network architecture: mlp (vectors); ddpmpp, ncsnpp, adm, edm2 (grids)"
    )
    width: int = Field(128, ge=1, strict=True, description="hidden width of the MLP")
    depth: int = Field(3, ge=1, strict=True, description="number of residual blocks")
    embedding_dim: int = Field(32, ge=2, multiple_of=2, strict=True, description="channels of the c_noise embedding")

    def build(self, data_dim: int, out_dim: int | None = None) -> nn.Module:
        """The network F(x, c_noise) for data of dimension ``data_dim`` (output ``out_dim``, default data_dim)."""
        return MLP(data_dim, width=self.width, depth=self.depth, embedding_dim=self.embedding_dim, out_dim=out_dim)


# -- data: --------------------------------------------------------------------------------------------------
MIXTURE_PRESETS = ("two_gaussians_1d", "ring_2d", "custom")


def _as_row(value: Any) -> Any:
    """A bare number is a one-dimensional row: ``0.5`` -> ``[0.5]`` (so 1-D mixtures can be written flat)."""
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value


MixtureRow = Annotated[list[FiniteFloat], BeforeValidator(_as_row)]


class MixtureData(StrictModel):
    """``data: {kind: mixture}``: a Gaussian mixture sum_k w_k N(mu_k, diag(s_k^2)), drawn afresh every step."""

    kind: Literal["mixture"] = Field("mixture", description="data kind: mixture (vectors) or gaussian_fields (grids)")
    preset: Literal["two_gaussians_1d", "ring_2d", "custom"] = Field(
        "two_gaussians_1d", description="two_gaussians_1d, ring_2d, or custom (give means, stds, weights)"
    )
    means: list[MixtureRow] | None = Field(None, description="custom only: component means, K rows of D values")
    stds: list[MixtureRow] | None = Field(None, description="custom only: standard deviations, K rows of 1 or D")
    weights: list[FiniteFloat] | None = Field(None, description="custom only: K weights >= 0 (default: equal)")

    @field_validator("means")
    @classmethod
    def _rectangular_means(cls, means: list[list[float]] | None) -> list[list[float]] | None:
        if means is None:
            return means
        if not means:
            raise ValueError("must list at least one component; got []")
        dims = {len(row) for row in means}
        if len(dims) != 1 or 0 in dims:
            raise ValueError(f"every component needs the same number (>= 1) of values; got {means!r}")
        return means

    @field_validator("stds")
    @classmethod
    def _stds_match_means(cls, stds: list[list[float]] | None, info: ValidationInfo) -> list[list[float]] | None:
        means = info.data.get("means")
        if stds is None or means is None:
            return stds
        components, dims = len(means), len(means[0])
        if len(stds) != components or any(len(row) not in (1, dims) for row in stds):
            raise ValueError(
                f"must have {components} entries (one per component of means), "
                f"each a single value or {dims} values; got {stds!r}"
            )
        if any(value <= 0 for row in stds for value in row):
            raise ValueError(f"every standard deviation must be > 0; got {stds!r}")
        return stds

    @field_validator("weights")
    @classmethod
    def _weights_match_means(cls, weights: list[float] | None, info: ValidationInfo) -> list[float] | None:
        means = info.data.get("means")
        if weights is None or means is None:
            return weights
        if len(weights) != len(means):
            raise ValueError(f"must have {len(means)} values (one per component of means); got {weights!r}")
        if any(value < 0 for value in weights) or sum(weights) <= 0:
            raise ValueError(f"must be >= 0 and not all 0; got {weights!r}")
        return weights

    @model_validator(mode="after")
    def _custom_needs_components(self) -> MixtureData:
        given = [key for key in ("means", "stds", "weights") if getattr(self, key) is not None]
        if self.preset == "custom":
            missing = [key for key in ("means", "stds") if getattr(self, key) is None]
            if missing:
                raise ValueError(f"preset = 'custom' needs {' and '.join(missing)}")
        elif given:
            raise ValueError(f"{', '.join(given)}: only used with preset = 'custom' (preset = {self.preset!r})")
        return self

    def build(self) -> GaussianMixture:
        """The mixture this section describes."""
        if self.preset == "two_gaussians_1d":
            return two_gaussians_1d()
        if self.preset == "ring_2d":
            return ring_2d()
        dims = len(self.means[0])
        stds = [row * dims if len(row) == 1 else row for row in self.stds]  # a single value: isotropic
        return GaussianMixture(self.means, stds, self.weights)


class GaussianFieldsData(StrictModel):
    """``data: {kind: gaussian_fields}``: stationary Gaussian random fields on a periodic H x W grid with the
    spectrum P(k) = A (1 + (|k| l)^2)^(-slope/2) (see :class:`~diffscale.data.GaussianRandomField`), drawn afresh
    every step; samples have shape (channels, height, width)."""

    kind: Literal["gaussian_fields"] = Field(
        "gaussian_fields", description="data kind: mixture (vectors) or gaussian_fields (grids)"
    )
    channels: int = Field(1, ge=1, strict=True, description="independent channels C of each field")
    height: int = Field(16, ge=1, strict=True, description="grid height H (periodic)")
    width: int = Field(24, ge=1, strict=True, description="grid width W (periodic)")
    length_scale: FiniteFloat = Field(3.0, gt=0, description="correlation length l of the spectrum, in grid points")
    spectral_slope: FiniteFloat = Field(4.0, gt=0, description="the spectrum falls as k^-slope beyond k = 1/l")
    std: FiniteFloat = Field(1.0, gt=0, description="pointwise standard deviation of the field")

    def build(self) -> GaussianRandomField:
        """The field this section describes."""
        return GaussianRandomField(
            channels=self.channels,
            height=self.height,
            width=self.width,
            length_scale=self.length_scale,
            spectral_slope=self.spectral_slope,
            std=self.std,
        )


# -- output: ------------------------------------------------------------------------------------------------
class OutputSection(StrictModel):
    """The ``output:`` section: where a training run writes its files."""

    dir: str | None = Field(None, description="run directory (default: runs/<config file name without .yaml>)")
