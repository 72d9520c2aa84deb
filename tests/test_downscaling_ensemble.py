"""Ensemble generation against a closed form: a Gaussian residual prior, whose ideal denoiser is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import diffscale
from diffscale.downscaling import EnsembleWriter, PatchPlan, blocks_for_rank, merge_parts, part_path, work_blocks
from diffscale.downscaling.ensemble import generate_ensemble
from diffscale.sampling import SamplerSettings

RESIDUAL_STD = 0.7
TIMES = np.array(["2019-03-25T00", "2019-03-25T06", "2019-03-25T12"], dtype="datetime64[ns]")
LAT, LON = np.linspace(50.0, 51.75, 8), np.linspace(-2.0, 0.75, 12)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond_fields: torch.Tensor) -> torch.Tensor:
    """E[r | r + sigma n] for r ~ N(0, s^2) per pixel: x s^2 / (s^2 + sigma^2) (it ignores the conditioning)."""
    assert cond_fields.shape[0] == x.shape[0]
    s2 = RESIDUAL_STD**2
    return x * s2 / (s2 + sigma.reshape(-1, 1, 1, 1) ** 2)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    cond = torch.randn(len(TIMES), 2, 8, 12, generator=generator)
    base = torch.randn(len(TIMES), 1, 8, 12, generator=generator)
    return cond, base


def _write(
    path: Path,
    members: int,
    *,
    rank: int = 0,
    world: int = 1,
    denoiser=gaussian_denoiser,
    plan=None,
    settings: SamplerSettings | None = None,
    member_batch: int = 4,
    batch_size: int = 64,
    times: slice = slice(None),
    threads: int | str | None = None,
) -> Path:
    """An ensemble of ``members`` at TIMES[times], written through generate_ensemble (or one rank's part)."""
    cond, base = _inputs()
    cond, base, stamps = cond[times], base[times], TIMES[times]
    blocks = blocks_for_rank(work_blocks(len(stamps), members, member_batch), rank, world)
    part = (rank, world) if world > 1 else None
    target = part_path(path, rank, world) if world > 1 else path
    with EnsembleWriter(
        target,
        latitude=LAT,
        longitude=LON,
        times=stamps,
        num_members=members,
        variables={"t2m": {"units": "K"}},
        part=part,
    ) as writer:
        generate_ensemble(
            denoiser,
            diffscale.formulation("EDM", sigma_data=RESIDUAL_STD) if denoiser else None,
            cond,
            base,
            blocks,
            writer,
            ["t2m"],
            lambda z: 2.0 * z + 280.0,
            settings=settings or SamplerSettings(steps=32, solver="heun"),
            seed=5,
            times=stamps,
            progress=False,
            patch_plan=plan,
            batch_size=batch_size,
            threads=threads,
        )
    return target


def test_members_follow_the_gaussian_posterior_around_the_base(tmp_path: Path) -> None:
    members = 48
    ensemble = xr.open_dataset(_write(tmp_path / "e.nc", members))["t2m"].values  # (M, T, H, W)
    _, base = _inputs()
    expected_mean = 2.0 * base[:, 0].numpy() + 280.0
    residual = (ensemble - expected_mean[None]) / 2.0
    # The exact ODE maps N(0, sigma_max^2) noise to N(0, s^2 sigma_max^2 / (s^2 + sigma_max^2)) ~ N(0, s^2); Heun with
    # 32 steps is within ~1.5% of it (12 steps: 13% too wide). Pooled std over 48 x 3 x 96 values.
    assert residual.std() == pytest.approx(RESIDUAL_STD, rel=0.03)
    assert abs(residual.mean()) < 0.02
    assert ensemble.dtype == np.float32 and ensemble.shape == (members, len(TIMES), 8, 12)


def test_the_ensemble_does_not_depend_on_how_blocks_are_shared(tmp_path: Path) -> None:
    single = _write(tmp_path / "single.nc", 6)
    parts = [_write(tmp_path / "merged.nc", 6, rank=rank, world=2) for rank in (1, 0)]  # any order
    merged = merge_parts(parts, tmp_path / "merged.nc")
    np.testing.assert_array_equal(xr.open_dataset(single)["t2m"].values, xr.open_dataset(merged)["t2m"].values)


def test_threads_apply_while_sampling_and_are_restored(tmp_path: Path) -> None:
    seen: list[int] = []

    def recording_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond_fields: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return gaussian_denoiser(x, sigma, cond_fields)

    two = _write(tmp_path / "two.nc", 2, denoiser=recording_denoiser, threads=2, settings=SamplerSettings(steps=4))
    assert set(seen) == {2} and torch.get_num_threads() == 1  # the tests' one thread is back
    one = _write(tmp_path / "one.nc", 2, settings=SamplerSettings(steps=4))
    np.testing.assert_allclose(xr.open_dataset(two)["t2m"].values, xr.open_dataset(one)["t2m"].values, atol=1e-4)


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(steps=8, solver="heun"),
        SamplerSettings(steps=8, solver="heun", s_churn=20.0),  # churn noise at every step
        SamplerSettings(steps=8, solver="dpmpp_2m_sde"),
    ],
    ids=["ode", "churn", "sde"],
)
def test_a_member_depends_only_on_seed_timestamp_and_member(tmp_path: Path, settings: SamplerSettings) -> None:
    """The same members whether the input holds all three times or only the last two, whatever the member batch
    and however many samples share a network call, for deterministic and stochastic samplers alike."""
    whole = xr.open_dataset(_write(tmp_path / "whole.nc", 5, settings=settings))["t2m"]
    later = xr.open_dataset(
        _write(tmp_path / "later.nc", 5, settings=settings, times=slice(1, None), member_batch=2, batch_size=3)
    )["t2m"]
    one_by_one = xr.open_dataset(_write(tmp_path / "single.nc", 5, settings=settings, member_batch=1, batch_size=1))
    np.testing.assert_allclose(later.values, whole.sel(time=later.time).values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one_by_one["t2m"].values, whole.values, rtol=0, atol=1e-5)
    assert np.abs(whole.values[0] - whole.values[1]).mean() > 0.1  # and the members differ


def test_deterministic_model_writes_the_base_for_every_member(tmp_path: Path) -> None:
    ensemble = xr.open_dataset(_write(tmp_path / "det.nc", 2, denoiser=None))["t2m"].values
    _, base = _inputs()
    np.testing.assert_allclose(ensemble[1], 2.0 * base[:, 0].numpy() + 280.0, rtol=1e-6)
    np.testing.assert_array_equal(ensemble[0], ensemble[1])


def test_patchwise_sampling_of_a_pointwise_denoiser_equals_whole_domain_sampling(tmp_path: Path) -> None:
    whole = xr.open_dataset(_write(tmp_path / "whole.nc", 4))["t2m"].values
    patched = xr.open_dataset(_write(tmp_path / "patched.nc", 4, plan=PatchPlan(8, 12, (8, 8), overlap=4)))
    np.testing.assert_allclose(patched["t2m"].values, whole, rtol=0, atol=1e-4)
