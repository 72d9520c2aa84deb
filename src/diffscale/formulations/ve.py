"""Variance-exploding formulation (Song et al. 2021, "SMLD"; Karras et al. 2022, Table 1, column "VE")."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from diffscale.formulations.base import (
    Formulation,
    Preconditioning,
    RangeParams,
    TensorLike,
    as_tensor,
    uniform,
)

__all__ = ["VE", "VEParams"]


class VEParams(RangeParams):
    """Parameters of the variance-exploding formulation."""

    type: Literal["VE"] = Field("VE", description="formulation name")
    sigma_min: float = Field(0.02, gt=0, description="smallest noise level sigma_min")
    sigma_max: float = Field(100.0, gt=0, description="largest noise level sigma_max")


class VE(Formulation):
    """sigma(t) = sqrt(t), s(t) = 1.

    * time steps: t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i/(N-1))
    * c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)
    * training: ln(sigma) ~ U(ln sigma_min, ln sigma_max); lambda(sigma) = 1 / sigma^2
    """

    name = "VE"
    Params = VEParams
    params: VEParams

    def sigma(self, t: TensorLike) -> torch.Tensor:
        return as_tensor(t).sqrt()

    def sigma_inv(self, sigma: TensorLike) -> torch.Tensor:
        return as_tensor(sigma).square()

    def sigma_deriv(self, t: TensorLike) -> torch.Tensor:
        return 0.5 / as_tensor(t).sqrt()

    @property
    def sigma_min(self) -> float:
        return self.params.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.params.sigma_max

    def _time_steps(self, fraction: torch.Tensor) -> torch.Tensor:
        ratio = (self.params.sigma_min / self.params.sigma_max) ** 2
        return self.params.sigma_max**2 * ratio**fraction

    def preconditioning(self, sigma: TensorLike) -> Preconditioning:
        sigma = as_tensor(sigma)
        c_skip = torch.ones_like(sigma)
        c_out = sigma.clone()
        c_in = torch.ones_like(sigma)
        c_noise = (0.5 * sigma).log()
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
        low, high = math.log(self.params.sigma_min), math.log(self.params.sigma_max)
        log_sigma = low + (high - low) * uniform(n, generator, torch.float64, device)
        return log_sigma.exp().to(dtype)
