"""Conditioning channels that depend only on where and when: position on the globe and time of day / year.

* position (3 channels, (3, H, W)): phi / 90, sin(lambda), cos(lambda) for latitude phi and longitude lambda
  (degrees); sin/cos make longitude continuous across the date line;
* hour of day (2 channels, spatially constant): sin(2 pi h / 24), cos(2 pi h / 24), h the UTC hour with its
  fraction (the diurnal cycle);
* day of year (2 channels, spatially constant): sin(2 pi a), cos(2 pi a) with a = (d - 1 + h / 24) / N, d the
  day of the year (1 on 1 January) and N the days in that year, both in the dates' own calendar (the seasonal
  cycle): N = 365 or 366 in the Gregorian and Julian calendars, 365 for noleap, 366 for all_leap and 360 for
  360_day, so every calendar's year maps onto one annual cycle (a 360_day 30 June, d = 180, is a = 179.5 / 360 at
  noon). Times are numpy datetime64 or cftime dates (:mod:`~diffscale.data.climate.calendars`).

All channels are float32 tensors on the fine grid (and on ``device``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from diffscale.data.climate.calendars import date_fields, day_of_year, days_in_year

__all__ = [
    "DAY_OF_YEAR_NAMES",
    "HOUR_NAMES",
    "LATLON_NAMES",
    "latlon_channels",
    "time_channel_names",
    "time_channels",
    "time_phases",
]

LATLON_NAMES: tuple[str, ...] = ("latitude", "sin_longitude", "cos_longitude")
HOUR_NAMES: tuple[str, ...] = ("sin_hour", "cos_hour")
DAY_OF_YEAR_NAMES: tuple[str, ...] = ("sin_day_of_year", "cos_day_of_year")


def latlon_channels(
    latitude: Sequence[float] | np.ndarray,
    longitude: Sequence[float] | np.ndarray,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(3, H, W): phi / 90, sin(lambda), cos(lambda) on the grid of ``latitude`` (H,) x ``longitude`` (W,)."""
    phi = torch.as_tensor(np.asarray(latitude, dtype=np.float64))
    lam = torch.deg2rad(torch.as_tensor(np.asarray(longitude, dtype=np.float64)))
    height, width = phi.numel(), lam.numel()
    channels = torch.stack(
        [
            (phi / 90.0)[:, None].expand(height, width),
            torch.sin(lam)[None, :].expand(height, width),
            torch.cos(lam)[None, :].expand(height, width),
        ]
    )
    return channels.to(device=device, dtype=torch.float32)


def time_phases(times: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2 pi h / 24, 2 pi a) of each time (datetime64 or cftime dates, in their calendar): the phases of the hour
    of day and of the day of year (float64)."""
    fields = date_fields(times)
    hours = fields.hour + fields.minute / 60.0 + fields.second / 3600.0
    year_fraction = (day_of_year(times) - 1 + hours / 24.0) / days_in_year(times)
    return 2 * math.pi * np.asarray(hours, dtype=np.float64) / 24.0, 2 * math.pi * np.asarray(year_fraction)


def time_channel_names(hour: bool = True, day_of_year: bool = True) -> list[str]:
    """Names of the channels :func:`time_channels` returns, in order."""
    return [*(HOUR_NAMES if hour else ()), *(DAY_OF_YEAR_NAMES if day_of_year else ())]


def time_channels(
    times: Sequence[object] | np.ndarray,
    height: int,
    width: int,
    hour: bool = True,
    day_of_year: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(T, K, H, W) spatially constant channels: sin/cos of the hour of day and/or of the day of year
    (K = 2 per cycle asked for, in the order of :func:`time_channel_names`)."""
    hour_phase, year_phase = time_phases(times)
    columns = []
    if hour:
        columns += [np.sin(hour_phase), np.cos(hour_phase)]
    if day_of_year:
        columns += [np.sin(year_phase), np.cos(year_phase)]
    count = len(np.asarray(times))
    if not columns:
        return torch.zeros(count, 0, height, width, dtype=torch.float32, device=device)
    values = torch.as_tensor(np.stack(columns, axis=1), dtype=torch.float32, device=device)  # (T, K)
    return values[:, :, None, None].expand(count, len(columns), height, width)
