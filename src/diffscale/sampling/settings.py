"""Validated sampler settings (EDM paper, Algorithm 2): steps, solver and the churn parameters."""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from diffscale.sampling.schedules import ScheduleName
from diffscale.validation import StrictModel

__all__ = ["CHURN_SOLVERS", "MULTISTEP_SOLVERS", "SOLVERS", "SamplerSettings", "SolverName", "number_of_evaluations"]

SolverName = Literal["euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ancestral"]
SOLVERS: tuple[str, ...] = get_args(SolverName)
CHURN_SOLVERS: tuple[str, ...] = ("euler", "heun")
"""Solvers that take the churn of Algorithm 2; the multistep solvers have their own SDE variants."""
MULTISTEP_SOLVERS: dict[str, tuple[int, float]] = {
    "dpmpp_2m": (2, 0.0),
    "dpmpp_3m": (3, 0.0),
    "dpmpp_2m_sde": (2, 1.0),
    "dpmpp_3m_sde": (3, 1.0),
}
"""DPM-Solver++ multistep solver name -> (order k, Langevin strength eta; 0: the ODE)."""

Steps = Annotated[int, Field(ge=1, strict=True, description="number of time steps N")]
Solver = Annotated[SolverName, Field(description="ODE/SDE solver: " + ", ".join(SOLVERS))]
SChurn = Annotated[float, Field(ge=0, description="overall amount of stochasticity S_churn (euler, heun)")]
SMin = Annotated[float, Field(ge=0, description="churn only where sigma >= S_min")]
SMax = Annotated[float, Field(ge=0, description="churn only where sigma <= S_max (may be .inf)")]
SNoise = Annotated[float, Field(gt=0, description="noise inflation S_noise of the churn")]


class SamplerSettings(StrictModel):
    """Arguments of :func:`diffscale.sample` other than the denoiser, the noise and the formulation."""

    steps: Steps = 18
    solver: Solver = "heun"
    s_churn: SChurn = 0.0
    s_min: SMin = 0.0
    s_max: SMax = math.inf
    s_noise: SNoise = 1.0
    schedule: ScheduleName = Field(
        "native",
        description="time grid: the formulation's own ('native'), the EDM rho schedule ('edm') or, for few steps "
        "with the multistep solvers, 'tuned' (steps in ln sigma shrinking towards 0.5 / N)",
    )
    rho: float = Field(7.0, gt=0, description="exponent rho of the 'edm' schedule")
    alpha: float = Field(
        1.0, gt=0, le=1, description="Heun's generalised alpha: intermediate point at alpha of each step (1: Heun)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> SamplerSettings:
        if self.s_min > self.s_max:
            raise ValueError(f"s_min = {self.s_min!r} must not exceed s_max = {self.s_max!r}")
        if self.s_churn > 0 and self.solver not in CHURN_SOLVERS:
            raise ValueError(
                f"s_churn = {self.s_churn!r} is only used by {' and '.join(CHURN_SOLVERS)}; "
                f"solver {self.solver!r} takes s_churn = 0 (use a *_sde solver for stochastic sampling)"
            )
        if self.alpha != 1.0 and self.solver != "heun":
            raise ValueError(f"alpha = {self.alpha!r} is only used by solver 'heun', not {self.solver!r}")
        return self


def number_of_evaluations(steps: int, solver: str) -> int:
    """Network evaluations (NFE) of a run: 2N - 1 for Heun (no correction at sigma = 0), N for the others."""
    if solver not in SOLVERS:
        raise ValueError(f"solver = {solver!r}: unknown solver; allowed: {', '.join(SOLVERS)}")
    return 2 * steps - 1 if solver == "heun" else steps
