"""Interpolation and lapse-rate baselines against closed forms."""

from __future__ import annotations

import pytest
import torch

from diffscale.evaluation.baselines import STANDARD_LAPSE_RATE, interpolation_baseline, lapse_rate_baseline


def test_lapse_rate_baseline_recovers_a_standard_atmosphere_exactly() -> None:
    """T = T0 - Gamma z on a bumpy orography: the block means of T are T0 - Gamma z_c, and the correction undoes
    the interpolation error wherever T0 is linear (here constant), so the baseline returns T exactly."""
    generator = torch.Generator().manual_seed(0)
    latitude = torch.linspace(50.0, 58.0, 16, dtype=torch.float64)
    orography = 800.0 * torch.rand(16, 24, generator=generator, dtype=torch.float64)
    truth = 285.0 - STANDARD_LAPSE_RATE * orography
    weights = torch.cos(torch.deg2rad(latitude))[:, None]
    coarse = (truth * weights).reshape(4, 4, 6, 4).sum(dim=(1, 3)) / (weights.reshape(4, 4).sum(1)[:, None] * 4)
    result = lapse_rate_baseline(coarse, orography, 4, latitude)
    torch.testing.assert_close(result, truth, rtol=0, atol=1e-9)
    plain = interpolation_baseline(coarse, 4)
    assert (plain - truth).abs().max() > 1.0  # the orography the coarse grid cannot see


def test_flat_orography_gives_the_bilinear_baseline() -> None:
    coarse = torch.randn(3, 4, 6, dtype=torch.float64)
    latitude = torch.linspace(40.0, 47.5, 16, dtype=torch.float64)
    flat = torch.full((16, 24), 250.0, dtype=torch.float64)
    torch.testing.assert_close(lapse_rate_baseline(coarse, flat, 4, latitude), interpolation_baseline(coarse, 4))


def test_orography_must_be_the_fine_grid() -> None:
    with pytest.raises(ValueError, match="not the 4x fine grid"):
        lapse_rate_baseline(torch.zeros(4, 6), torch.zeros(15, 24), 4, torch.zeros(16))
