"""A coarse input on the run's coarse lattice: taken as it is when it lies on it, else regridded onto the run's
coarse cells (the blocks of ``factor`` x ``factor`` cells of the training grid).

The run's coarse lattice is the grid of block centres of its training grid: spacing D = f d (f the coarsening
factor, d the training spacing) along each axis; for a run with static fields (matched by coordinates) also its
origin up to whole training cells d, the block centres of some window of the training grid: c_0 + j d + k D. An
input whose points are such points within :data:`~diffscale.data.climate.regrid.COINCIDENCE_TOLERANCE_DEG` (evenly
spaced by D; on c_0 + j d + k D when aligned) is on the lattice and is used as it is, over its own extent: the
ensemble is bitwise the one of an input that was never regridded. Any other rectilinear input is regridded
(:mod:`~diffscale.data.climate.coarse_regrid`: first-order conservative by default, or bilinear) onto the run's
coarse cells over its training domain, which it must cover (a run trained on windows anywhere takes the window of
them that the input covers); ``regrid="none"`` refuses it instead, as
:func:`~diffscale.runs.downscaling.check_coarse_grid` says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from diffscale.data.climate.coarse_regrid import (
    REGRID_METHODS,
    Regridding,
    covered_cells,
    plan_regridding,
    source_grid,
)
from diffscale.data.climate.grid import block_centres
from diffscale.data.climate.io import expand_paths, open_dataset
from diffscale.data.climate.regrid import COINCIDENCE_TOLERANCE_DEG
from diffscale.validation import ConfigError, option_name, option_setting

LOGGER = logging.getLogger(__name__)

__all__ = ["check_regrid", "coarse_lattice", "on_coarse_lattice", "onto_coarse_lattice", "regrid_onto"]


def check_regrid(regrid: Any) -> str:
    """``regrid`` if it is one of :data:`~diffscale.data.climate.coarse_regrid.REGRID_METHODS`, else ConfigError."""
    if regrid not in REGRID_METHODS:
        raise ConfigError(f"{option_name('regrid')} = {regrid!r}: allowed: {', '.join(REGRID_METHODS)}")
    return str(regrid)


def coarse_lattice(grid: dict[str, Any], factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(latitude, longitude) ascending centres of the run's coarse cells: the block centres of its training grid
    (``grid`` as saved with the run: ``{axis}_range``, ``{axis}_spacing``, ``height``, ``width``). An axis whose
    size f does not divide (a run of windows, ``data.remainder: keep``) is trimmed as training trims: of its r
    surplus points ceil(r / 2) at the start and floor(r / 2) at the end."""
    missing = [key for key in _GRID_KEYS if key not in grid]
    if missing:
        raise ConfigError(
            f"the run's saved grid lacks {', '.join(missing)}, so its coarse cells are unknown: give a coarse input "
            f"on its coarse lattice ({option_setting('regrid', 'none')})"
        )
    out = []
    for axis, size_key in (("latitude", "height"), ("longitude", "width")):
        first, last = (float(value) for value in grid[f"{axis}_range"])
        size = int(grid[size_key])
        fine = np.linspace(first, last, size)
        surplus = size % factor
        fine = fine[(surplus + 1) // 2 : size - surplus // 2]
        out.append(block_centres(fine, factor))
    return out[0], out[1]


_GRID_KEYS = ("latitude_range", "longitude_range", "height", "width")


def _fine_spacing(grid: dict[str, Any], axis: str) -> float:
    """The training grid's spacing along ``axis``: its extent over its intervals (more accurate than the median
    step of coordinates stored in float32), else the saved spacing."""
    size = int(grid.get("height" if axis == "latitude" else "width", 0))
    if size > 1 and f"{axis}_range" in grid:
        first, last = (float(value) for value in grid[f"{axis}_range"])
        return abs(last - first) / (size - 1)
    return abs(float(grid[f"{axis}_spacing"]))


def _evenly_spaced(values: np.ndarray, spacing: float) -> bool:
    expected = values[0] + spacing * np.arange(values.size)
    return bool(np.abs(values - expected).max(initial=0.0) <= COINCIDENCE_TOLERANCE_DEG)


def on_coarse_lattice(
    latitude: np.ndarray,
    longitude: np.ndarray,
    grid: dict[str, Any],
    factor: int,
    *,
    aligned: bool,
) -> bool:
    """Whether the harmonised input coordinates lie on the run's coarse lattice (module docstring): evenly spaced
    by f times the training spacing, and with ``aligned`` (static fields) on the lattice's origin too, each within
    :data:`~diffscale.data.climate.regrid.COINCIDENCE_TOLERANCE_DEG` (longitudes modulo 360). The origin may move
    by whole training cells: the blocks of any window of the training grid are a lattice of the run (one a run
    trained on windows anywhere has seen; its static fields are matched on the training grid's points)."""
    origins = coarse_lattice(grid, factor) if aligned else None
    for index, (axis, values) in enumerate((("latitude", latitude), ("longitude", longitude))):
        values = np.asarray(values, dtype=np.float64)
        spacing = factor * _fine_spacing(grid, axis)
        if values.size == 0 or not _evenly_spaced(values, spacing):
            return False
        if origins is None:
            continue
        step = _fine_spacing(grid, axis)
        offset = values[0] - origins[index][0]
        if axis == "longitude":
            offset = (offset + 180.0) % 360.0 - 180.0
        if abs(offset - step * round(offset / step)) > COINCIDENCE_TOLERANCE_DEG:
            return False
    return True


def _as_read(coarse: Any) -> xr.Dataset | None:
    """The input as read, before harmonising (the first file of several): where its CF bounds are."""
    if isinstance(coarse, xr.Dataset):
        return coarse
    if isinstance(coarse, xr.DataArray):
        return coarse.to_dataset(name=coarse.name or "field")
    paths = [coarse] if isinstance(coarse, str | os.PathLike) else list(coarse)
    files = expand_paths(paths)
    return open_dataset(files[0], chunks=None) if files else None


def regrid_onto(
    fields: xr.Dataset,
    given: Any,
    latitude: np.ndarray,
    longitude: np.ndarray,
    regrid: str,
    *,
    what: str,
    domain: str,
) -> Regridding:
    """The regridding of the harmonised ``fields`` onto the cells centred at ``latitude`` x ``longitude``
    (ascending), with their CF cell bounds read from ``given`` (the input as the user gave it: a Dataset, a file or
    files). ConfigError (naming ``what`` and ``domain``) when they do not cover the target."""
    raw = _as_read(given)
    try:
        source = source_grid(fields, raw, what=what)
    finally:
        if raw is not None and raw is not given:
            raw.close()
    return plan_regridding(source, latitude, longitude, regrid, what=what, domain=domain)


def onto_coarse_lattice(
    fields: xr.Dataset,
    coarse: xr.Dataset | str | os.PathLike | Sequence[str | os.PathLike],
    grid: dict[str, Any],
    factor: int,
    *,
    aligned: bool,
    regrid: str = "conservative",
    any_window: bool = False,
) -> tuple[xr.Dataset, Regridding | None]:
    """(the harmonised coarse ``fields`` on the run's coarse lattice, the regridding applied or None when they
    already lay on it). ``coarse`` is the input as given (its CF cell bounds are read from it). With ``regrid``
    ``none`` the fields are returned as they are (the caller's grid check refuses them when off the lattice).

    The target is the run's coarse cells over its training domain; with ``any_window`` (a run trained on windows
    anywhere in its domain, ``data.random_windows``) an input that covers only a window of them is regridded onto
    that window (logged in one line), as an input on the lattice may be any window.

    Raises:
        ConfigError: an unknown ``regrid``, or an input off the lattice that does not cover the run's coarse cells
            (one line: the degrees missing on each side).
    """
    regrid = check_regrid(regrid)
    latitude, longitude = fields["latitude"].values, fields["longitude"].values
    if regrid == "none" or on_coarse_lattice(latitude, longitude, grid, factor, aligned=aligned):
        return fields, None
    target_latitude, target_longitude = coarse_lattice(grid, factor)
    domain = f"the run's {target_latitude.size} x {target_longitude.size} coarse cells"
    raw = _as_read(coarse)
    try:
        source = source_grid(fields, raw, what=option_name("coarse"))
    finally:
        if raw is not None and raw is not coarse:
            raw.close()
    if any_window:
        rows, columns = covered_cells(source, target_latitude, target_longitude, regrid)
        window_latitude, window_longitude = target_latitude[rows], target_longitude[columns]
        if 0 < window_latitude.size * window_longitude.size < target_latitude.size * target_longitude.size:
            LOGGER.warning(
                "%s covers %d x %d of %s (centres latitude %g .. %g, longitude %g .. %g): downscaling that window",
                option_name("coarse"),
                window_latitude.size,
                window_longitude.size,
                domain,
                window_latitude[0],
                window_latitude[-1],
                window_longitude[0],
                window_longitude[-1],
            )
            target_latitude, target_longitude = window_latitude, window_longitude
    regridding = plan_regridding(
        source, target_latitude, target_longitude, regrid, what=option_name("coarse"), domain=domain
    )
    return regridding.apply(fields), regridding
