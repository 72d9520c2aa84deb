"""Variance-preserving formulation (Song et al. 2021, "DDPM++"; Karras et al. 2022, Table 1, column "VP")."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from diffscale.formulations.base import (
    Formulation,
    FormulationParams,
    Preconditioning,
    TensorLike,
    as_tensor,
    uniform,
)

__all__ = ["VP", "VPParams"]


class VPParams(FormulationParams):
    """Parameters of the variance-preserving formulation."""

    type: Literal["VP"] = Field("VP", description="formulation name")
    beta_d: float = Field(19.9, gt=0, description="slope beta_d of the linear beta(t) = beta_min + beta_d t")
    beta_min: float = Field(0.1, ge=0, description="beta_min, beta(0)")
    epsilon_s: float = Field(1e-3, gt=0, lt=1, description="last sampling time epsilon_s")
    epsilon_t: float = Field(1e-5, gt=0, lt=1, description="smallest training time epsilon_t")
    M: int = Field(1000, ge=2, description="number of discrete DDPM steps M; c_noise = (M - 1) t")


class VP(Formulation):
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), s(t) = 1 / sqrt(exp(beta_d t^2 / 2 + beta_min t)).

    * time steps: t_i = 1 + i/(N-1) (epsilon_s - 1)
    * c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) sigma^-1(sigma)
    * training: t ~ U(epsilon_t, 1), sigma = sigma(t); lambda(sigma) = 1 / sigma^2
    """

    name = "VP"
    Params = VPParams
    params: VPParams

    def _exponent(self, t: torch.Tensor) -> torch.Tensor:
        """beta_d t^2 / 2 + beta_min t, the integral of beta(t) from 0 to t."""
        return 0.5 * self.params.beta_d * t**2 + self.params.beta_min * t

    def sigma(self, t: TensorLike) -> torch.Tensor:
        return torch.expm1(self._exponent(as_tensor(t))).sqrt()

    def sigma_inv(self, sigma: TensorLike) -> torch.Tensor:
        sigma = as_tensor(sigma)
        beta_d, beta_min = self.params.beta_d, self.params.beta_min
        return ((beta_min**2 + 2.0 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d

    def sigma_deriv(self, t: TensorLike) -> torch.Tensor:
        t = as_tensor(t)
        exponent = self._exponent(t)
        beta = self.params.beta_d * t + self.params.beta_min
        return 0.5 * beta * exponent.exp() / torch.expm1(exponent).sqrt()

    def scale(self, t: TensorLike) -> torch.Tensor:
        return (-0.5 * self._exponent(as_tensor(t))).exp()

    def scale_deriv(self, t: TensorLike) -> torch.Tensor:
        t = as_tensor(t)
        beta = self.params.beta_d * t + self.params.beta_min
        return -0.5 * beta * self.scale(t)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.params.epsilon_s))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(1.0))

    def _time_steps(self, fraction: torch.Tensor) -> torch.Tensor:
        return 1.0 + fraction * (self.params.epsilon_s - 1.0)

    def preconditioning(self, sigma: TensorLike) -> Preconditioning:
        sigma = as_tensor(sigma)
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        c_noise = (self.params.M - 1) * self.sigma_inv(sigma)
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
        eps = self.params.epsilon_t
        t = eps + (1.0 - eps) * uniform(n, generator, torch.float64, device)
        return self.sigma(t).to(dtype)
