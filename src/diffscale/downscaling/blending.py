"""Overlapping patches blended without seams: a network trained on ph x pw patches applied to a larger domain.

A :class:`PatchPlan` tiles an H x W grid with windows of ph x pw pixels whose neighbours overlap by at least
(oh, ow) pixels. Along a non-periodic axis of length L the n = 1 + ceil((L - p) / (p - o)) window starts are spread
evenly from 0 to L - p (the first window flush with one edge, the last with the other); along a periodic longitude
the n = ceil(W / (pw - ow)) starts round(k W / n) wrap around (indices mod W), so the globe and a region share one
code path. Consecutive starts differ by at most p - o, so every overlap is at least o.

Blending. Each window k carries the separable weight w_k(i, j) = a_k(i) b_k(j): 1 inside, and over an overlap of
m pixels with a neighbour the raised-cosine ramp

    up(q) = sin^2(pi (q + 1/2) / (2 m)),    down(q) = cos^2(pi (q + 1/2) / (2 m)),    q = 0 .. m-1,

rising at the window's start edge and falling at its end edge (edges on a non-periodic domain boundary are not
ramped). Where only two windows overlap, up + down = 1, so the weights form a partition of unity; everywhere the
blended field is the weighted mean

    y(i, j) = sum_k w_k(i, j) f_k(i, j) / sum_k w_k(i, j),

a convex combination of the windows' outputs whose weights change by at most pi / (2 m) from one pixel to the next
(|d up / dq| <= pi / (2 m)): no seams. A pointwise f gives back f of the whole field.

Diffusion sampling: apply the denoiser patch-wise at every solver step and blend, so one global sample results::

    denoiser = PatchedDenoiser(model, PatchPlan(H, W, patch=(64, 64), overlap=(16, 16), periodic_longitude=True))
    x = diffscale.sample(denoiser, noise, formulation, steps=18)   # noise (B, C, H, W) of the whole domain

Each step evaluates D(x; sigma) on every window of the current global x (spatial conditioning such as
``cond_fields`` windowed alike) and blends the windows' denoised estimates into one global D; the solver's update
then moves the whole field, so windows agree more with each step (as in MultiDiffusion, Bar-Tal et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffscale.validation import ConfigError

__all__ = ["PatchPlan", "PatchedDenoiser", "blend_patches", "raised_cosine_ramp"]


def raised_cosine_ramp(length: int, *, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
    """up(q) = sin^2(pi (q + 1/2) / (2 length)) for q = 0 .. length-1 (rising, in (0, 1); the falling ramp
    down = 1 - up is its reverse)."""
    q = torch.arange(length, dtype=dtype, device=device)
    return torch.sin(math.pi * (q + 0.5) / (2 * length)) ** 2


def _pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    ):
        raise ConfigError(f"{name} = {value!r}: must be an integer or a pair of integers >= {minimum}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class _Axis:
    """The windows along one axis: their starts, and the overlap (ramp length) at each window's two edges."""

    length: int
    patch: int
    starts: tuple[int, ...]
    start_ramps: tuple[int, ...]
    end_ramps: tuple[int, ...]
    periodic: bool

    @classmethod
    def build(cls, name: str, length: int, patch: int, overlap: int, periodic: bool) -> _Axis:
        if patch > length:
            raise ConfigError(f"patch {name} {patch} exceeds the domain {name} {length}: the patches cannot cover it")
        if patch < length and overlap >= patch:
            raise ConfigError(f"overlap {name} {overlap}: must be smaller than the patch {name} {patch}")
        stride = patch - overlap
        if patch == length:
            starts: list[int] = [0]
        elif periodic:
            count = math.ceil(length / stride)
            starts = [round(k * length / count) for k in range(count)]
        else:
            count = 1 + math.ceil((length - patch) / stride)
            starts = [round(k * (length - patch) / (count - 1)) for k in range(count)]
        count = len(starts)
        if count == 1:
            return cls(length, patch, (0,), (0,), (0,), periodic)
        start_ramps, end_ramps = [0] * count, [0] * count
        for k in range(count):
            if k + 1 < count:
                shared = starts[k] + patch - starts[k + 1]
            elif periodic:
                shared = starts[k] + patch - (starts[0] + length)
            else:
                continue
            shared = max(shared, 0)
            end_ramps[k] = shared
            start_ramps[(k + 1) % count] = shared
        return cls(length, patch, tuple(starts), tuple(start_ramps), tuple(end_ramps), periodic)

    def indices(self, k: int, device: Any) -> torch.Tensor:
        """The (wrapped) grid indices of window k."""
        return (self.starts[k] + torch.arange(self.patch, device=device)) % self.length

    def weight(self, k: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
        """a_k: 1 inside, up over the start overlap, down over the end overlap (their product where they meet)."""
        weight = torch.ones(self.patch, dtype=dtype, device=device)
        start, end = min(self.start_ramps[k], self.patch), min(self.end_ramps[k], self.patch)
        if start:
            weight[:start] *= raised_cosine_ramp(start, dtype=dtype, device=device)
        if end:
            weight[self.patch - end :] *= raised_cosine_ramp(end, dtype=dtype, device=device).flip(0)
        return weight


class PatchPlan:
    """Overlapping ph x pw windows over an H x W grid (rows = latitude, columns = longitude).

    Args:
        height, width: the domain (H, W).
        patch: (ph, pw) (or one integer for both), at most (H, W).
        overlap: the least overlap (oh, ow) of neighbouring windows, 0 <= o < p.
        periodic_longitude: columns wrap around (a global grid); windows then cross the W -> 0 edge.

    Windows are numbered row-major: k = r * n_cols + c.
    """

    def __init__(
        self,
        height: int,
        width: int,
        patch: int | tuple[int, int],
        overlap: int | tuple[int, int] = 0,
        periodic_longitude: bool = False,
    ) -> None:
        self.height, self.width = _pair("domain", (height, width), 1)
        self.patch = _pair("patch", patch, 1)
        self.overlap = _pair("overlap", overlap, 0)
        self.periodic_longitude = bool(periodic_longitude)
        self.rows = _Axis.build("height", self.height, self.patch[0], self.overlap[0], periodic=False)
        self.cols = _Axis.build("width", self.width, self.patch[1], self.overlap[1], periodic=self.periodic_longitude)

    @property
    def num_windows(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def window_starts(self) -> list[tuple[int, int]]:
        """(row start, column start) of every window, row-major."""
        return [(r, c) for r in self.rows.starts for c in self.cols.starts]

    def window_indices(self, k: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and (wrapped) column indices of window k: x[..., rows[:, None], cols[None, :]] is the window."""
        r, c = divmod(k, len(self.cols.starts))
        return self.rows.indices(r, device), self.cols.indices(c, device)

    def window_weight(self, k: int, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
        """w_k = a_k(i) b_k(j), shape (ph, pw): the raw (unnormalised) blending weight of window k."""
        r, c = divmod(k, len(self.cols.starts))
        return self.rows.weight(r, dtype, device)[:, None] * self.cols.weight(c, dtype, device)[None, :]

    def weight_sum(self, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
        """sum_k w_k over the domain (H, W); 1 wherever at most two windows overlap along each axis."""
        total = torch.zeros(self.height * self.width, dtype=dtype, device=device)
        for k in range(self.num_windows):
            total.index_add_(
                0, self.flat_indices(k, device).reshape(-1), self.window_weight(k, dtype, device).reshape(-1)
            )
        return total.reshape(self.height, self.width)

    def flat_indices(self, k: int, device: Any = None) -> torch.Tensor:
        """Indices i W + j of window k's pixels in the flattened (H W) grid, shape (ph, pw)."""
        rows, cols = self.window_indices(k, device)
        return rows[:, None] * self.width + cols[None, :]

    def __repr__(self) -> str:
        return (
            f"PatchPlan(height={self.height}, width={self.width}, patch={self.patch}, overlap={self.overlap}, "
            f"periodic_longitude={self.periodic_longitude}, windows={len(self.rows.starts)}x{len(self.cols.starts)})"
        )


def _check_inputs(inputs: Sequence[torch.Tensor], plan: PatchPlan) -> int:
    batch = None
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
            raise ConfigError(f"blend_patches: input {position} must be a tensor (B, C, H, W)")
        if tuple(tensor.shape[-2:]) != (plan.height, plan.width):
            raise ConfigError(
                f"blend_patches: input {position} has spatial shape {tuple(tensor.shape[-2:])}, "
                f"the patch plan covers {(plan.height, plan.width)}"
            )
        if batch is not None and tensor.shape[0] != batch:
            raise ConfigError(f"blend_patches: input {position} has batch {tensor.shape[0]}, input 0 has {batch}")
        batch = tensor.shape[0]
    if batch is None:
        raise ConfigError("blend_patches: no inputs")
    return batch


def blend_patches(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    plan: PatchPlan,
    batch_size: int = 16,
) -> torch.Tensor:
    """y = sum_k w_k f(window_k(inputs)) / sum_k w_k over the plan's windows (see the module docstring).

    Args:
        fn: maps windows to outputs: ``fn(*windows) -> (n B, C_out, ph, pw)`` where each of ``windows`` is one
            input cut to n windows, stacked window-major (rows [k B, (k + 1) B) are window k of the batch).
        inputs: a tensor (B, C, H, W) or several (B, C_i, H, W) (e.g. x and conditioning fields).
        plan: the windows.
        batch_size: at most this many windows (each with the whole batch) per call of ``fn``.

    Returns: (B, C_out, H, W) on the inputs' device, in the dtype of ``fn``'s output. With one window covering the
    domain (patch = domain), ``fn(*inputs)`` itself.
    """
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    batch = _check_inputs(tensors, plan)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r}: must be a positive integer")
    if plan.num_windows == 1:  # patch = domain: the identity path
        output = fn(*tensors)
        _check_output(output, batch, 1, (plan.height, plan.width))
        return output
    device = tensors[0].device
    total = None
    accumulated: torch.Tensor | None = None
    for first in range(0, plan.num_windows, batch_size):
        windows = range(first, min(first + batch_size, plan.num_windows))
        index = [plan.window_indices(k, device) for k in windows]
        cut = [
            torch.cat([tensor[:, :, rows[:, None], cols[None, :]] for rows, cols in index], dim=0) for tensor in tensors
        ]
        output = fn(*cut)
        _check_output(output, batch, len(windows), plan.patch)
        if accumulated is None:
            accumulated = torch.zeros(
                batch, output.shape[1], plan.height * plan.width, dtype=output.dtype, device=output.device
            )
            total = plan.weight_sum(output.dtype, output.device).reshape(-1)
        for position, k in enumerate(windows):
            weight = plan.window_weight(k, output.dtype, output.device)
            contribution = (output[position * batch : (position + 1) * batch] * weight).reshape(
                batch, output.shape[1], -1
            )
            accumulated.index_add_(2, plan.flat_indices(k, output.device).reshape(-1), contribution)
    assert accumulated is not None and total is not None
    return (accumulated / total).reshape(batch, -1, plan.height, plan.width)


def _check_output(output: Any, batch: int, windows: int, patch: tuple[int, int]) -> None:
    if (
        not isinstance(output, torch.Tensor)
        or output.ndim != 4
        or output.shape[0] != batch * windows
        or tuple(output.shape[-2:]) != patch
    ):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            f"blend_patches: fn returned {shape}, expected ({batch * windows}, C, {patch[0]}, {patch[1]})"
        )


class PatchedDenoiser:
    """D(x; sigma, cond) of a whole domain from a denoiser of patches: the windows' D blended by
    :func:`blend_patches` at every call (so at every solver step; see the module docstring).

    Conditioning: tensors of shape (B, K, H, W) (``cond_fields``) are windowed like x; other tensors with a
    leading batch dimension B (``class_labels``) and sigma (B,) are repeated for every window; anything else is
    passed unchanged.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], plan: PatchPlan, batch_size: int = 16) -> None:
        self.denoiser = denoiser
        self.plan = plan
        self.batch_size = batch_size

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        batch = x.shape[0]
        spatial = {
            name: value
            for name, value in cond.items()
            if isinstance(value, torch.Tensor)
            and value.ndim == 4
            and value.shape[0] == batch
            and tuple(value.shape[-2:]) == (self.plan.height, self.plan.width)
        }
        names = list(spatial)

        def per_window(x_windows: torch.Tensor, *cond_windows: torch.Tensor) -> torch.Tensor:
            repeats = x_windows.shape[0] // batch
            window_cond = {
                name: value.repeat(repeats, *([1] * (value.ndim - 1)))
                if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch
                else value
                for name, value in cond.items()
                if name not in spatial
            }
            window_cond.update(zip(names, cond_windows, strict=True))
            sigma_ = torch.as_tensor(sigma, device=x_windows.device)
            sigma_ = sigma_.repeat(repeats) if sigma_.ndim == 1 and sigma_.shape[0] == batch else sigma_
            return self.denoiser(x_windows, sigma_, **window_cond)

        return blend_patches(per_window, (x, *spatial.values()), self.plan, batch_size=self.batch_size)
