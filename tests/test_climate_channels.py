"""diffscale.data.climate.channels: position and time-of-day / day-of-year conditioning channels."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffscale.data.climate.channels import latlon_channels, time_channel_names, time_channels


def test_latlon_channels() -> None:
    channels = latlon_channels([-45.0, 0.0, 90.0], [-90.0, 0.0, 180.0, 270.0])
    assert channels.shape == (3, 3, 4) and channels.dtype == torch.float32
    torch.testing.assert_close(channels[0, :, 0], torch.tensor([-0.5, 0.0, 1.0]))
    torch.testing.assert_close(channels[1, 0], torch.tensor([-1.0, 0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(channels[2, 0], torch.tensor([0.0, 1.0, -1.0, 0.0]), atol=1e-6, rtol=0)


def test_time_channels_closed_forms() -> None:
    times = np.array(
        ["2019-01-01T00:00", "2019-01-01T06:00", "2020-12-31T12:00", "2019-07-02T18:30"], dtype="datetime64[ns]"
    )
    channels = time_channels(times, 2, 3)
    assert channels.shape == (4, 4, 2, 3) and channels.dtype == torch.float32
    assert time_channel_names() == ["sin_hour", "cos_hour", "sin_day_of_year", "cos_day_of_year"]
    values = channels[:, :, 1, 2].double()
    hours = np.array([0.0, 6.0, 12.0, 18.5])
    year_fraction = np.array([0.0, 0.25 / 365, (365 + 0.5) / 366, (182 + 18.5 / 24) / 365])  # 2020 is a leap year
    expected = np.stack(
        [
            np.sin(2 * math.pi * hours / 24),
            np.cos(2 * math.pi * hours / 24),
            np.sin(2 * math.pi * year_fraction),
            np.cos(2 * math.pi * year_fraction),
        ],
        axis=1,
    )
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-6)
    assert torch.equal(channels[:, :, 0, 0], channels[:, :, 1, 2])  # spatially constant


def test_time_channels_subsets() -> None:
    times = np.array(["2019-03-01T03:00"], dtype="datetime64[ns]")
    only_hour = time_channels(times, 2, 2, hour=True, day_of_year=False)
    assert only_hour.shape == (1, 2, 2, 2)
    torch.testing.assert_close(only_hour[0, 0, 0, 0], torch.tensor(math.sin(math.pi / 4), dtype=torch.float32))
    assert time_channels(times, 2, 2, hour=False, day_of_year=False).shape == (1, 0, 2, 2)
    assert time_channel_names(hour=False) == ["sin_day_of_year", "cos_day_of_year"]
