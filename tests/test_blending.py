"""Patch blending (diffscale.downscaling.blending): exact reproduction of pointwise maps, the partition of unity of
the raised-cosine weights, periodic longitude, the identity path, errors, and smooth transitions."""

from __future__ import annotations

import math

import pytest
import torch

from diffscale.downscaling import PatchedDenoiser, PatchPlan, blend_patches, raised_cosine_ramp
from diffscale.validation import ConfigError

PLANS = [
    pytest.param(dict(height=33, width=49, patch=(16, 16), overlap=(4, 4)), id="region-uneven"),
    pytest.param(dict(height=28, width=40, patch=(16, 16), overlap=(4, 4)), id="region-even"),
    pytest.param(dict(height=20, width=48, patch=(8, 16), overlap=(2, 4), periodic_longitude=True), id="globe-even"),
    pytest.param(dict(height=21, width=50, patch=(8, 16), overlap=(2, 5), periodic_longitude=True), id="globe-uneven"),
    pytest.param(dict(height=16, width=24, patch=(16, 10), overlap=(0, 3)), id="one-row"),
]


def _conv(windows: torch.Tensor) -> torch.Tensor:
    """A non-pointwise, per-sample map (3x3 box sum, zero padding): depends on each window's content only."""
    kernel = torch.ones(windows.shape[1], 1, 3, 3, dtype=windows.dtype)
    return torch.nn.functional.conv2d(windows, kernel, padding=1, groups=windows.shape[1])


def test_ramp_is_the_raised_cosine_and_complements_its_reverse() -> None:
    for length in (1, 4, 7):
        up = raised_cosine_ramp(length)
        values = [math.sin(math.pi * (q + 0.5) / (2 * length)) ** 2 for q in range(length)]
        expected = torch.tensor(values, dtype=torch.float64)
        torch.testing.assert_close(up, expected, rtol=0, atol=1e-15)
        torch.testing.assert_close(up + up.flip(0), torch.ones(length, dtype=torch.float64), rtol=0, atol=1e-15)
        assert torch.all(up > 0) and torch.all(up < 1)


def test_window_starts_cover_the_domain_with_at_least_the_overlap() -> None:
    plan = PatchPlan(33, 49, patch=(16, 16), overlap=(4, 4))
    assert plan.rows.starts[0] == 0 and plan.rows.starts[-1] == 33 - 16  # flush with both edges
    assert plan.cols.starts[0] == 0 and plan.cols.starts[-1] == 49 - 16
    for axis in (plan.rows, plan.cols):
        steps = [b - a for a, b in zip(axis.starts, axis.starts[1:], strict=False)]
        assert all(0 < step <= 16 - 4 for step in steps)
    globe = PatchPlan(10, 50, patch=(10, 16), overlap=(0, 5), periodic_longitude=True)
    assert globe.cols.starts == (0, 10, 20, 30, 40)  # ceil(50 / 11) = 5 windows, spaced 50 / 5
    rows, cols = globe.window_indices(4)
    assert cols.tolist() == [*range(40, 50), *range(0, 6)]  # wraps around the W -> 0 edge
    assert rows.tolist() == list(range(10))


@pytest.mark.parametrize("kwargs", PLANS)
def test_weights_sum_to_one_everywhere(kwargs: dict) -> None:
    """Only pairwise overlaps in these plans: the raw raised-cosine weights are a partition of unity
    (sin^2 + cos^2 = 1), so sum_k w_k = 1 before any normalisation."""
    plan = PatchPlan(**kwargs)
    total = plan.weight_sum()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-14)
    coverage = torch.zeros(plan.height * plan.width, dtype=torch.int64)
    for k in range(plan.num_windows):
        coverage.index_add_(0, plan.flat_indices(k).reshape(-1), torch.ones(plan.patch[0] * plan.patch[1]).long())
        weight = plan.window_weight(k)
        assert torch.all(weight > 0) and torch.all(weight <= 1)
    assert int(coverage.min()) >= 1  # every pixel is in some window


