"""Power spectra on a latitude/longitude grid: physical spacing, plane waves, Parseval, white noise, windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffscale.evaluation.spectra import (
    EARTH_RADIUS_KM,
    coarse_nyquist_wavenumber,
    grid_spacing_km,
    latlon_periodogram,
    latlon_power_spectrum,
    spectral_ratio,
)

HEIGHT, WIDTH = 32, 48
LATITUDE = 50.0 + 0.25 * np.arange(HEIGHT)
LONGITUDE = -10.0 + 0.25 * np.arange(WIDTH)
DY = EARTH_RADIUS_KM * math.radians(0.25)
DX = EARTH_RADIUS_KM * math.cos(math.radians(50.0 + 0.25 * (HEIGHT - 1) / 2)) * math.radians(0.25)
ROWS, COLUMNS = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")


def test_grid_spacing_is_physical_at_the_central_latitude() -> None:
    dy, dx = grid_spacing_km(LATITUDE, LONGITUDE)
    assert dy == pytest.approx(27.80, abs=0.01)  # 6371 km * pi / 720
    assert dx == pytest.approx(DX) and dx == pytest.approx(dy * math.cos(math.radians(53.875)), rel=1e-12)
    # a longitude axis that crosses 360 -> 0 keeps its spacing; descending latitude too
    assert grid_spacing_km(LATITUDE[::-1], (LONGITUDE + 360.0) % 360.0) == pytest.approx((dy, dx))
    with pytest.raises(ValueError, match="evenly spaced"):
        grid_spacing_km(np.array([50.0, 50.25, 51.0]), LONGITUDE)


@pytest.mark.parametrize(
    ("cycles_y", "cycles_x"),
    [(0, 6), (5, 0), (3, 4), (7, 11)],
)
def test_a_plane_wave_peaks_at_its_wavenumber(cycles_y: int, cycles_x: int) -> None:
    wave = np.cos(2 * np.pi * (cycles_y * ROWS / HEIGHT + cycles_x * COLUMNS / WIDTH) + 0.3)[None]
    k, power = latlon_power_spectrum(wave, LATITUDE, LONGITUDE)
    expected = math.hypot(cycles_y / (HEIGHT * DY), cycles_x / (WIDTH * DX))
    shell_width = k[1] - k[0]
    assert shell_width == pytest.approx(max(1 / (HEIGHT * DY), 1 / (WIDTH * DX)))
    assert abs(k[np.argmax(power)] - expected) <= 0.5 * shell_width + 1e-12
    assert k.max() <= min(0.5 / DX, 0.5 / DY)


def test_parseval_without_window_gives_the_variance_exactly() -> None:
    rng = np.random.default_rng(0)
    fields = 3.0 + 2.0 * rng.normal(size=(5, HEIGHT, WIDTH))
    ky, kx, power = latlon_periodogram(fields, LATITUDE, LONGITUDE, window="none")
    assert ky.size == HEIGHT and kx.size == WIDTH
    total = power.sum() / (HEIGHT * DY) / (WIDTH * DX)  # sum S dk_x dk_y
    assert total == pytest.approx(fields.var(axis=(1, 2)).mean(), rel=1e-12)


def test_parseval_with_a_window_gives_the_window_weighted_variance() -> None:
    from scipy.signal import windows

    rng = np.random.default_rng(1)
    fields = rng.normal(size=(3, HEIGHT, WIDTH))
    taper = np.outer(windows.hann(HEIGHT, sym=False), windows.hann(WIDTH, sym=False))
    anomalies = fields - fields.mean(axis=(1, 2), keepdims=True)
    expected = (taper**2 * anomalies**2).mean() / (taper**2).mean()
    _, _, power = latlon_periodogram(fields, LATITUDE, LONGITUDE, window="hann")
    assert power.sum() / (HEIGHT * DY * WIDTH * DX) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("window", ["tukey", "hann", "none"])
def test_white_noise_has_the_flat_spectrum_sigma_squared_dx_dy(window: str) -> None:
    rng = np.random.default_rng(2)
    sigma = 1.7
    _, power = latlon_power_spectrum(sigma * rng.normal(size=(300, HEIGHT, WIDTH)), LATITUDE, LONGITUDE, window)
    assert power.mean() == pytest.approx(sigma**2 * DX * DY, rel=0.03)
    assert np.abs(power / (sigma**2 * DX * DY) - 1).max() < 0.2


def test_the_window_suppresses_leakage_of_a_non_periodic_wave() -> None:
    wave = np.cos(2 * np.pi * 4.5 * COLUMNS / WIDTH)[None]  # 4.5 cycles: a jump at the edge
    k, bare = latlon_power_spectrum(wave, LATITUDE, LONGITUDE, window="none")
    _, tapered = latlon_power_spectrum(wave, LATITUDE, LONGITUDE, window="tukey")
    far = k > 3 * 4.5 / (WIDTH * DX)
    assert (tapered[far] / tapered.max()).max() < 0.1 * (bare[far] / bare.max()).max()


def test_spectral_ratio_above_the_coarse_nyquist_wavenumber() -> None:
    k = np.array([1.0, 2.0, 3.0, 4.0])
    reference = np.array([8.0, 4.0, 2.0, 1.0])
    result = spectral_ratio(k, reference * np.array([1.0, 1.0, 0.5, 2.0]), reference, k_min=2.5)
    assert result["shells"] == 2
    assert result["mean_ratio"] == pytest.approx(1.25)
    assert result["geometric_mean_ratio"] == pytest.approx(1.0)
    assert math.isnan(spectral_ratio(k, reference, reference, k_min=5.0)["mean_ratio"])


def test_coarse_nyquist_wavenumber_is_that_of_the_finer_coarse_spacing() -> None:
    assert coarse_nyquist_wavenumber(LATITUDE, LONGITUDE, 4) == pytest.approx(1 / (2 * 4 * min(DX, DY)))
