"""The Gaussian posterior between two noise levels, shared by the ancestral sampler and the iDDPM variational
bound (Ho et al. 2020, Eq. 6-7; Nichol & Dhariwal 2021, Eq. 15), written for the unscaled state
x_hat = y + sigma n.

Going down from sigma to sigma' < sigma, x_hat = x_hat' + sqrt(sigma^2 - sigma'^2) n2, so

    q(x_hat' | x_hat, y) = N(y + (sigma'^2 / sigma^2)(x_hat - y), beta_tilde),
    beta_tilde = sigma'^2 (sigma^2 - sigma'^2) / sigma^2                 (the DDPM posterior variance),

and the DDPM step variance beta of the variance-preserving chain, expressed for x_hat, is
beta = (1 + sigma'^2)(sigma^2 - sigma'^2) / (1 + sigma^2). iDDPM's learned variance interpolates between the
two in the log domain: log Sigma = f log beta + (1 - f) log beta_tilde, f = (v + 1) / 2 for the network's
output v. Both bounds are those of the VP chain divided by its scale s(t')^2 = 1 / (1 + sigma'^2), so the
interpolation is the same in either parametrisation.
"""

from __future__ import annotations

import torch

__all__ = ["interpolated_log_variance", "posterior_log_variance_bounds", "posterior_mean_weights"]


def posterior_mean_weights(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with E[x_hat' | x_hat, y] = a x_hat + b y: a = sigma'^2 / sigma^2, b = 1 - a."""
    a = (sigma_next / sigma) ** 2
    return a, 1.0 - a


def posterior_log_variance_bounds(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log beta, log beta_tilde) of the step sigma -> sigma' (see the module notes); beta_tilde = 0 at sigma' = 0."""
    gap = sigma**2 - sigma_next**2
    log_beta = torch.log1p(sigma_next**2) + gap.log() - torch.log1p(sigma**2)
    log_beta_tilde = 2.0 * sigma_next.log() + gap.log() - 2.0 * sigma.log()
    return log_beta, log_beta_tilde


def interpolated_log_variance(v: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor) -> torch.Tensor:
    """log Sigma = f log beta + (1 - f) log beta_tilde with f = (v + 1) / 2 (iDDPM, Eq. 15)."""
    fraction = 0.5 * (v + 1.0)
    return fraction * log_beta + (1.0 - fraction) * log_beta_tilde
