"""Samplers: solvers of the reverse-time ODE/SDE over any formulation."""

from diffscale.sampling.settings import SOLVERS, SamplerSettings, SolverName, number_of_evaluations
from diffscale.sampling.solvers import SamplerStep, sample

__all__ = ["SOLVERS", "SamplerSettings", "SamplerStep", "SolverName", "number_of_evaluations", "sample"]
