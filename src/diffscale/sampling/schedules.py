"""Time grids for the samplers: each formulation's own discretisation, or the EDM rho schedule for any of them.

* ``native``: the formulation's own t_0 > ... > t_{N-1} > t_N = 0 (EDM paper, Table 1).
* ``edm``: noise levels sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
  between the formulation's own sigma_min and sigma_max (Eq. 5), mapped to time with
  t_i = sigma^-1(round_sigma(sigma_i)). Use it with the multistep solvers, which step in ln(sigma): grids
  that are uniform in t (VP) or in a cosine table (iDDPM) end with a few very long steps in ln(sigma). For
  iDDPM, rounding to the table may merge neighbouring levels when N is large; merged steps are dropped.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from diffscale.formulations.base import Formulation

__all__ = ["SCHEDULES", "ScheduleName", "time_grid"]

ScheduleName = Literal["native", "edm"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


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
    if schedule != "edm":
        raise ValueError(f"schedule = {schedule!r}: unknown schedule; allowed: {', '.join(SCHEDULES)}")
    fraction = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
    top, bottom = formulation.sigma_max ** (1.0 / rho), formulation.sigma_min ** (1.0 / rho)
    sigmas = formulation.round_sigma((top + fraction * (bottom - top)) ** rho)
    times = torch.unique_consecutive(formulation.sigma_inv(sigmas))
    return torch.cat([times, times.new_zeros(1)]).to(dtype=dtype, device=device)
