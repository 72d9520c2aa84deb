"""Grid operations between a fine latitude-longitude grid and its coarsening by an integer factor f.

Coarsening (the low-resolution input built from high-resolution data) is the area-weighted block mean: on a
regular latitude-longitude grid the area of a cell is proportional to cos(phi) (phi its latitude), so the
coarse value of the block B (f x f fine cells) is

    X_B = sum_{(i, j) in B} w_i x_ij / sum_{(i, j) in B} w_i,    w_i = cos(phi_i).

The coarse cell's centre is the plain mean of its fine centres (so for a regular grid with spacing d the
fine centres of coarse centre c are c + (k - (f - 1) / 2) d / f, k = 0..f-1: :func:`fine_coordinates`). For
odd f the middle fine centre (k = (f - 1) / 2) is the coarse centre itself.

Upsampling back to the fine grid places the fine index i at the coarse position (i + 1/2) / f - 1/2 (the
convention of ``torch.nn.functional.interpolate(align_corners=False)``): exactly the block geometry above. A
global grid is periodic in longitude: the interpolation then wraps round, so the date-line seam is smooth.

Any integer f >= 1 works. A grid whose size is not a multiple of f is trimmed (:func:`trim_to_factor`): of the
r = n mod f surplus rows (columns) ceil(r / 2) are dropped at the start of the harmonised axis (south, west) and
floor(r / 2) at its end (north, east), so the kept domain stays centred; a global 181-row grid (both poles)
loses its south-pole row for f = 2, 3, 4, 5, 10 and the rows -90, -89, -88 and 89, 90 for f = 8. A global
longitude axis is never trimmed (it would lose its wrap-around): f must divide its number of columns (360 at 1
degree: 2, 3, 4, 5, 6, 8, 9, 10, 12, ...), unless periodic_longitude is set false.

Near the poles:

* w_i = cos(phi_i) is exactly 0 on a row at phi = +-90 (:func:`area_weights` snaps it; cos(pi / 2) is 6e-17 in
  floating point): a pole row is a single point repeated along longitude and has no area, so it does not
  contribute to its block's mean, and the evaluation scores give it no weight. A block always holds f rows
  and a grid at most one row per pole, so for f >= 2 every block has rows of positive weight; for f = 1 a pole
  row is its own block and keeps its values (a block whose weights are all 0 takes the plain mean, the limit
  of the weighted mean when its rows approach one latitude).
* Upsampling is held constant in latitude beyond the outermost coarse centres (the fine rows between the
  last coarse centre and the pole take the edge block's value); there is no interpolation across a pole
  (it would join longitudes lambda and lambda + 180). Longitude wraps round on a global grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch
import xarray as xr

from diffscale.validation import ConfigError

__all__ = [
    "POLE_TOLERANCE_DEG",
    "REMAINDER_RULES",
    "GridTrim",
    "area_weights",
    "block_centres",
    "block_mean",
    "check_divisible",
    "check_factor",
    "coarsen",
    "fine_coordinates",
    "grid_indices",
    "grid_spacing",
    "interpolate_taps",
    "interpolation_matrix",
    "interpolation_taps",
    "is_global_longitude",
    "select_grid",
    "trim_to_factor",
    "upsample",
]

XrT = TypeVar("XrT", xr.Dataset, xr.DataArray)

POLE_TOLERANCE_DEG = 1e-6
"""A row within this many degrees of +-90 is a pole row: its area weight is exactly 0."""

REMAINDER_RULES: tuple[str, ...] = ("trim", "error", "keep")
"""What to do with a fine grid whose size is not a multiple of the factor (``data.remainder``)."""


@overload
def area_weights(latitude: torch.Tensor) -> torch.Tensor: ...
@overload
def area_weights(latitude: np.ndarray | Sequence[float] | xr.DataArray) -> np.ndarray: ...
def area_weights(latitude):
    """cos(phi) for latitudes phi in degrees (proportional to the area of a cell of a regular lat-lon grid),
    exactly 0 within :data:`POLE_TOLERANCE_DEG` of a pole (and beyond it: never negative).

    A tensor gives a tensor (same device and dtype), anything else a float64 numpy array.
    """
    if isinstance(latitude, torch.Tensor):
        weights = torch.cos(torch.deg2rad(latitude))
        pole = latitude.abs() >= 90.0 - POLE_TOLERANCE_DEG
        return torch.where(pole, torch.zeros_like(weights), weights)
    latitude = np.asarray(latitude, dtype=np.float64)
    weights = np.cos(np.deg2rad(latitude))
    return np.where(np.abs(latitude) >= 90.0 - POLE_TOLERANCE_DEG, 0.0, weights)


def _check_factor_value(factor: int) -> None:
    if not isinstance(factor, int | np.integer) or isinstance(factor, bool) or factor < 1:
        raise ConfigError(f"coarsen factor = {factor!r}: must be an integer >= 1")


def check_divisible(height: int, width: int, factor: int, what: str = "grid", hint: str = "data.crop") -> None:
    """ConfigError unless the factor f is an integer >= 1 that divides H and W (naming the crop that would fit
    and ``hint``, the setting that makes it fit)."""
    _check_factor_value(factor)
    if height % factor or width % factor:
        raise ConfigError(
            f"the {what} of {height} x {width} (latitude x longitude) is not divisible by the coarsen factor {factor}; "
            f"crop it to {height - height % factor} x {width - width % factor} ({hint})"
        )


def _divisors(count: int, up_to: int = 12) -> list[int]:
    return [d for d in range(2, min(count, up_to) + 1) if count % d == 0]


def _format_values(values: Sequence[float]) -> str:
    return ", ".join(f"{value:g}" for value in values)


@dataclass(frozen=True)
class GridTrim:
    """What :func:`trim_to_factor` dropped from a fine grid of ``original_shape`` (H, W) so that the coarsen
    factor divides it: the coordinates of the rows (latitudes) and columns (longitudes) dropped at the start
    (south, west) and at the end (north, east) of the harmonised axes. The kept grid is the model's grid."""

    factor: int
    original_shape: tuple[int, int]
    latitude_start: tuple[float, ...] = ()
    latitude_end: tuple[float, ...] = ()
    longitude_start: tuple[float, ...] = ()
    longitude_end: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the kept grid."""
        height, width = self.original_shape
        return (
            height - len(self.latitude_start) - len(self.latitude_end),
            width - len(self.longitude_start) - len(self.longitude_end),
        )

    @property
    def dropped(self) -> bool:
        """Whether anything was dropped."""
        return self.shape != self.original_shape

    def describe(self) -> str:
        """One line: what was dropped and why, e.g. ``dropped 1 row at latitude -90 (south) so that the coarsen
        factor 4 divides the fine grid: 181 x 360 -> 180 x 360``."""
        if not self.dropped:
            return (
                f"the coarsen factor {self.factor} divides the fine grid {self.original_shape[0]} x "
                f"{self.original_shape[1]}: nothing dropped"
            )
        parts = []
        for noun, axis, start, end, first, last in (
            ("row", "latitude", self.latitude_start, self.latitude_end, "south", "north"),
            ("column", "longitude", self.longitude_start, self.longitude_end, "west", "east"),
        ):
            for values, side in ((start, first), (end, last)):
                if values:
                    plural = "" if len(values) == 1 else "s"
                    parts.append(f"{len(values)} {noun}{plural} at {axis} {_format_values(values)} ({side})")
        (height, width), (kept_h, kept_w) = self.original_shape, self.shape
        return (
            f"dropped {' and '.join(parts)} so that the coarsen factor {self.factor} divides the fine grid: "
            f"{height} x {width} -> {kept_h} x {kept_w}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (for a run's statistics file)."""
        return {
            "rule": "trim",
            "factor": self.factor,
            "original_shape": list(self.original_shape),
            "shape": list(self.shape),
            "dropped_latitude": {"south": list(self.latitude_start), "north": list(self.latitude_end)},
            "dropped_longitude": {"west": list(self.longitude_start), "east": list(self.longitude_end)},
        }


