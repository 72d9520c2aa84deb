"""Time grids for the samplers: each formulation's own discretisation, the EDM rho schedule or a tuned one.

* ``native``: the formulation's own t_0 > ... > t_{N-1} > t_N = 0 (EDM paper, Table 1).
* ``edm``: noise levels sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
  between the formulation's own sigma_min and sigma_max (Eq. 5), mapped to time with
  t_i = sigma^-1(round_sigma(sigma_i)). Use it with the multistep solvers, which step in ln(sigma): grids
  that are uniform in t (VP) or in a cosine table (iDDPM) end with a few very long steps in ln(sigma). For
  iDDPM, rounding to the table may merge neighbouring levels when N is large; merged steps are dropped.
* ``tuned``: a grid tuned for few steps (N <= 35) with the multistep solvers. In lambda = -ln(sigma), the
  variable the exponential solvers step in,

      lambda_i = lambda_max + (lambda_last - lambda_max) (i / (N - 1))^p(N),   i = 0..N-1,

  from lambda_max = -ln(sigma_max) to lambda_last = -ln(sigma_last(N)), then t_N = 0, with

      sigma_last(N) = min(max(TUNED_SCALE / N, sigma_min), sigma_max / 2),
      p(N) = min(max(1/2 + ln(N / 14) / 4, 1/2), 0.65).

  Why it beats the EDM rho = 7 grid at equal NFE: (i) with p < 1 the steps in lambda shrink along the path
  (p = 1/2: sigma_i = sigma_max (sigma_last / sigma_max)^sqrt(i / (N - 1))): long steps at high noise, where the
  data look like one Gaussian, D is nearly linear in x_hat and the exponential integrator is nearly exact, and
  short ones at low noise, where the modes separate and D bends; the EDM grid does the opposite, its steps in
  lambda grow towards sigma_min. (ii) The last noise level shrinks like 1/N instead of staying at 0.002: the
  final step returns D(x; sigma_last), which differs from the ODE's end point by O(sigma_last^2 / s^2) for data
  detail of scale s, while a k-th order solver's interior error is O(h^k); sigma_last ~ 1/N balances the two
  (k = 2) instead of spending steps on noise levels far below the data's detail. p(N) was fitted on the 1-D
  two-Gaussian mixture (component std 0.25; best p 0.45-0.55 for N <= 14, 0.6-0.65 for N >= 20, with the
  better of dpmpp_2m and dpmpp_3m) and TUNED_SCALE chosen from its optimum range; checked on
  the 2-D ring (std 0.1), a skewed three-component 1-D mixture and a held-out anisotropic 2-D mixture
  (benchmarks/samplers_vs_peers.py). Use it for N <= 35 on data scaled to about unit standard deviation; for
  data with structure much finer than 0.05 (in the units of x) or for many steps, prefer ``edm``, whose
  sigma_min = 0.002 resolves it.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

from diffscale.formulations.base import Formulation
from diffscale.formulations.edm import EDM

__all__ = ["SCHEDULES", "TUNED_SCALE", "ScheduleName", "time_grid", "tuned_sigmas", "tuned_warp"]

ScheduleName = Literal["native", "edm", "tuned"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)

TUNED_SCALE = 0.5
"""sigma_last(N) = TUNED_SCALE / N for the ``tuned`` schedule (in the units of x; see the module notes)."""


def tuned_warp(steps: int) -> float:
    """p(N) = min(max(1/2 + ln(N / 14) / 4, 1/2), 0.65): the exponent of the ``tuned`` grid in lambda (< 1: the
    steps in lambda shrink towards low noise)."""
    return min(max(0.5 + 0.25 * math.log(steps / 14.0), 0.5), 0.65)


def tuned_sigmas(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_last(N) of the ``tuned`` schedule (float64, N values)."""
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    sigma_last = min(max(TUNED_SCALE / steps, sigma_min), sigma_max / 2.0)
    fraction = torch.linspace(0.0, 1.0, steps, dtype=torch.float64) ** tuned_warp(steps)
    log_max = math.log(sigma_max)
    return torch.exp(log_max + fraction * (math.log(sigma_last) - log_max))


def time_grid(
    formulation: Formulation,
    steps: int,
    schedule: str = "native",
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t_0 > ... > t_{N-1} > t_N = 0 for ``schedule`` (at most ``steps + 1`` values, see the module notes)."""
    if schedule == "native":
        return formulation.time_steps(steps, dtype=dtype, device=device)
    if schedule == "edm":
        # The EDM formulation's own grid (sigma = t there, Eq. 5) over this formulation's noise range.
        edm = EDM(sigma_min=formulation.sigma_min, sigma_max=formulation.sigma_max, rho=rho)
        sigmas = edm.time_steps(steps)[:-1]
    elif schedule == "tuned":
        sigmas = tuned_sigmas(formulation.sigma_min, formulation.sigma_max, steps)
    else:
        raise ValueError(f"schedule = {schedule!r}: unknown schedule; allowed: {', '.join(SCHEDULES)}")
    sigmas = formulation.round_sigma(sigmas)
    times = torch.unique_consecutive(formulation.sigma_inv(sigmas))
    return torch.cat([times, times.new_zeros(1)]).to(dtype=dtype, device=device)
