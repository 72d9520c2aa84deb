"""Euler and Heun solvers of the generalised probability-flow ODE, with optional churn.

For a formulation with noise level sigma(t) and scale s(t), the noisy state x obeys (EDM paper, Eq. 4)

    dx/dt = (sigma'(t)/sigma(t) + s'(t)/s(t)) x - (sigma'(t) s(t) / sigma(t)) D(x / s(t); sigma(t)).

Sampling starts at x_0 = sigma(t_0) s(t_0) n with n ~ N(0, I) and steps through the formulation's time
grid t_0 > ... > t_{N-1} > t_N = 0 (Algorithm 1 generalised). Heun's second-order correction is applied
on every step except the last, whose end point has sigma = 0 (NFE = 2N - 1).

The stochastic sampler (Algorithm 2, "churn") first raises the noise of x_i from sigma(t_i) to
sigma(t_hat) with t_hat = sigma^-1(round_sigma(sigma(t_i) (1 + gamma_i))),
gamma_i = min(S_churn / N, sqrt(2) - 1) where S_min <= sigma(t_i) <= S_max and 0 elsewhere:

    x_hat = (s(t_hat) / s(t_i)) x_i + sqrt(sigma(t_hat)^2 - sigma(t_i)^2) s(t_hat) S_noise eps,

then takes the ODE step from t_hat to t_{i+1}.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from diffscale.denoiser import Denoiser
from diffscale.formulations.base import Formulation
from diffscale.sampling.settings import SamplerSettings, number_of_evaluations
from diffscale.validation import ConfigError, validate

__all__ = ["SamplerStep", "sample"]


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler callback sees after step i: the state x_{i+1} at time t_{i+1}."""

    index: int
    t: torch.Tensor
    sigma: torch.Tensor
    x: torch.Tensor
    denoised: torch.Tensor


class _ProbabilityFlow:
    """The right-hand side dx/dt of the generalised ODE for one formulation and denoiser."""

    def __init__(self, denoiser: Denoiser, formulation: Formulation, cond: Mapping[str, Any]) -> None:
        self.denoiser = denoiser
        self.formulation = formulation
        self.cond = dict(cond)
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dx/dt, D) at state x and time t (0-dim tensor in x's dtype)."""
        f = self.formulation
        sigma, scale = f.sigma(t), f.scale(t)
        sigma_deriv, scale_deriv = f.sigma_deriv(t), f.scale_deriv(t)
        batch_sigma = sigma.expand(x.shape[0])
        denoised = self.denoiser(x / scale, batch_sigma, **self.cond)
        if denoised.shape != x.shape:
            raise ValueError(f"denoiser returned shape {tuple(denoised.shape)}, expected {tuple(x.shape)}")
        denoised = denoised.to(x.dtype)
        self.evaluations += 1
        slope = (sigma_deriv / sigma + scale_deriv / scale) * x - (sigma_deriv * scale / sigma) * denoised
        return slope, denoised


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
    generator: torch.Generator | None = None,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[SamplerStep], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw samples by solving the reverse-time ODE (or churned SDE) of ``formulation``.

    Args:
        denoiser: ``denoiser(x, sigma, **cond)`` returning D(x; sigma) for unscaled x = y + sigma n.
        noise: standard normal noise (batch first); scaled by sigma(t_0) s(t_0) here. The sampler
            computes in this tensor's dtype and on its device.
        formulation: supplies sigma(t), s(t), their derivatives, the time grid and round_sigma.
        steps: number of steps N (Euler: N evaluations, Heun: 2N - 1).
        solver: "euler" or "heun".
        s_churn, s_min, s_max, s_noise: churn parameters of Algorithm 2; S_churn = 0 is deterministic.
        generator: random generator for the churn noise.
        cond: conditioning passed unchanged to the denoiser.
        callback: called with a :class:`SamplerStep` after every step.
        progress: show a progress bar.

    Returns:
        x_N, the samples at t_N = 0, of ``noise``'s shape and dtype.
    """
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        steps = int(steps)  # numpy integers are fine; floats and bools are refused below
    settings = validate(
        SamplerSettings,
        {"steps": steps, "solver": solver, "s_churn": s_churn, "s_min": s_min, "s_max": s_max, "s_noise": s_noise},
    )
    _validate_noise(noise)
    if not isinstance(formulation, Formulation):
        raise ConfigError(f"formulation: expected a diffscale Formulation, got {type(formulation).__name__}")
    dtype, device = noise.dtype, noise.device
    f = formulation
    num_steps = settings.steps
    t_steps = f.time_steps(num_steps, dtype=dtype, device=device)
    sigma_steps = [float(value) for value in f.sigma(f.time_steps(num_steps))]  # float64 for the churn window
    gamma_max = min(settings.s_churn / num_steps, math.sqrt(2.0) - 1.0)
    flow = _ProbabilityFlow(denoiser, f, cond or {})

    x = noise * (f.sigma(t_steps[0]) * f.scale(t_steps[0]))
    bar = tqdm(
        total=number_of_evaluations(num_steps, settings.solver),
        desc=f"sampling ({settings.solver}, {num_steps} steps)",
        unit="eval",
        disable=not progress,
    )
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        gamma = gamma_max if settings.s_min <= sigma_steps[i] <= settings.s_max else 0.0
        if gamma > 0.0:
            sigma_cur = f.sigma(t_cur)
            t_hat = f.sigma_inv(f.round_sigma(sigma_cur * (1.0 + gamma)))
            sigma_hat = f.sigma(t_hat)
            eps = torch.randn(x.shape, generator=generator, dtype=dtype, device=device)
            extra_std = (sigma_hat**2 - sigma_cur**2).clamp_min(0.0).sqrt()
            x_hat = (f.scale(t_hat) / f.scale(t_cur)) * x + extra_std * f.scale(t_hat) * settings.s_noise * eps
        else:
            t_hat, x_hat = t_cur, x

        slope, denoised = flow(x_hat, t_hat)
        x_next = x_hat + (t_next - t_hat) * slope
        if settings.solver == "heun" and i < num_steps - 1:
            slope_next, denoised = flow(x_next, t_next)
            x_next = x_hat + (t_next - t_hat) * (0.5 * slope + 0.5 * slope_next)
        x = x_next
        bar.update(2 if settings.solver == "heun" and i < num_steps - 1 else 1)
        if callback is not None:
            callback(SamplerStep(index=i, t=t_next, sigma=f.sigma(t_next), x=x, denoised=denoised))
    bar.close()
    return x
