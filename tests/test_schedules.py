"""Time grids: native and the EDM rho schedule for any formulation."""

from __future__ import annotations

import pytest
import torch

import diffscale
from diffscale.sampling import time_grid
from tests.conftest import FORMULATION_NAMES


def test_edm_schedule_of_edm_is_its_native_grid() -> None:
    f = diffscale.formulation("EDM")
    torch.testing.assert_close(time_grid(f, 18, "edm"), f.time_steps(18))


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_edm_schedule_follows_eq_5_between_the_formulations_own_limits(name: str) -> None:
    f = diffscale.formulation(name)
    grid = time_grid(f, 10, "edm", rho=5.0)
    expected = [(f.sigma_max**0.2 + i / 9 * (f.sigma_min**0.2 - f.sigma_max**0.2)) ** 5 for i in range(10)]
    sigmas = f.sigma(grid[:-1])
    assert grid[-1] == 0 and torch.all(grid[:-1] > grid[1:])
    if name == "iDDPM":
        assert torch.all(torch.isin(sigmas, f.table))  # snapped to the table
        torch.testing.assert_close(sigmas, f.round_sigma(torch.tensor(expected, dtype=torch.float64)))
    else:
        torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float64))


def test_iddpm_merged_levels_are_dropped() -> None:
    grid = time_grid(diffscale.formulation("iDDPM"), 2000, "edm")
    assert len(grid) < 2001 and torch.all(grid[:-1] > grid[1:])


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="schedule = 'cosine': unknown schedule; allowed: native, edm"):
        time_grid(diffscale.formulation("VE"), 4, "cosine")
    with pytest.raises(ValueError, match=r"^schedule = 'cosine': must be 'native' or 'edm'$"):
        diffscale.sample(lambda x, s: x, torch.randn(2, 1), diffscale.formulation("VE"), schedule="cosine")
