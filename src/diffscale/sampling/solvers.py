"""``diffscale.sample``: one entry point for every solver and formulation.

Solvers (all read sigma(t), s(t), their derivatives, the time grid and round_sigma from the formulation):

* ``euler``, ``heun``: the EDM paper's Algorithms 1-2 on the generalised ODE in t, with optional churn
  (S_churn, S_min, S_max, S_noise) and Heun's generalised ``alpha`` (see :mod:`diffscale.sampling.ode`);
* ``dpmpp_2m``, ``dpmpp_3m``: second- and third-order exponential multistep solvers of the probability-flow ODE
  in lambda = -ln(sigma), one evaluation per step; ``dpmpp_2m_sde``, ``dpmpp_3m_sde``: their stochastic
  (SDE-DPM-Solver++) variants (see :mod:`diffscale.sampling.multistep`);
* ``ancestral``: DDPM/iDDPM ancestral sampling, with the learned variance when the denoiser has one
  (see :mod:`diffscale.sampling.ancestral`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from diffscale.denoiser import Denoiser
from diffscale.devices import Generators, check_generators
from diffscale.formulations.base import Formulation
from diffscale.sampling.ancestral import solve_ancestral
from diffscale.sampling.multistep import MULTISTEP_SOLVERS, solve_multistep
from diffscale.sampling.ode import ProbabilityFlow, solve_euler_heun
from diffscale.sampling.schedules import time_grid
from diffscale.sampling.settings import SamplerSettings, number_of_evaluations
from diffscale.sampling.steps import SamplerStep
from diffscale.validation import ConfigError, validate

__all__ = ["SamplerStep", "sample"]


def _validate_noise(noise: torch.Tensor) -> None:
    if not isinstance(noise, torch.Tensor):
        raise ConfigError(f"noise: expected a torch.Tensor, got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise ConfigError(f"noise: dtype {noise.dtype} is not a floating-point dtype")
    if noise.ndim < 1 or noise.shape[0] < 1:
        raise ConfigError(f"noise: shape {tuple(noise.shape)} has no batch dimension")


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    formulation: Formulation,
    steps: int = 18,
    solver: str = "heun",
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
    s_noise: float = 1.0,
    generator: Generators = None,
    *,
    schedule: str = "native",
    rho: float = 7.0,
    alpha: float = 1.0,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[SamplerStep], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw samples by solving the reverse-time ODE (or SDE) of ``formulation``.

    Args:
        denoiser: ``denoiser(x, sigma, **cond)`` returning D(x; sigma) for unscaled x = y + sigma n.
        noise: standard normal noise (batch first); scaled by sigma(t_0) s(t_0) here. The sampler
            computes in this tensor's dtype and on its device.
        formulation: supplies sigma(t), s(t), their derivatives, the time grid and round_sigma.
        steps: number of steps N (NFE: 2N - 1 for Heun, N for the others; see number_of_evaluations).
        solver: "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde" or "ancestral".
        s_churn, s_min, s_max, s_noise: churn of Algorithm 2 (euler, heun); S_churn = 0 is deterministic.
        generator: random source of the churn or SDE noise: one ``torch.Generator``, or one per sample (then each
            sample's draws come from its own generator, whatever batch it is drawn in). A generator draws on its
            own device, so a CPU generator gives the same numbers to a CPU and a CUDA ``noise``.
        schedule: time grid, "native" (the formulation's own) or "edm" (rho schedule in sigma, any formulation).
        rho: exponent of the "edm" schedule.
        alpha: Heun's generalised intermediate point (1: Heun; 1/2: midpoint).
        cond: conditioning passed unchanged to the denoiser.
        callback: called with a :class:`SamplerStep` after every step.
        progress: show a progress bar (in network evaluations).

    Returns:
        x_N, the samples at t_N = 0, of ``noise``'s shape and dtype.
    """
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        steps = int(steps)  # numpy integers are fine; floats and bools are refused below
    settings = validate(
        SamplerSettings,
        {
            "steps": steps,
            "solver": solver,
            "s_churn": s_churn,
            "s_min": s_min,
            "s_max": s_max,
            "s_noise": s_noise,
            "schedule": schedule,
            "rho": rho,
            "alpha": alpha,
        },
    )
    _validate_noise(noise)
    check_generators(generator, noise.shape[0])
    if not isinstance(formulation, Formulation):
        raise ConfigError(f"formulation: expected a diffscale Formulation, got {type(formulation).__name__}")
    t_steps = time_grid(
        formulation, settings.steps, settings.schedule, settings.rho, dtype=noise.dtype, device=noise.device
    )
    flow = ProbabilityFlow(denoiser, formulation, cond or {})
    bar = tqdm(
        total=number_of_evaluations(len(t_steps) - 1, settings.solver),
        desc=f"sampling ({settings.solver}, {settings.steps} steps)",
        unit="eval",
        disable=not progress,
    )

    def on_step(step: SamplerStep, evaluations: int) -> None:
        bar.update(evaluations)
        if callback is not None:
            callback(step)

    with bar:
        if settings.solver == "ancestral":
            return solve_ancestral(flow, noise, t_steps, generator, on_step)
        if settings.solver in MULTISTEP_SOLVERS:
            return solve_multistep(flow, noise, t_steps, settings.solver, generator, on_step)
        return solve_euler_heun(flow, noise, t_steps, settings, generator, on_step)
