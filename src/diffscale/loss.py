"""The weighted denoising loss E_{sigma, y, n}[lambda(sigma) |D(y + sigma n; sigma) - y|^2] (EDM paper, Eq. 8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffscale.denoiser import Denoiser
from diffscale.formulations.base import Formulation

__all__ = ["DenoisingLoss", "LossTerms"]


@dataclass(frozen=True)
class LossTerms:
    """Per-sample losses and the noise levels they were drawn at (for logging per sigma bucket).

    ``per_sample[b] = lambda(sigma_b) mean_k (D(y_b + sigma_b n_b; sigma_b)_k - y_b,k)^2``.
    """

    per_sample: torch.Tensor
    sigma: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """The batch mean, the quantity to minimise."""
        return self.per_sample.mean()


class DenoisingLoss:
    """Draws sigma from the formulation's training law p_train and weights the error by lambda(sigma).

    The squared error is averaged over the non-batch elements, so the loss scale does not depend on the
    grid size.
    """

    def __init__(self, formulation: Formulation) -> None:
        self.formulation = formulation

    def __call__(
        self,
        denoiser: Denoiser,
        clean: torch.Tensor,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> LossTerms:
        batch = clean.shape[0]
        sigma = self.formulation.sample_sigma(batch, generator, dtype=clean.dtype, device=clean.device)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
        shape = (batch,) + (1,) * (clean.ndim - 1)
        denoised = denoiser(clean + sigma.reshape(shape) * noise, sigma, **cond)
        squared_error = (denoised.float() - clean.float()).square().reshape(batch, -1).mean(dim=1)
        weight = self.formulation.loss_weight(sigma).float()
        return LossTerms(per_sample=weight * squared_error, sigma=sigma)
