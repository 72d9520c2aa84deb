"""Samplers: solvers of the reverse-time ODE/SDE over any formulation."""

from diffscale.sampling.schedules import SCHEDULES, time_grid
from diffscale.sampling.settings import CHURN_SOLVERS, SOLVERS, SamplerSettings, SolverName, number_of_evaluations
from diffscale.sampling.solvers import sample
from diffscale.sampling.steps import SamplerStep

__all__ = [
    "CHURN_SOLVERS",
    "SCHEDULES",
    "SOLVERS",
    "SamplerSettings",
    "SamplerStep",
    "SolverName",
    "number_of_evaluations",
    "sample",
    "time_grid",
]
