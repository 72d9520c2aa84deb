"""The CUDA paths, where a GPU is present (skipped elsewhere; CI has none): samplers against the CPU and the
closed form, the U-Nets in float32 and under bf16/fp16 autocast, mixed-precision training, exact resume on the
GPU, runs that move between devices, and downscaling that gives the CPU's ensemble from the same seed.

Comparisons with the CPU switch TF32 off (float32 matrix products and convolutions in full precision); one test
measures what TF32, cuDNN's default for convolutions, changes in a downscaled ensemble.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import torch
import yaml

import diffscale
from diffscale.config import config_from_dict
from diffscale.data import two_gaussians_1d
from diffscale.data.fields import GaussianRandomField
from diffscale.evaluation import single_thread
from diffscale.evaluation.likelihood import hutchinson_probes
from diffscale.networks import build_network
from diffscale.runs import prepare_training, train
from diffscale.training import Trainer, TrainingSettings
from tests.conftest import FORMULATION_NAMES, run_cli, wasserstein1_1d
from tests.test_cli_downscale import COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES, _block_means
from tests.test_climate_runs import train_runs, write_coarse
from tests.test_resume import CONFIG, assert_same_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MIXTURE = two_gaussians_1d()


@pytest.fixture(autouse=True)
def _full_float32() -> Iterator[None]:
    """TF32 off for the comparisons with the CPU (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- samplers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_deterministic_samplers_on_cuda_equal_the_cpu(name: str, solver: str) -> None:
    """The exact mixture denoiser in float64: the GPU's ODE solution equals the CPU's to rounding."""
    f = diffscale.formulation(name)
    z = noise(512)
    cpu = diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=12, solver=solver)
    gpu = diffscale.sample(MIXTURE.ideal_denoiser, z.cuda(), f, steps=12, solver=solver)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("EDM", {"solver": "heun", "s_churn": 20.0}),
        ("VP", {"solver": "dpmpp_2m_sde"}),
        ("iDDPM", {"solver": "ancestral"}),
    ],
)
def test_stochastic_samplers_on_cuda(name: str, kwargs: dict[str, Any]) -> None:
    """A CPU generator gives the GPU the CPU's churn/SDE noise (equal samples); a CUDA generator draws its own
    stream, reproducibly, and the samples still follow the mixture."""
    f = diffscale.formulation(name)
    z = noise(2000)
    cpu = diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=64, generator=torch.Generator().manual_seed(3), **kwargs)
    gpu = diffscale.sample(
        MIXTURE.ideal_denoiser, z.cuda(), f, steps=64, generator=torch.Generator().manual_seed(3), **kwargs
    )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-9)
    draws = [
        diffscale.sample(
            MIXTURE.ideal_denoiser, z.cuda(), f, steps=64, generator=torch.Generator("cuda").manual_seed(3), **kwargs
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    assert not torch.allclose(draws[0].cpu(), cpu)
    assert wasserstein1_1d(draws[0].cpu(), MIXTURE) < 0.06  # CPU streams: 0.008 to 0.04 at 64 steps


def test_every_draw_with_a_cpu_generator_gives_the_cpu_numbers_on_cuda() -> None:
    """Training draws (data, noise levels, iDDPM's discrete sigma, random fields) and likelihood probes take a CPU
    generator with device='cuda': drawn on the CPU, moved to the GPU."""
    fields = GaussianRandomField(channels=1, height=8, width=8)
    draws = {
        "mixture": lambda g, d: MIXTURE.sample(64, g, device=d),
        "EDM sigma": lambda g, d: diffscale.formulation("EDM").sample_sigma(64, g, device=d),
        "iDDPM sigma": lambda g, d: diffscale.formulation("iDDPM").sample_sigma(64, g, device=d),
        "fields": lambda g, d: fields.sample(4, g, device=d),
        "probes": lambda g, d: hutchinson_probes(3, (2, 5), kind="rademacher", generator=g, device=d),
    }
    for name, draw in draws.items():
        cpu = draw(torch.Generator().manual_seed(9), "cpu")
        gpu = draw(torch.Generator().manual_seed(9), "cuda")
        assert gpu.device.type == "cuda", name
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12, msg=name)


# -- networks ----------------------------------------------------------------------------------------------------


def small_denoiser(arch: str) -> diffscale.PreconditionedDenoiser:
    torch.manual_seed(0)
    network = build_network(
        arch,
        in_channels=1,
        cond_channels=2,
        img_resolution=16,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # away from the zero-initialised output layers, so F is not 0
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return diffscale.PreconditionedDenoiser(network, diffscale.formulation("EDM"))


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp", "adm"])
def test_unets_on_cuda_match_the_cpu_and_autocast_stays_close(arch: str) -> None:
    denoiser = small_denoiser(arch).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 16, 16, generator=generator) * 2.0
    cond = torch.randn(4, 2, 16, 16, generator=generator)
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    with torch.no_grad():
        cpu = denoiser(x, sigma, cond_fields=cond)
        denoiser.cuda()
        gpu = denoiser(x.cuda(), sigma.cuda(), cond_fields=cond.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                low = denoiser(x.cuda(), sigma.cuda(), cond_fields=cond.cuda())
            assert low.dtype == torch.float32 and torch.isfinite(low).all()  # D keeps x's dtype
            relative = float((low - gpu).norm() / gpu.norm())
            assert 0 < relative < 0.02, (dtype, relative)  # autocast ran (not equal), and stayed close


# -- training ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_lowers_the_loss(precision: str) -> None:
    settings = TrainingSettings(steps=300, batch_size=64, device="cuda", precision=precision, learning_rate=3e-3)
    torch.manual_seed(settings.seed)
    denoiser = diffscale.PreconditionedDenoiser(
        diffscale.networks.MLP(1, width=16, depth=1), diffscale.formulation("EDM")
    )
    trainer = Trainer(denoiser, lambda n, g: MIXTURE.sample(n, g), settings)
    losses: list[float] = []
    trainer.run(progress=False, callback=lambda record: losses.append(record.loss))
    assert sum(losses[-50:]) / 50 < 0.7 * sum(losses[:20]) / 20
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trainer.denoiser.parameters())
    scaler = trainer.precision.state_dict()
    assert (scaler is not None) == (precision == "fp16")
    if scaler is not None:
        assert scaler["scale"] > 0


def test_training_on_cuda_resumes_bitwise_and_the_run_samples_on_the_cpu(tmp_path: Path) -> None:
    config = {**CONFIG, "training": {**CONFIG["training"], "device": "cuda", "lr_decay": "none"}}
    short = {**config, "training": {**config["training"], "steps": 12, "checkpoint_every": 5}}
    long = {**config, "training": {**config["training"], "steps": 20, "checkpoint_every": 5}}
    run_dir = tmp_path / "run"
    train(prepare_training(config_from_dict(short), run_dir), progress=False)
    train(prepare_training(config_from_dict(long), run_dir), progress=False)
    reference = tmp_path / "reference"
    train(prepare_training(config_from_dict(long), reference), progress=False)
    assert_same_run(run_dir, reference)
    outputs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.npy"
        argv = ["sample", str(run_dir), "--num", "64", "--out", str(out), "--seed", "4", "--device", device]
        assert run_cli([*argv, "--no-progress"]) == 0
        outputs[device] = np.load(out)
    np.testing.assert_allclose(outputs["cuda"], outputs["cpu"], rtol=0, atol=1e-4)  # one seed, either device


# -- downscaling ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def climate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]), single_thread():
        root = tmp_path_factory.mktemp("cuda_climate")
        runs = train_runs(root)
    coarse = _block_means(runs["fine"][-COARSE_TIMES.size :].astype(np.float64))
    write_coarse(root / "coarse.nc", coarse, COARSE_LATITUDE, COARSE_LONGITUDE, COARSE_TIMES)
    return {**runs, "coarse_path": root / "coarse.nc"}


def _ensemble(climate: dict[str, Any], out: Path, device: str, *extra: str) -> np.ndarray:
    argv = ["downscale", str(climate["diffusion"]), "--input", str(climate["coarse_path"]), "--out", str(out)]
    argv += ["--members", "4", "--steps", "6", "--seed", "3", "--device", device, "--no-progress", *extra]
    assert run_cli(argv) == 0
    with netCDF4.Dataset(out) as dataset:
        return np.asarray(dataset["t2m"][:])


@pytest.mark.parametrize("sampler", [["--sampler", "heun"], ["--sampler", "heun", "--s-churn", "10"]])
def test_downscaling_on_cuda_gives_the_cpu_ensemble(climate: dict[str, Any], tmp_path: Path, sampler: list) -> None:
    """A run trained on the CPU, downscaled on either device from one seed: the same members (per-member CPU
    generators), to float32 rounding; with cuDNN's TF32 convolutions, to a few mK."""
    cpu = _ensemble(climate, tmp_path / "cpu.nc", "cpu", *sampler)
    gpu = _ensemble(climate, tmp_path / "gpu.nc", "cuda", *sampler)
    assert gpu.shape == cpu.shape == (4, 3, 16, 24)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=2e-3)
    torch.backends.cudnn.allow_tf32 = True
    tf32 = _ensemble(climate, tmp_path / "tf32.nc", "cuda", *sampler)
    print(f"max |CUDA - CPU|: {np.abs(gpu - cpu).max():.2e} K (fp32), {np.abs(tf32 - cpu).max():.2e} K (TF32 convs)")
    np.testing.assert_allclose(tf32, cpu, rtol=0, atol=0.05)


def test_a_climate_run_trains_on_cuda_and_downscales(climate: dict[str, Any], tmp_path: Path) -> None:
    """The same tiny climate configuration trained on the GPU (bf16), then downscaled there and on the CPU."""
    config = yaml.safe_load((climate["root"] / "diffusion.yaml").read_text())
    config["training"].update(device="cuda", precision="bf16", steps=4)
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "cuda_run"
    assert run_cli(["train", str(path), "--out", str(run_dir), "--no-progress"]) == 0
    members = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"{device}.nc"
        argv = ["downscale", str(run_dir), "--input", str(climate["coarse_path"]), "--out", str(out)]
        assert run_cli([*argv, "--members", "2", "--steps", "4", "--device", device, "--no-progress"]) == 0
        with netCDF4.Dataset(out) as dataset:
            members[device] = np.asarray(dataset["t2m"][:])
    assert np.isfinite(members["cuda"]).all()
    np.testing.assert_allclose(members["cuda"], members["cpu"], rtol=0, atol=2e-3)
