"""The Gaussian posterior between two noise levels, against DDPM's variance-preserving parametrisation."""

from __future__ import annotations

import torch

from diffscale.formulations.posterior import (
    interpolated_log_variance,
    posterior_log_variance_bounds,
    posterior_mean_weights,
)

SIGMA = torch.tensor([0.05, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
SIGMA_NEXT = torch.tensor([0.01, 0.25, 0.2, 6.0, 1.0], dtype=torch.float64)


def ddpm_quantities(sigma: torch.Tensor, sigma_next: torch.Tensor):
    """alpha_bar = 1 / (1 + sigma^2); beta_t = 1 - alpha_bar_t / alpha_bar_{t-1};
    beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (Ho et al. 2020, Eq. 7)."""
    alpha_bar, alpha_bar_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    beta = 1 - alpha_bar / alpha_bar_prev
    beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    mean_x0 = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
    mean_xt = (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return alpha_bar, alpha_bar_prev, beta, beta_tilde, mean_x0, mean_xt


def test_variance_bounds_are_ddpms_divided_by_the_scale() -> None:
    _, alpha_bar_prev, beta, beta_tilde, _, _ = ddpm_quantities(SIGMA, SIGMA_NEXT)
    log_beta, log_beta_tilde = posterior_log_variance_bounds(SIGMA, SIGMA_NEXT)
    torch.testing.assert_close(log_beta, (beta / alpha_bar_prev).log())
    torch.testing.assert_close(log_beta_tilde, (beta_tilde / alpha_bar_prev).log())


def test_mean_weights_are_ddpms_in_unscaled_coordinates() -> None:
    """x_t = sqrt(alpha_bar) x_hat and x_{t-1} = sqrt(alpha_bar_prev) x_hat'."""
    alpha_bar, alpha_bar_prev, _, _, mean_x0, mean_xt = ddpm_quantities(SIGMA, SIGMA_NEXT)
    a, b = posterior_mean_weights(SIGMA, SIGMA_NEXT)
    torch.testing.assert_close(a, mean_xt * alpha_bar.sqrt() / alpha_bar_prev.sqrt())
    torch.testing.assert_close(b, mean_x0 / alpha_bar_prev.sqrt())


def test_interpolation_end_points() -> None:
    log_beta, log_beta_tilde = posterior_log_variance_bounds(SIGMA, SIGMA_NEXT)
    torch.testing.assert_close(interpolated_log_variance(torch.ones_like(SIGMA), log_beta, log_beta_tilde), log_beta)
    torch.testing.assert_close(
        interpolated_log_variance(-torch.ones_like(SIGMA), log_beta, log_beta_tilde), log_beta_tilde
    )
    middle = interpolated_log_variance(torch.zeros_like(SIGMA), log_beta, log_beta_tilde)
    torch.testing.assert_close(middle, 0.5 * (log_beta + log_beta_tilde))
