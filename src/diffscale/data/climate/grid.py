"""Grid operations between a fine latitude-longitude grid and its coarsening by an integer factor f.

Coarsening (the low-resolution input built from high-resolution data) is the area-weighted block mean: on a
regular latitude-longitude grid the area of a cell is proportional to cos(phi) (phi its latitude), so the
coarse value of the block B (f x f fine cells) is

    X_B = sum_{(i, j) in B} cos(phi_i) x_ij / sum_{(i, j) in B} cos(phi_i).

The coarse cell's centre is the plain mean of its fine centres (so for a regular grid with spacing d the
fine centres of coarse centre c are c + (k - (f - 1) / 2) d / f, k = 0..f-1: :func:`fine_coordinates`).

Upsampling back to the fine grid places the fine index i at the coarse position (i + 1/2) / f - 1/2 (the
convention of ``torch.nn.functional.interpolate(align_corners=False)``): exactly the block geometry above. A
global grid is periodic in longitude: the interpolation then wraps round, so the date-line seam is smooth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, overload

import numpy as np
import torch
import xarray as xr

from diffscale.validation import ConfigError

__all__ = [
    "area_weights",
    "block_centres",
    "check_divisible",
    "check_factor",
    "coarsen",
    "fine_coordinates",
    "grid_spacing",
    "interpolation_matrix",
    "is_global_longitude",
    "select_grid",
    "upsample",
]

XrT = TypeVar("XrT", xr.Dataset, xr.DataArray)


@overload
def area_weights(latitude: torch.Tensor) -> torch.Tensor: ...
@overload
def area_weights(latitude: np.ndarray | Sequence[float] | xr.DataArray) -> np.ndarray: ...
def area_weights(latitude):
    """cos(phi) for latitudes phi in degrees (proportional to the area of a cell of a regular lat-lon grid).

    A tensor gives a tensor (same device and dtype), anything else a float64 numpy array.
    """
    if isinstance(latitude, torch.Tensor):
        return torch.cos(torch.deg2rad(latitude))
    return np.cos(np.deg2rad(np.asarray(latitude, dtype=np.float64)))


def check_divisible(height: int, width: int, factor: int, what: str = "grid") -> None:
    """ConfigError unless the factor f is an integer >= 1 that divides H and W (naming the crop that would fit)."""
    if not isinstance(factor, int | np.integer) or isinstance(factor, bool) or factor < 1:
        raise ConfigError(f"coarsen factor = {factor!r}: must be an integer >= 1")
    if height % factor or width % factor:
        raise ConfigError(
            f"the {what} of {height} x {width} (latitude x longitude) is not divisible by the coarsen factor {factor}; "
            f"crop it to {height - height % factor} x {width - width % factor} (data.crop)"
        )


def block_centres(values: np.ndarray | Sequence[float], factor: int) -> np.ndarray:
    """Coarse coordinates of blocks of ``factor`` consecutive fine coordinates: each the mean of its block."""
    values = np.asarray(values, dtype=np.float64)
    if values.size % factor:
        raise ConfigError(f"{values.size} grid points are not divisible by the coarsen factor {factor}")
    return values.reshape(-1, factor).mean(axis=1)


def _coarsen_array(data: XrT, factor: int) -> XrT:
    latitude = data["latitude"]
    weights = xr.DataArray(area_weights(latitude.values), dims="latitude", coords={"latitude": latitude})
    block = {"latitude": factor, "longitude": factor}
    numerator = (data * weights).coarsen(block, boundary="exact").sum()
    denominator = weights.coarsen(latitude=factor, boundary="exact").sum() * factor
    out = numerator / denominator
    return out.astype(data.dtype) if data.dtype.kind == "f" else out


@overload
def coarsen(data: torch.Tensor, factor: int, latitude: torch.Tensor | None = None) -> torch.Tensor: ...
@overload
def coarsen(data: XrT, factor: int, latitude: None = None) -> XrT: ...
def coarsen(data, factor, latitude=None):
    """Area-weighted f x f block mean (see the module docstring).

    Args:
        data: an xarray Dataset/DataArray with ``latitude`` and ``longitude`` dimensions (harmonised; variables
            without both are left out), or a tensor (..., H, W).
        factor: f, which must divide H and W.
        latitude: for a tensor, the latitudes (H,) of its rows in degrees; None weights every row equally
            (a Cartesian grid). Ignored for xarray input (its own coordinate is used).

    Returns:
        The coarse field (..., H / f, W / f); for xarray input with coordinates the block means of the fine ones,
        floating dtypes kept.

    Raises:
        ConfigError: H or W is not divisible by f.
    """
    if isinstance(data, torch.Tensor):
        *lead, height, width = data.shape
        check_divisible(height, width, factor)
        if latitude is None:
            weights = torch.ones(height, dtype=data.dtype, device=data.device)
        else:
            if latitude.shape != (height,):
                raise ValueError(f"latitude has shape {tuple(latitude.shape)}, the field {height} rows")
            weights = area_weights(latitude.to(device=data.device, dtype=torch.float64)).to(data.dtype)
        blocks = (data * weights[:, None]).reshape(*lead, height // factor, factor, width // factor, factor)
        numerator = blocks.sum(dim=(-3, -1))
        denominator = weights.reshape(height // factor, factor).sum(dim=-1)[:, None] * factor
        return numerator / denominator
    if not isinstance(data, xr.Dataset | xr.DataArray):
        raise TypeError(f"coarsen takes a tensor or an xarray Dataset/DataArray, got {type(data).__name__}")
    check_divisible(data.sizes["latitude"], data.sizes["longitude"], factor)
    if isinstance(data, xr.DataArray):
        return _coarsen_array(data, factor)
    gridded = [name for name, var in data.data_vars.items() if {"latitude", "longitude"} <= set(var.dims)]
    out = xr.Dataset({name: _coarsen_array(data[name], factor) for name in gridded})
    for name in gridded:
        out[name].attrs = dict(data[name].attrs)
    out.attrs = dict(data.attrs)
    return out


def grid_spacing(values: np.ndarray | Sequence[float], what: str = "coordinate") -> float:
    """The constant step of an evenly spaced coordinate; ConfigError when it is not evenly spaced."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise ConfigError(f"{what} has {values.size} point(s); a grid spacing needs at least 2")
    steps = np.diff(values)
    spacing = float(np.median(steps))
    if spacing == 0 or np.max(np.abs(steps - spacing)) > 1e-4 * abs(spacing):
        raise ConfigError(f"{what} is not evenly spaced (steps from {steps.min():g} to {steps.max():g})")
    return spacing


