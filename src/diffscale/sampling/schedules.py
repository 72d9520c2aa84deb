"""Time grids for the samplers: each formulation's own discretisation, the EDM rho schedule or a tuned one.

* ``native``: the formulation's own t_0 > ... > t_{N-1} > t_N = 0 (EDM paper, Table 1).
* ``edm``: noise levels sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
  between the formulation's own sigma_min and sigma_max (Eq. 5), mapped to time with
  t_i = sigma^-1(round_sigma(sigma_i)). Use it with the multistep solvers, which step in ln(sigma): grids
  that are uniform in t (VP) or in a cosine table (iDDPM) end with a few very long steps in ln(sigma). For
  iDDPM, rounding to the table may merge neighbouring levels when N is large; merged steps are dropped.
* ``tuned``: a grid tuned for a small number of steps N: uniform in lambda = -ln(sigma) (the variable the
  multistep solvers step in; the limit rho -> infinity of Eq. 5) from sigma_max down to

      sigma_last(N) = min(max(TUNED_SCALE / N, sigma_min), sigma_max / 2),

  then t_N = 0. Two choices make it beat the EDM rho = 7 grid at equal NFE: (i) equal steps in lambda,
  where the EDM grid's steps grow towards sigma_min (with rho = 7 the last steps are several times longer in
  lambda than the first ones, where a polynomial extrapolation of D errs most); (ii) a last noise level that
  shrinks like 1/N instead of a fixed sigma_min = 0.002: the final step returns D(x; sigma_last), which differs
  from the ODE's end point by O(sigma_last^2 / s^2) for data detail of scale s, while the interior error of a
  k-th order solver is O((ln(sigma_max / sigma_last) / N)^k); sigma_last ~ 1/N balances the two for k = 2,
  rather than spending steps below the noise levels that still matter. TUNED_SCALE = 0.5 was fitted on the
  1-D two-Gaussian mixture (component std 0.25) and checked, untuned, on the 2-D ring (std 0.1) and a skewed
  three-component mixture (benchmarks/samplers_vs_peers.py). Use it with dpmpp_2m / dpmpp_3m for
  N <= 35 on data normalised to about unit scale; for data with structure much finer than 0.1 (in the
  units of x), or for N > 50, prefer ``edm``, whose sigma_min = 0.002 resolves it.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

from diffscale.formulations.base import Formulation

__all__ = ["SCHEDULES", "TUNED_SCALE", "ScheduleName", "time_grid", "tuned_sigmas"]

ScheduleName = Literal["native", "edm", "tuned"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)

TUNED_SCALE = 0.5
"""sigma_last(N) = TUNED_SCALE / N for the ``tuned`` schedule (in the units of x; fitted, see the module notes)."""


def tuned_sigmas(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_last(N), uniform in ln(sigma) (float64, N values)."""
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    sigma_last = min(max(TUNED_SCALE / steps, sigma_min), sigma_max / 2.0)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_last), steps, dtype=torch.float64)


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
        fraction = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        top, bottom = formulation.sigma_max ** (1.0 / rho), formulation.sigma_min ** (1.0 / rho)
        sigmas = (top + fraction * (bottom - top)) ** rho
    elif schedule == "tuned":
        sigmas = tuned_sigmas(formulation.sigma_min, formulation.sigma_max, steps)
    else:
        raise ValueError(f"schedule = {schedule!r}: unknown schedule; allowed: {', '.join(SCHEDULES)}")
    sigmas = formulation.round_sigma(sigmas)
    times = torch.unique_consecutive(formulation.sigma_inv(sigmas))
    return torch.cat([times, times.new_zeros(1)]).to(dtype=dtype, device=device)
