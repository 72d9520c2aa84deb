"""Runs on gridded data: a tiny U-Net on 8 x 12 Gaussian random fields through the CLI (train -> sample ->
plot), training lowers the denoising error towards the Wiener filter's, and the sampler driven by the exact
Wiener denoiser reproduces the field's power spectrum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import diffscale
from diffscale.cli.main import main
from diffscale.config import config_from_dict
from diffscale.data import GaussianRandomField, radial_power_spectrum, spectrum_log_error
from diffscale.runs import build_denoiser, load_run, prepare_training, sample_run, train

TINY_UNET = {
    "arch": "ddpmpp",
    "model_channels": 8,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "img_resolution": 8,
    "attn_resolutions": [4],  # attention at the lower level (4 x 6)
    "dropout": 0.0,
}
FIELDS = {"kind": "gaussian_fields", "height": 8, "width": 12, "length_scale": 2.0, "spectral_slope": 4.0}
TINY = {
    "diffusion": {"type": "EDM", "sigma_data": 1.0},
    "sampling": {"steps": 4, "sampler": "heun"},
    "model": TINY_UNET,
    "data": FIELDS,
    "training": {"steps": 20, "batch_size": 16, "device": "cpu", "log_every": 10, "warmup_steps": 5},
}


def test_train_sample_plot_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "fields.yaml"
    config_path.write_text(yaml.safe_dump(TINY))
    run_dir = tmp_path / "run"
    assert main(["train", str(config_path), "--out", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ddpmpp:" in out and "M parameters" in out and "gaussian_fields (1 x 8 x 12)" in out
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["model"]["in_channels"] == 1 and resolved["model"]["channel_mult"] == [1, 2]

    samples_path, plot_path = tmp_path / "fields.npy", tmp_path / "fields.png"
    argv = ["sample", str(run_dir), "--num", "6", "--out", str(samples_path), "--plot", str(plot_path)]
    assert main([*argv, "--steps", "3", "--no-progress", "--device", "cpu"]) == 0
    samples = np.load(samples_path)
    assert samples.shape == (6, 1, 8, 12) and np.isfinite(samples).all()
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    assert "(6, 1, 8, 12)" in capsys.readouterr().out

    csv_path = tmp_path / "fields.csv"
    assert main(["sample", str(run_dir), "--num", "2", "--out", str(csv_path), "--steps", "2", "--no-progress"]) == 0
    rows = np.loadtxt(csv_path, delimiter=",", skiprows=1)
    assert rows.shape == (2, 96)


def test_load_run_gives_field_shaped_samples_and_learned_variance(tmp_path: Path) -> None:
    config = config_from_dict(
        {**TINY, "diffusion": {"type": "iDDPM", "learned_variance": True}, "data": {**FIELDS, "channels": 2}}
    )
    plan = prepare_training(config, tmp_path / "run")
    assert plan.config.model.learned_variance and plan.config.model.in_channels == 2
    assert plan.trainer.denoiser.network.out_channels == 4  # mean and variance halves
    train(plan, progress=False)
    run = load_run(tmp_path / "run")
    assert run.data_shape == (2, 8, 12) and isinstance(run.data, GaussianRandomField)
    samples = sample_run(run, 3, run.config.sampling.to_sampler_settings())
    assert samples.shape == (3, 2, 8, 12) and torch.isfinite(samples).all()


def _excess_error(denoiser: torch.nn.Module, field: GaussianRandomField) -> float:
    """Mean over sigma in {0.2, 0.5, 1, 2} of E|D(y + sigma n) - y|^2 - E|W(y + sigma n) - y|^2 (W: Wiener),
    relative to the latter, on a fixed batch."""
    generator = torch.Generator().manual_seed(7)
    clean = field.sample(256, generator)
    noise = torch.randn(clean.shape, generator=generator)
    total = 0.0
    with torch.no_grad():
        for sigma in (0.2, 0.5, 1.0, 2.0):
            noisy = clean + sigma * noise
            sigmas = torch.full((clean.shape[0],), sigma)
            error = (denoiser(noisy, sigmas) - clean).square().mean()
            optimal = (field.ideal_denoiser(noisy, sigmas) - clean).square().mean()
            total += float((error - optimal) / optimal) / 4
    return total


def test_a_tiny_unet_learns_the_fields() -> None:
    config = config_from_dict(
        {**TINY, "training": {"steps": 200, "batch_size": 32, "device": "cpu", "warmup_steps": 20, "seed": 1}}
    )
    plan = prepare_training(config, Path("unused"))
    field = plan.data
    before = _excess_error(plan.trainer.denoiser.eval(), field)
    plan.trainer.denoiser.train()
    losses = [plan.trainer.train_step().loss for _ in range(200)]
    after = _excess_error(plan.trainer.denoiser.eval(), field)
    assert np.mean(losses[-40:]) < 0.85 * np.mean(losses[:40]), (np.mean(losses[:40]), np.mean(losses[-40:]))
    assert after < 0.5 * before, (before, after)


def _spectral_gain(samples: torch.Tensor, noise: torch.Tensor, field: GaussianRandomField) -> torch.Tensor:
    """Radial spectrum of the samples over (exact spectrum x radial spectrum of the noise they came from).

    With the exact (Wiener) denoiser every solver is linear and diagonal in Fourier space, so this removes the
    scatter of the noise draw: it is 1 in every shell when the sampler is exact, whatever the sample size."""
    _, exact = field.power_spectrum()
    _, of_samples = radial_power_spectrum(samples)
    _, of_noise = radial_power_spectrum(noise)
    return of_samples / (exact * of_noise)


@pytest.mark.parametrize(("formulation", "tolerance"), [("EDM", 0.02), ("VP", 0.2)])
def test_sampling_with_the_wiener_filter_reproduces_the_spectrum(formulation: str, tolerance: float) -> None:
    """The denoiser is exact, so the samples' spectrum must match P(k) up to the solver's error, which
    shrinks with the number of steps (fine scales, of power P << 1, are made at sigma ~ sqrt(P), where a
    coarse time grid errs most)."""
    field = GaussianRandomField(height=16, width=24, length_scale=3.0, spectral_slope=4.0)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(200, 1, 16, 24, generator=generator, dtype=torch.float64)
    f = diffscale.formulation(formulation)
    worst = []
    for steps in (18, 32, 64):
        samples = diffscale.sample(field.ideal_denoiser, noise, f, steps=steps, solver="heun")
        assert samples.shape == noise.shape and samples.dtype == torch.float64
        worst.append(float((_spectral_gain(samples, noise, field) - 1).abs().max()))
    assert worst[0] > worst[1] > worst[2], worst
    assert worst[2] < tolerance, worst
    # Against fresh draws of the field: as close as an estimate from as many true fields.
    _, exact = field.power_spectrum()
    _, estimate = radial_power_spectrum(samples)
    _, reference = radial_power_spectrum(field.sample(200, generator))
    error, yardstick = spectrum_log_error(estimate, exact), spectrum_log_error(reference, exact)
    assert error < 1.5 * yardstick + tolerance, (error, yardstick)


def test_build_denoiser_for_fields_follows_the_seed() -> None:
    config = config_from_dict(TINY)
    first, second = build_denoiser(config), build_denoiser(config)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 1, 8, 12)
    assert first(x, torch.tensor([0.5, 2.0])).shape == x.shape
