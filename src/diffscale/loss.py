"""The weighted denoising loss E_{sigma, y, n}[lambda(sigma) |D(y + sigma n; sigma) - y|^2] (EDM paper, Eq. 8),
and, for iDDPM with learned variance, the hybrid loss L_simple + lambda L_vlb (Nichol & Dhariwal 2021, Sec. 3.1).

Row weights: a batch of grids (B, C, H, W) may carry ``row_weights`` w (B, H) in its conditioning (e.g. cos of
each row's latitude, normalised to mean 1 over the rows: a latitude-weighted loss for global grids). The mean
over a sample's elements is then the weighted mean (1 / (C H W)) sum_{c,i,j} w_bi e_bcij; the objective takes
w out of the conditioning, so the model never sees it. Without it the loss is unchanged (bitwise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from diffscale.denoiser import Denoiser
from diffscale.formulations.base import Formulation
from diffscale.formulations.posterior import (
    interpolated_log_variance,
    posterior_log_variance_bounds,
    posterior_mean_weights,
)

__all__ = [
    "ROW_WEIGHTS",
    "DenoisingLoss",
    "LossTerms",
    "Objective",
    "SplitObjective",
    "mean_per_sample",
    "variational_bound_term",
]

LOG_2 = math.log(2.0)
ROW_WEIGHTS = "row_weights"
"""Key of per-row loss weights (B, H) in a batch's conditioning (see the module docstring)."""


