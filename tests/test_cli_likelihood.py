"""``diffscale likelihood``: round trips with a tiny trained run, every data file format, the exact values of the
run's mixture, and bad input that exits with status 2, one line on stderr and nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffscale.cli.main import main
from diffscale.data import two_gaussians_1d
from diffscale.data.samples_io import write_samples
from diffscale.evaluation import single_thread
from tests.conftest import run_cli, snapshot

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mixture_1d_edm.yaml"
FAST = ["--steps", "24", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("likelihood")
    argv = ["train", str(CONFIG), "--set", "training.steps=30", "--out", str(root / "run"), "--no-progress"]
    with single_thread():  # intra-op threads spin on a shared CPU: 6 s alone, up to 40 s under load
        assert main(argv) == 0
    return root / "run"


@pytest.fixture(scope="module")
def samples(trained: Path) -> torch.Tensor:
    return two_gaussians_1d().sample(150, torch.Generator().manual_seed(11), dtype=torch.float64)


def likelihood(trained: Path, out: Path, *extra: str) -> dict:
    assert main(["likelihood", str(trained), "--out", str(out), *FAST, *extra]) == 0
    return json.loads(out.read_text())


def test_mixture_round_trip_prints_and_writes_the_summary(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    result = likelihood(trained, tmp_path / "sub" / "result.json", "--data", "mixture:200", "--num-probes", "2")
    out = capsys.readouterr().out
    assert "log-likelihood:" in out and "bits/dim:" in out and "exact (the run's data distribution)" in out
    assert result["num_samples"] == 200 and result["dims"] == 1 and len(result["per_sample_log_likelihood"]) == 200
    assert result["sigma_start"] == 0.002 and result["sigma_end"] == 80.0
    assert result["evaluations_per_sample"] == 4 * 24
    assert result["settings"]["num_probes"] == 2 and result["settings"]["solver"] == "rk4"
    ll, bpd = result["log_likelihood"], result["bits_per_dim"]
    assert math.isfinite(ll["mean"]) and ll["stderr"] > 0
    assert bpd["mean"] == pytest.approx(-ll["mean"] / math.log(2.0))
    exact = result["exact"]
    # the exact mean log-density of 0.5 N(-1, 0.25^2) + 0.5 N(1, 0.25^2) is about -0.72 nats
    assert -0.9 < exact["log_likelihood"]["mean"] < -0.5
    assert exact["log_likelihood_at_sigma_start"]["mean"] == pytest.approx(exact["log_likelihood"]["mean"], abs=1e-3)
    # a model trained for 30 steps is no exact density, but it is close and cannot beat the truth by much
    assert abs(exact["model_minus_exact"]["mean"]) < 1.0
    assert exact["model_minus_exact"]["mean"] < 5 * exact["model_minus_exact"]["stderr"]


def test_every_file_format_gives_the_same_result(trained: Path, samples: torch.Tensor, tmp_path: Path) -> None:
    means = []
    for suffix in (".npy", ".csv", ".safetensors"):
        data = write_samples(tmp_path / f"data{suffix}", samples.float())
        result = likelihood(trained, tmp_path / f"{suffix[1:]}.json", "--data", str(data), "--exact-trace")
        assert result["num_samples"] == 150 and result["settings"]["exact_trace"] is True
        means.append(result["log_likelihood"]["mean"])
    assert means[1] == pytest.approx(means[0], abs=1e-5)  # csv keeps 9 significant digits
    assert means[2] == pytest.approx(means[0], abs=1e-12)


def test_training_data_is_more_likely_than_shifted_data(trained: Path, samples: torch.Tensor, tmp_path: Path) -> None:
    own = write_samples(tmp_path / "own.npy", samples)
    shifted = write_samples(tmp_path / "shifted.npy", samples + 2.5)
    on_own = likelihood(trained, tmp_path / "own.json", "--data", str(own), "--exact-trace")
    on_shifted = likelihood(trained, tmp_path / "shifted.json", "--data", str(shifted), "--exact-trace")
    gap = on_own["log_likelihood"]["mean"] - on_shifted["log_likelihood"]["mean"]
    assert gap > 10 * math.hypot(on_own["log_likelihood"]["stderr"], on_shifted["log_likelihood"]["stderr"])
    assert on_shifted["exact"]["log_likelihood"]["mean"] < on_own["exact"]["log_likelihood"]["mean"]


def test_the_seed_fixes_data_and_probes(trained: Path, tmp_path: Path) -> None:
    first = likelihood(trained, tmp_path / "a.json", "--data", "mixture:50", "--seed", "3", "--batch-size", "20")
    again = likelihood(trained, tmp_path / "b.json", "--data", "mixture:50", "--seed", "3", "--batch-size", "20")
    other = likelihood(trained, tmp_path / "c.json", "--data", "mixture:50", "--seed", "4", "--batch-size", "20")
    assert first["per_sample_log_likelihood"] == again["per_sample_log_likelihood"]
    assert first["per_sample_log_likelihood"] != other["per_sample_log_likelihood"]


def test_without_out_nothing_is_written(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["likelihood", str(trained), "--data", "mixture:10", *FAST, "--zero-noise-correction"]) == 0
    assert snapshot(tmp_path) == []


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["likelihood", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--data",
        "--steps",
        "--solver",
        "--num-probes",
        "--probe",
        "--exact-trace",
        "--sigma-start",
        "--sigma-end",
        "--zero-noise-correction",
        "--batch-size",
        "--seed",
        "--out",
        "--device",
        "--weights",
        "--no-progress",
        "mixture:N",
        "bits per dimension",
    ):
        assert option in text, option


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--data", "mixture:0"], ["mixture:N", "N >= 1"]),
        (["--data", "mixture:many"], ["mixture:N"]),
        (["--data", "data.txt"], ["unknown data file type", ".npy"]),
        (["--data", "missing.npy"], ["missing.npy", "not found"]),
        (["--data", "mixture:5", "--out", "result.yaml"], ["--out", ".json"]),
        (["--data", "mixture:5", "--sigma-start", "90"], ["--sigma-start", "sigma-end"]),
        (["--data", "mixture:5", "--num-probes", "0"], ["--num-probes", ">= 1"]),
        (["--data", "mixture:5", "--solver", "euler"], ["--solver", "rk4"]),
        (["--data", "mixture:5", "--device", "tpu"], ["--device", "tpu"]),
        (["--data", "wrong_dims.npy"], ["shape (4, 2)", "(N, 1)"]),
        (["--data", "broken.npy"], ["broken.npy", "cannot read"]),
        (["--data", "nan.csv"], ["finite"]),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "wrong_dims.npy", np.zeros((4, 2)))
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    (tmp_path / "nan.csv").write_text("x0\n1.0\nnan\n")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert run_cli(["likelihood", str(trained), "--out", "out.json", *FAST, *extra]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffscale: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert snapshot(tmp_path) == before


def test_a_missing_run_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["likelihood", str(tmp_path / "nope"), "--data", "mixture:5"]) == 2
    assert "not found" in capsys.readouterr().err


def test_gridded_runs_are_scored_against_the_exact_field_density(tmp_path: Path) -> None:
    """A U-Net run on Gaussian random fields: samples of shape (N, C, H, W) and the exact log-density alongside."""
    config = CONFIG.parent / "fields_ddpmpp.yaml"
    run = tmp_path / "fields"
    overrides = ["--set", "training.steps=2", "--set", "data.height=8", "--set", "data.width=12"]
    assert main(["train", str(config), *overrides, "--out", str(run), "--no-progress"]) == 0
    result = likelihood(run, tmp_path / "ll.json", "--data", "mixture:4", "--steps", "4")
    assert result["dims"] == 8 * 12 and result["num_samples"] == 4
    assert math.isfinite(result["log_likelihood"]["mean"])
    assert math.isfinite(result["exact"]["log_likelihood"]["mean"])
