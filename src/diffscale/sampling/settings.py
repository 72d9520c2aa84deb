"""Validated sampler settings (EDM paper, Algorithm 2): steps, solver and the churn parameters."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from diffscale.validation import StrictModel

__all__ = ["SOLVERS", "SamplerSettings", "SolverName", "number_of_evaluations"]

SolverName = Literal["euler", "heun"]
SOLVERS: tuple[str, ...] = ("euler", "heun")

Steps = Annotated[int, Field(ge=1, strict=True, description="number of time steps N")]
SChurn = Annotated[float, Field(ge=0, description="overall amount of stochasticity S_churn")]
SMin = Annotated[float, Field(ge=0, description="churn only where sigma >= S_min")]
SMax = Annotated[float, Field(ge=0, description="churn only where sigma <= S_max (may be .inf)")]
SNoise = Annotated[float, Field(gt=0, description="noise inflation S_noise of the churn")]


class SamplerSettings(StrictModel):
    """Arguments of :func:`diffscale.sample` other than the denoiser, the noise and the formulation."""

    steps: Steps = 18
    solver: SolverName = Field("heun", description="ODE/SDE solver: euler or heun")
    s_churn: SChurn = 0.0
    s_min: SMin = 0.0
    s_max: SMax = math.inf
    s_noise: SNoise = 1.0

    @model_validator(mode="after")
    def _churn_window(self) -> SamplerSettings:
        if self.s_min > self.s_max:
            raise ValueError(f"s_min = {self.s_min!r} must not exceed s_max = {self.s_max!r}")
        return self


def number_of_evaluations(steps: int, solver: str) -> int:
    """Network evaluations (NFE) of a run: N for Euler, 2N - 1 for Heun (no correction at sigma = 0)."""
    return steps if solver == "euler" else 2 * steps - 1
