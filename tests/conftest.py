"""Shared test settings and the closed-form references used across tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
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


@contextmanager
def mounted_read_only(folder: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only onto itself inside the block, its contents kept (root writes through
    permission bits, so a chmod cannot make a folder read-only for root-run tests; a read-only mount can). The test
    is skipped where mounting is not allowed (not root, or no mount privilege)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind -o ro is not allowed here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """An empty folder mounted read-only (:func:`mounted_read_only`)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    with mounted_read_only(folder):
        yield folder


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


def _skip_reason(report: pytest.TestReport) -> str:
    """The reason a test was skipped, as one of the few the suite has: a GPU, the shared real data, or its own."""
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if "CUDA" in reason or "GPU" in reason:
        return "need a CUDA device" if "needs" in reason else reason
    if "shared" in reason:
        return "need the real ERA5 files of ../shared/data beside the repository"
    return reason


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line on what was skipped and why (e.g. ``skipped 41: 30 need a CUDA device; 11 need ...``)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts: dict[str, int] = {}
    for report in skipped:
        reason = _skip_reason(report)
        counts[reason] = counts.get(reason, 0) + 1
    parts = "; ".join(f"{count} {reason}" for reason, count in sorted(counts.items(), key=lambda item: -item[1]))
    terminalreporter.write_line(f"skipped {len(skipped)}: {parts}")


def _fashion_mnist_folder() -> Path | None:
    from diffscale.data.images import find_fashion_mnist
    from diffscale.validation import ConfigError

    try:
        return find_fashion_mnist()
    except ConfigError:
        return None


FASHION_MNIST = _fashion_mnist_folder()
"""The Fashion-MNIST folder (Debian's dataset-fashion-mnist), or None where it is not installed."""

NEEDS_FASHION_MNIST = pytest.mark.skipif(
    FASHION_MNIST is None, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 1, 28, 28), labels (N,)) of a Fashion-MNIST split, read by diffscale's image reader."""
    from diffscale.data.images import load_image_dataset

    data = load_image_dataset(FASHION_MNIST, split)
    return data.images, data.labels
