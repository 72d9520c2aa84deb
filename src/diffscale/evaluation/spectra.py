"""Radially averaged power spectra of fields on a regular latitude/longitude grid, in physical wavenumbers.

The grid is treated as locally Cartesian around its central latitude phi_0 (a regional grid; spacing
dx = R cos(phi_0) dlambda along longitude, dy = R dphi along latitude, R = 6371 km, angles in radians). Each
field x (H x W) has its spatial mean removed and is tapered by a 2-D window w_ij = u_i v_j (separable Hann or
Tukey) so that the non-periodic edges do not leak power into high wavenumbers; its periodogram is

    S(k_y, k_x) = dx dy / (H W) |sum_ij w_ij x_ij exp(-2 pi i (k_y i dy + k_x j dx))|^2 / mean(w^2),

on the wavenumbers k_x = n / (W dx), k_y = m / (H dy) (cycles per km). By Parseval,
sum_{k_y, k_x} S dk_x dk_y = mean((w x)^2) / mean(w^2): the (window-weighted) variance, exactly the variance of
x without a window. The radial spectrum P(k) is the average of S over the shells |k| in [k - dk/2, k + dk/2),
dk = max(1/(W dx), 1/(H dy)), k = dk, 2 dk, ... up to the lower of the two Nyquist wavenumbers 1/(2 dx), 1/(2 dy)
(beyond it a shell is not filled in every direction). Units: (field units)^2 km^2 against 1/km.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from scipy.signal import windows

__all__ = [
    "EARTH_RADIUS_KM",
    "WindowName",
    "coarse_nyquist_wavenumber",
    "grid_spacing_km",
    "latlon_periodogram",
    "latlon_power_spectrum",
    "radial_average",
    "spectral_ratio",
]

EARTH_RADIUS_KM = 6371.0
WindowName = Literal["tukey", "hann", "none"]
TUKEY_ALPHA = 0.25  # share of each axis in the cosine tapers of the Tukey window


def _spacing(coordinate: np.ndarray, name: str) -> float:
    if coordinate.ndim != 1 or coordinate.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 points, got shape {coordinate.shape}")
    steps = (np.diff(coordinate) + 180.0) % 360.0 - 180.0  # a longitude axis may cross 180 or 360 degrees
    step = float(np.median(steps))
    if step == 0 or not np.allclose(steps, step, rtol=1e-3, atol=1e-6):
        raise ValueError(f"{name} is not evenly spaced (steps from {steps.min():g} to {steps.max():g} degrees)")
    return abs(step)


def grid_spacing_km(latitude: Any, longitude: Any) -> tuple[float, float]:
    """(dy, dx) in km of a regular grid: dy = R dphi, dx = R cos(phi_0) dlambda at the central latitude phi_0."""
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    dlat, dlon = _spacing(lat, "latitude"), _spacing(lon, "longitude")
    lat0 = math.radians(0.5 * (float(lat.min()) + float(lat.max())))
    dy = EARTH_RADIUS_KM * math.radians(dlat)
    dx = EARTH_RADIUS_KM * math.cos(lat0) * math.radians(dlon)
    if dx <= 0:
        raise ValueError("the grid is centred on a pole, its longitude spacing is zero")
    return dy, dx


def coarse_nyquist_wavenumber(latitude: Any, longitude: Any, factor: int) -> float:
    """Nyquist wavenumber [1/km] of the grid coarsened ``factor`` times: 1 / (2 factor min(dx, dy)).

    Above it the coarse grid resolves no direction (the wavelength is under two coarse cells both along
    latitude and along longitude), so all variance there must come from the downscaling.
    """
    if factor < 1:
        raise ValueError(f"coarsening factor must be >= 1, got {factor}")
    dy, dx = grid_spacing_km(latitude, longitude)
    return 0.5 / (factor * min(dx, dy))


def _window_1d(size: int, window: WindowName) -> np.ndarray:
    if window == "none":
        return np.ones(size)
    if window == "hann":
        return windows.hann(size, sym=False)
    if window == "tukey":
        return windows.tukey(size, alpha=TUKEY_ALPHA, sym=False)
    raise ValueError(f"window must be one of 'tukey', 'hann', 'none', got {window!r}")


def latlon_periodogram(
    fields: Any, latitude: Any, longitude: Any, window: WindowName = "tukey"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windowed periodogram S(k_y, k_x) of ``fields`` (T, H, W), averaged over T: (k_y [1/km], k_x [1/km], S).

    k_y has H values and k_x W values in numpy's FFT order; S has shape (H, W) and units (field units)^2 km^2,
    normalised so that sum(S) dk_x dk_y is the variance (see the module docstring).
    """
    values = np.asarray(fields, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"fields must have shape (T, H, W), got {values.shape}")
    height, width = values.shape[1:]
    if np.asarray(latitude).shape != (height,) or np.asarray(longitude).shape != (width,):
        raise ValueError(f"coordinates of shapes {np.shape(latitude)}, {np.shape(longitude)} do not fit {values.shape}")
    dy, dx = grid_spacing_km(latitude, longitude)
    taper = np.outer(_window_1d(height, window), _window_1d(width, window))
    anomalies = values - values.mean(axis=(1, 2), keepdims=True)
    transform = np.fft.fft2(anomalies * taper)
    power = (np.abs(transform) ** 2).mean(axis=0) * dx * dy / (height * width) / np.mean(taper**2)
    return np.fft.fftfreq(height, dy), np.fft.fftfreq(width, dx), power


