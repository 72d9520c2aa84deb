"""Fields from any regular (rectilinear) latitude-longitude grid onto the data grid, e.g. a global 0.25 degree
orography onto a regional grid that is offset from that lattice.

For a target point (phi, lambda) with source rows phi_a <= phi <= phi_b and columns lambda_c <= lambda <= lambda_d
the value is bilinear in latitude and longitude (degrees):

    s(phi, lambda) = (1 - u)(1 - v) s_ac + u (1 - v) s_bc + (1 - u) v s_ad + u v s_bd,
    u = (phi - phi_a) / (phi_b - phi_a),    v = (lambda - lambda_c) / (lambda_d - lambda_c),

computed separably (first along latitude, then along longitude) in float64. It reproduces exactly any field
a + b phi + c lambda + d phi lambda. A target coordinate within :data:`COINCIDENCE_TOLERANCE_DEG` of a source
coordinate takes that source row (column) alone: where the grids line up the values are copied bitwise, as an
exact selection would.

Longitude is matched modulo 360. A source that goes once round the globe (evenly spaced, n d = 360) is
periodic: a target longitude between its last and its first column interpolates across the seam, whatever
the conventions of the two grids (-180..180 or 0..360). A regional source must contain every target point;
otherwise (and for any target latitude outside the source's rows) :func:`regrid_bilinear` refuses in one line
naming the range that is not covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from diffscale.data.climate.grid import is_global_longitude
from diffscale.validation import ConfigError

__all__ = ["COINCIDENCE_TOLERANCE_DEG", "RegridMethod", "bilinear_axis_matrix", "regrid_bilinear", "regridding_method"]

COINCIDENCE_TOLERANCE_DEG = 2e-5
"""Two coordinates closer than this (2e-5 degrees, about 2 m; above the rounding of a coordinate stored as
float32, at most 1.5e-5 degrees up to 360) are the same point."""

RegridMethod = Literal["exact", "bilinear"]


@dataclass(frozen=True)
class _AxisWeights:
    """Target k = (1 - weight_k) source[lower_k] + weight_k source[upper_k]; weight 0 where the points coincide."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray

    @property
    def exact(self) -> bool:
        return bool((self.weight == 0).all())


def _describe(values: np.ndarray) -> str:
    return f"{float(values.min()):g} .. {float(values.max()):g}"


def _axis_weights(source: np.ndarray, target: np.ndarray, axis: str, what: str) -> _AxisWeights:
    """Interpolation weights of ``target`` coordinates on the ascending ``source`` ones (ConfigError naming the
    uncovered range when some target point lies outside)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.size == 0:
        raise ConfigError(f"{what} have no {axis} points")
    if source.size > 1 and not (np.diff(source) > 0).all():
        raise ConfigError(f"{what}: {axis} is not strictly ascending (harmonise the fields first)")
    tolerance = COINCIDENCE_TOLERANCE_DEG
    size = source.size
    periodic = axis == "longitude" and is_global_longitude(source)
    position = target
    if axis == "longitude":  # the target in the source's convention: [source[0] - tol, source[0] + 360 - tol)
        position = source[0] + np.mod(target - source[0] + tolerance, 360.0) - tolerance
    nodes = np.append(source, source[0] + 360.0) if periodic else source
    covered = (position >= nodes[0] - tolerance) & (position <= nodes[-1] + tolerance)
    if not covered.all():
        missing = target[~covered]
        noun = "rows" if axis == "latitude" else "columns"
        raise ConfigError(
            f"{what} do not cover the data grid: {axis} {_describe(missing)} ({missing.size} of {target.size} "
            f"{noun}) lies outside their {axis} {_describe(source)}"
        )
    if nodes.size == 1:  # a single source point, matched within the tolerance
        zeros = np.zeros(target.size, dtype=np.int64)
        return _AxisWeights(zeros, zeros, np.zeros(target.size))
    interval = np.clip(np.searchsorted(nodes, position, side="right") - 1, 0, nodes.size - 2)
    left, right = nodes[interval], nodes[interval + 1]
    weight = np.clip((position - left) / (right - left), 0.0, 1.0)
    lower, upper = interval, interval + 1
    at_left, at_right = np.abs(position - left) <= tolerance, np.abs(position - right) <= tolerance
    upper = np.where(at_left, lower, upper)
    lower = np.where(at_right & ~at_left, upper, lower)
    weight = np.where(at_left | at_right, 0.0, weight)
    return _AxisWeights(lower % size, upper % size, weight)


def _interpolate(values: np.ndarray, weights: _AxisWeights, axis: int) -> np.ndarray:
    """(1 - w) x[lower] + w x[upper] along ``axis`` (float64); x[lower] itself where w = 0."""
    low = np.take(values, weights.lower, axis=axis)
    if weights.exact:
        return low
    high = np.take(values, weights.upper, axis=axis)
    shape = [1] * values.ndim
    shape[axis] = weights.weight.size
    w = weights.weight.reshape(shape)
    return np.where(w == 0, low, (1.0 - w) * low + w * high)


def bilinear_axis_matrix(
    source: np.ndarray | Sequence[float], target: np.ndarray | Sequence[float], axis: str, what: str = "source"
) -> np.ndarray:
    """The interpolation along one axis as a (K, I) matrix: row k holds 1 - w_k at source point lower_k and w_k at
    upper_k (a single 1 where a source point coincides), so that target = matrix @ source along ``axis``
    (``latitude`` or ``longitude``: matched modulo 360, across the seam of a periodic source). ConfigError naming
    the uncovered range when a target point lies outside ``source``."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    weights = _axis_weights(source, target, axis, what)
    matrix = np.zeros((target.size, source.size))
    rows = np.arange(target.size)
    np.add.at(matrix, (rows, weights.lower), 1.0 - weights.weight)
    np.add.at(matrix, (rows, weights.upper), weights.weight)
    return matrix


