"""Tests of diffscale.demo: a short run writes the figure, the table and finite results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import diffscale.demo as demo
from diffscale.demo import DemoResult, run_demo, stratified_normal_noise


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """The demo with 30 training steps and 500 samples (seconds, not minutes); the numbers are not the point."""
    patch = pytest.MonkeyPatch()
    patch.setattr(demo, "NUM_SAMPLES", 500)
    try:
        return run_demo(tmp_path_factory.mktemp("demo") / "nested" / "out", train_steps=30, progress=False, seed=1)
    finally:
        patch.undo()


def test_writes_the_three_files(short_run: DemoResult) -> None:
    out = short_run.figure.parent
    assert short_run.figure == out / "demo.png"
    assert short_run.table == out / "demo_table.md"
    assert short_run.results == out / "demo_results.json"
    assert short_run.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert short_run.figure.stat().st_size > 20_000
    assert short_run.downscaling is not None  # the second part: a held-out UK day, shipped model
    assert short_run.downscaling.figure == out / "demo_downscaling.png"
    assert short_run.downscaling.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    downscaling = json.loads(short_run.results.read_text())["downscaling"]
    assert downscaling["members"] == 4 and downscaling["time"] == "2019-03-28 12:00"


def test_rows_are_finite_and_complete(short_run: DemoResult) -> None:
    assert [row.formulation for row in short_run.rows] == ["VE", "VP", "EDM", "iDDPM"]
    for row in short_run.rows:
        assert math.isfinite(row.w1_trained) and row.w1_trained >= 0
        assert math.isfinite(row.w1_ideal) and 0 <= row.w1_ideal < 0.1  # exact denoiser, 40 Heun steps
        assert row.nfe == 79
        assert row.train_seconds > 0 and row.sample_seconds > 0
        assert sum(row.mode_weights) == pytest.approx(1.0)
    assert short_run.seconds > 0


def test_table_and_json_agree(short_run: DemoResult) -> None:
    table = short_run.table.read_text()
    results = json.loads(short_run.results.read_text())  # strict JSON: no NaN or Infinity
    assert results["train_steps"] == 30 and results["seed"] == 1 and results["num_samples"] == 500
    assert results["sampler"]["solver"] == "heun" and results["sampler"]["steps"] == 40
    assert results["sampler"]["nfe"] == 79
    assert len(results["rows"]) == 4
    for row in results["rows"]:
        assert all(math.isfinite(row[key]) for key in ("w1_trained", "w1_ideal", "train_seconds"))
        assert f"| {row['formulation']} | {row['w1_trained']:.4f} | {row['w1_ideal']:.4f} |" in table


def test_stratified_noise_is_the_normal_quantiles() -> None:
    noise = stratified_normal_noise(4)
    expected = torch.tensor([-1.1503493803760079, -0.31863936396437514, 0.31863936396437514, 1.1503493803760079])
    assert noise.shape == (4, 1)
    assert torch.allclose(noise[:, 0], expected.double(), atol=1e-12)
    with pytest.raises(ValueError, match="n = 0"):
        stratified_normal_noise(0)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_train_steps_writes_nothing(tmp_path: Path, steps: object) -> None:
    with pytest.raises(ValueError, match="train_steps"):
        run_demo(tmp_path / "out", train_steps=steps, progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
