"""The Python API over trained runs (``diffscale.load_run``, ``Run.sample``, ``Run.likelihood``): a mixture run
loaded as an object gives exactly what ``diffscale sample`` and ``diffscale likelihood`` write, and bad input is a
ConfigError with one line naming the Python argument (never SystemExit). The climate side (``run.downscale``,
``diffscale.evaluate``) is tested beside the command it mirrors, in test_cli_downscale.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import diffscale
from diffscale.data import GaussianMixture
from diffscale.formulations import EDM
from tests.conftest import run_cli

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mixture_1d_edm.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("api") / "run"
    argv = ["train", str(CONFIG), "--out", str(directory), "--no-progress"]
    argv += ["--set", "training.steps=40", "--set", "training.batch_size=128", "--set", "training.tensorboard=false"]
    with torch.random.fork_rng(devices=[]):
        assert run_cli(argv) == 0
    return directory


def test_a_mixture_run_loads_as_an_object(run_dir: Path) -> None:
    run = diffscale.load_run(run_dir, device="cpu")
    assert isinstance(run, diffscale.Run) and not isinstance(run, diffscale.ClimateRun)
    assert run.kind == "mixture" and run.step == 40 and run.weights == "ema"
    assert (
        isinstance(run.formulation, EDM) and run.formulation.params.sigma_data == 1.0
    )  # the config's, not the default
    assert isinstance(run.denoiser, diffscale.PreconditionedDenoiser) and run.denoiser is run.model
    assert isinstance(run.data, GaussianMixture) and run.data_shape == (1,)
    assert run.config.sampling.steps == 40 and not any(p.requires_grad for p in run.model.parameters())
    raw = diffscale.load_run(run_dir, device="cpu", weights="raw")
    assert any(not torch.equal(a, b) for a, b in zip(raw.model.parameters(), run.model.parameters(), strict=True))


def test_sample_equals_what_the_command_writes(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.npy"
    argv = ["sample", str(run_dir), "--num", "300", "--steps", "8", "--s-churn", "0", "--seed", "3"]
    assert run_cli([*argv, "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    samples = diffscale.load_run(run_dir, device="cpu").sample(300, steps=8, s_churn=0, seed=3)
    assert samples.dtype == torch.float32 and samples.shape == (300, 1)
    np.testing.assert_array_equal(samples.numpy(), np.load(out))
    settings = json.loads(out.with_name("samples.npy.json").read_text())["sampler"]
    assert settings["steps"] == 8 and settings["s_churn"] == 0 and settings["solver"] == "heun"


def test_sample_takes_settings_and_is_reproducible(run_dir: Path) -> None:
    run = diffscale.load_run(run_dir, device="cpu")
    settings = run.sampler_settings(sampler="dpmpp_2m", steps=6, s_churn=0, schedule="edm")
    assert settings.solver == "dpmpp_2m" and settings.schedule == "edm" and settings.s_max == 50.0
    first = run.sample(50, settings=settings, seed=1)
    np.testing.assert_array_equal(run.sample(50, settings=settings, seed=1).numpy(), first.numpy())
    assert not torch.equal(run.sample(50, settings=settings, seed=2), first)


def test_likelihood_equals_what_the_command_writes(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ll.json"
    argv = ["likelihood", str(run_dir), "--data", "mixture:64", "--steps", "12", "--seed", "5", "--num-probes", "2"]
    assert run_cli([*argv, "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    written = json.loads(out.read_text())
    report = diffscale.load_run(run_dir, device="cpu").likelihood(64, steps=12, seed=5, num_probes=2)
    np.testing.assert_array_equal(report.log_likelihood.numpy(), np.asarray(written["per_sample_log_likelihood"]))
    assert report.summary()["log_likelihood"] == written["log_likelihood"]
    assert report.summary()["exact"]["log_likelihood"] == written["exact"]["log_likelihood"]


def test_likelihood_of_given_samples_and_of_a_file(run_dir: Path, tmp_path: Path) -> None:
    run = diffscale.load_run(run_dir, device="cpu")
    x = run.data.sample(20, torch.Generator().manual_seed(0), dtype=torch.float64)
    np.save(tmp_path / "x.npy", x.numpy())
    from_tensor = run.likelihood(x, steps=8, exact_trace=True)
    from_file = run.likelihood(tmp_path / "x.npy", steps=8, exact_trace=True)
    np.testing.assert_array_equal(from_tensor.log_likelihood.numpy(), from_file.log_likelihood.numpy())
    # the exact values are the mixture's own density
    np.testing.assert_allclose(from_tensor.exact_log_likelihood.numpy(), run.data.log_prob(x, 0.0).numpy())


BAD_CALLS = {
    "missing run": (lambda d: diffscale.load_run(d.parent / "nowhere"), "run directory '", "nowhere' not found"),
    "weights": (lambda d: diffscale.load_run(d, weights="best"), "weights = 'best': allowed: ema, raw", ""),
    "device": (lambda d: diffscale.load_run(d, device="tpu"), "device = 'tpu'", ""),
    "steps": (lambda d: diffscale.load_run(d, device="cpu").sample(5, steps=0), "steps = 0:", ""),
    "sampler": (lambda d: diffscale.load_run(d, device="cpu").sample(5, sampler="rk45"), "sampler = 'rk45'", ""),
    "num": (lambda d: diffscale.load_run(d, device="cpu").sample(0), "num = 0", ""),
    "option": (lambda d: diffscale.load_run(d, device="cpu").sampler_settings(stepz=3), "unknown sampler option", ""),
    "shape": (lambda d: diffscale.load_run(d, device="cpu").likelihood(torch.zeros(4, 2)), "shape (4, 2)", "(N, 1)"),
    "probes": (lambda d: diffscale.load_run(d, device="cpu").likelihood(4, num_probes=0), "num_probes = 0", ""),
    "sigma": (
        lambda d: diffscale.load_run(d, device="cpu").likelihood(4, sigma_start=2.0, sigma_end=1.0),
        "sigma_start = 2, sigma_end = 1",
        "",
    ),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_one_line_naming_the_python_argument(case: str, run_dir: Path) -> None:
    call, first, second = BAD_CALLS[case]
    with pytest.raises(diffscale.ConfigError) as caught:
        call(run_dir)
    message = str(caught.value)
    assert "\n" not in message and first in message and second in message, message
    assert "--" not in message  # Python names, not command-line flags


def test_the_default_batch_holds_at_most_a_million_grid_points() -> None:
    from diffscale.runs.downscaling import BATCH_POINTS, default_batch_size

    assert default_batch_size(32, 48) == 64  # regional grids: 64 fields per network call
    assert default_batch_size(128, 128) == 64
    assert default_batch_size(180, 360) == 16 and 16 * 180 * 360 <= BATCH_POINTS < 17 * 180 * 360
    assert default_batch_size(721, 1440) == 1  # one field of a 0.25 deg global grid (a block is never split)
