"""Shared test settings and the closed-form references used across tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffscale.cli.main import main
from diffscale.data import GaussianMixture
from diffscale.evaluation import reference_ode_solution, single_thread, wasserstein1_to_cdf

FORMULATION_NAMES = ("VE", "VP", "EDM", "iDDPM")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> Iterator[None]:
    """A fixed global seed, and one intra-op thread: the tests' tensors are small, and two threads spin
    badly when the two cores are shared."""
    torch.manual_seed(0)
    with single_thread():
        yield


def snapshot(directory: Path) -> list[str]:
    """Every path under ``directory`` (to prove that nothing was written)."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def run_cli(argv: list[str]) -> int:
    """``diffscale`` in-process; its exit status, also when it exits through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def probability_flow_reference(mixture: GaussianMixture, noise: torch.Tensor, sigma_start: float) -> torch.Tensor:
    """x(sigma = 0) of the probability-flow ODE from x_hat = sigma_start noise, solved by scipy's DOP853.

    This reference (diffscale.evaluation.reference, tested in test_reference.py) shares no code with
    diffscale's samplers.
    """
    return reference_ode_solution(mixture.ideal_denoiser, noise, sigma_start)


def wasserstein1_1d(samples: torch.Tensor, mixture: GaussianMixture) -> float:
    """W1 between 1-D samples and the exact mixture distribution."""
    return wasserstein1_to_cdf(samples.ravel(), mixture.cdf)