def latlon_power_spectrum(
    fields: Any, latitude: Any, longitude: Any, window: WindowName = "tukey"
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of ``fields`` (T, H, W) on a lat/lon grid: (wavenumber [1/km], power).

    The shells are k = dk, 2 dk, ... <= min(1/(2 dx), 1/(2 dy)) with dk = max(1/(W dx), 1/(H dy)); power is the
    mean of the periodogram (:func:`latlon_periodogram`) over each shell, in (field units)^2 km^2.
    """
    ky, kx, power = latlon_periodogram(fields, latitude, longitude, window)
    return radial_average(ky, kx, power, latitude, longitude)


def radial_average(
    ky: np.ndarray, kx: np.ndarray, power: np.ndarray, latitude: Any, longitude: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(wavenumber [1/km], power): the mean of a periodogram ``power`` (H, W) on (``ky``, ``kx``) over the shells
    of :func:`latlon_power_spectrum`."""
    dy, dx = grid_spacing_km(latitude, longitude)
    height, width = power.shape
    shell_width = max(1.0 / (width * dx), 1.0 / (height * dy))
    k_max = min(0.5 / dx, 0.5 / dy)
    radius = np.hypot(ky[:, None], kx[None, :])
    index = np.rint(radius / shell_width).astype(np.int64)
    shells = math.floor(k_max / shell_width + 1e-9)
    if shells < 1:
        raise ValueError(f"the grid of {height} x {width} points is too small for a radial spectrum")
    sums = np.bincount(index.ravel(), weights=power.ravel(), minlength=shells + 1)[1 : shells + 1]
    counts = np.bincount(index.ravel(), minlength=shells + 1)[1 : shells + 1]
    filled = counts > 0
    wavenumber = shell_width * np.arange(1, shells + 1)
    return wavenumber[filled], sums[filled] / counts[filled]


def spectral_ratio(
    wavenumber: np.ndarray, power: np.ndarray, reference_power: np.ndarray, k_min: float
) -> dict[str, float | int]:
    """Ratio P / P_ref of two spectra on the shells k > ``k_min`` (e.g. the coarse grid's Nyquist wavenumber).

    Returns the mean ratio, the geometric mean exp(mean ln(P / P_ref)) and the number of shells; NaN values (and
    0 shells) when no shell lies above ``k_min``. 1 means the small scales carry the true variance; a bilinear
    interpolation gives far less than 1.
    """
    above = np.asarray(wavenumber) > k_min
    if not above.any():
        return {"mean_ratio": math.nan, "geometric_mean_ratio": math.nan, "shells": 0, "k_min": float(k_min)}
    ratio = np.asarray(power)[above] / np.asarray(reference_power)[above]
    return {
        "mean_ratio": float(ratio.mean()),
        "geometric_mean_ratio": float(np.exp(np.log(ratio).mean())),
        "shells": int(above.sum()),
        "k_min": float(k_min),
    }