@pytest.mark.parametrize("kwargs", PLANS)
@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_identity_and_pointwise_maps_are_reproduced(kwargs: dict, batch_size: int) -> None:
    plan = PatchPlan(**kwargs)
    x = torch.randn(2, 3, plan.height, plan.width, dtype=torch.float64)
    torch.testing.assert_close(blend_patches(lambda w: w, x, plan, batch_size), x, rtol=0, atol=1e-14)
    torch.testing.assert_close(blend_patches(lambda w: 2 * w + 1, x, plan, batch_size), 2 * x + 1, rtol=0, atol=1e-14)
    x32 = x.float()
    torch.testing.assert_close(blend_patches(torch.tanh, x32, plan, batch_size), torch.tanh(x32), rtol=0, atol=1e-6)


def test_several_inputs_and_output_channels() -> None:
    plan = PatchPlan(30, 30, patch=12, overlap=4)
    x, cond = torch.randn(2, 1, 30, 30, dtype=torch.float64), torch.randn(2, 2, 30, 30, dtype=torch.float64)
    out = blend_patches(lambda a, b: torch.cat([a * b, a + b], dim=1), (x, cond), plan, batch_size=4)
    torch.testing.assert_close(out, torch.cat([x * cond, x + cond], dim=1), rtol=0, atol=1e-14)


def test_patch_equal_to_domain_is_the_identity_path() -> None:
    """One window: blend_patches is fn of the whole field, bit for bit, for a non-pointwise fn too."""
    x = torch.randn(2, 3, 17, 23)
    for periodic in (False, True):
        plan = PatchPlan(17, 23, patch=(17, 23), overlap=(4, 4), periodic_longitude=periodic)
        assert plan.num_windows == 1
        assert torch.equal(blend_patches(_conv, x, plan), _conv(x))


def test_periodic_longitude_rolling_the_input_rolls_the_output() -> None:
    plan = PatchPlan(20, 48, patch=(8, 16), overlap=(2, 4), periodic_longitude=True)
    step = plan.cols.starts[1] - plan.cols.starts[0]
    assert step == 12
    x = torch.randn(1, 2, 20, 48, dtype=torch.float64)
    out = blend_patches(_conv, x, plan, batch_size=5)
    rolled = blend_patches(_conv, torch.roll(x, step, dims=-1), plan, batch_size=5)
    torch.testing.assert_close(rolled, torch.roll(out, step, dims=-1), rtol=0, atol=1e-13)
    assert not torch.allclose(out, _conv(x))  # zero padding at window edges: fn is truly patch-wise


def test_shapes_not_covered_raise_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="patch height 40 exceeds the domain height 33"):
        PatchPlan(33, 49, patch=(40, 16), overlap=4)
    with pytest.raises(ConfigError, match="patch width 64 exceeds the domain width 49"):
        PatchPlan(33, 49, patch=(16, 64), overlap=4, periodic_longitude=True)
    with pytest.raises(ConfigError, match="overlap width 16: must be smaller than the patch width 16"):
        PatchPlan(33, 49, patch=16, overlap=(4, 16))
    with pytest.raises(ConfigError, match="overlap"):
        PatchPlan(33, 49, patch=16, overlap=-1)
    plan = PatchPlan(33, 49, patch=16, overlap=4)
    with pytest.raises(ConfigError, match=r"spatial shape \(32, 49\), the patch plan covers \(33, 49\)"):
        blend_patches(lambda w: w, torch.zeros(1, 1, 32, 49), plan)
    with pytest.raises(ConfigError, match="fn returned"):
        blend_patches(lambda w: w[:, :, :-1], torch.zeros(1, 1, 33, 49), plan)


