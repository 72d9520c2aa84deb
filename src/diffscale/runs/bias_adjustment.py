"""Bias adjustment of a coarse input before downscaling: the input's distribution mapped, cell by cell and calendar
month by calendar month, onto the run's training coarse climatology.

>>> adjusted = diffscale.runs.bias_adjust("runs/era5_uk", "gcm.nc", reference=("1981", "2010"), method="qdm")
>>> run = diffscale.load_run("runs/era5_uk")
>>> ensemble = run.downscale("gcm.nc", bias_adjust="qdm", bias_reference=("1981", "2010"))
>>> diffscale.runs.compute_climatology("runs/old_run")    # a run trained before the climatology was saved with it

A climate model's coarse fields carry systematic errors against the reanalysis a run was trained on; the network,
given them, would downscale the errors. With Q_o the run's climatology (the quantiles of its training coarse fields,
:mod:`~diffscale.data.climate.climatology`), Q_m the input over the reference period the user names (a period that
should stand for the same climate as the training period) and Q_p the input over the times being adjusted, each per
cell and calendar month:

* ``qm``: x -> Q_o(F_m(x)) (empirical quantile mapping);
* ``qdm``: x -> Q_o(tau) + x - Q_m(tau) or Q_o(tau) x / Q_m(tau), tau = F_p(x) (quantile delta mapping: the model's
  change at each quantile between the reference period and the adjusted times is kept).

The change is additive for temperature-like variables and multiplicative for amounts (precipitation: variables
with a ``log1p`` or ``sqrt`` transform, or ``tp`` under any of its names); see
:mod:`~diffscale.data.climate.quantile_mapping` for the maths, the tails and the zeros. A month with fewer than the
climatology's ``min_times`` times in the reference (or adjusted) period pools its season, as the climatology does;
the output's attributes say which. A month whose season the run was not trained on, or which the reference period
does not cover, is refused. The input is put in the run's units first, and its cells must
be cells of the training coarse grid (any subset). It is held in memory one calendar month at a time while it is
adjusted and the adjusted fields are returned in memory (coarse fields are small).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from diffscale.data.climate.calendars import time_text
from diffscale.data.climate.climatology import (
    CLIMATOLOGY_SIDECAR,
    DEFAULT_LEVELS,
    DEFAULT_MIN_TIMES,
    SEASONS,
    CoarseClimatology,
    calendar_months,
    fit_coarse_climatology,
    month_pools,
    season_of,
)
from diffscale.data.climate.grid import block_centres
from diffscale.data.climate.io import canonical_variable
from diffscale.data.climate.quantile_mapping import (
    ADDITIVE,
    KINDS,
    MULTIPLICATIVE,
    empirical_quantiles,
    quantile_delta_mapping,
    quantile_mapping,
)
from diffscale.data.climate.statistics import stats_time_indices
from diffscale.data.climate.units import convert_units
from diffscale.validation import ConfigError, option_name

if TYPE_CHECKING:
    from diffscale.data.climate import ClimateDataset
    from diffscale.runs.downscaling import CoarseInput
    from diffscale.runs.run import ClimateRun

__all__ = [
    "METHODS",
    "adjustment_kinds",
    "bias_adjust",
    "compute_climatology",
    "fit_run_climatology",
    "load_climatology",
    "require_climatology",
]

METHODS = {"qm": "empirical quantile mapping (QM)", "qdm": "quantile delta mapping (QDM, Cannon et al. 2015)"}
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MULTIPLICATIVE_TRANSFORMS = ("log1p", "sqrt")


# -- the climatology -----------------------------------------------------------------------------------------------
def fit_run_climatology(
    dataset: ClimateDataset, *, levels: int = DEFAULT_LEVELS, min_times: int = DEFAULT_MIN_TIMES
) -> CoarseClimatology:
    """The coarse climatology of a training split (:class:`~diffscale.data.climate.ClimateDataset`): its coarse
    fields as the conditioning takes them (the coarse files, or the block means of the fine fields), in the units
    of the run's statistics, at the times the statistics are fitted on (every training time, or the
    ``data.stats_times`` evenly spaced ones of a long record)."""
    chosen = stats_time_indices(len(dataset), dataset.section.stats_times)
    shape = dataset.blocks_shape
    factor = dataset.section.coarsen_factor
    # a grid that is not whole blocks (data.remainder: keep) is trimmed as the run's coarse lattice is
    # (diffscale.runs.coarse_grid.coarse_lattice): of r surplus rows, ceil(r / 2) at the start
    first = ((dataset.latitude.size - shape[0] + 1) // 2, (dataset.longitude.size - shape[1] + 1) // 2)

    def read(indices: Sequence[int]) -> np.ndarray:
        cells = [dataset.assembler.coarse_cells(int(chosen[index]), shape, first).numpy() for index in indices]
        return np.stack(cells)

    return fit_coarse_climatology(
        read,
        dataset.times[chosen],
        dataset.variables,
        block_centres(dataset.latitude[first[0] : first[0] + shape[0]], factor),
        block_centres(dataset.longitude[first[1] : first[1] + shape[1]], factor),
        {name: dataset.units.get(name) for name in dataset.variables},
        levels=levels,
        min_times=min_times,
    )


def load_climatology(run_dir: str | os.PathLike) -> CoarseClimatology | None:
    """The coarse climatology saved with a run, or None when it has none (a run trained before it was saved)."""
    return CoarseClimatology.load(run_dir)


def _compute_hint(run_dir: Any) -> str:
    return f"'diffscale climatology {run_dir}' (diffscale.runs.compute_climatology in Python)"


def require_climatology(run: ClimateRun) -> CoarseClimatology:
    """The run's coarse climatology; ConfigError (one line, saying how to compute it) when it has none."""
    climatology = load_climatology(run.run_dir)
    if climatology is None:
        raise ConfigError(
            f"'{run.run_dir}' has no coarse climatology ({CLIMATOLOGY_SIDECAR}: it was trained before climatologies "
            f"were saved); compute it from the run's training data with {_compute_hint(run.run_dir)}"
        )
    return climatology