def trim_to_factor(
    data: XrT,
    factor: int,
    remainder: str = "trim",
    periodic_longitude: bool | None = None,
    what: str = "fine grid",
) -> tuple[XrT, GridTrim]:
    """``data`` (harmonised: latitude and longitude ascending) cut to a multiple of the coarsen factor f.

    Rule (``remainder: trim``): of the r = n mod f surplus points of an axis, ceil(r / 2) are dropped at its
    start (south, west) and floor(r / 2) at its end (north, east), keeping the domain centred; a 181-row global
    grid loses its south-pole row for f = 4. A periodic longitude axis (``periodic_longitude``, or when None a
    global one) is never trimmed: f must divide it (``periodic_longitude=False`` trims it like any other).
    Nothing is padded (padding would invent fine values that the model would learn as truth).
    ``remainder: error`` refuses any surplus instead; ``remainder: keep`` keeps the grid whole (for training on
    windows coarsened on their own, ``data.random_windows``, which are whole blocks wherever they sit).

    Returns:
        The trimmed data (lazy arrays stay lazy) and what was dropped (:class:`GridTrim`).

    Raises:
        ConfigError: f is not an integer >= 1, the grid is smaller than f, ``remainder`` is ``error`` and f does
            not divide the grid, or f does not divide a periodic longitude axis.
    """
    _check_factor_value(factor)
    if remainder not in REMAINDER_RULES:
        raise ConfigError(f"data.remainder = {remainder!r}: allowed: {', '.join(REMAINDER_RULES)}")
    height, width = data.sizes["latitude"], data.sizes["longitude"]
    if height < factor or width < factor:
        raise ConfigError(
            f"the {what} of {height} x {width} (latitude x longitude) is smaller than the coarsen factor {factor}"
        )
    if remainder == "keep":
        return data, GridTrim(factor=factor, original_shape=(height, width))
    extra_rows, extra_columns = height % factor, width % factor
    if remainder == "error":
        check_divisible(height, width, factor, what, hint="data.crop, or data.remainder: trim")
    longitude = data["longitude"].values
    periodic = is_global_longitude(longitude) if periodic_longitude is None else periodic_longitude
    if extra_columns and periodic:
        fitting = ", ".join(map(str, _divisors(width))) or "none up to 12"
        raise ConfigError(
            f"the coarsen factor {factor} does not divide the {width} longitudes of the periodic {what}, and "
            f"trimming would break its wrap-around: use a factor that divides {width} ({fitting}) or set "
            f"data.periodic_longitude: false to drop {extra_columns} column(s)"
        )
    rows = (extra_rows - extra_rows // 2, extra_rows // 2)
    columns = (extra_columns - extra_columns // 2, extra_columns // 2)
    latitude = data["latitude"].values
    trim = GridTrim(
        factor=factor,
        original_shape=(height, width),
        latitude_start=tuple(float(value) for value in latitude[: rows[0]]),
        latitude_end=tuple(float(value) for value in latitude[height - rows[1] :]),
        longitude_start=tuple(float(value) for value in longitude[: columns[0]]),
        longitude_end=tuple(float(value) for value in longitude[width - columns[1] :]),
    )
    if not trim.dropped:
        return data, trim
    selection = {"latitude": slice(rows[0], height - rows[1]), "longitude": slice(columns[0], width - columns[1])}
    return data.isel(selection), trim


def block_centres(values: np.ndarray | Sequence[float], factor: int) -> np.ndarray:
    """Coarse coordinates of blocks of ``factor`` consecutive fine coordinates: each the mean of its block."""
    values = np.asarray(values, dtype=np.float64)
    if values.size % factor:
        raise ConfigError(f"{values.size} grid points are not divisible by the coarsen factor {factor}")
    return values.reshape(-1, factor).mean(axis=1)


def _block_weights(weights: np.ndarray, factor: int) -> np.ndarray:
    """The row weights with every block whose weights sum to 0 (its rows all at a pole: only for f = 1) given
    equal weights, so that its mean is the plain mean instead of 0 / 0."""
    blocks = weights.reshape(-1, factor)
    empty = blocks.sum(axis=1) == 0
    if not empty.any():
        return weights
    return np.where(empty[:, None], 1.0, blocks).reshape(-1)


def _coarsen_array(data: XrT, factor: int) -> XrT:
    latitude = data["latitude"]
    weights = _block_weights(area_weights(latitude.values), factor)
    weights = xr.DataArray(weights, dims="latitude", coords={"latitude": latitude})
    block = {"latitude": factor, "longitude": factor}
    numerator = (data * weights).coarsen(block, boundary="exact").sum()
    denominator = weights.coarsen(latitude=factor, boundary="exact").sum() * factor
    out = numerator / denominator
    return out.astype(data.dtype) if data.dtype.kind == "f" else out


def block_mean(data: torch.Tensor, factor: int, row_weights: torch.Tensor) -> torch.Tensor:
    """The weighted f x f block mean X_B = sum_B w_i x_ij / (f sum_B w_i) of a tensor (..., H, W) whose rows
    have the weights ``row_weights`` (H,) (a block whose weights sum to 0 takes the plain mean), computed in
    ``data``'s dtype.

    The sums run in one fixed order, element by element (block row by block row, then column by column), so
    the value of a block depends only on its f x f values and weights: the block means of a window of a field
    are bitwise those of the whole field (what streaming training relies on).
    """
    height, width = data.shape[-2:]
    check_divisible(height, width, factor)
    weights = row_weights.to(device=data.device, dtype=data.dtype)
    sums = [weights[i::factor] for i in range(factor)]
    denominator = sums[0].clone()
    for part in sums[1:]:
        denominator = denominator + part
    empty = denominator == 0  # rows all at a pole (only for f = 1): the plain mean
    if bool(empty.any()):
        sums = [torch.where(empty, torch.ones_like(part), part) for part in sums]
        denominator = torch.where(empty, torch.full_like(denominator, float(factor)), denominator)
    numerator: torch.Tensor | None = None
    for i in range(factor):
        for j in range(factor):
            term = data[..., i::factor, j::factor] * sums[i][:, None]
            numerator = term if numerator is None else numerator + term
    assert numerator is not None
    return numerator / (denominator * factor)[:, None]


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
        height, width = data.shape[-2:]
        check_divisible(height, width, factor)
        if latitude is None:
            weights = torch.ones(height, dtype=data.dtype, device=data.device)
        else:
            if latitude.shape != (height,):
                raise ValueError(f"latitude has shape {tuple(latitude.shape)}, the field {height} rows")
            weights = area_weights(latitude.to(device=data.device, dtype=torch.float64))
        return block_mean(data, factor, weights)
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


def interpolation_taps(
    fine_index: np.ndarray | Sequence[int],
    coarse_size: int,
    factor: int,
    mode: str = "bilinear",
    periodic: bool = False,
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The coarse taps and weights of fine points along one axis: fine_i = sum_k w_ik coarse[tap_ik].

    Fine index i sits at the coarse position p = (i - o + 1/2) / f - 1/2 (:func:`upsample`), o the ``offset``
    of the first block (0: block k covers the fine points k f .. k f + f - 1); taps beyond the
    ``coarse_size`` coarse points wrap round (``periodic``) or take the edge value.

    Returns:
        taps (n, K) int64 in [0, coarse_size) and weights (n, K) float64, K = 2 (bilinear) or 4 (bicubic),
        for the n fine indices given.
    """
    fine_index = np.asarray(fine_index, dtype=np.int64)
    position = (fine_index - offset + 0.5) / factor - 0.5  # coarse position of each fine point
    base = np.floor(position).astype(np.int64)
    t = position - base
    if mode == "bilinear":
        offsets, weights = np.array([0, 1]), np.stack([1 - t, t], axis=-1)
    elif mode == "bicubic":
        offsets, weights = np.array([-1, 0, 1, 2]), _cubic_weights(t)
    else:
        raise ValueError(f"upsample mode = {mode!r}: allowed: bilinear, bicubic")
    taps = base[:, None] + offsets[None, :]
    taps = taps % coarse_size if periodic else np.clip(taps, 0, coarse_size - 1)
    return taps, weights.reshape(taps.shape)


def interpolation_matrix(size: int, factor: int, mode: str = "bilinear", periodic: bool = False) -> np.ndarray:
    """M (f n, n) with fine = M coarse along one axis (float64; see :func:`upsample`)."""
    taps, weights = interpolation_taps(np.arange(size * factor), size, factor, mode, periodic)
    matrix = np.zeros((size * factor, size))
    rows = np.repeat(np.arange(size * factor), taps.shape[1])
    np.add.at(matrix, (rows, taps.reshape(-1)), weights.reshape(-1))
    return matrix


def interpolate_taps(
    field: torch.Tensor, taps: np.ndarray | torch.Tensor, weights: np.ndarray | torch.Tensor, dim: int
) -> torch.Tensor:
    """out_i = sum_k w_ik field[tap_ik] along ``dim`` (-2: rows, -1: columns), in ``field``'s dtype.

    The sum runs over k in order, element by element (no matrix product, whose summation order depends on the
    shapes): the value of a fine point depends only on its taps' values and weights, so interpolating a window
    of a coarse field gives bitwise the values of interpolating the whole field.
    """
    index = torch.as_tensor(taps, dtype=torch.long, device=field.device)
    factors = torch.as_tensor(weights, device=field.device).to(field.dtype)
    shape = (-1, 1) if dim == -2 else (-1,)
    out: torch.Tensor | None = None
    for k in range(index.shape[1]):
        term = field.index_select(dim, index[:, k]) * factors[:, k].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


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
    result has the input's floating dtype (float32 for integer input) and device. Rows are interpolated first,
    then columns, each as a tap-by-tap sum (:func:`interpolate_taps`), so a window of the result is computed
    bitwise from the coarse cells its taps reach (streaming training reads no more than those).
    """
    if field.ndim < 2:
        raise ValueError(f"upsample needs a field (..., h, w), got shape {tuple(field.shape)}")
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"upsample mode = {mode!r}: allowed: bilinear, bicubic")
    x = field if field.is_floating_point() else field.float()
    if factor == 1:
        return x.clone()
    height, width = x.shape[-2:]
    row_taps, row_weights = interpolation_taps(np.arange(height * factor), height, factor, mode)
    col_taps, col_weights = interpolation_taps(
        np.arange(width * factor), width, factor, mode, periodic=periodic_longitude
    )
    return interpolate_taps(interpolate_taps(x, row_taps, row_weights, -2), col_taps, col_weights, -1)


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


def grid_indices(
    data: xr.Dataset | xr.DataArray,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The indices into ``data``'s latitude and longitude of the given coordinates (what :func:`select_grid`
    selects), matched within 1 % of the target grid's step, longitude modulo 360.

    Raises:
        ConfigError: some coordinate has no match; the message names ``what`` and the nearest value there is.
    """
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.asarray(longitude, dtype=np.float64)
    found = []
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
        found.append(index)
    return found[0], found[1]


def select_grid(
    data: XrT, latitude: np.ndarray | Sequence[float], longitude: np.ndarray | Sequence[float], what: str
) -> XrT:
    """The points of ``data`` (harmonised) at the given latitudes and longitudes, matched by coordinate
    (longitude modulo 360) within 1 % of the target grid's step, e.g. a global orography on a regional grid.

    Raises:
        ConfigError: some coordinate has no match; the message names ``what`` and the nearest value there is.
    """
    rows, columns = grid_indices(data, latitude, longitude, what)
    out = data.isel(latitude=rows, longitude=columns)
    return out.assign_coords(
        latitude=np.asarray(latitude, dtype=np.float64), longitude=np.asarray(longitude, dtype=np.float64)
    )
