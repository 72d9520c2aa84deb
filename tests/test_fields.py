"""Gaussian random fields against their closed forms: the explicit circulant covariance C = circ(IFFT P),
the Wiener filter C (C + sigma^2 I)^-1 x, the multivariate normal density and Tweedie's formula."""

from __future__ import annotations

import math

import pytest
import torch

from diffscale.data import GaussianRandomField, radial_power_spectrum
from diffscale.data.fields import rfft_weights, wavenumbers


def tiny(width: int = 6) -> GaussianRandomField:
    return GaussianRandomField(channels=2, height=4, width=width, length_scale=1.5, spectral_slope=3.0, std=0.8)


def explicit_covariance(field: GaussianRandomField) -> torch.Tensor:
    """C[r, r'] = (1/N) sum_k P(k) cos(k . (r - r')), straight from the definition (full 2-D sum)."""
    height, width = field.height, field.width
    spectrum = field.spectrum_at(wavenumbers(height, width, real=False))  # (H, W)
    f_y = torch.fft.fftfreq(height, dtype=torch.float64)
    f_x = torch.fft.fftfreq(width, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    dy, dx = ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]  # (N, N)
    phase = 2 * math.pi * (f_y[:, None, None, None] * dy + f_x[None, :, None, None] * dx)  # (H, W, N, N)
    return (spectrum[:, :, None, None] * torch.cos(phase)).mean(dim=(0, 1))


@pytest.mark.parametrize("width", [6, 5])
def test_covariance_is_the_circulant_of_the_spectrum(width: int) -> None:
    field = tiny(width)
    covariance = explicit_covariance(field)
    torch.testing.assert_close(field.covariance(), covariance)
    torch.testing.assert_close(covariance.diagonal(), torch.full((4 * width,), 0.8**2, dtype=torch.float64))
    assert torch.linalg.eigvalsh(covariance).min() > 0


@pytest.mark.parametrize("width", [6, 5])
def test_wiener_filter_is_the_linear_posterior_mean(width: int) -> None:
    field = tiny(width)
    covariance = explicit_covariance(field)
    points = covariance.shape[0]
    x = torch.randn(3, 2, 4, width, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.7, 5.0], dtype=torch.float64)
    denoised = field.ideal_denoiser(x, sigma)
    for b in range(3):
        gain = covariance @ torch.linalg.inv(covariance + sigma[b] ** 2 * torch.eye(points, dtype=torch.float64))
        expected = (gain @ x[b].reshape(2, points).T).T.reshape(2, 4, width)
        torch.testing.assert_close(denoised[b], expected)
    # One sigma for the whole batch, float32 in -> float32 out.
    assert field.ideal_denoiser(x.float(), 0.5).dtype == torch.float32


def test_sample_covariance_matches() -> None:
    field = tiny()
    samples = field.sample(40_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert samples.shape == (40_000, 2, 4, 6)
    flat = samples.reshape(-1, 24)  # both channels: independent draws of the same field
    empirical = flat.T @ flat / flat.shape[0]
    error = (empirical - explicit_covariance(field)).abs().max()
    assert error < 0.02, error  # standard error about 0.64 / sqrt(80000) = 0.002
    channel_correlation = (samples[:, 0] * samples[:, 1]).mean()
    assert channel_correlation.abs() < 0.01


@pytest.mark.parametrize("width", [6, 5])
def test_log_prob_is_the_multivariate_normal(width: int) -> None:
    field = tiny(width)
    covariance = explicit_covariance(field)
    points = covariance.shape[0]
    x = 1.3 * torch.randn(4, 2, 4, width, dtype=torch.float64)
    for sigma in (0.0, 0.3, 2.0):
        normal = torch.distributions.MultivariateNormal(
            torch.zeros(points, dtype=torch.float64), covariance + sigma**2 * torch.eye(points, dtype=torch.float64)
        )
        expected = normal.log_prob(x.reshape(4, 2, points)).sum(dim=1)
        torch.testing.assert_close(field.log_prob(x, sigma), expected)


def test_tweedie_gives_the_denoiser() -> None:
    """D(x; sigma) = x + sigma^2 grad_x log p(x; sigma) (Tweedie / EDM Eq. 3)."""
    field = tiny()
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    (score,) = torch.autograd.grad(field.log_prob(x, sigma).sum(), x)
    expected = x + sigma.reshape(-1, 1, 1, 1) ** 2 * score
    torch.testing.assert_close(field.ideal_denoiser(x.detach(), sigma), expected.detach())


def test_rfft_weights_count_every_mode() -> None:
    for width in (5, 6):
        assert rfft_weights(4, width).sum() == 4 * width


def test_power_spectrum_of_samples_matches_the_exact_one() -> None:
    field = GaussianRandomField(height=16, width=24, length_scale=3.0, spectral_slope=4.0)
    k, exact = field.power_spectrum()
    assert torch.all(k[1:] > k[:-1]) and k[0] == 0
    # Parseval: the mode-weighted mean of P is the variance std^2.
    weights = rfft_weights(16, 24)
    torch.testing.assert_close((weights * field.spectrum).sum() / (16 * 24), torch.tensor(1.0, dtype=torch.float64))
    samples = field.sample(2000, torch.Generator().manual_seed(1))
    k_hat, estimate = radial_power_spectrum(samples)
    torch.testing.assert_close(k_hat, k)
    assert (estimate[1:] / exact[1:]).log().abs().max() < 0.15  # every shell of k > 0 within 15 %
    assert field.spectrum_error(samples) < 0.05
    assert torch.all(exact[1:] < exact[:-1])  # falls off monotonically
    # White noise is flat and far from it.
    assert field.spectrum_error(torch.randn(200, 1, 16, 24)) > 1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="length_scale"):
        GaussianRandomField(length_scale=0.0)
    with pytest.raises(ValueError, match="height"):
        GaussianRandomField(height=0)
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 24\)"):
        GaussianRandomField().ideal_denoiser(torch.zeros(2, 1, 16, 23), 1.0)
