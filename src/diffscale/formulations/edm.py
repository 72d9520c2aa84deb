"""EDM formulation (Karras et al. 2022, Table 1, column "EDM")."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from diffscale.formulations.base import (
    Formulation,
    Preconditioning,
    RangeParams,
    SigmaIsTime,
    TensorLike,
    as_tensor,
    normal,
)

__all__ = ["EDM", "EDMParams"]


class EDMParams(RangeParams):
    """Parameters of the EDM formulation."""

    type: Literal["EDM"] = Field("EDM", description="formulation name")
    sigma_data: float = Field(0.5, gt=0, description="standard deviation of the data, sigma_data")
    sigma_min: float = Field(0.002, gt=0, description="smallest sampling noise level")
    sigma_max: float = Field(80.0, gt=0, description="largest sampling noise level")
    rho: float = Field(7.0, gt=0, description="time-step exponent rho of Eq. 5")
    p_mean: float = Field(-1.2, description="mean P_mean of ln(sigma) during training")
    p_std: float = Field(1.2, gt=0, description="standard deviation P_std of ln(sigma) during training")


class EDM(SigmaIsTime, Formulation):
    """sigma(t) = t, s(t) = 1, with the preconditioning and training law of the EDM paper.

    * time steps (Eq. 5): t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    * c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
      c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4
    * training: ln(sigma) ~ N(P_mean, P_std^2); lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    """

    name = "EDM"
    Params = EDMParams
    params: EDMParams

    @property
    def sigma_min(self) -> float:
        return self.params.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.params.sigma_max

    def _time_steps(self, fraction: torch.Tensor) -> torch.Tensor:
        inv_rho = 1.0 / self.params.rho
        start, end = self.params.sigma_max**inv_rho, self.params.sigma_min**inv_rho
        return (start + fraction * (end - start)) ** self.params.rho

    def preconditioning(self, sigma: TensorLike) -> Preconditioning:
        sigma = as_tensor(sigma)
        sigma_data = self.params.sigma_data
        total = sigma**2 + sigma_data**2
        c_skip = sigma_data**2 / total
        c_out = sigma * sigma_data / total.sqrt()
        c_in = 1.0 / total.sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: TensorLike) -> torch.Tensor:
        sigma = as_tensor(sigma)
        sigma_data = self.params.sigma_data
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2

    def sample_sigma(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        log_sigma = self.params.p_mean + self.params.p_std * normal(n, generator, torch.float64, device)
        return log_sigma.exp().to(dtype)