def compute_climatology(
    run: ClimateRun | str | os.PathLike, *, levels: int = DEFAULT_LEVELS, min_times: int = DEFAULT_MIN_TIMES
) -> CoarseClimatology:
    """Compute the coarse climatology of a run from its configured training data (``data.paths``, its training
    period, its statistics) and save it with the run (replacing one it has); returned as saved."""
    from diffscale.data.climate import ClimateDataset
    from diffscale.pretrained import writable_run
    from diffscale.runs.run import load_climate_run

    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise ConfigError(f"{option_name('levels')} = {levels!r}: must be an integer >= 2")
    if not isinstance(min_times, int) or isinstance(min_times, bool) or min_times < 1:
        raise ConfigError(f"{option_name('min_times')} = {min_times!r}: must be an integer >= 1")
    climate = load_climate_run(run, device="cpu") if not hasattr(run, "section") else run
    writable_run(climate.run_dir)  # a shipped model is read-only
    dataset = ClimateDataset(climate.section, "train", climate.stats)
    climatology = fit_run_climatology(dataset, levels=levels, min_times=min_times)
    climatology.save(climate.run_dir)
    return CoarseClimatology.load(climate.run_dir) or climatology


# -- adjusting -----------------------------------------------------------------------------------------------------
def adjustment_kinds(
    run: ClimateRun, variables: Sequence[str], kinds: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Additive or multiplicative per variable: as given in ``kinds``, else multiplicative for amounts (a ``log1p``
    or ``sqrt`` transform in the run's statistics, or precipitation ``tp``), additive otherwise."""
    given = dict(kinds or {})
    unknown = [name for name in given if name not in variables]
    if unknown:
        raise ConfigError(f"{option_name('kinds')}: {', '.join(map(repr, unknown))} not among {', '.join(variables)}")
    out = {}
    for name in variables:
        if name in given:
            if given[name] not in KINDS:
                raise ConfigError(f"{option_name('kinds')}[{name!r}] = {given[name]!r}: allowed: {', '.join(KINDS)}")
            out[name] = given[name]
            continue
        transform = run.stats.get(name, {}).get("transform", "standardize")
        amount = transform in MULTIPLICATIVE_TRANSFORMS or canonical_variable(name) == "tp"
        out[name] = MULTIPLICATIVE if amount else ADDITIVE
    return out


def _cells(axis_values: np.ndarray, trained: np.ndarray, axis: str, periodic: bool) -> np.ndarray:
    """For each input coordinate the index of the training coarse cell at it (within 1e-3 of the spacing)."""
    spacing = float(np.min(np.abs(np.diff(trained)))) if trained.size > 1 else 1.0
    difference = axis_values[:, None] - trained[None, :]
    if periodic:
        difference = (difference + 180.0) % 360.0 - 180.0
    nearest = np.argmin(np.abs(difference), axis=1)
    off = np.abs(difference[np.arange(axis_values.size), nearest]) > 1e-3 * spacing
    if off.any():
        raise ConfigError(
            f"coarse input {axis} {axis_values[np.argmax(off)]:g}: not the centre of a cell of the run's training "
            f"coarse grid ({trained[0]:g} .. {trained[-1]:g}, step {spacing:g}); bias adjustment is per cell: "
            "regrid the input onto the training coarse grid first"
        )
    return nearest


def _check_reference(fields: xr.Dataset, reference: Sequence[Any]) -> tuple[xr.Dataset, tuple[str, str]]:
    """The input's times within the reference period (inclusive), which must lie within the input."""
    name = option_name("reference")
    if isinstance(reference, str) or len(reference) != 2:
        raise ConfigError(f"{name} = {reference!r}: give the first and the last time (START END)")
    start, end = (str(value) for value in reference)
    times = fields["time"].values
    span = f"{time_text(times[0])} .. {time_text(times[-1])}"
    try:
        selected = fields.sel(time=slice(start, end))
        starts_inside = fields.sel(time=slice(None, start)).sizes["time"] > 0
        ends_inside = fields.sel(time=slice(end, None)).sizes["time"] > 0
    except (TypeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"{name} = {start} {end}: not ISO dates or times (e.g. 1981-01-01 2010-12-31): {reason}"
        ) from None
    if selected.sizes["time"] == 0 or not (starts_inside and ends_inside):
        raise ConfigError(
            f"{name} = {start} {end}: outside the coarse input, which covers {span}; give a reference period within it"
        )
    return selected, (time_text(selected["time"].values[0]), time_text(selected["time"].values[-1]))


def _values(fields: xr.Dataset, name: str, indices: np.ndarray) -> np.ndarray:
    """(T, h, w) float64 of variable ``name`` at the time ``indices``; ConfigError naming the time of a NaN."""
    values = np.asarray(fields[name].isel(time=indices).values, dtype=np.float64)
    bad = ~np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)
    if bad.any():
        when = time_text(fields["time"].values[indices[int(np.argmax(bad))]])
        raise ConfigError(f"coarse input: variable {name!r} has NaN/inf values at {when} ({int(bad.sum())} times)")
    return values


def _pools_text(pools: list[tuple[np.ndarray, str]], months: Sequence[int]) -> str:
    return "; ".join(f"{MONTH_NAMES[m - 1]}: {pools[m - 1][1]} ({pools[m - 1][0].size} times)" for m in months)


def bias_adjust(
    run: ClimateRun | str | os.PathLike,
    coarse: CoarseInput,
    reference: Sequence[Any],
    method: str = "qm",
    *,
    start: Any = None,
    end: Any = None,
    variables: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """The coarse input bias-adjusted onto the run's training coarse climatology (module docstring).

    Args:
        run: a climate run (or its directory) whose training period's climatology the input is mapped onto.
        coarse: the coarse input (a Dataset, a file or files), on cells of the run's training coarse grid.
        reference: (START, END), the input's reference period (inclusive; ISO dates or times), within the input:
            for QM the input's distribution there is mapped onto the climatology; for QDM the change from it is kept.
        method: ``qm`` or ``qdm``.
        start, end: the times to adjust and return (default: all of the input).
        variables: the variables to adjust (default: all of the run's); the others are returned as given (in the
            run's units).
        kinds: ``{variable: "additive" | "multiplicative"}`` to override :func:`adjustment_kinds`.

    Returns:
        The run's variables at the times between ``start`` and ``end``, float32, in the run's units, on the input's
        cells; attributes record the method, the reference period, the climatology and the pools used.

    Raises:
        ConfigError: an unknown method, a run without climatology (saying how to compute it), a variable the run
            does not have, a reference period outside the input, cells off the training coarse grid, NaNs.
    """
    from diffscale.runs.downscaling import coarse_fields
    from diffscale.runs.run import ClimateRun, load_climate_run

    if method not in METHODS:
        raise ConfigError(f"{option_name('method')} = {method!r}: allowed: {', '.join(METHODS)}")
    climate = run if isinstance(run, ClimateRun) else load_climate_run(run, device="cpu")
    run_variables = list(climate.section.variables)
    chosen = list(run_variables if variables is None else variables)
    missing = [name for name in chosen if name not in run_variables]
    if missing:
        raise ConfigError(
            f"{option_name('variables')}: '{climate.run_dir}' has no variable {', '.join(map(repr, missing))} "
            f"(it models {', '.join(run_variables)})"
        )
    kind_of = adjustment_kinds(climate, chosen, kinds)
    climatology = require_climatology(climate)
    fields, source = coarse_fields(coarse, run_variables, what="coarse")
    fields = convert_units(fields, climatology.units, run_variables, source=option_name("coarse"))
    reference_fields, period = _check_reference(fields, reference)
    target, _ = coarse_fields(fields, run_variables, start, end, what="coarse")
    rows = _cells(fields["latitude"].values, climatology.latitude, "latitude", periodic=False)
    columns = _cells(fields["longitude"].values, climatology.longitude, "longitude", periodic=True)
    reference_pools = month_pools(calendar_months(reference_fields["time"].values), climatology.min_times)
    target_months = calendar_months(target["time"].values)
    target_pools = month_pools(target_months, climatology.min_times)
    present = sorted({int(month) for month in target_months})
    _check_seasons(present, climatology, calendar_months(reference_fields["time"].values), climate.run_dir)
    adjusted: dict[str, np.ndarray] = {}
    for name in chosen:
        out = np.empty((target.sizes["time"], rows.size, columns.size), dtype=np.float32)
        for month in present:
            here = np.flatnonzero(target_months == month)
            observed = climatology.quantiles[name][month - 1][:, rows][:, :, columns]
            model = empirical_quantiles(
                _values(reference_fields, name, reference_pools[month - 1][0]), climatology.levels
            )
            values = _values(target, name, here)
            if method == "qm":
                result = quantile_mapping(values, model, observed, climatology.levels, kind_of[name])
            else:
                projected = empirical_quantiles(_values(target, name, target_pools[month - 1][0]), climatology.levels)
                result = quantile_delta_mapping(values, projected, model, observed, climatology.levels, kind_of[name])
            out[here] = result.astype(np.float32)
        adjusted[name] = out
    data_vars = {}
    for name in run_variables:
        attrs = dict(target[name].attrs)
        if climatology.units.get(name):
            attrs["units"] = climatology.units[name]
        if name in adjusted:
            attrs["bias_adjustment"] = f"{method.upper()}, {kind_of[name]}"
            values: Any = adjusted[name]
        else:
            attrs["bias_adjustment"] = "none (as given)"
            values = np.asarray(target[name].values, dtype=np.float32)
        data_vars[name] = (("time", "latitude", "longitude"), values, attrs)
    climatology_text = (
        f"{Path(climatology.source or climate.run_dir).resolve() / CLIMATOLOGY_SIDECAR}: {climatology.levels.size} "
        f"quantiles per coarse cell and calendar month of the training coarse fields {climatology.period[0]} .. "
        f"{climatology.period[1]} ({_pools_text(_climatology_pools(climatology), present)})"
    )
    attributes = {
        **{key: value for key, value in target.attrs.items() if key != "history"},
        "bias_adjustment": METHODS[method],
        "bias_adjustment_method": method,
        "bias_reference_period": f"{period[0]} .. {period[1]}",
        "bias_reference_pools": _pools_text(reference_pools, present),
        "bias_climatology": climatology_text,
        "bias_adjusted_variables": ", ".join(f"{name} ({kind_of[name]})" for name in chosen),
        "bias_adjusted_input": source,
    }
    if method == "qdm":
        attributes["bias_adjusted_period_pools"] = _pools_text(target_pools, present)
    return xr.Dataset(
        data_vars,
        coords={
            "time": target["time"].values,
            "latitude": target["latitude"].values,
            "longitude": target["longitude"].values,
        },
        attrs=attributes,
    )


def _check_seasons(
    months: Sequence[int], climatology: CoarseClimatology, reference_months: np.ndarray, run_dir: Any
) -> None:
    """Each month adjusted needs training times and reference times in its season (else another season's
    distribution would stand for it): ConfigError naming the month otherwise."""
    for month in months:
        season = SEASONS[season_of(month)]
        if sum(climatology.month_counts[other - 1] for other in season) == 0:
            raise ConfigError(
                f"'{run_dir}' has no training times in {season_of(month)}: its climatology cannot stand for "
                f"{MONTH_NAMES[month - 1]}, which the coarse input holds (adjust the months of its training seasons "
                "only)"
            )
        if not np.isin(reference_months, season).any():
            raise ConfigError(
                f"{option_name('reference')}: no reference times in {season_of(month)}, the season of "
                f"{MONTH_NAMES[month - 1]}, which is adjusted; give a reference period that covers the months adjusted"
            )


def _climatology_pools(climatology: CoarseClimatology) -> list[tuple[np.ndarray, str]]:
    """The climatology's pools in :func:`month_pools`' layout (sizes only), for :func:`_pools_text`."""
    return [(np.empty(count), label) for count, label in zip(climatology.counts, climatology.pools, strict=True)]
