"""Stationary Gaussian random fields on a periodic grid: gridded toy data whose noisy marginals, ideal
denoiser and power spectrum are known in closed form.

On a periodic H x W grid (N = H W points, unit spacing) the wavenumbers are k = 2 pi (f_y, f_x) with
f_y = j / H, f_x = i / W (``torch.fft.fftfreq``). A zero-mean stationary field y with power spectrum P(k)
has the circulant covariance

    C[r, r'] = c(r - r'),    c = IFFT(P)    (c(0) = mean_k P(k), the pointwise variance),

whose eigenvectors are the Fourier modes and whose eigenvalues are P(k). Here

    P(k) = A (1 + (|k| l)^2)^(-slope / 2)    (a Matérn-like spectrum: correlation length l),

with A chosen so that c(0) = std^2. Every channel is an independent field with the same spectrum.

Closed forms used below (x = y + sigma n, n white):

* sampling: y = IFFT(sqrt(P) FFT(w)) for white noise w (Cov y = C);
* ideal denoiser (Wiener filter, EDM paper Eq. 2-3 for Gaussian data):
  D(x; sigma) = E[y | x] = C (C + sigma^2 I)^-1 x = IFFT(P / (P + sigma^2) FFT(x));
* noisy log-density: log N(x; 0, C + sigma^2 I) = -1/2 [x^T (C + sigma^2 I)^-1 x + sum_k log(P(k) + sigma^2)
  + N log 2 pi], with x^T (C + sigma^2 I)^-1 x = (1/N) sum_k |X_k|^2 / (P(k) + sigma^2) (Parseval, X = FFT x).

The real FFT (``rfft2``/``irfft2``) keeps the columns 0 <= i <= W/2; the others are complex conjugates of
these, so sums over all modes weight the columns 0 < i < W/2 twice (see :func:`rfft_weights`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffscale.devices import draw_devices

__all__ = [
    "GaussianRandomField",
    "radial_bins",
    "radial_power_spectrum",
    "rfft_weights",
    "spectrum_log_error",
    "wavenumbers",
]


def wavenumbers(height: int, width: int, *, real: bool = True, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """|k| = 2 pi sqrt(f_y^2 + f_x^2) of the FFT modes of an H x W grid: shape (H, W // 2 + 1) for the real
    FFT (``real=True``), else (H, W)."""
    f_y = torch.fft.fftfreq(height, dtype=dtype)
    f_x = torch.fft.rfftfreq(width, dtype=dtype) if real else torch.fft.fftfreq(width, dtype=dtype)
    return 2 * math.pi * torch.sqrt(f_y[:, None] ** 2 + f_x[None, :] ** 2)


def rfft_weights(height: int, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """How many modes of the full FFT each column of the real FFT stands for (H, W // 2 + 1): 1 for the
    column f_x = 0 and (W even) the Nyquist column, 2 for the others (they and their conjugates)."""
    weights = torch.full((width // 2 + 1,), 2.0, dtype=dtype)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights.expand(height, -1)


def radial_bins(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin index of each real-FFT mode, bin-centre wavenumbers): shells of width dk = 2 pi / max(H, W),
    bin b holding (b - 1/2) dk <= |k| < (b + 1/2) dk; bin 0 is the mean (k = 0) alone."""
    step = 2 * math.pi / max(height, width)
    index = torch.round(wavenumbers(height, width) / step).long()
    centres = torch.arange(int(index.max()) + 1, dtype=torch.float64) * step
    return index, centres


def _radial_average(values: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mode-weighted average of ``values`` (H, W // 2 + 1) over each radial shell; empty shells dropped."""
    index, centres = radial_bins(height, width)
    weights = rfft_weights(height, width)
    total = torch.zeros(centres.shape[0], dtype=torch.float64).index_add_(
        0, index.reshape(-1), (weights * values).reshape(-1)
    )
    count = torch.zeros(centres.shape[0], dtype=torch.float64).index_add_(0, index.reshape(-1), weights.reshape(-1))
    keep = count > 0
    return centres[keep], total[keep] / count[keep]


def radial_power_spectrum(fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum estimate of samples ``fields`` (..., H, W): (wavenumbers, power).

    The periodogram |X_k|^2 / N (X = FFT x, N = H W) has expectation P(k) for a stationary field, so its
    average over the samples, channels and each radial shell estimates the shell's mean of P.
    """
    height, width = fields.shape[-2:]
    spectrum = torch.fft.rfft2(fields.detach().double().cpu()).abs().square() / (height * width)
    return _radial_average(spectrum.reshape(-1, height, width // 2 + 1).mean(dim=0), height, width)


def spectrum_log_error(estimate: torch.Tensor, exact: torch.Tensor, skip_mean: bool = True) -> float:
    """RMS over shells of ln(estimate / exact) (0: the spectra agree; 0.1: about 10 % off per shell).
    The k = 0 shell (a single mode, the field mean) is left out unless ``skip_mean`` is False."""
    start = 1 if skip_mean else 0
    ratio = (estimate[start:] / exact[start:]).log()
    return float(ratio.square().mean().sqrt())


class GaussianRandomField:
    """A zero-mean stationary Gaussian random field on a periodic H x W grid with ``channels`` independent
    channels and the Matérn-like spectrum P(k) = A (1 + (|k| l)^2)^(-slope / 2), normalised to ``std``.

    Args:
        channels: number of independent channels C.
        height, width: the grid H x W (any sizes; unit spacing, periodic in both directions).
        length_scale: correlation length l, in grid points (> 0).
        spectral_slope: the spectrum falls as |k|^-slope beyond 1 / l (> 0; 2 + 2 nu for a Matérn-nu field
            in two dimensions).
        std: pointwise standard deviation (> 0).
    """

    def __init__(
        self,
        channels: int = 1,
        height: int = 16,
        width: int = 24,
        length_scale: float = 3.0,
        spectral_slope: float = 4.0,
        std: float = 1.0,
    ) -> None:
        for name, value in (("channels", channels), ("height", height), ("width", width)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} = {value}: must be an integer >= 1")
        for name, value in (("length_scale", length_scale), ("spectral_slope", spectral_slope), ("std", std)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value}: must be a finite number > 0")
        self.channels, self.height, self.width = int(channels), int(height), int(width)
        self.length_scale, self.spectral_slope, self.std = float(length_scale), float(spectral_slope), float(std)
        shape = (1 + (wavenumbers(self.height, self.width, real=False) * self.length_scale) ** 2) ** (
            -self.spectral_slope / 2
        )
        self._amplitude = self.std**2 / float(shape.mean())  # A: mean_k P(k) = c(0) = std^2
        self.spectrum = self.spectrum_at(wavenumbers(self.height, self.width))
        """P(k) on the real-FFT modes, shape (H, W // 2 + 1), float64."""

    def __repr__(self) -> str:
        return (
            f"GaussianRandomField(channels={self.channels}, height={self.height}, width={self.width}, "
            f"length_scale={self.length_scale}, spectral_slope={self.spectral_slope}, std={self.std})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one sample."""
        return (self.channels, self.height, self.width)

    @property
    def dims(self) -> int:
        """Number of values C H W of one sample."""
        return self.channels * self.height * self.width

    def spectrum_at(self, k: torch.Tensor) -> torch.Tensor:
        """P(k) = A (1 + (|k| l)^2)^(-slope / 2) at wavenumbers ``k`` (radians per grid point)."""
        k = torch.as_tensor(k, dtype=torch.float64)
        return self._amplitude * (1 + (k * self.length_scale) ** 2) ** (-self.spectral_slope / 2)

    def covariance(self) -> torch.Tensor:
        """The covariance C of one channel as an explicit (N, N) matrix, N = H W (small grids only):
        C[r, r'] = c(r - r') with c = IFFT(P), indices r = row * W + column."""
        height, width = self.height, self.width
        c = torch.fft.irfft2(self.spectrum, s=(height, width))
        rows = torch.arange(height)
        cols = torch.arange(width)
        dy = (rows[:, None, None, None] - rows[None, None, :, None]) % height
        dx = (cols[None, :, None, None] - cols[None, None, None, :]) % width
        return c[dy, dx].reshape(height * width, height * width)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"expected fields of shape (batch, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}"
            )
        return x

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """IFFT(gain FFT(x)) over the last two axes for a real, symmetric gain (..., H, W // 2 + 1)."""
        spectrum = torch.fft.rfft2(x)
        return torch.fft.irfft2(gain.to(spectrum.real.dtype) * spectrum, s=(self.height, self.width))

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` draws y = IFFT(sqrt(P) FFT(w)), w white noise, shape (n, C, H, W)."""
        source, target = draw_devices(generator, device)  # drawn on the generator's device, then moved
        white = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64, device=source)
        return self._filter(white, self.spectrum.to(source).sqrt()).to(device=target, dtype=dtype)

    def _sigma(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """sigma as (B or 1, 1, 1, 1) in x's dtype (a number, a 0-dim tensor, or one value per sample)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma has {sigma.numel()} values; expected 1 or the batch length {x.shape[0]}")
        return sigma.reshape(-1, 1, 1, 1)

    def ideal_denoiser(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The Wiener filter D(x; sigma) = E[y | y + sigma n = x] = IFFT(P / (P + sigma^2) FFT(x)), in x's dtype.

        Conditioning keywords are accepted and ignored (the field is unconditional).
        """
        x = self._check(x)
        spectrum = self.spectrum.to(x.device, x.dtype)
        gain = spectrum / (spectrum + self._sigma(sigma, x) ** 2)
        return self._filter(x, gain).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log p(x; sigma) = log N(x; 0, C + sigma^2 I) of the noisy marginal, summed over channels, shape (B,)."""
        x = self._check(x)
        spectrum = self.spectrum.to(x.device, x.dtype)
        weights = rfft_weights(self.height, self.width).to(x.device, x.dtype)
        points = self.height * self.width
        eigenvalues = spectrum + self._sigma(sigma, x) ** 2  # (B or 1, 1, H, W // 2 + 1)
        energy = torch.fft.rfft2(x).abs().square()
        quadratic = (weights * energy / eigenvalues).sum(dim=(-3, -2, -1)) / points
        log_det = self.channels * (weights * eigenvalues.log()).sum(dim=(-3, -2, -1))
        return -0.5 * (quadratic + log_det + self.channels * points * math.log(2 * math.pi))

    def power_spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact radially averaged spectrum (wavenumbers, mean of P over each shell), in the shells of
        :func:`radial_power_spectrum`, so that the two compare bin by bin."""
        return _radial_average(self.spectrum, self.height, self.width)

    def spectrum_error(self, samples: torch.Tensor) -> float:
        """RMS over shells (k > 0) of ln(estimated / exact) radial spectrum of ``samples`` (N, C, H, W)."""
        _, estimate = radial_power_spectrum(self._check(samples))
        return spectrum_log_error(estimate, self.power_spectrum()[1])
