"""Coarse fields from any rectilinear latitude-longitude grid onto a target grid of cell centres (a run's coarse
lattice): regular, offset, Gaussian or GCM spacings, either latitude order and either longitude convention once
harmonised (:func:`~diffscale.data.climate.io.harmonise`), periodic global sources across the seam.

Both methods are separable linear maps Y = P X Q^T (P over latitude, Q over longitude) applied to every time (and
any other leading dimension) lazily, reading only the source rows and columns that carry weight:

* ``conservative`` (first order): P and Q are the normalised cell overlaps of
  :mod:`~diffscale.data.climate.conservative`; the area mean of the field over the target domain is preserved.
* ``bilinear``: P and Q hold the two interpolation weights per target point of
  :func:`~diffscale.data.climate.regrid.regrid_bilinear` (exact on a + b phi + c lambda + d phi lambda).

The source must cover the target: every target cell (conservative) or centre (bilinear) lies within the source's
cells (centres), longitudes modulo 360; otherwise :func:`plan_regridding` refuses in one line saying how many
degrees are missing on which side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from diffscale.data.climate.conservative import (
    axis_edges,
    edges_from_bounds,
    latitude_overlaps,
    longitude_overlaps,
    missing_extent,
    placed_longitude_edges,
)
from diffscale.data.climate.grid import is_global_longitude
from diffscale.data.climate.io import find_axis
from diffscale.data.climate.regrid import COINCIDENCE_TOLERANCE_DEG, bilinear_axis_matrix
from diffscale.validation import ConfigError

__all__ = [
    "REGRID_METHODS",
    "Regridding",
    "SourceGrid",
    "contains_points",
    "covered_cells",
    "plan_regridding",
    "source_grid",
]

REGRID_METHODS: tuple[str, ...] = ("conservative", "bilinear", "none")
"""How a coarse input on another grid reaches the run's coarse lattice (``none``: it must already be on it)."""

_SIDES = {"latitude": ("south", "north"), "longitude": ("west", "east")}


def _spacing(values: np.ndarray) -> str:
    steps = np.diff(values)
    if steps.size == 0:
        return "one point"
    if np.ptp(steps) <= 1e-6 * max(1.0, float(np.abs(steps).max())):
        return f"spacing {float(np.mean(steps)):.6g} deg"
    return f"spacing {float(steps.min()):.6g} .. {float(steps.max()):.6g} deg"


@dataclass(frozen=True)
class SourceGrid:
    """A rectilinear grid: ascending cell centres and their edges (n + 1 per axis), and where the edges came from."""

    latitude: np.ndarray
    longitude: np.ndarray
    latitude_edges: np.ndarray
    longitude_edges: np.ndarray
    edges_from: str = "midpoints between centres"

    @property
    def periodic(self) -> bool:
        """Whether its cells go once round the globe in longitude."""
        width = float(self.longitude_edges[-1] - self.longitude_edges[0])
        return abs(width - 360.0) <= COINCIDENCE_TOLERANCE_DEG or is_global_longitude(self.longitude)

    def describe(self) -> str:
        """One line: size, extent and spacing of each axis, periodicity and the source of the cell edges."""
        lat, lon = self.latitude, self.longitude
        return (
            f"{lat.size} x {lon.size} (latitude {lat[0]:g} .. {lat[-1]:g}, {_spacing(lat)}; longitude {lon[0]:g} .. "
            f"{lon[-1]:g}, {_spacing(lon)}{', periodic' if self.periodic else ''}; cell edges: {self.edges_from})"
        )


