"""Magnitude-preserving layers of Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2, arXiv 2312.02696, Sections 2 and B.2): operations that keep unit-variance activations at unit
variance, so that neither activations nor weights drift in magnitude during training.

* forced weight normalisation (Eq. 4 of the paper's Appendix B.2): each output channel's weight row w_i (N_i = fan-in
  values) is used as w_i / ||w_i|| in the forward pass, so y = w_hat x has Var y = Var x for x with independent
  unit-variance entries; the stored weight is re-normalised to ||w_i|| = sqrt(N_i) (unit-variance elements) after
  each optimiser step (:func:`renormalize_weights`), which keeps the effective learning rate constant;
* :func:`mp_silu`: SiLU(x) / 0.596, 0.596 = sqrt(E[SiLU(z)^2]) for z ~ N(0, 1);
* :func:`mp_sum`: ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2), unit variance for independent unit-variance a, b;
* :func:`mp_cat`: [w_a a, w_b b] with w_a = (1 - t) C / sqrt(N_a), w_b = t C / sqrt(N_b),
  C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2)): unit mean square over the N_a + N_b channels, and the share of a in it
  set by t (t = 0.5: both weigh as much, whatever their widths);
* :func:`pixel_norm`: x / sqrt(mean_c x_c^2 + eps) over channels (replaces group normalisation);
* :class:`MPFourier`: sqrt(2) cos(2 pi (f c + phi)), f ~ N(0, 1), phi ~ U(0, 1): unit variance over the channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from diffscale.networks.padding import circular_pad_longitude

__all__ = [
    "SILU_RMS",
    "MPConv",
    "MPFourier",
    "mp_cat",
    "mp_silu",
    "mp_sum",
    "normalize_rows",
    "pixel_norm",
    "renormalize_weights",
]

SILU_RMS = 0.596
"""sqrt(E[SiLU(z)^2]) for z ~ N(0, 1) (0.5965), rounded as in the paper: the divisor of the MP-SiLU."""


def normalize_rows(weight: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """w_i / (eps + ||w_i|| / sqrt(N_i)) for each output row i (dimension 0) of N_i elements: rows of norm sqrt(N_i),
    i.e. unit mean square; computed in float32."""
    w = weight.float()
    norm = torch.linalg.vector_norm(w, dim=list(range(1, w.ndim)), keepdim=True)
    return w / (eps + norm / math.sqrt(w[0].numel()))


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU(x) / 0.596: unit second moment for x ~ N(0, 1)."""
    return functional.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2): unit variance for independent unit-variance a and b."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """[w_a a, w_b b] along ``dim``, w_a = (1 - t) C / sqrt(N_a), w_b = t C / sqrt(N_b),
    C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2)), N_a and N_b the sizes along ``dim``: unit mean square when a and b
    have unit mean square."""
    size_a, size_b = a.shape[dim], b.shape[dim]
    scale = math.sqrt((size_a + size_b) / ((1 - t) ** 2 + t**2))
    weight_a = scale / math.sqrt(size_a) * (1 - t)
    weight_b = scale / math.sqrt(size_b) * t
    return torch.cat([weight_a * a, weight_b * b], dim=dim)


def pixel_norm(x: torch.Tensor, eps: float = 1e-4, dim: int = 1) -> torch.Tensor:
    """x / (eps + ||x||_dim / sqrt(N)) along ``dim`` (the channels): unit mean square at every position."""
    norm = torch.linalg.vector_norm(x.float(), dim=dim, keepdim=True)
    return (x.float() / (eps + norm / math.sqrt(x.shape[dim]))).to(x.dtype)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features of c_noise: sqrt(2) cos(2 pi (f_k c + phi_k)), f_k ~ N(0, bandwidth^2)
    and phi_k ~ U(0, 1) fixed at construction (from ``seed``); each feature has unit mean square over phi."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels = {num_channels}: must be >= 1")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels, generator=generator) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels, generator=generator))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).float() * self.freqs + self.phases
        return (angles.cos() * math.sqrt(2)).to(c_noise.dtype)


class MPConv(nn.Module):
    """Convolution (``kernel`` odd) or, with ``kernel = 0``, a linear map, with forced weight normalisation and no
    bias: y = gain (w_i / ||w_i||) * x per output channel i.

    The stored weight is drawn N(0, 1) and is re-normalised to rows of norm sqrt(fan-in) by
    :meth:`normalize_weight_` (the trainer calls it after every optimiser step); the forward pass normalises anyway, so
    the output never depends on the stored rows' norms. With ``periodic`` the W axis is padded circularly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, periodic: bool = False) -> None:
        super().__init__()
        if kernel < 0 or (kernel and kernel % 2 == 0):
            raise ValueError(f"kernel = {kernel}: must be 0 (linear) or an odd number")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels {in_channels} -> {out_channels}: both must be >= 1")
        self.in_channels, self.out_channels, self.kernel, self.periodic = in_channels, out_channels, kernel, periodic
        shape = (out_channels, in_channels, kernel, kernel) if kernel else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.randn(shape))

    @torch.no_grad()
    def normalize_weight_(self) -> None:
        """Forced weight normalisation of the stored weight: rows rescaled to norm sqrt(fan-in)."""
        self.weight.copy_(normalize_rows(self.weight).to(self.weight.dtype))

    def effective_weight(self, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        """gain w_i / ||w_i||: the weight the forward pass applies (unit-norm rows times ``gain``)."""
        return normalize_rows(self.weight) * (gain / math.sqrt(self.weight[0].numel()))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.effective_weight(gain).to(x.dtype)
        if not self.kernel:
            return x @ w.t()
        pad = self.kernel // 2
        if self.periodic:
            return functional.conv2d(circular_pad_longitude(x, pad), w, padding=(pad, 0))
        return functional.conv2d(x, w, padding=pad)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel={self.kernel}, periodic={self.periodic}"


def renormalize_weights(module: nn.Module) -> int:
    """Re-normalise the stored weight of every forced-weight-normalised layer in ``module`` (those with a
    ``normalize_weight_`` method); returns how many there were. Called by the trainer after each optimiser step."""
    count = 0
    for layer in module.modules():
        normalize = getattr(layer, "normalize_weight_", None)
        if callable(normalize):
            normalize()
            count += 1
    return count
