"""Euler and Heun solvers of the generalised probability-flow ODE, with optional churn.

For a formulation with noise level sigma(t) and scale s(t), the noisy state x obeys (EDM paper, Eq. 4)

    dx/dt = (sigma'(t)/sigma(t) + s'(t)/s(t)) x - (sigma'(t) s(t) / sigma(t)) D(x / s(t); sigma(t)).

Sampling starts at x_0 = sigma(t_0) s(t_0) n and steps through the formulation's time grid
t_0 > ... > t_{N-1} > t_N = 0 (Algorithm 1 generalised). Heun's second-order correction is applied on every
step except the last, whose end point has sigma = 0 (NFE = 2N - 1). With alpha < 1 (the EDM paper's general
second-order method) the intermediate point is t' = t_i + alpha h and
x_{i+1} = x_i + h ((1 - 1/(2 alpha)) d_i + 1/(2 alpha) d'); alpha = 1 is Heun, alpha = 1/2 the midpoint rule.

The stochastic sampler (Algorithm 2, "churn") first raises the noise of x_i from sigma(t_i) to sigma(t_hat),
t_hat = sigma^-1(round_sigma(sigma(t_i) (1 + gamma_i))), gamma_i = min(S_churn / N, sqrt(2) - 1) where
S_min <= sigma(t_i) <= S_max and 0 elsewhere:

    x_hat = (s(t_hat) / s(t_i)) x_i + sqrt(sigma(t_hat)^2 - sigma(t_i)^2) s(t_hat) S_noise eps,

then takes the ODE step from t_hat to t_{i+1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from diffscale.denoiser import Denoiser
from diffscale.devices import Generators, standard_normal
from diffscale.formulations.base import Formulation
from diffscale.sampling.settings import SamplerSettings
from diffscale.sampling.steps import SamplerStep

__all__ = ["ProbabilityFlow", "solve_euler_heun"]


class ProbabilityFlow:
    """The right-hand side dx/dt of the generalised ODE for one formulation and denoiser."""

    def __init__(self, denoiser: Denoiser, formulation: Formulation, cond: Mapping[str, Any]) -> None:
        self.denoiser = denoiser
        self.formulation = formulation
        self.cond = dict(cond)

    def denoise(self, x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x_hat; sigma) for the unscaled state x_hat, sigma broadcast to the batch, checked."""
        denoised = self.denoiser(x_hat, sigma.expand(x_hat.shape[0]), **self.cond)
        if denoised.shape != x_hat.shape:
            raise ValueError(f"denoiser returned shape {tuple(denoised.shape)}, expected {tuple(x_hat.shape)}")
        return denoised.to(x_hat.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dx/dt, D) at state x and time t (0-dim tensor in x's dtype)."""
        f = self.formulation
        sigma, scale = f.sigma(t), f.scale(t)
        sigma_deriv, scale_deriv = f.sigma_deriv(t), f.scale_deriv(t)
        denoised = self.denoise(x / scale, sigma)
        slope = (sigma_deriv / sigma + scale_deriv / scale) * x - (sigma_deriv * scale / sigma) * denoised
        return slope, denoised


def solve_euler_heun(
    flow: ProbabilityFlow,
    noise: torch.Tensor,
    t_steps: torch.Tensor,
    settings: SamplerSettings,
    generator: Generators,
    on_step: Callable[[SamplerStep, int], None],
) -> torch.Tensor:
    """Algorithm 1/2 of the EDM paper over ``t_steps`` (N + 1 values ending in 0); returns x_N."""
    f = flow.formulation
    num_steps = len(t_steps) - 1
    sigma_steps = f.sigma(t_steps.double().cpu()).tolist()  # float64 for the churn window
    gamma_max = min(settings.s_churn / num_steps, math.sqrt(2.0) - 1.0)
    alpha = settings.alpha
    x = noise * (f.sigma(t_steps[0]) * f.scale(t_steps[0]))
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        gamma = gamma_max if settings.s_min <= sigma_steps[i] <= settings.s_max else 0.0
        if gamma > 0.0:
            sigma_cur = f.sigma(t_cur)
            t_hat = f.sigma_inv(f.round_sigma(sigma_cur * (1.0 + gamma)))
            sigma_hat = f.sigma(t_hat)
            eps = standard_normal(x.shape, generator, dtype=x.dtype, device=x.device)
            extra_std = (sigma_hat**2 - sigma_cur**2).clamp_min(0.0).sqrt() * settings.s_noise
            x_hat = (f.scale(t_hat) / f.scale(t_cur)) * x + extra_std * f.scale(t_hat) * eps
        else:
            t_hat, x_hat = t_cur, x

        h = t_next - t_hat
        slope, denoised = flow(x_hat, t_hat)
        corrected = settings.solver == "heun" and i < num_steps - 1
        if corrected:
            t_prime = t_next if alpha == 1.0 else t_hat + alpha * h
            slope_prime, denoised = flow(x_hat + alpha * h * slope, t_prime)
            x = x_hat + h * ((1.0 - 0.5 / alpha) * slope + (0.5 / alpha) * slope_prime)
        else:
            x = x_hat + h * slope
        on_step(SamplerStep(index=i, t=t_next, sigma=f.sigma(t_next), x=x, denoised=denoised), 2 if corrected else 1)
    return x