def _cf_bounds(raw: xr.Dataset, axis: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(name, centres, bounds (n, 2)) of the CF bounds variable of ``raw``'s ``axis`` coordinate, or None."""
    name = find_axis(raw, axis)
    if name is None or name not in raw.variables:
        return None
    bounds_name = raw[name].attrs.get("bounds")
    if not bounds_name or bounds_name not in raw.variables:
        return None
    bounds = np.asarray(raw[bounds_name].values, dtype=np.float64)
    centres = np.asarray(raw[name].values, dtype=np.float64).reshape(-1)
    if bounds.ndim != 2 or bounds.shape != (centres.size, 2):
        raise ConfigError(f"{axis} bounds {bounds_name!r} have shape {bounds.shape}; CF bounds are (n, 2)")
    return str(bounds_name), centres, bounds


def source_grid(fields: xr.Dataset, raw: xr.Dataset | None = None, what: str = "coarse input") -> SourceGrid:
    """The grid of harmonised ``fields``; its cell edges from the CF ``bounds`` variables of ``raw`` (the dataset as
    read, before harmonising) when it has them, else midpoints between centres (:func:`axis_edges`)."""
    latitude = np.asarray(fields["latitude"].values, dtype=np.float64)
    longitude = np.asarray(fields["longitude"].values, dtype=np.float64)
    edges, names = {}, []
    for axis, centres in (("latitude", latitude), ("longitude", longitude)):
        found = _cf_bounds(raw, axis) if raw is not None else None
        if found is None:
            edges[axis] = axis_edges(centres, axis, what)  # type: ignore[arg-type]
            continue
        name, bounds_centres, bounds = found
        edges[axis] = edges_from_bounds(centres, bounds_centres, bounds, axis, what)  # type: ignore[arg-type]
        names.append(name)
    edges_from = f"CF bounds ({', '.join(names)})" if len(names) == 2 else "midpoints between centres"
    if len(names) == 1:
        edges_from = f"CF bounds ({names[0]}) and midpoints between centres"
    return SourceGrid(latitude, longitude, edges["latitude"], edges["longitude"], edges_from)


def contains_points(
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    target_latitude: np.ndarray | Sequence[float],
    target_longitude: np.ndarray | Sequence[float],
) -> bool:
    """Whether every target latitude and longitude is one of the grid's within
    :data:`~diffscale.data.climate.regrid.COINCIDENCE_TOLERANCE_DEG` (longitudes modulo 360): the target can be
    selected from the grid without regridding."""
    pairs = ((latitude, target_latitude, False), (longitude, target_longitude, True))
    for values, target, periodic in pairs:
        values, target = np.asarray(values, np.float64), np.asarray(target, np.float64)
        if values.size == 0:
            return target.size == 0
        difference = target[:, None] - values[None, :]
        if periodic:
            difference = (difference + 180.0) % 360.0 - 180.0
        if (np.abs(difference).min(axis=1, initial=np.inf) > COINCIDENCE_TOLERANCE_DEG).any():
            return False
    return True


@dataclass(frozen=True)
class Regridding:
    """Y = P X Q^T from the ``rows`` x ``columns`` of a source grid onto ``latitude`` x ``longitude``."""

    method: str
    source: SourceGrid
    latitude: np.ndarray
    longitude: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    row_weights: np.ndarray
    column_weights: np.ndarray

    def describe(self) -> str:
        """One line for an output's history."""
        name = "first-order conservative" if self.method == "conservative" else self.method
        return f"regridded ({name}) from the grid {self.source.describe()}"

    def apply(self, fields: xr.Dataset) -> xr.Dataset:
        """The variables of ``fields`` (harmonised, on the source grid) over latitude and longitude on the target
        grid (lazily where ``fields`` is dask-backed), computed in float64; floating variables keep their dtype.
        Variables without both axes are kept as they are."""
        window = fields.isel(latitude=self.rows, longitude=self.columns)
        gridded = [name for name, var in window.data_vars.items() if {"latitude", "longitude"} <= set(var.dims)]
        if any(window[name].chunks is not None for name in gridded):
            window = window.chunk({"latitude": -1, "longitude": -1})
        row_weights, column_weights = self.row_weights, self.column_weights

        def separable(values: np.ndarray) -> np.ndarray:
            result = np.matmul(np.matmul(row_weights, values.astype(np.float64)), column_weights.T)
            return result.astype(values.dtype) if values.dtype.kind == "f" else result

        out = {}
        for name in gridded:
            variable = window[name].transpose(..., "latitude", "longitude")
            dtype = variable.dtype if variable.dtype.kind == "f" else np.dtype(np.float64)
            result = xr.apply_ufunc(
                separable,
                variable,
                input_core_dims=[["latitude", "longitude"]],
                output_core_dims=[["target_latitude", "target_longitude"]],
                dask="parallelized",
                output_dtypes=[dtype],
                dask_gufunc_kwargs={
                    "output_sizes": {"target_latitude": self.latitude.size, "target_longitude": self.longitude.size}
                },
                keep_attrs=True,
            )
            out[name] = result.rename(target_latitude="latitude", target_longitude="longitude")
        others = {name: fields[name] for name in fields.data_vars if name not in gridded}
        regridded = xr.Dataset(
            {**out, **others},
            coords={
                **{name: coord for name, coord in fields.coords.items() if name not in ("latitude", "longitude")},
                "latitude": self.latitude,
                "longitude": self.longitude,
            },
            attrs=dict(fields.attrs),
        )
        for axis in ("latitude", "longitude"):
            regridded[axis].attrs = dict(fields[axis].attrs)
        return regridded


def covered_cells(
    source: SourceGrid,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    method: str = "conservative",
) -> tuple[slice, slice]:
    """(rows, columns): the widest window of the target cells centred at ``latitude`` x ``longitude`` (ascending)
    that ``source`` covers as :func:`plan_regridding` requires (by its cells for ``conservative``, by its points for
    ``bilinear``); empty slices where it covers none. A source once round the globe covers every column."""
    windows = []
    for axis, centres in (("latitude", latitude), ("longitude", longitude)):
        centres = np.asarray(centres, dtype=np.float64)
        if method == "conservative":
            edges = axis_edges(centres, axis, "the target grid")  # type: ignore[arg-type]
            low, high = edges[:-1], edges[1:]
            covering = np.asarray(getattr(source, f"{axis}_edges"), dtype=np.float64)
        else:
            low = high = centres
            covering = np.asarray(getattr(source, axis), dtype=np.float64)
        if axis == "longitude":
            if source.periodic:
                windows.append(slice(0, centres.size))
                continue
            covering = placed_longitude_edges(covering, np.array([low[0], high[-1]]))
        inside = np.flatnonzero(
            (low >= covering.min() - COINCIDENCE_TOLERANCE_DEG) & (high <= covering.max() + COINCIDENCE_TOLERANCE_DEG)
        )
        windows.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return windows[0], windows[1]


def _format_degrees(value: float) -> str:
    return f"{value:.4g} deg"


def plan_regridding(
    source: SourceGrid,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    method: str = "conservative",
    what: str = "coarse input",
    domain: str = "the target grid",
) -> Regridding:
    """The regridding of ``source`` onto the ascending cell centres ``latitude`` x ``longitude`` (whose cells are
    bounded by the midpoints between them, :func:`axis_edges`) by ``method`` (``conservative`` or ``bilinear``).

    Raises:
        ConfigError: an unknown method, or the source does not cover the target (one line: the degrees missing on
            each side, e.g. ``0.5 deg missing in the south``).
    """
    if method not in ("conservative", "bilinear"):
        raise ConfigError(f"regrid = {method!r}: allowed: conservative, bilinear")
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.asarray(longitude, dtype=np.float64)
    target_edges = {
        "latitude": axis_edges(latitude, "latitude", domain),
        "longitude": axis_edges(longitude, "longitude", domain),
    }
    gaps = []
    for axis in ("latitude", "longitude"):
        if method == "conservative":
            covering, covered = getattr(source, f"{axis}_edges"), target_edges[axis]
        else:
            covering, covered = getattr(source, axis), latitude if axis == "latitude" else longitude
        if axis == "longitude" and source.periodic:
            continue
        start, end = missing_extent(covering, covered, axis)  # type: ignore[arg-type]
        for side, amount in zip(_SIDES[axis], (start, end), strict=True):
            if amount > 0:
                gaps.append(f"{_format_degrees(amount)} of {axis} missing in the {side}")
    if gaps:
        extent = (
            f"latitude {target_edges['latitude'][0]:g} .. {target_edges['latitude'][-1]:g}, longitude "
            f"{target_edges['longitude'][0]:g} .. {target_edges['longitude'][-1]:g}"
            if method == "conservative"
            else f"centres latitude {latitude[0]:g} .. {latitude[-1]:g}, longitude {longitude[0]:g} .. "
            f"{longitude[-1]:g}"
        )
        raise ConfigError(
            f"{what} does not cover {domain} ({extent}): {', '.join(gaps)}; give an input that extends over it"
        )
    if method == "conservative":
        row_weights = latitude_overlaps(source.latitude_edges, target_edges["latitude"])
        column_weights = longitude_overlaps(source.longitude_edges, target_edges["longitude"])
    else:
        row_weights = bilinear_axis_matrix(source.latitude, latitude, "latitude", what)
        column_weights = bilinear_axis_matrix(source.longitude, longitude, "longitude", what)
    rows = np.flatnonzero(row_weights.any(axis=0))
    columns = np.flatnonzero(column_weights.any(axis=0))
    return Regridding(
        method=method,
        source=source,
        latitude=latitude,
        longitude=longitude,
        rows=rows,
        columns=columns,
        row_weights=row_weights[:, rows],
        column_weights=column_weights[:, columns],
    )
