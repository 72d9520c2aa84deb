"""Ancestral sampling (Ho et al. 2020, Algorithm 2; Nichol & Dhariwal 2021, Sec. 3.1) over any time grid.

With the scale removed, each step draws x_hat' from the model's version of the Gaussian posterior between the
noise levels sigma > sigma' (see :mod:`diffscale.formulations.posterior`):

    x_hat' = a x_hat + b D(x_hat; sigma) + sqrt(Sigma) z,   a = sigma'^2 / sigma^2, b = 1 - a,

with Sigma = beta_tilde (the DDPM posterior variance) or, when the denoiser learns the variance (iDDPM with
``learned_variance=True``), Sigma = exp(f log beta + (1 - f) log beta_tilde) from the network's output v. Skipped
levels (N < M) are handled exactly as iDDPM's respacing: the variances are those of the kept levels. The last
step, to sigma = 0, returns the mean D. NFE = N.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffscale.devices import Generators, standard_normal
from diffscale.formulations.posterior import (
    interpolated_log_variance,
    posterior_log_variance_bounds,
    posterior_mean_weights,
)
from diffscale.sampling.ode import ProbabilityFlow
from diffscale.sampling.steps import SamplerStep

__all__ = ["solve_ancestral"]


def solve_ancestral(
    flow: ProbabilityFlow,
    noise: torch.Tensor,
    t_steps: torch.Tensor,
    generator: Generators,
    on_step: Callable[[SamplerStep, int], None],
) -> torch.Tensor:
    """Ancestral sampling over ``t_steps`` (N + 1 values ending in 0); returns x_N."""
    f = flow.formulation
    denoise_with_variance = getattr(flow.denoiser, "denoise_with_variance", None)
    learned = f.learned_variance and denoise_with_variance is not None
    x_hat = noise * f.sigma(t_steps[0])
    for i in range(len(t_steps) - 1):
        sigma, sigma_next = f.sigma(t_steps[i]), f.sigma(t_steps[i + 1])
        if learned:
            denoised, v = denoise_with_variance(x_hat, sigma.expand(x_hat.shape[0]), **flow.cond)
        else:
            denoised, v = flow.denoise(x_hat, sigma), None
        if float(sigma_next) == 0.0:
            x_hat = denoised
        else:
            a, b = posterior_mean_weights(sigma, sigma_next)
            log_beta, log_beta_tilde = posterior_log_variance_bounds(sigma, sigma_next)
            log_variance = log_beta_tilde if v is None else interpolated_log_variance(v, log_beta, log_beta_tilde)
            z = standard_normal(x_hat.shape, generator, dtype=x_hat.dtype, device=x_hat.device)
            x_hat = a * x_hat + b * denoised + (0.5 * log_variance).exp() * z
        t_next = t_steps[i + 1]
        on_step(SamplerStep(index=i, t=t_next, sigma=sigma_next, x=x_hat * f.scale(t_next), denoised=denoised), 1)
    return x_hat * f.scale(t_steps[-1])
