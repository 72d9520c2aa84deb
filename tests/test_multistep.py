"""Exponential multistep solvers (DPM-Solver++ family): kernel integrals, interpolation weights, order, SDE."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

import diffscale
from diffscale.data import GaussianMixture, two_gaussians_1d
from diffscale.sampling.multistep import _newton_weights, kernel_moments
from tests.conftest import FORMULATION_NAMES, probability_flow_reference

MIXTURE = two_gaussians_1d()
MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde")
ONE_EVALUATION_PER_STEP = (*MULTISTEP, "ancestral")


@pytest.mark.parametrize("h", [1e-3, 0.2, 1.0, 4.0])
@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_kernel_moments_match_quadrature(h: float, rate: float) -> None:
    moments = kernel_moments(h, rate, 3)
    for n, value in enumerate(moments):
        expected, _ = integrate.quad(lambda tau, n=n: rate * math.exp(-rate * (h - tau)) * tau**n, 0.0, h)
        assert value == pytest.approx(expected, rel=1e-8, abs=1e-300)


def test_newton_weights_integrate_polynomials_exactly() -> None:
    """If D is a polynomial in tau of degree < k, the k-point weights reproduce its kernel integral."""
    h, rate = 0.7, 1.0
    nodes = [0.0, -0.4, -1.1]
    weights = _newton_weights(nodes, kernel_moments(h, rate, 3))
    for poly in ([2.0], [0.5, -1.5], [1.0, 0.3, 2.0]):
        values = [sum(c * node**p for p, c in enumerate(poly)) for node in nodes]
        expected, _ = integrate.quad(
            lambda tau, poly=poly: rate * math.exp(-rate * (h - tau)) * sum(c * tau**p for p, c in enumerate(poly)),
            0.0,
            h,
        )
        assert sum(w * v for w, v in zip(weights, values, strict=True)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("solver", "low", "high"), [("dpmpp_2m", 1.8, 3.0), ("dpmpp_3m", 2.6, 4.2)])
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_multistep_order_with_the_edm_schedule(name: str, solver: str, low: float, high: float) -> None:
    f = diffscale.formulation(name)
    z = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = probability_flow_reference(MIXTURE, z, f.sigma_max)
    errors = [
        float(
            (diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=n, solver=solver, schedule="edm") - reference)
            .abs()
            .mean()
        )
        for n in (32, 64)
    ]
    assert low <= math.log2(errors[0] / errors[1]) <= high, errors
    assert errors[1] < 3e-3


def test_heun_alpha_half_is_second_order() -> None:
    f = diffscale.formulation("EDM")
    z = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = probability_flow_reference(MIXTURE, z, f.sigma_max)
    errors = [
        float((diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=n, alpha=0.5) - reference).abs().mean())
        for n in (32, 64)
    ]
    assert 1.7 <= math.log2(errors[0] / errors[1]) <= 2.8, errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", ONE_EVALUATION_PER_STEP)
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_every_solver_and_formulation_runs_in_both_precisions(name: str, solver: str, dtype: torch.dtype) -> None:
    """Finite output on both grids; no overshoot beyond the data's range (|y| < 2 here, up to sampling error).
    The SDE variants re-inject noise each step and need more steps (24) than the ODE solvers (12)."""
    z = torch.randn(256, 1, dtype=dtype, generator=torch.Generator().manual_seed(2))
    steps = 24 if solver.endswith("_sde") or solver == "ancestral" else 12
    for schedule in ("native", "edm", "tuned"):
        out = diffscale.sample(
            MIXTURE.ideal_denoiser,
            z,
            diffscale.formulation(name),
            steps=steps,
            solver=solver,
            schedule=schedule,
            generator=torch.Generator().manual_seed(3),
        )
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert out.abs().max() < 2.6


def test_last_step_returns_the_denoised_value() -> None:
    steps: list[diffscale.sampling.SamplerStep] = []
    z = torch.randn(8, 1, dtype=torch.float64)
    out = diffscale.sample(
        MIXTURE.ideal_denoiser, z, diffscale.formulation("EDM"), steps=6, solver="dpmpp_3m", callback=steps.append
    )
    torch.testing.assert_close(out, steps[-1].denoised)


@pytest.mark.parametrize("solver", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
@pytest.mark.parametrize("name", ["VP", "EDM"])
def test_sde_solvers_reproduce_mode_weights_and_variances(name: str, solver: str) -> None:
    mixture = GaussianMixture(means=[[-1.0], [1.5]], stds=[0.3, 0.2], weights=[0.3, 0.7])
    samples = diffscale.sample(
        mixture.ideal_denoiser,
        torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4)),
        diffscale.formulation(name),
        steps=64,
        solver=solver,
        schedule="edm",
        generator=torch.Generator().manual_seed(5),
    ).ravel()
    left, right = samples[samples < 0.25], samples[samples >= 0.25]
    assert abs(len(left) / len(samples) - 0.3) < 0.015
    assert abs(float(left.std()) - 0.3) < 0.03 and abs(float(right.std()) - 0.2) < 0.03


def test_churn_is_refused_for_multistep_solvers() -> None:
    with pytest.raises(ValueError, match=r"s_churn = 5\.0 is only used by euler and heun"):
        diffscale.sample(
            MIXTURE.ideal_denoiser, torch.randn(2, 1), diffscale.formulation("EDM"), solver="dpmpp_2m", s_churn=5.0
        )
    with pytest.raises(ValueError, match=r"alpha = 0\.5 is only used by solver 'heun'"):
        diffscale.sample(
            MIXTURE.ideal_denoiser, torch.randn(2, 1), diffscale.formulation("EDM"), solver="euler", alpha=0.5
        )
