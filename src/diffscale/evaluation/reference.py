"""A converged solution of the probability-flow ODE, independent of :mod:`diffscale.sampling`.

Removing the scale, x_hat = x / s(t), and changing the variable from t to sigma = sigma(t) turns every
formulation's ODE (EDM paper, Eq. 4) into the same one (Eq. 1 with sigma(t) = t, s(t) = 1):

    d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma,   x_hat(sigma_max) = sigma_max n.

Only the start sigma_max = sigma(t_0) depends on the formulation, and since s(t_N) = s(0) = 1 for every
formulation the end point x_hat(0) is directly comparable with a sampler's output. Here the ODE is
integrated with scipy's DOP853 (8th-order Runge-Kutta, adaptive) at tight tolerances down to a tiny
sigma_end; near sigma = 0 the right-hand side of a Gaussian mixture is O(sigma), so stopping at
sigma_end instead of 0 changes x_hat by O(sigma_end^2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffscale.threads import single_thread

__all__ = ["reference_ode_solution"]

DenoiserFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def reference_ode_solution(
    denoiser: DenoiserFn,
    noise: torch.Tensor,
    sigma_max: float,
    *,
    sigma_end: float = 1e-9,
    rtol: float = 1e-11,
    atol: float = 1e-11,
) -> torch.Tensor:
    """x_hat(sigma_end) from x_hat(sigma_max) = sigma_max ``noise``, solving d x_hat/d sigma = (x_hat - D)/sigma.

    Args:
        denoiser: D(x, sigma) for unscaled x of shape (B, ...) and sigma of shape (B,), evaluated in float64
            (e.g. :meth:`diffscale.data.GaussianMixture.ideal_denoiser`).
        noise: standard normal n, shape (B, ...).
        sigma_max: starting noise level sigma(t_0) of the formulation being compared.
        sigma_end: where the integration stops (a stand-in for 0).
        rtol, atol: tolerances of DOP853.

    Returns:
        float64 tensor of ``noise``'s shape.
    """
    if not 0 < sigma_end < sigma_max:
        raise ValueError(f"need 0 < sigma_end < sigma_max, got sigma_end = {sigma_end}, sigma_max = {sigma_max}")
    shape = noise.shape
    start = (sigma_max * noise.detach().cpu().to(torch.float64)).reshape(-1).numpy()

    def rhs(sigma: float, flat: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(flat).reshape(shape)
        denoised = denoiser(x, torch.full((shape[0],), sigma, dtype=torch.float64))
        return ((x - denoised.to(torch.float64)) / sigma).reshape(-1).numpy()

    with single_thread():
        solution = solve_ivp(rhs, (sigma_max, sigma_end), start, method="DOP853", rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"reference ODE solve failed: {solution.message}")
    return torch.from_numpy(solution.y[:, -1].copy()).reshape(shape)
