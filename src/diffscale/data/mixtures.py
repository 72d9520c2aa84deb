"""Gaussian mixtures: toy data whose noisy marginals and ideal denoiser are known in closed form.

For y ~ sum_k w_k N(mu_k, diag(s_k^2)) and x = y + sigma n, the noisy marginal is
p(x; sigma) = sum_k w_k N(x; mu_k, diag(s_k^2 + sigma^2)), and the ideal denoiser (the minimiser of the
denoising loss, EDM paper Eq. 2-3) is

    D(x; sigma) = E[y | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with responsibilities r_k(x) proportional to w_k N(x; mu_k, diag(s_k^2 + sigma^2)). Samplers run on this
denoiser have no network error, so only their own discretisation error remains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffscale.devices import draw_devices

__all__ = ["GaussianMixture", "ring_2d", "two_gaussians_1d"]


def _matrix(values: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    if tensor.ndim != 2 or tensor.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (components, dims), got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: values must be finite")
    return tensor


class GaussianMixture:
    """A mixture of axis-aligned Gaussians in D dimensions.

    Args:
        means: component means mu_k, shape (K, D) (or (K,) for D = 1).
        stds: component standard deviations s_k > 0, shape (K,), (K, 1) or (K, D).
        weights: mixture weights w_k >= 0 (normalised here), shape (K,); equal weights if omitted.
    """

    def __init__(self, means: Any, stds: Any, weights: Sequence[float] | torch.Tensor | None = None) -> None:
        self.means = _matrix(means, "means")
        components, dims = self.means.shape
        stds = _matrix(stds, "stds")
        if stds.shape[0] != components or stds.shape[1] not in (1, dims):
            raise ValueError(f"stds: expected shape ({components},) or ({components}, {dims}), got {tuple(stds.shape)}")
        if not (stds > 0).all():
            raise ValueError("stds: every standard deviation must be > 0")
        self.stds = stds.expand(components, dims).clone()
        weights = (
            torch.ones(components, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if weights.shape != (components,):
            raise ValueError(f"weights: expected shape ({components},), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights: must be finite, non-negative and not all zero")
        self.weights = weights / weights.sum()

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(means={self.means.tolist()}, stds={self.stds.tolist()}, weights={self.weights.tolist()})"
        )

    @property
    def dims(self) -> int:
        """Data dimension D."""
        return self.means.shape[1]

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the mixture, shape (D,)."""
        return self.weights @ self.means

    @property
    def std(self) -> float:
        """Overall standard deviation (root of the mean per-dimension variance): a natural sigma_data."""
        second_moment = self.weights @ (self.stds**2 + self.means**2)
        return float((second_moment - self.mean**2).mean().sqrt())

    def _params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.means.to(like.device, like.dtype),
            self.stds.to(like.device, like.dtype),
            self.weights.to(like.device, like.dtype),
        )

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` draws y ~ p_data, shape (n, D)."""
        source, target = draw_devices(generator, device)  # drawn on the generator's device, then moved
        component = torch.multinomial(self.weights.to(source), n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dims), generator=generator, dtype=torch.float64, device=source)
        means, stds = self.means.to(source), self.stds.to(source)
        return (means[component] + stds[component] * noise).to(device=target, dtype=dtype)

    def _component_log_density(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """log w_k + log N(x; mu_k, diag(s_k^2 + sigma^2)), shape (B, K)."""
        means, stds, weights = self._params(x)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        variance = stds[None] ** 2 + sigma**2  # (B or 1, K, D)
        diff = x[:, None, :] - means[None]
        log_normal = -0.5 * (diff**2 / variance + variance.log() + math.log(2 * math.pi)).sum(dim=-1)
        return weights.log()[None] + log_normal

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log p(x; sigma) of the noisy marginal (sigma = 0: the data density), shape (B,)."""
        return torch.logsumexp(self._component_log_density(self._check(x), sigma), dim=1)

    def cdf(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Cumulative distribution of the noisy marginal of a 1-D mixture, elementwise in x."""
        if self.dims != 1:
            raise ValueError(f"cdf is defined for 1-D mixtures; this one has D = {self.dims}")
        means, stds, weights = self._params(x)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        scale = (stds[:, 0] ** 2 + sigma**2).sqrt()
        z = (x[..., None] - means[:, 0]) / (scale * math.sqrt(2.0))
        return (weights * 0.5 * (1.0 + torch.erf(z))).sum(dim=-1)

    def ideal_denoiser(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The exact D(x; sigma) = E[y | y + sigma n = x], shape (B, D), in x's dtype."""
        x = self._check(x)
        means, stds, _ = self._params(x)
        sigma_b = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        responsibilities = torch.softmax(self._component_log_density(x, sigma), dim=1)  # (B, K)
        gain = stds[None] ** 2 / (stds[None] ** 2 + sigma_b**2)  # (B or 1, K, D)
        posterior_means = means[None] + gain * (x[:, None, :] - means[None])
        return (responsibilities[..., None] * posterior_means).sum(dim=1)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dims:
            raise ValueError(f"expected samples of shape (batch, {self.dims}), got {tuple(x.shape)}")
        return x


def two_gaussians_1d() -> GaussianMixture:
    """The 1-D two-Gaussian mixture of the demo: 0.5 N(-1, 0.25^2) + 0.5 N(1, 0.25^2) (std about 1.03)."""
    return GaussianMixture(means=[[-1.0], [1.0]], stds=[0.25, 0.25], weights=[0.5, 0.5])


def ring_2d(modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """``modes`` equal-weight Gaussians evenly spaced on a circle of ``radius`` in 2-D."""
    if modes < 1:
        raise ValueError(f"modes = {modes}: must be >= 1")
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means=means, stds=[std] * modes)
