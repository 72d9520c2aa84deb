"""Deterministic regression: mu(c) = F(0; 0, c), the conditional-mean model trained with the mean squared error.

It is the baseline downscaling users compare with, and the first stage of CorrDiff (Mardani et al. 2023,
arXiv 2309.15214): a U-Net predicts the conditional mean mu(c) of the fine field from the conditioning c (the
upsampled coarse field, statics, ...), and a diffusion model then learns the residual y - mu(c).

The same network classes as the denoiser serve here. F receives a zero state x = 0 and a zero noise
conditioning c_noise = 0, so everything it knows comes from the conditioning fields and labels; the minimiser of
E |F(0; 0, c) - y|^2 over F is E[y | c] (the regression function).

It sits beside :mod:`diffscale.denoiser` in the layering: it knows a network's call convention, never how the
model is trained or sampled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffscale.loss import ROW_WEIGHTS, LossTerms, mean_per_sample

__all__ = ["RegressionLoss", "RegressionModel"]


class RegressionModel(nn.Module):
    """mu(c) = F(0; c_noise = 0, c) for a grid network F with ``in_channels`` = C.

    Args:
        network: F(x, c_noise, **cond) with output channels C (e.g. a SongUNet or DhariwalUNet built with
            ``cond_channels`` > 0).
        channels: C, the channels of the predicted field (the network's ``in_channels``).
    """

    def __init__(self, network: nn.Module, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels = {channels}: must be >= 1")
        self.network = network
        self.channels = channels

    def _network_dtype(self, fallback: torch.dtype) -> torch.dtype:
        parameter = next(self.network.parameters(), None)
        return parameter.dtype if parameter is not None else fallback

    def forward(self, cond_fields: torch.Tensor, **cond: Any) -> torch.Tensor:
        """mu(c) of shape (B, C, H, W) from ``cond_fields`` (B, K, H, W) and any further conditioning (labels)."""
        if cond_fields.ndim != 4:
            shape = tuple(cond_fields.shape)
            raise ValueError(f"cond_fields: expected shape (batch, channels, height, width), got {shape}")
        batch, _, height, width = cond_fields.shape
        dtype = self._network_dtype(cond_fields.dtype)
        state = torch.zeros(batch, self.channels, height, width, dtype=dtype, device=cond_fields.device)
        c_noise = torch.zeros(batch, dtype=dtype, device=cond_fields.device)
        output = self.network(state, c_noise, cond_fields=cond_fields.to(dtype), **cond)
        return output.to(cond_fields.dtype)


class RegressionLoss:
    """The mean squared error per sample, ``per_sample[b] = mean_k (mu(c_b)_k - y_b,k)^2``; no noise level.

    Called like :class:`~diffscale.loss.DenoisingLoss`: ``loss(model, target, generator, **cond)`` (the
    generator is unused: the regression objective draws nothing). ``row_weights`` (B, H) in ``cond`` make it
    the row-weighted mean (:func:`~diffscale.loss.mean_per_sample`); the model does not see them.
    """

    def __call__(
        self,
        model: nn.Module,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> LossTerms:
        if "cond_fields" not in cond:
            raise ValueError("the regression objective needs conditioning fields (cond_fields=...)")
        row_weights = cond.pop(ROW_WEIGHTS, None)
        prediction = model(**cond)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target {tuple(target.shape)}")
        if row_weights is None:
            per_sample = (prediction - target).square().flatten(1).mean(dim=1)
        else:
            per_sample = mean_per_sample((prediction - target).square(), row_weights)
        return LossTerms(per_sample=per_sample, sigma=None)