def fine_coordinates(
    coarse_latitude: np.ndarray | Sequence[float], coarse_longitude: np.ndarray | Sequence[float], factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fine grid whose f x f block centres are the given coarse coordinates (inverse of coarsening's
    coordinates): c + (k - (f - 1) / 2) d / f for each coarse centre c, coarse spacing d, k = 0..f-1.

    Raises:
        ConfigError: a coordinate has fewer than 2 points or is not evenly spaced.
    """
    out = []
    for values, what in ((coarse_latitude, "coarse latitude"), (coarse_longitude, "coarse longitude")):
        values = np.asarray(values, dtype=np.float64)
        if factor == 1:
            out.append(values.copy())
            continue
        step = grid_spacing(values, what) / factor
        offsets = (np.arange(factor) - (factor - 1) / 2) * step
        out.append((values[:, None] + offsets[None, :]).reshape(-1))
    return out[0], out[1]


def is_global_longitude(longitude: np.ndarray | Sequence[float]) -> bool:
    """Whether evenly spaced longitudes go once round the globe (n d = 360 degrees within half a step)."""
    longitude = np.asarray(longitude, dtype=np.float64)
    if longitude.size < 2:
        return False
    try:
        spacing = abs(grid_spacing(longitude, "longitude"))
    except ConfigError:
        return False
    return abs(spacing * longitude.size - 360.0) < 0.5 * spacing


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution weights (a = -1/2) of the taps k-1, k, k+1, k+2 at fraction t = p - k."""
    t2, t3 = t * t, t * t * t
    return np.stack(
        [(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2, (-3 * t3 + 4 * t2 + t) / 2, (t3 - t2) / 2], axis=-1
    )


def interpolation_matrix(size: int, factor: int, mode: str = "bilinear", periodic: bool = False) -> np.ndarray:
    """M (f n, n) with fine = M coarse along one axis (float64; see :func:`upsample`)."""
    position = (np.arange(size * factor) + 0.5) / factor - 0.5  # coarse position of each fine point
    base = np.floor(position).astype(np.int64)
    t = position - base
    if mode == "bilinear":
        offsets, weights = np.array([0, 1]), np.stack([1 - t, t], axis=-1)
    elif mode == "bicubic":
        offsets, weights = np.array([-1, 0, 1, 2]), _cubic_weights(t)
    else:
        raise ValueError(f"upsample mode = {mode!r}: allowed: bilinear, bicubic")
    taps = base[:, None] + offsets[None, :]
    taps = taps % size if periodic else np.clip(taps, 0, size - 1)
    matrix = np.zeros((size * factor, size))
    np.add.at(matrix, (np.repeat(np.arange(size * factor), offsets.size), taps.reshape(-1)), weights.reshape(-1))
    return matrix


def upsample(
    field: torch.Tensor,
    factor: int,
    mode: Literal["bilinear", "bicubic"] = "bilinear",
    periodic_longitude: bool = False,
) -> torch.Tensor:
    """A coarse field (..., h, w) interpolated to the fine grid (..., f h, f w) of the block geometry.

    Separable interpolation, fine = M_h coarse M_w^T: fine index i sits at coarse position p = (i + 1/2) / f - 1/2
    (the convention of ``torch.nn.functional.interpolate(align_corners=False)``; the bilinear result equals it),
    k = floor(p), t = p - k, and

    * ``bilinear``: (1 - t) x_k + t x_{k+1};
    * ``bicubic``: Keys' cubic convolution with a = -1/2 (IEEE TASSP 29(6), 1981, Eq. 15), which reproduces
      quadratics exactly (torch's own bicubic uses a = -3/4 and does not even reproduce a linear field).

    Taps beyond the outermost coarse centres take the edge value (the field is held constant there), except
    in longitude when ``periodic_longitude``: then the taps wrap round (a global grid's date-line seam). The
    result has the input's floating dtype (float32 for integer input) and device.
    """
    if field.ndim < 2:
        raise ValueError(f"upsample needs a field (..., h, w), got shape {tuple(field.shape)}")
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"upsample mode = {mode!r}: allowed: bilinear, bicubic")
    x = field if field.is_floating_point() else field.float()
    if factor == 1:
        return x.clone()
    height, width = x.shape[-2:]
    rows = torch.as_tensor(interpolation_matrix(height, factor, mode), dtype=x.dtype, device=x.device)
    cols = torch.as_tensor(
        interpolation_matrix(width, factor, mode, periodic=periodic_longitude), dtype=x.dtype, device=x.device
    )
    return rows @ x @ cols.T


def check_factor(coarse: xr.Dataset | xr.DataArray, fine: xr.Dataset | xr.DataArray, factor: int) -> None:
    """Check that ``coarse`` is the f x f block coarsening of the ``fine`` grid: sizes (H / f, W / f) and
    coordinates equal to the fine block centres (within 1 % of a fine step).

    Raises:
        ConfigError: naming the sizes or the first coordinate that does not match.
    """
    fine_shape = (fine.sizes["latitude"], fine.sizes["longitude"])
    coarse_shape = (coarse.sizes["latitude"], coarse.sizes["longitude"])
    check_divisible(*fine_shape, factor, what="fine grid")
    expected_shape = (fine_shape[0] // factor, fine_shape[1] // factor)
    if coarse_shape != expected_shape:
        raise ConfigError(
            f"the coarse grid {coarse_shape[0]} x {coarse_shape[1]} is not the fine grid "
            f"{fine_shape[0]} x {fine_shape[1]} coarsened by {factor} (expected {expected_shape[0]} x "
            f"{expected_shape[1]}; the factor would be {fine_shape[0] / max(coarse_shape[0], 1):g} in latitude)"
        )
    for axis in ("latitude", "longitude"):
        fine_values = fine[axis].values.astype(np.float64)
        expected = block_centres(fine_values, factor)
        given = coarse[axis].values.astype(np.float64)
        step = abs(float(np.median(np.diff(fine_values)))) if fine_values.size > 1 else 1.0
        wrapped = (given - expected + 180.0) % 360.0 - 180.0 if axis == "longitude" else given - expected
        bad = np.flatnonzero(np.abs(wrapped) > 0.01 * step)
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"coarse {axis} {given[i]:g} (index {i}) is not the centre {expected[i]:g} of the fine block "
                f"{i * factor}..{(i + 1) * factor - 1}: the coarse grid is not the fine grid coarsened by {factor}"
            )


def _matching_indices(available: np.ndarray, wanted: np.ndarray, tolerance: float, longitude: bool) -> np.ndarray:
    """Index into ``available`` of each ``wanted`` coordinate, or -1 where none is within ``tolerance``."""
    if longitude:  # compare in the convention of ``available``: [-180, 180) or [0, 360)
        wanted = (wanted + 180.0) % 360.0 - 180.0 if available.min() < 0 else wanted % 360.0
    order = np.argsort(available)
    sorted_values = available[order]
    position = np.clip(np.searchsorted(sorted_values, wanted), 1, max(sorted_values.size - 1, 1))
    left = sorted_values[position - 1]
    right = sorted_values[np.minimum(position, sorted_values.size - 1)]
    nearest = np.where(np.abs(wanted - left) <= np.abs(wanted - right), position - 1, position)
    nearest = np.minimum(nearest, sorted_values.size - 1)
    index = order[nearest]
    distance = np.abs(available[index] - wanted)
    if longitude:
        distance = np.minimum(distance, 360.0 - distance)
    return np.where(distance <= tolerance, index, -1)


def select_grid(
    data: XrT, latitude: np.ndarray | Sequence[float], longitude: np.ndarray | Sequence[float], what: str
) -> XrT:
    """The points of ``data`` (harmonised) at the given latitudes and longitudes, matched by coordinate
    (longitude modulo 360) within 1 % of the target grid's step, e.g. a global orography on a regional grid.

    Raises:
        ConfigError: some coordinate has no match; the message names ``what`` and the nearest value there is.
    """
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.asarray(longitude, dtype=np.float64)
    selection = {}
    for axis, wanted in (("latitude", latitude), ("longitude", longitude)):
        available = data[axis].values.astype(np.float64)
        step = abs(float(np.median(np.diff(wanted)))) if wanted.size > 1 else 1e-3
        index = _matching_indices(available, wanted, 0.01 * step, longitude=axis == "longitude")
        if (index < 0).any():
            i = int(np.flatnonzero(index < 0)[0])
            nearest = available[np.argmin(np.abs(available - wanted[i]))]
            raise ConfigError(
                f"{what} does not line up with the grid: no {axis} within {0.01 * step:g} of {wanted[i]:g} "
                f"(nearest {nearest:g}; its {axis} runs {available.min():g} .. {available.max():g})"
            )
        selection[axis] = index
    out = data.isel(selection)
    return out.assign_coords(latitude=latitude, longitude=longitude)
