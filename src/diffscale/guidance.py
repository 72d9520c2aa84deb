"""Classifier-free guidance (Ho & Salimans 2022) around any denoiser:

    D_w(x; sigma, c) = D(x; sigma, c_0) + w (D(x; sigma, c) - D(x; sigma, c_0)),

where c_0 is the conditioning with its labels dropped (set to zero, as label dropout does in training).
w = 0 gives the unconditional denoiser, w = 1 the conditional one, w > 1 strengthens the conditioning.
The guided denoiser has the denoiser signature ``D_w(x, sigma, **cond)``, so every sampler accepts it::

    guided = ClassifierFreeGuidance(denoiser, guidance=2.0)
    y = diffscale.sample(guided, noise, f, cond={"class_labels": labels})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffscale.denoiser import Denoiser

__all__ = ["ClassifierFreeGuidance", "drop_conditioning"]


def drop_conditioning(cond: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``cond`` with the tensors under ``keys`` replaced by zeros (the unconditional c_0)."""
    missing = [key for key in keys if not isinstance(cond.get(key), torch.Tensor)]
    if missing:
        raise ValueError(f"classifier-free guidance drops {missing}, but cond has no such tensors (keys: {list(cond)})")
    return {key: torch.zeros_like(value) if key in keys else value for key, value in cond.items()}


class ClassifierFreeGuidance:
    """D_w = D_uncond + w (D_cond - D_uncond) around ``denoiser``.

    Args:
        denoiser: any callable ``denoiser(x, sigma, **cond)``, e.g. a PreconditionedDenoiser.
        guidance: the weight w (0: unconditional, 1: conditional).
        drop_keys: the conditioning entries zeroed for the unconditional branch (default: class labels;
            add "cond_fields" for a model trained with conditioning-field dropout).
        batched: evaluate both branches in one call on a doubled batch (faster) when every conditioning
            tensor has the batch length; otherwise two calls.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        guidance: float,
        *,
        drop_keys: Sequence[str] = ("class_labels",),
        batched: bool = True,
    ) -> None:
        if not drop_keys:
            raise ValueError("drop_keys must name at least one conditioning entry")
        self.denoiser, self.guidance = denoiser, float(guidance)
        self.drop_keys, self.batched = tuple(drop_keys), batched

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        unconditional = drop_conditioning(cond, self.drop_keys)
        w = self.guidance
        if w == 1.0:
            return self.denoiser(x, sigma, **cond)
        if w == 0.0:
            return self.denoiser(x, sigma, **unconditional)
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        stackable = all(isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch for v in cond.values())
        if self.batched and stackable:
            both = {key: torch.cat([cond[key], unconditional[key]]) for key in cond}
            d_cond, d_uncond = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        else:
            d_cond = self.denoiser(x, sigma, **cond)
            d_uncond = self.denoiser(x, sigma, **unconditional)
        return d_uncond + w * (d_cond - d_uncond)

    def denoise_with_variance(
        self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(D_w, v) for a denoiser that learns the variance (ancestral sampling): the guided mean and the
        conditional branch's variance output v (as GLIDE guides the mean and keeps the conditional variance)."""
        with_variance = getattr(self.denoiser, "denoise_with_variance", None)
        if with_variance is None:
            return self(x, sigma, **cond), None
        d_cond, variance = with_variance(x, sigma, **cond)
        if self.guidance == 1.0:
            return d_cond, variance
        d_uncond, _ = with_variance(x, sigma, **drop_conditioning(cond, self.drop_keys))
        return d_uncond + self.guidance * (d_cond - d_uncond), variance
