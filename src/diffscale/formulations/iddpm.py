"""Improved DDPM formulation (Nichol & Dhariwal 2021; Karras et al. 2022, Table 1, column "iDDPM")."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from diffscale.devices import draw_devices
from diffscale.formulations.base import (
    Formulation,
    FormulationParams,
    Preconditioning,
    SigmaIsTime,
    TensorLike,
    as_tensor,
)
from diffscale.formulations.posterior import posterior_log_variance_bounds

__all__ = ["IDDPM", "IDDPMParams", "iddpm_sigma_table"]


class IDDPMParams(FormulationParams):
    """Parameters of the improved-DDPM formulation."""

    type: Literal["iDDPM"] = Field("iDDPM", description="formulation name")
    M: int = Field(1000, ge=2, description="number of discrete noise levels M")
    C_1: float = Field(0.001, gt=0, le=1, description="clip C_1 of alpha_bar(j-1) / alpha_bar(j)")
    C_2: float = Field(0.008, ge=0, description="offset C_2 of the cosine schedule")
    j_0: int = Field(8, ge=0, description="first table index j_0 used for sampling")
    learned_variance: bool = Field(
        False, description="the network also emits v, interpolating log beta and log beta_tilde (iDDPM Eq. 15)"
    )
    vlb_weight: float = Field(
        0.001, ge=0, description="weight lambda of L_vlb in L_hybrid = L_simple + lambda L_vlb (learned variance)"
    )

    @model_validator(mode="after")
    def _start_inside_table(self) -> IDDPMParams:
        if self.j_0 > self.M - 1:
            raise ValueError(f"j_0 = {self.j_0} must be at most M - 1 = {self.M - 1}")
        return self


def iddpm_sigma_table(M: int, C_1: float, C_2: float) -> torch.Tensor:
    """Noise levels u_0 > u_1 > ... > u_M = 0 of the cosine schedule (EDM paper, Table 1).

    u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1),
    alpha_bar(j) = sin^2(pi j / (2 M (C_2 + 1))).
    """

    def alpha_bar(j: int) -> float:
        return math.sin(0.5 * math.pi * j / (M * (C_2 + 1.0))) ** 2

    table = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        ratio = max(alpha_bar(j - 1) / alpha_bar(j), C_1)
        table[j - 1] = math.sqrt((table[j] ** 2 + 1.0) / ratio - 1.0)
    return torch.tensor(table, dtype=torch.float64)


class IDDPM(SigmaIsTime, Formulation):
    """sigma(t) = t, s(t) = 1, on the discrete table u_0 > ... > u_M = 0 of the cosine schedule.

    * time steps: t_i = u_floor(j_0 + (M - 1 - j_0) i/(N-1) + 1/2)
    * c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = M - 1 - argmin_j |u_j - sigma|
    * round_sigma snaps sigma to the nearest u_j
    * training: sigma = u_j, j ~ U{0, ..., M - 1}; lambda(sigma) = 1 / sigma^2
    * optional learned variance (``learned_variance=True``): the network emits 2C channels, the second half v
      interpolating the step variance between beta and beta_tilde; the loss adds ``vlb_weight`` M L_t, an
      unbiased estimate of lambda L_vlb (see :mod:`diffscale.loss`), and the ``ancestral`` sampler uses it.
    """

    name = "iDDPM"
    Params = IDDPMParams
    params: IDDPMParams

    def __init__(self, params: IDDPMParams | None = None, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.table = iddpm_sigma_table(self.params.M, self.params.C_1, self.params.C_2)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_0..u_M, the same in ascending order) on ``device``, float64, copied there once."""
        tables = self._on_device.get(device)
        if tables is None:
            table = self.table.to(device)
            tables = self._on_device[device] = (table, table.flip(0).contiguous())
        return tables

    @property
    def learned_variance(self) -> bool:
        return self.params.learned_variance

    @property
    def sigma_min(self) -> float:
        return float(self.table[self.params.M - 1])

    @property
    def sigma_max(self) -> float:
        return float(self.table[self.params.j_0])

    def _time_steps(self, fraction: torch.Tensor) -> torch.Tensor:
        j_0, M = self.params.j_0, self.params.M
        index = torch.floor(j_0 + (M - 1 - j_0) * fraction + 0.5).long()
        return self.table[index]

    def nearest_index(self, sigma: TensorLike) -> torch.Tensor:
        """argmin_j |u_j - sigma| over j = 0..M (long tensor of sigma's shape)."""
        sigma = as_tensor(sigma)
        _, ascending = self._table_on(sigma.device)
        value = sigma.to(torch.float64).contiguous()
        upper = torch.searchsorted(ascending, value).clamp(1, self.params.M)
        lower = upper - 1
        closer_to_upper = (ascending[upper] - value).abs() < (value - ascending[lower]).abs()
        ascending_index = torch.where(closer_to_upper, upper, lower)
        return self.params.M - ascending_index

    def variance_transition(self, sigma: TensorLike) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(u_{j+1}, log beta_tilde of the step u_{M-2} -> u_{M-1}, vlb_weight M) for sigma = u_j.

        The step u_{M-1} -> u_M = 0 has beta_tilde = 0; like iDDPM, its log is clipped to the value of the
        step before. vlb_weight M L_t with j uniform is an unbiased estimate of vlb_weight L_vlb.
        """
        sigma = as_tensor(sigma)
        M = self.params.M
        table, _ = self._table_on(sigma.device)
        sigma_next = table[(self.nearest_index(sigma) + 1).clamp_max(M)].to(sigma.dtype)
        clipped = posterior_log_variance_bounds(table[M - 2], table[M - 1])[1].to(sigma.dtype)
        return sigma_next, clipped, self.params.vlb_weight * M

    def round_sigma(self, sigma: TensorLike) -> torch.Tensor:
        sigma = as_tensor(sigma)
        return self._table_on(sigma.device)[0][self.nearest_index(sigma)].to(sigma.dtype)

    def preconditioning(self, sigma: TensorLike) -> Preconditioning:
        sigma = as_tensor(sigma)
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        c_noise = (self.params.M - 1 - self.nearest_index(sigma)).to(sigma.dtype)
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: TensorLike) -> torch.Tensor:
        return 1.0 / as_tensor(sigma).square()

    def sample_sigma(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        source, target = draw_devices(generator, device)
        index = torch.randint(0, self.params.M, (n,), generator=generator, device=source).to(target)
        return self._table_on(index.device)[0][index].to(dtype)