def test_per_window_offsets_blend_without_jumps() -> None:
    """f_k(x) = x + c_k: the blended offset y - x is a convex combination of the c_k of the windows covering each
    pixel, and from one pixel to the next it changes by at most (max c - min c) pi / (2 m) (the raised cosine's
    largest slope over the narrowest overlap m), far less than the jumps c_k - c_l of a hard tiling."""
    plan = PatchPlan(36, 60, patch=(16, 20), overlap=(6, 8), periodic_longitude=True)
    height, width = plan.height, plan.width
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    x = torch.randn(1, 1, height, width, dtype=torch.float64)
    inputs = torch.cat([x, rows[None, None], cols[None, None]], dim=1)
    generator = torch.Generator().manual_seed(1)
    table = torch.rand(height, width, generator=generator, dtype=torch.float64) * 10  # c for each window start

    def offset(windows: torch.Tensor) -> torch.Tensor:  # reads each window's start from its coordinate channels
        starts = windows[:, 1:, 0, 0].long()
        return windows[:, :1] + table[starts[:, 0], starts[:, 1]][:, None, None, None]

    blended = blend_patches(offset, inputs, plan, batch_size=4)[0, 0] - x[0, 0]
    offsets = torch.tensor([float(table[r, c]) for r, c in plan.window_starts()], dtype=torch.float64)
    low = torch.full((height * width,), math.inf, dtype=torch.float64)
    high = torch.full((height * width,), -math.inf, dtype=torch.float64)
    for k in range(plan.num_windows):
        index = plan.flat_indices(k).reshape(-1)
        low[index] = torch.minimum(low[index], offsets[k])
        high[index] = torch.maximum(high[index], offsets[k])
    flat = blended.reshape(-1)
    assert torch.all(flat >= low - 1e-12) and torch.all(flat <= high + 1e-12)
    spread = float(offsets.max() - offsets.min())
    narrowest = min(r for axis in (plan.rows, plan.cols) for r in axis.start_ramps if r > 0)
    bound = spread * math.pi / (2 * narrowest)
    jumps = max(
        float((blended[1:] - blended[:-1]).abs().max()),
        float((torch.roll(blended, -1, dims=1) - blended).abs().max()),  # across the periodic seam too
    )
    assert jumps <= bound + 1e-12
    hard = torch.zeros(height, width, dtype=torch.float64)  # a hard tiling: last window wins
    for k in range(plan.num_windows):
        hard.view(-1)[plan.flat_indices(k).reshape(-1)] = offsets[k]
    assert float((hard[1:] - hard[:-1]).abs().max()) > 2 * jumps


def test_patched_denoiser_equals_the_global_pointwise_denoiser() -> None:
    """D(x; sigma) = (x + sigma^2 m) / (1 + sigma^2) + cond (per-pixel Gaussian posterior mean plus a spatial
    conditioning field and a class shift): pointwise, so the patched denoiser equals it on the whole field."""

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, *, cond_fields: torch.Tensor, class_labels: torch.Tensor):
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return (x + s2 * 0.5) / (1 + s2) + cond_fields + class_labels.reshape(-1, 1, 1, 1)

    plan = PatchPlan(24, 40, patch=(12, 16), overlap=(4, 6), periodic_longitude=True)
    x = torch.randn(3, 2, 24, 40, dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)
    cond = {"cond_fields": torch.randn(3, 2, 24, 40, dtype=torch.float64), "class_labels": torch.arange(3.0).double()}
    patched = PatchedDenoiser(denoiser, plan, batch_size=3)(x, sigma, **cond)
    torch.testing.assert_close(patched, denoiser(x, sigma, **cond), rtol=0, atol=1e-13)


def test_many_overlapping_windows_are_normalised() -> None:
    """Stride 2 with 10-pixel patches: up to five windows overlap per axis, the raw weights no longer sum to one,
    and the weighted mean still reproduces pointwise maps."""
    plan = PatchPlan(20, 22, patch=10, overlap=8, periodic_longitude=True)
    assert len(plan.rows.starts) == 6 and len(plan.cols.starts) == 11
    assert not torch.allclose(plan.weight_sum(), torch.ones(20, 22, dtype=torch.float64))
    x = torch.randn(2, 1, 20, 22, dtype=torch.float64)
    torch.testing.assert_close(blend_patches(lambda w: w * w - 3, x, plan, 7), x * x - 3, rtol=0, atol=1e-13)
