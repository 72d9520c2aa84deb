"""Time grids: native and the EDM rho schedule for any formulation."""

from __future__ import annotations

import math

import pytest
import torch

import diffscale
from diffscale.data import ring_2d
from diffscale.evaluation.reference import reference_ode_solution
from diffscale.sampling import time_grid
from diffscale.sampling.schedules import TUNED_SCALE, tuned_sigmas, tuned_warp
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
    with pytest.raises(ValueError, match="schedule = 'cosine': unknown schedule; allowed: native, edm, tuned"):
        time_grid(diffscale.formulation("VE"), 4, "cosine")
    with pytest.raises(ValueError, match=r"^schedule = 'cosine': must be 'native', 'edm' or 'tuned'$"):
        diffscale.sample(lambda x, s: x, torch.randn(2, 1), diffscale.formulation("VE"), schedule="cosine")


@pytest.mark.parametrize("name", FORMULATION_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 35])
def test_tuned_schedule_follows_its_formula_between_the_formulations_own_limits(name: str, steps: int) -> None:
    f = diffscale.formulation(name)
    grid = time_grid(f, steps, "tuned")
    sigmas = f.sigma(grid[:-1])
    assert grid[-1] == 0 and torch.all(grid[:-1] > grid[1:])
    torch.testing.assert_close(sigmas[0], f.round_sigma(torch.tensor(f.sigma_max, dtype=torch.float64)))
    if steps == 1:
        assert len(grid) == 2
        return
    sigma_last = min(max(TUNED_SCALE / steps, f.sigma_min), f.sigma_max / 2)
    warp = min(max(0.5 + 0.25 * math.log(steps / 14), 0.5), 0.65)
    log_sigmas = [
        math.log(f.sigma_max) + (i / (steps - 1)) ** warp * (math.log(sigma_last) - math.log(f.sigma_max))
        for i in range(steps)
    ]
    expected = f.round_sigma(torch.tensor(log_sigmas, dtype=torch.float64).exp())
    torch.testing.assert_close(sigmas, torch.unique_consecutive(expected))
    if name != "iDDPM":  # off the iDDPM table: the steps in lambda = -ln(sigma) shrink towards low noise
        steps_in_lambda = sigmas[:-1].log() - sigmas[1:].log()
        assert torch.all(steps_in_lambda[1:] < steps_in_lambda[:-1])


def test_tuned_warp_rises_from_one_half_to_0_65() -> None:
    assert tuned_warp(2) == tuned_warp(14) == 0.5
    assert 0.5 < tuned_warp(20) < tuned_warp(24) < 0.65 == tuned_warp(27) == tuned_warp(35) == tuned_warp(1000)


def test_tuned_schedule_in_sample_and_settings() -> None:
    f = diffscale.formulation("EDM")
    sigmas = []
    diffscale.sample(
        lambda x, s: 0.5 * x,
        torch.randn(3, 1),
        f,
        steps=4,
        solver="dpmpp_2m",
        schedule="tuned",
        callback=lambda step: sigmas.append(float(step.sigma)),
    )
    torch.testing.assert_close(
        torch.tensor(sigmas[:-1], dtype=torch.float64), tuned_sigmas(f.sigma_min, f.sigma_max, 4)[1:]
    )
    assert sigmas[-1] == 0.0


def test_tuned_schedule_beats_the_edm_grid_on_a_held_out_mixture() -> None:
    """The 2-D ring was not used to fit the grid (fitted on the 1-D two-Gaussian mixture): the tuned grid still
    halves the EDM grid's path error at 5, 10 and 20 evaluations."""
    mixture = ring_2d()
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = diffscale.formulation("EDM")
    reference = reference_ode_solution(mixture.ideal_denoiser, noise, f.sigma_max)
    for steps in (5, 10, 20):
        errors = {
            schedule: float(
                (
                    diffscale.sample(
                        mixture.ideal_denoiser, noise, f, steps=steps, solver="dpmpp_3m", schedule=schedule
                    )
                    - reference
                )
                .abs()
                .mean()
            )
            for schedule in ("edm", "tuned")
        }
        assert errors["tuned"] < 0.5 * errors["edm"], errors
