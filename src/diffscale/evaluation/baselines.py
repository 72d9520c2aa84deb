"""Deterministic downscaling baselines that need no training: interpolation of the coarse field, and for 2 m
temperature a lapse-rate correction for the orography the coarse grid cannot see.

With coarse temperature T_c (block means), fine orography z and its block mean z_c (same area weights), and U the
upsampling to the fine grid (:func:`~diffscale.data.climate.grid.upsample`):

* bilinear / bicubic: T = U(T_c);
* lapse-rate-corrected bilinear: T = U(T_c) - Gamma (z - U(z_c)), Gamma = 6.5 K/km (the ICAO standard atmosphere's
  tropospheric lapse rate), i.e. the coarse cell's temperature moved along the standard lapse rate from the cell's
  mean height to each fine point's height.
"""

from __future__ import annotations

import torch

from diffscale.data.climate.grid import coarsen, upsample

__all__ = ["STANDARD_LAPSE_RATE", "interpolation_baseline", "lapse_rate_baseline"]

STANDARD_LAPSE_RATE = 6.5e-3
"""Gamma [K/m], the standard atmosphere's temperature decrease with height in the troposphere."""


def interpolation_baseline(
    coarse: torch.Tensor, factor: int, mode: str = "bilinear", periodic_longitude: bool = False
) -> torch.Tensor:
    """U(T_c): the coarse field (..., h, w) interpolated to the fine grid (..., f h, f w)."""
    return upsample(coarse, factor, mode=mode, periodic_longitude=periodic_longitude)


def lapse_rate_baseline(
    coarse_temperature: torch.Tensor,
    orography: torch.Tensor,
    factor: int,
    latitude: torch.Tensor,
    lapse_rate: float = STANDARD_LAPSE_RATE,
    periodic_longitude: bool = False,
) -> torch.Tensor:
    """U(T_c) - Gamma (z - U(z_c)) for temperature T_c (..., h, w) in K and fine orography z (H, W) in metres.

    ``latitude`` (H,) gives the area weights of the block mean z_c (the weights that made T_c).
    """
    if orography.shape[-2:] != (coarse_temperature.shape[-2] * factor, coarse_temperature.shape[-1] * factor):
        raise ValueError(
            f"orography {tuple(orography.shape)} is not the {factor}x fine grid of {tuple(coarse_temperature.shape)}"
        )
    orography = orography.to(coarse_temperature)
    coarse_orography = coarsen(orography, factor, latitude=latitude)
    upsampled = upsample(coarse_temperature, factor, periodic_longitude=periodic_longitude)
    height_anomaly = orography - upsample(coarse_orography, factor, periodic_longitude=periodic_longitude)
    return upsampled - lapse_rate * height_anomaly