def regridding_method(
    data: xr.Dataset | xr.DataArray,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    what: str = "static fields",
) -> RegridMethod:
    """``exact`` when every target point coincides with a point of ``data`` (harmonised), else ``bilinear``
    (ConfigError when the target is not covered)."""
    rows = _axis_weights(data["latitude"].values, np.asarray(latitude), "latitude", what)
    columns = _axis_weights(data["longitude"].values, np.asarray(longitude), "longitude", what)
    return "exact" if rows.exact and columns.exact else "bilinear"


def regrid_bilinear(
    data: xr.Dataset,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    what: str = "static fields",
) -> xr.Dataset:
    """The variables of ``data`` (harmonised; those over latitude and longitude) on the grid ``latitude`` x
    ``longitude`` (module docstring), loaded.

    Only the source rows and columns that are needed are read. Values keep the source's floating dtype
    (computed in float64; other dtypes give float64 where interpolated). The result's ``attrs["regridding"]``
    is ``exact`` (every point coincided: a bitwise copy) or ``bilinear``.

    Raises:
        ConfigError: the target grid is not covered (naming the uncovered latitude or longitude range).
    """
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.asarray(longitude, dtype=np.float64)
    rows = _axis_weights(data["latitude"].values, latitude, "latitude", what)
    columns = _axis_weights(data["longitude"].values, longitude, "longitude", what)
    method: RegridMethod = "exact" if rows.exact and columns.exact else "bilinear"
    needed_rows = np.unique(np.concatenate([rows.lower, rows.upper]))
    needed_columns = np.unique(np.concatenate([columns.lower, columns.upper]))
    local_rows = _AxisWeights(
        np.searchsorted(needed_rows, rows.lower), np.searchsorted(needed_rows, rows.upper), rows.weight
    )
    local_columns = _AxisWeights(
        np.searchsorted(needed_columns, columns.lower), np.searchsorted(needed_columns, columns.upper), columns.weight
    )
    gridded = [name for name, var in data.data_vars.items() if {"latitude", "longitude"} <= set(var.dims)]
    window = data[gridded].isel(latitude=needed_rows, longitude=needed_columns).load()
    out = {}
    for name in gridded:
        variable = window[name].transpose(..., "latitude", "longitude")
        values = np.asarray(variable.values)
        if method == "exact":
            result = np.take(np.take(values, local_rows.lower, axis=-2), local_columns.lower, axis=-1)
        else:
            result = _interpolate(values.astype(np.float64), local_rows, axis=values.ndim - 2)
            result = _interpolate(result, local_columns, axis=values.ndim - 1)
            if values.dtype.kind == "f":
                result = result.astype(values.dtype)
        out[name] = xr.DataArray(result, dims=variable.dims, attrs=dict(variable.attrs))
    coords = {"latitude": latitude, "longitude": longitude}
    for dim in {dim for name in gridded for dim in window[name].dims} - {"latitude", "longitude"}:
        if dim in window.coords:
            coords[dim] = window[dim].values
    regridded = xr.Dataset(out, coords=coords, attrs={**data.attrs, "regridding": method})
    return regridded
