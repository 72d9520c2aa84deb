"""First-order conservative regridding between rectilinear latitude-longitude grids, as two overlap matrices.

A cell of a rectilinear grid is a latitude band [phi^-, phi^+] times a longitude interval [lambda^-, lambda^+];
on the unit sphere its area is

    |S| = (sin phi^+ - sin phi^-) (lambda^+ - lambda^-)        (lambda in radians),

and the intersection of two such cells is again one, so the overlap of source cell (i, j) with target cell (k, l)
factorises into a latitude part and a longitude part:

    |S_ij n T_kl| = a_ki b_lj,
    a_ki = max(0, sin min(phi_i^+, phi_k^+) - sin max(phi_i^-, phi_k^-)),
    b_lj = sum_n max(0, min(lambda_j^+ + 360 n, lambda_l^+) - max(lambda_j^- + 360 n, lambda_l^-))

(longitudes matched modulo 360: n runs over the shifts that can overlap). The first-order conservative value of a
target cell is the area mean of the source over it,

    y_kl = sum_ij a_ki b_lj x_ij / sum_ij a_ki b_lj = sum_i P_ki sum_j x_ij Q_lj,    Y = P X Q^T,
    P_ki = a_ki / sum_i a_ki,    Q_lj = b_lj / sum_j b_lj,

two small dense matrices (the weights are separable). Where the source covers the target cell the denominators
are the target cell's own extent, so a constant stays constant (rows of P and Q sum to 1) and the area integral
over the target domain is preserved: sum_kl |T_kl| y_kl = sum_ij |S_ij n T| x_ij (exact, to rounding).

Cell edges (:func:`axis_edges`) come from the CF ``bounds`` of a coordinate when it has them, else they are the
midpoints between centres, the two outer edges half a spacing beyond the outer centres, latitudes clipped to +-90
(an outer row nearer its pole than a spacing reaches the pole, as the cells of a Gaussian grid do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from diffscale.data.climate.regrid import COINCIDENCE_TOLERANCE_DEG
from diffscale.validation import ConfigError

__all__ = [
    "Axis",
    "axis_edges",
    "edges_from_bounds",
    "latitude_overlaps",
    "longitude_overlaps",
    "missing_extent",
    "placed_longitude_edges",
]

Axis = Literal["latitude", "longitude"]


def axis_edges(centres: np.ndarray | Sequence[float], axis: Axis, what: str = "grid") -> np.ndarray:
    """The n + 1 cell edges of n ascending centres: midpoints between neighbours, the outer edges half a spacing
    beyond the outer centres, latitudes clipped to [-90, 90]; an outer latitude row closer to its pole than its
    spacing (no further row would fit: a Gaussian grid's last row) reaches the pole. ConfigError for fewer than 2
    or unsorted centres."""
    centres = np.asarray(centres, dtype=np.float64)
    if centres.size < 2:
        raise ConfigError(f"{what}: {axis} has {centres.size} point(s); cells need at least 2 (or CF bounds)")
    if not (np.diff(centres) > 0).all():
        raise ConfigError(f"{what}: {axis} is not strictly ascending (harmonise the fields first)")
    middle = (centres[1:] + centres[:-1]) / 2.0
    first = centres[0] - (centres[1] - centres[0]) / 2.0
    last = centres[-1] + (centres[-1] - centres[-2]) / 2.0
    edges = np.concatenate([[first], middle, [last]])
    if axis != "latitude":
        return edges
    if centres[0] - (centres[1] - centres[0]) < -90.0:
        edges[0] = -90.0
    if centres[-1] + (centres[-1] - centres[-2]) > 90.0:
        edges[-1] = 90.0
    return np.clip(edges, -90.0, 90.0)


def edges_from_bounds(
    centres: np.ndarray | Sequence[float],
    bounds_centres: np.ndarray | Sequence[float],
    bounds: np.ndarray,
    axis: Axis,
    what: str = "grid",
) -> np.ndarray:
    """The n + 1 edges of the ascending ``centres`` from CF bounds (``bounds`` (m, 2) of the cells centred at
    ``bounds_centres``, in the file's order and longitude convention): each centre takes the bounds of the cell at
    the same point (longitudes modulo 360, shifted with the centre). ConfigError when a centre has no bounds or the
    cells are not contiguous (a gap or an overlap between neighbours)."""
    centres = np.asarray(centres, dtype=np.float64)
    bounds_centres = np.asarray(bounds_centres, dtype=np.float64)
    bounds = np.sort(np.asarray(bounds, dtype=np.float64).reshape(-1, 2), axis=1)
    difference = centres[:, None] - bounds_centres[None, :]
    if axis == "longitude":
        difference = (difference + 180.0) % 360.0 - 180.0
    match = np.argmin(np.abs(difference), axis=1)
    shift = centres - bounds_centres[match]  # 0, or a multiple of 360 for longitude
    if np.abs(difference[np.arange(centres.size), match]).max() > COINCIDENCE_TOLERANCE_DEG:
        raise ConfigError(f"{what}: its {axis} bounds do not belong to its {axis} points")
    cells = bounds[match] + np.round(shift / 360.0)[:, None] * 360.0 if axis == "longitude" else bounds[match]
    gaps = np.abs(cells[1:, 0] - cells[:-1, 1])
    if gaps.size and gaps.max() > COINCIDENCE_TOLERANCE_DEG:
        at = int(np.argmax(gaps))
        raise ConfigError(
            f"{what}: its {axis} cells are not contiguous ({cells[at, 1]:g} to {cells[at + 1, 0]:g} between "
            f"{centres[at]:g} and {centres[at + 1]:g}); drop its bounds variable to use midpoints"
        )
    edges = np.concatenate([cells[:, 0], cells[-1:, 1]])
    if axis == "latitude":
        edges = np.clip(edges, -90.0, 90.0)
    return edges


def _band_overlaps(source: np.ndarray, target: np.ndarray, measure: np.ufunc | None) -> np.ndarray:
    """(K, I) overlaps of the target intervals [target_k, target_k+1] with the source ones, measured as
    measure(upper) - measure(lower) (sin for latitude bands, the identity for longitude)."""
    lower = np.maximum(target[:-1, None], source[None, :-1])
    upper = np.minimum(target[1:, None], source[None, 1:])
    upper = np.maximum(upper, lower)
    if measure is None:
        return upper - lower
    return measure(np.deg2rad(upper)) - measure(np.deg2rad(lower))


def _normalised(overlaps: np.ndarray) -> np.ndarray:
    total = overlaps.sum(axis=1, keepdims=True)
    return np.divide(overlaps, total, out=np.zeros_like(overlaps), where=total > 0)


def latitude_overlaps(source_edges: np.ndarray, target_edges: np.ndarray) -> np.ndarray:
    """P (K, I): P_ki = a_ki / sum_i a_ki with a_ki = the overlap of the bands in sin(phi) (module docstring); a
    target row without overlap is 0."""
    overlaps = _band_overlaps(np.asarray(source_edges, np.float64), np.asarray(target_edges, np.float64), np.sin)
    return _normalised(np.maximum(overlaps, 0.0))


def placed_longitude_edges(source_edges: np.ndarray, target_edges: np.ndarray) -> np.ndarray:
    """The source edges shifted by a multiple of 360 so that the source's middle is nearest the target's."""
    source_edges = np.asarray(source_edges, dtype=np.float64)
    target_edges = np.asarray(target_edges, dtype=np.float64)
    middle = (source_edges[0] + source_edges[-1]) / 2.0
    target_middle = (target_edges[0] + target_edges[-1]) / 2.0
    return source_edges + 360.0 * np.round((target_middle - middle) / 360.0)


def longitude_overlaps(source_edges: np.ndarray, target_edges: np.ndarray) -> np.ndarray:
    """Q (L, J): Q_lj = b_lj / sum_j b_lj with b_lj = the overlap of the longitude intervals modulo 360 (module
    docstring: every shift of the source by 360 that can reach the target is summed); a target column without
    overlap is 0."""
    target_edges = np.asarray(target_edges, dtype=np.float64)
    placed = placed_longitude_edges(source_edges, target_edges)
    overlaps = sum(_band_overlaps(placed + shift, target_edges, None) for shift in (-360.0, 0.0, 360.0))
    return _normalised(overlaps)


def missing_extent(source_edges: np.ndarray, target_edges: np.ndarray, axis: Axis) -> tuple[float, float]:
    """Degrees of the target's extent that the source's cells leave uncovered at its start (south, west) and end
    (north, east); 0 within :data:`~diffscale.data.climate.regrid.COINCIDENCE_TOLERANCE_DEG`. A source that goes
    once round the globe covers every longitude."""
    source_edges = np.asarray(source_edges, dtype=np.float64)
    target_edges = np.asarray(target_edges, dtype=np.float64)
    if axis == "longitude":
        if source_edges[-1] - source_edges[0] >= 360.0 - COINCIDENCE_TOLERANCE_DEG:
            return 0.0, 0.0
        source_edges = placed_longitude_edges(source_edges, target_edges)
    start = max(0.0, float(source_edges[0] - target_edges[0]))
    end = max(0.0, float(target_edges[-1] - source_edges[-1]))
    return (
        start if start > COINCIDENCE_TOLERANCE_DEG else 0.0,
        end if end > COINCIDENCE_TOLERANCE_DEG else 0.0,
    )