def mean_per_sample(per_element: torch.Tensor, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the mean of ``per_element`` (B, ...) over each sample's elements; with ``row_weights`` w (B, H) for
    grids (B, ..., H, W) the row-weighted mean (1 / N) sum_{..., i, j} w_bi e_b...ij (N elements per sample)."""
    batch = per_element.shape[0]
    if row_weights is None:
        return per_element.reshape(batch, -1).mean(dim=1)
    if per_element.ndim < 3 or tuple(row_weights.shape) != (batch, per_element.shape[-2]):
        raise ValueError(
            f"row_weights of shape {tuple(row_weights.shape)} do not fit a batch of grids {tuple(per_element.shape)}"
        )
    shape = (batch,) + (1,) * (per_element.ndim - 3) + (per_element.shape[-2], 1)
    weighted = per_element * row_weights.to(per_element.dtype).reshape(shape)
    return weighted.reshape(batch, -1).mean(dim=1)


@dataclass(frozen=True)
class LossTerms:
    """Per-sample losses and the noise levels they were drawn at (for logging per sigma bucket; None for an
    objective without noise levels, e.g. regression).

    ``per_sample[b] = lambda(sigma_b) mean_k (D(y_b + sigma_b n_b; sigma_b)_k - y_b,k)^2`` (plus, with learned
    variance, ``vlb_weight * M * L_t`` in bits per dimension).
    """

    per_sample: torch.Tensor
    sigma: torch.Tensor | None

    @property
    def mean(self) -> torch.Tensor:
        """The batch mean, the quantity to minimise."""
        return self.per_sample.mean()


class Objective(Protocol):
    """A training objective: ``objective(model, target, generator, **cond) -> LossTerms``."""

    def __call__(
        self, model: Any, target: torch.Tensor, generator: torch.Generator | None, **cond: Any
    ) -> LossTerms: ...


@runtime_checkable
class SplitObjective(Protocol):
    """An objective whose randomness is drawn apart from its evaluation, so that the random inputs of a whole
    batch can be drawn once and any slice of rows evaluated alone (gradient accumulation, data parallelism)
    with the same result as evaluating the whole batch.

    ``draw`` returns tensors whose first dimension is the batch; ``evaluate`` takes rows of them.
    """

    def draw(self, target: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]: ...

    def evaluate(
        self, model: Any, target: torch.Tensor, drawn: Mapping[str, torch.Tensor], **cond: Any
    ) -> LossTerms: ...


def variational_bound_term(
    clean: torch.Tensor,
    denoised: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    clipped_log_beta_tilde: torch.Tensor,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_t of the step sigma -> sigma' per sample, in bits per dimension (iDDPM, Eq. 4-5 and 15); with
    ``row_weights`` (B, H) the row-weighted mean over the elements (:func:`mean_per_sample`).

    For sigma' > 0: KL(q(x_hat' | x_hat, y) || N(a x_hat + b D, Sigma)); for sigma' = 0 the continuous decoder
    term -log N(y; D, Sigma). Sigma = exp(f log beta + (1 - f) log beta_tilde), with beta_tilde replaced by
    ``clipped_log_beta_tilde`` where it vanishes (sigma' = 0). ``denoised`` should carry no gradient
    (iDDPM's stop-gradient: L_vlb trains the variance only).
    """
    shape = (clean.shape[0],) + (1,) * (clean.ndim - 1)
    sigma_b, sigma_next_b = sigma.reshape(shape), sigma_next.reshape(shape)
    final = sigma_next_b == 0
    log_beta, log_beta_tilde = posterior_log_variance_bounds(sigma_b, sigma_next_b)
    log_beta_tilde = torch.where(final, clipped_log_beta_tilde, log_beta_tilde)  # log 0 = -inf replaced
    log_variance = interpolated_log_variance(v, log_beta, log_beta_tilde)
    _, b = posterior_mean_weights(sigma_b, sigma_next_b)
    mean_gap = b * (clean - denoised)  # true posterior mean minus the model's
    kl = 0.5 * (
        log_variance - log_beta_tilde + (log_beta_tilde - log_variance).exp() + mean_gap**2 / log_variance.exp() - 1
    )
    decoder_nll = 0.5 * (math.log(2 * math.pi) + log_variance + (clean - denoised) ** 2 / log_variance.exp())
    per_element = torch.where(final, decoder_nll, kl) / LOG_2
    return mean_per_sample(per_element, row_weights)


class DenoisingLoss:
    """Draws sigma from the formulation's training law p_train and weights the error by lambda(sigma).

    The squared error is averaged over the non-batch elements, so the loss scale does not depend on the
    grid size. With a learned variance (iDDPM), the per-sample loss is L_simple + vlb_weight * M * L_t: M L_t
    with t uniform is an unbiased estimate of L_vlb = sum_t L_t.
    """

    def __init__(self, formulation: Formulation) -> None:
        self.formulation = formulation

    def draw(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """sigma ~ p_train (B,) and n ~ N(0, I) of ``clean``'s shape, drawn in that order from ``generator``."""
        batch = clean.shape[0]
        sigma = self.formulation.sample_sigma(batch, generator, dtype=clean.dtype, device=clean.device)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
        return {"sigma": sigma, "noise": noise}

    def evaluate(
        self, denoiser: Denoiser, clean: torch.Tensor, drawn: Mapping[str, torch.Tensor], **cond: Any
    ) -> LossTerms:
        """The per-sample loss at the drawn sigma and n: x = y + sigma n, lambda(sigma) |D(x; sigma) - y|^2
        (averaged with the ``row_weights`` of ``cond`` when it has them)."""
        row_weights = cond.pop(ROW_WEIGHTS, None)
        f = self.formulation
        sigma, noise = drawn["sigma"], drawn["noise"]
        batch = clean.shape[0]
        shape = (batch,) + (1,) * (clean.ndim - 1)
        noisy = clean + sigma.reshape(shape) * noise
        if f.learned_variance:
            if not hasattr(denoiser, "denoise_with_variance"):
                raise TypeError("a learned variance needs a PreconditionedDenoiser (its network emits v)")
            denoised, v = denoiser.denoise_with_variance(noisy, sigma, **cond)
        else:
            denoised, v = denoiser(noisy, sigma, **cond), None
        squared_error = mean_per_sample((denoised.float() - clean.float()).square(), row_weights)
        per_sample = f.loss_weight(sigma).float() * squared_error
        if v is not None:
            sigma_next, clipped, weight = f.variance_transition(sigma)
            bound = variational_bound_term(
                clean.float(),
                denoised.detach().float(),
                v.float(),
                sigma.float(),
                sigma_next.float(),
                clipped.float(),
                row_weights,
            )
            per_sample = per_sample + weight * bound
        return LossTerms(per_sample=per_sample, sigma=sigma)

    def __call__(
        self,
        denoiser: Denoiser,
        clean: torch.Tensor,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> LossTerms:
        return self.evaluate(denoiser, clean, self.draw(clean, generator), **cond)
