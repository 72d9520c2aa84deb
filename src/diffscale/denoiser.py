"""The preconditioned denoiser D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
(EDM paper, Eq. 7), around any network F."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from diffscale.formulations.base import Formulation

__all__ = ["Denoiser", "PreconditionedDenoiser", "expand_sigma"]


class Denoiser(Protocol):
    """D(x; sigma): the denoised estimate of y from x = y + sigma n, with sigma 1-D of batch length."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor: ...


def expand_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a 1-D tensor of x's batch length, in x's dtype and on its device.

    Accepts a number, a 0-dim tensor, or a tensor of batch length (shape ``(B,)`` or ``(B, 1, ...)``).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.numel() == 1:
        return sigma.reshape(1).expand(x.shape[0])
    if sigma.numel() != x.shape[0]:
        raise ValueError(f"sigma has {sigma.numel()} values; expected 1 or the batch length {x.shape[0]}")
    return sigma.reshape(x.shape[0])


class PreconditionedDenoiser(nn.Module):
    """D(x; sigma, cond) = c_skip x + c_out F(c_in x; c_noise, cond), with the formulation's c_*.

    ``x`` is the unscaled noisy sample y + sigma n. Conditioning is passed to F unchanged (only the
    noisy state is multiplied by c_in). The preconditioning is computed in x's dtype; F runs in its own
    parameter dtype and its output is cast back, so a float32 network serves a float64 sampler.

    When the formulation learns the variance (iDDPM with ``learned_variance=True``), F emits 2C channels along
    dimension 1: the first C are preconditioned as above, the last C are the raw variance interpolation v
    (see :meth:`denoise_with_variance`); ``forward`` returns D only, so every sampler can use it.
    """

    def __init__(self, network: nn.Module, formulation: Formulation) -> None:
        super().__init__()
        self.network = network
        self.formulation = formulation

    def _network_dtype(self, fallback: torch.dtype) -> torch.dtype:
        parameter = next(self.network.parameters(), None)
        return parameter.dtype if parameter is not None else fallback

    def denoise_with_variance(
        self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(D(x; sigma), v): v is the network's variance interpolation, or None without learned variance."""
        sigma = expand_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.formulation.preconditioning(sigma)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        network_dtype = self._network_dtype(x.dtype)
        network_input = (c_in.reshape(shape) * x).to(network_dtype)
        output = self.network(network_input, c_noise.to(network_dtype), **cond)
        variance = None
        if self.formulation.learned_variance:
            expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
            if output.shape != expected:
                raise ValueError(
                    f"network returned shape {tuple(output.shape)}, expected {expected} "
                    "(mean and variance channels: the formulation learns the variance)"
                )
            output, variance = output.chunk(2, dim=1)
            variance = variance.to(x.dtype)
        elif output.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(output.shape)}, expected {tuple(x.shape)}")
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * output.to(x.dtype), variance

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma, **cond)[0]
