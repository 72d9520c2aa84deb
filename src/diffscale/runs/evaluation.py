"""Scoring a downscaled ensemble against the truth, next to the bilinear baseline: what ``diffscale evaluate`` does.

>>> scores = diffscale.evaluate("ensemble.nc", truth="era5_t2m.nc")          # files or xarray Datasets
>>> scores["rmse"].sel(variable="t2m", method="ensemble")
>>> day = diffscale.evaluate(ensemble.sel(time="2019-03-25"), truth=truth_ds, variables=["t2m"])

The ensemble (dims member, time, latitude, longitude) and the truth (any layout
:func:`diffscale.data.climate.harmonise` reads) are matched by coordinate: the truth at the ensemble's times (those
it lacks are left out and counted) and grid points (longitudes match modulo 360). The coarse input is ``coarse``
(on the grid of blocks of the ensemble's grid), else the truth's area-weighted block mean by the ensemble's
``coarsening_factor`` attribute or ``coarsening_factor``. Every input is checked before anything is computed;
bad input raises :class:`~diffscale.validation.ConfigError` (one line naming the input, variable or coordinate).

The truth and the coarse input are put in the ensemble's units through their ``units`` attributes where the
conversion is unambiguous (K and degC, m and mm, Pa and hPa: :func:`~diffscale.data.climate.units.convert_units`)
and refused otherwise; a value outside the variable's physical range is refused too
(:mod:`~diffscale.data.climate.plausibility`: 2 m temperature in degC labelled K). Without a truth,
:func:`evaluate` runs the checks that need none (:mod:`diffscale.runs.truth_free`).

Scores, area-weighted by cos(latitude) (:func:`diffscale.evaluation.climate_report.evaluate_variable`): RMSE, MAE
and bias of the ensemble mean; fair CRPS; spread and spread-skill ratio sqrt((M+1)/M) spread / RMSE; rank
histogram; radially averaged power spectra and their ratio to the truth's above the coarse Nyquist wavenumber;
errors of the 1st and 99th percentiles. Variables derived from scored ones
(:data:`~diffscale.data.climate.relations.DERIVED_VARIABLES`: the 10 m wind speed ``ws10`` from u10 and v10) are
scored like the others: the members' speeds from the members' components, the truth's from the truth's, the
baseline's from the upsampled components. With several variables (:mod:`diffscale.evaluation.multivariate`): the
energy score of the joint ensemble (the variables at a point, each scaled by the truth's standard deviation), and
for ordered pairs (tasmin <= tasmax) the fraction of points where a member breaks the order. On a global grid the
seam at the longitude wrap is measured per variable (ensemble against truth). The members as time series
(:mod:`diffscale.runs.temporal`): the autocorrelation of their residual against the truth's, their daily
aggregates and spells.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffscale.data.climate.calendars import check_times, comparable_calendars, date_keys, is_cftime, time_text
from diffscale.data.climate.coarse_regrid import contains_points
from diffscale.data.climate.grid import block_centres, is_global_longitude, select_grid
from diffscale.data.climate.io import canonical_variable, open_dataset, open_fields, select_fields
from diffscale.data.climate.plausibility import check_extremes
from diffscale.data.climate.relations import DERIVED_VARIABLES, derived_variables
from diffscale.data.climate.units import convert_units
from diffscale.evaluation.climate_report import (
    VariableEvaluation,
    coarsen_block_mean,
    evaluate_variable,
    plot_maps,
    plot_qq,
    plot_rank_histogram,
    plot_spectra,
    plot_spread_error,
    upsample_bilinear,
    write_scores_json,
)
from diffscale.evaluation.multivariate import energy_scores, order_report, seam_report
from diffscale.evaluation.spectra import grid_spacing_km
from diffscale.files import check_output
from diffscale.runs.coarse_grid import check_regrid, regrid_onto
from diffscale.runs.temporal import (
    SeriesAtPoint,
    add_temporal_scores,
    temporal_dataset_variables,
    write_temporal_figures,
)
from diffscale.validation import ConfigError, option_name

__all__ = [
    "ENSEMBLE_DIMS",
    "READ_CHUNK_BYTES",
    "EnsembleSource",
    "Evaluation",
    "EvaluationInputs",
    "EvaluationSources",
    "FieldsSource",
    "check_report_directory",
    "check_seed",
    "coarse_fields_on_blocks",
    "coarse_on_blocks",
    "evaluate",
    "evaluate_inputs",
    "evaluation_document",
    "load_inputs",
    "open_ensemble",
    "open_inputs",
    "scores_dataset",
    "write_report",
    "write_staged_report",
]

ENSEMBLE_DIMS = ("member", "time", "latitude", "longitude")
READ_CHUNK_BYTES = 2**20
"""Files are read in dask chunks of about this many bytes of one variable along time (a whole number of the
file's own chunks): a block of times reads its chunks, not a file stored in one piece."""
EnsembleSource = xr.Dataset | str | os.PathLike
"""An ensemble: an ``xarray.Dataset`` (e.g. what ``run.downscale`` returns) or a netCDF file / Zarr store."""
FieldsSource = xr.Dataset | str | os.PathLike | Sequence[str | os.PathLike]
"""Fields: an ``xarray.Dataset``, a file, or a list of files / glob patterns (combined along time)."""
PREDICTIONS = ("ensemble", "bilinear")
PERCENTILE_KEYS = ("p01", "p99")
FLATNESS_KEYS = (
    "chi2",
    "p_value",
    "p_value_time_clustered",
    "effective_cases",
    "effective_cases_time_clustered",
    "reliability_index",
    "reliability_index_calibrated",
    "outside_fraction",
    "outside_fraction_calibrated",
)
"""The rank histogram's flatness figures (:func:`~diffscale.evaluation.calibration.rank_histogram_flatness`)
stored as ``rank_<key>`` per variable."""


# -- reading and matching ------------------------------------------------------------------------------------
@dataclass
class EvaluationInputs:
    """Checked, aligned arrays: ``ensemble[v]`` (M, T, H, W), ``truth[v]``/``baseline[v]`` (T, H, W),
    ``coarse[v]`` (T, h, w) on the grid (latitude ascending) and times of the ensemble found in the truth."""

    variables: list[str]
    units: dict[str, str]
    ensemble: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]
    baseline: dict[str, np.ndarray]
    latitude: np.ndarray
    longitude: np.ndarray
    coarse_latitude: np.ndarray
    coarse_longitude: np.ndarray
    times: np.ndarray
    missing_times: int
    factor: int
    baseline_source: str
    sources: dict[str, Any]
    """How the inputs were given (paths, or a note that they were Datasets), for the report."""
    derived: dict[str, list[str]] = field(default_factory=dict)
    """Variables computed from others (name -> its sources), appended to ``variables``."""

    @property
    def modelled(self) -> list[str]:
        """The ensemble's own variables (``variables`` less the derived ones)."""
        return [name for name in self.variables if name not in self.derived]

    @property
    def periodic_longitude(self) -> bool:
        """Whether the grid goes round the globe in longitude (then its seam is measured)."""
        return is_global_longitude(self.longitude)

    @property
    def members(self) -> int:
        """M, the ensemble size."""
        return next(iter(self.ensemble.values())).shape[0]

    def grid_spacing_km(self) -> tuple[float, float]:
        """(dy, dx) of the ensemble's grid in km (ConfigError for a grid without a spacing)."""
        return _grid_spacing_km(self.latitude, self.longitude, self.sources)

    def describe(self) -> str:
        """One line: members, times, the grid and the baseline."""
        return _description(self.members, self.times, self.latitude, self.longitude, self.sources, self.baseline_source)


def _grid_spacing_km(latitude: np.ndarray, longitude: np.ndarray, sources: dict[str, Any]) -> tuple[float, float]:
    try:
        return grid_spacing_km(latitude, longitude)
    except ValueError as error:
        raise ConfigError(f"ensemble {sources['ensemble']}: {error}") from None


def _description(
    members: int, times: np.ndarray, latitude: np.ndarray, longitude: np.ndarray, sources: dict[str, Any], baseline: str
) -> str:
    dy, dx = _grid_spacing_km(latitude, longitude, sources)
    return (
        f"scoring {members} members at {times.size} times on a {latitude.size} x {longitude.size} grid "
        f"({dy:.3g} x {dx:.3g} km); baseline: {baseline}"
    )


@dataclass
class EvaluationSources:
    """The ensemble, the truth and the coarse input opened, checked and aligned, their fields not read yet:
    :meth:`read` gives the :class:`EvaluationInputs` of a block of times (its values checked, the baseline built).
    ``ensemble_fields[v]`` (M, T, H, W), ``truth_fields[v]`` (T, H, W), ``coarse_fields[v]`` (T, h, w; None: the
    truth's block mean) at the ``times`` of the ensemble found in the truth; ``where`` names each input in
    messages."""

    variables: list[str]
    units: dict[str, str]
    latitude: np.ndarray
    longitude: np.ndarray
    coarse_latitude: np.ndarray
    coarse_longitude: np.ndarray
    times: np.ndarray
    missing_times: int
    factor: int
    baseline_source: str
    sources: dict[str, Any]
    derived: dict[str, list[str]]
    ensemble_fields: dict[str, xr.DataArray]
    truth_fields: dict[str, xr.DataArray]
    coarse_fields: dict[str, xr.DataArray] | None
    where: dict[str, str]

    @property
    def modelled(self) -> list[str]:
        """The ensemble's own variables (``variables`` less the derived ones)."""
        return [name for name in self.variables if name not in self.derived]

    @property
    def members(self) -> int:
        """M, the ensemble size."""
        return int(next(iter(self.ensemble_fields.values())).sizes["member"])

    def grid_spacing_km(self) -> tuple[float, float]:
        """(dy, dx) of the ensemble's grid in km (ConfigError for a grid without a spacing)."""
        return _grid_spacing_km(self.latitude, self.longitude, self.sources)

    def describe(self) -> str:
        """One line: members, times, the grid and the baseline."""
        return _description(self.members, self.times, self.latitude, self.longitude, self.sources, self.baseline_source)

    def read(self, start: int = 0, stop: int | None = None) -> EvaluationInputs:
        """The inputs at times ``start`` to ``stop`` (default: all), read and checked: ConfigError for NaN, or a
        truth or coarse value outside the variable's physical range; the coarse field (the truth's block mean
        without a coarse input), the bilinear baseline and the derived variables are computed from them."""
        span = slice(start, stop)
        times = self.times[span]
        ensemble: dict[str, np.ndarray] = {}
        truth: dict[str, np.ndarray] = {}
        coarse: dict[str, np.ndarray] = {}
        for name in self.modelled:
            values = np.asarray(self.ensemble_fields[name].isel(time=span).values, dtype=np.float64)
            ensemble[name] = _finite(values, name, self.where["ensemble"], times)
            truth[name] = _read_checked(self.truth_fields[name].isel(time=span), name, times, self.where["truth"])
        for name in self.modelled:
            if self.coarse_fields is not None:
                field = self.coarse_fields[name].isel(time=span)
                coarse[name] = _read_checked(field, name, times, self.where["coarse"])
            else:
                coarse[name] = coarsen_block_mean(truth[name], self.latitude, self.factor)
        periodic = is_global_longitude(self.longitude)
        baseline = {
            name: upsample_bilinear(coarse[name], self.factor, periodic_longitude=periodic) for name in self.modelled
        }
        for name, sources in self.derived.items():
            function = DERIVED_VARIABLES[name].function
            for values in (ensemble, truth, coarse, baseline):
                values[name] = function(*(values[source] for source in sources))
        return EvaluationInputs(
            variables=list(self.variables),
            units=dict(self.units),
            ensemble=ensemble,
            truth=truth,
            coarse=coarse,
            baseline=baseline,
            latitude=self.latitude,
            longitude=self.longitude,
            coarse_latitude=self.coarse_latitude,
            coarse_longitude=self.coarse_longitude,
            times=times,
            missing_times=self.missing_times,
            factor=self.factor,
            baseline_source=self.baseline_source,
            sources=self.sources,
            derived={name: list(sources) for name, sources in self.derived.items()},
        )


def _describe(source: Any) -> str:
    """How messages name an input: its file name(s), or the file an in-memory Dataset was read from."""
    if isinstance(source, xr.Dataset | xr.DataArray):
        return f"(xarray.Dataset{', from ' + str(source.encoding['source']) if 'source' in source.encoding else ''})"
    if isinstance(source, str | os.PathLike):
        return str(source)
    return ", ".join(map(str, source))


def _absolute(source: Any) -> Any:
    """A JSON-able record of an input: absolute paths, or a description of a Dataset."""
    if isinstance(source, xr.Dataset | xr.DataArray):
        return f"xarray.Dataset{' read from ' + str(source.encoding['source']) if 'source' in source.encoding else ''}"
    if isinstance(source, str | os.PathLike):
        return str(Path(source).resolve())
    return [str(Path(path).resolve()) for path in source]


def _check_exists(source: Any, what: str) -> None:
    if isinstance(source, xr.Dataset | xr.DataArray) or source is None:
        return
    for path in [source] if isinstance(source, str | os.PathLike) else source:
        if not glob.has_magic(str(path)) and not Path(path).exists():
            raise ConfigError(f"{what} file {path} does not exist")


def _ensemble_dataset(source: EnsembleSource) -> xr.Dataset:
    """The ensemble file opened lazily in dask chunks of about :data:`READ_CHUNK_BYTES` along time (a whole
    number of the file's own chunks), so that a block of times reads only its part of the file."""
    if isinstance(source, xr.Dataset):
        return source
    try:
        return open_dataset(Path(source), chunks=_ensemble_time_chunks(Path(source)))
    except ConfigError as error:
        raise ConfigError(f"ensemble: {error}") from None


def _ensemble_time_chunks(path: Path) -> dict[str, int]:
    """{"time": n}: n times of the largest ensemble variable in about :data:`READ_CHUNK_BYTES`, a multiple of its
    stored time chunk ({} without a time dimension)."""
    raw = open_dataset(path, chunks=None)
    try:
        fields = [variable for variable in raw.data_vars.values() if "time" in variable.dims]
        if not fields:
            return {}
        per_time = max(variable.dtype.itemsize * variable.size // max(1, raw.sizes["time"]) for variable in fields)
        stored = max(
            max(1, int((variable.encoding.get("preferred_chunks") or {}).get("time", 1) or 1)) for variable in fields
        )
        count = max(1, READ_CHUNK_BYTES // max(1, per_time * stored)) * stored
        return {"time": int(min(count, max(1, raw.sizes["time"])))}
    finally:
        raw.close()


def _fields_dataset(source: FieldsSource, variables: list[str], what: str) -> xr.Dataset:
    """The harmonised fields (canonical names and dims, latitude ascending) of ``variables``; ConfigError names
    ``what`` and the input."""
    names = _describe(source)
    try:
        if isinstance(source, xr.Dataset | xr.DataArray):
            dataset = select_fields(source, variables, source=f"{what} {names}")
        else:
            paths = [source] if isinstance(source, str | os.PathLike) else list(source)
            dataset = open_fields([str(path) for path in paths], variables, chunk_bytes=READ_CHUNK_BYTES)
    except ConfigError as error:
        raise ConfigError(f"{what} {names}: {error}") from None
    for name in variables:
        dims = set(dataset[canonical_variable(name)].dims)
        if dims != {"time", "latitude", "longitude"}:
            raise ConfigError(
                f"{what} {names}: variable {name!r} has dims {tuple(dataset[canonical_variable(name)].dims)}, "
                "not (time, latitude, longitude)"
            )
    return dataset


def _times(values: Any) -> np.ndarray:
    """A file's times as they are matched: datetime64 to the second, or cftime dates of their calendar as decoded
    (never converted: the truth and coarse input are matched to the ensemble by the dates' components)."""
    times = check_times(np.atleast_1d(np.asarray(values)), what="time")
    return times if is_cftime(times) else times.astype("datetime64[s]")


def _finite(values: np.ndarray, variable: str, where: str, times: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        time_axis = values.ndim - 3
        first_time = np.nonzero(bad.reshape(*values.shape[: time_axis + 1], -1).any(axis=-1))[-1][0]
        raise ConfigError(
            f"{where}: variable {variable!r} holds {int(bad.sum())} NaN or infinite values "
            f"(first at time {time_text(times[first_time], unit='s')})"
        )
    return values


def _ensemble_variables(dataset: xr.Dataset, requested: Sequence[str] | None, where: str) -> list[str]:
    """The ensemble variables to score: ``requested`` (a derived variable the ensemble lacks stands for its
    sources, from which it is derived again) or every variable with the ensemble's dims."""
    available = [name for name in dataset.data_vars if set(dataset[name].dims) == set(ENSEMBLE_DIMS)]
    if requested is None:
        if not available:
            raise ConfigError(f"ensemble {where}: no data variable with dims {ENSEMBLE_DIMS}")
        return [str(name) for name in available]
    expanded: list[str] = []
    for name in requested:
        derived = DERIVED_VARIABLES.get(name)
        if name not in dataset.data_vars and derived is not None and set(derived.sources) <= set(available):
            expanded += derived.sources
        else:
            expanded.append(name)
    requested = expanded
    for name in requested:
        if name not in dataset.data_vars:
            raise ConfigError(
                f"ensemble {where} has no variable {name!r}; it has: {', '.join(map(str, dataset.data_vars))}"
            )
        if name not in available:
            raise ConfigError(
                f"ensemble {where}: variable {name!r} has dims {tuple(dataset[name].dims)}, not {ENSEMBLE_DIMS}"
            )
    return list(dict.fromkeys(requested))


def _factor(dataset: xr.Dataset, override: int | None, where: str) -> int | None:
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int | np.integer) or override < 1:
            raise ConfigError(f"{option_name('coarsening_factor')} = {override}: must be an integer >= 1")
        return int(override)
    value = dataset.attrs.get("coarsening_factor")
    if value is None:
        return None
    try:
        factor = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"ensemble {where}: attribute coarsening_factor = {value!r} is not an integer") from None
    if factor < 1 or factor != float(np.asarray(value)):
        raise ConfigError(f"ensemble {where}: attribute coarsening_factor = {value!r} must be an integer >= 1")
    return factor


def _check_divisible(height: int, width: int, factor: int, where: str) -> None:
    if height % factor or width % factor:
        raise ConfigError(
            f"ensemble {where}: its {height} x {width} grid is not divisible by the coarsening factor {factor}"
        )


def _units(dataset: xr.Dataset, name: str) -> str:
    return str(dataset[name].attrs.get("units", ""))


def open_ensemble(ensemble: EnsembleSource, variables: Sequence[str] | None) -> tuple[str, xr.Dataset, list[str]]:
    """(its description, the ensemble as a Dataset with latitude ascending, the variables to score); ConfigError
    when a variable or a time, latitude or longitude coordinate is missing."""
    where = _describe(ensemble)
    dataset = _ensemble_dataset(ensemble)
    names = _ensemble_variables(dataset, variables, where)
    for coordinate in ("time", "latitude", "longitude"):
        if coordinate not in dataset.coords:
            raise ConfigError(f"ensemble {where} has no {coordinate!r} coordinate")
    if dataset.sizes["latitude"] > 1 and float(dataset.latitude[0]) > float(dataset.latitude[-1]):
        dataset = dataset.sortby("latitude")
    return where, dataset, names


def open_inputs(
    ensemble: EnsembleSource,
    truth: FieldsSource,
    coarse: FieldsSource | None = None,
    variables: Sequence[str] | None = None,
    coarsening_factor: int | None = None,
    regrid: str = "conservative",
) -> EvaluationSources:
    """Open, check and align the ensemble, the truth and the coarse input, reading no field yet: their times,
    grids, variables and units are checked here, their values block by block by :meth:`EvaluationSources.read`
    (which builds the bilinear baseline).

    A coarse input whose points do not include the ensemble's coarse cell centres (the block centres of its grid)
    is regridded onto them by ``regrid`` (``conservative``, the default, or ``bilinear``:
    :mod:`~diffscale.data.climate.coarse_regrid`); ``none`` requires them.

    Raises ConfigError on a missing file or variable, grids that do not match, NaNs, units that do not convert to
    the ensemble's, a truth or coarse value outside the variable's physical range, no common time, a grid that is
    not divisible by the coarsening factor, or a coarse input to be regridded that does not cover the ensemble's
    coarse cells.
    """
    regrid = check_regrid(regrid)
    for source, what in ((ensemble, "ensemble"), (truth, "truth"), (coarse, "coarse")):
        _check_exists(source, what)
    ensemble_where, ensemble_ds, names = open_ensemble(ensemble, variables)
    latitude = np.asarray(ensemble_ds.latitude, dtype=np.float64)
    longitude = np.asarray(ensemble_ds.longitude, dtype=np.float64)
    ensemble_times = _times(ensemble_ds.time.values)
    factor = _factor(ensemble_ds, coarsening_factor, ensemble_where)

    truth_where = "truth " + _describe(truth)
    truth_ds = _fields_dataset(truth, names, "truth")
    truth_times = _times(truth_ds.time.values)
    comparable_calendars(ensemble_times, truth_times, truth_where)
    ensemble_keys, truth_keys = date_keys(ensemble_times), date_keys(truth_times)
    common = np.isin(ensemble_keys, truth_keys)
    if not common.any():
        raise ConfigError(
            f"{truth_where}: no time in common with the ensemble (ensemble {time_text(ensemble_times[0], 's')} to "
            f"{time_text(ensemble_times[-1], 's')}, truth {time_text(truth_times.min(), 's')} to "
            f"{time_text(truth_times.max(), 's')})"
        )
    times = ensemble_times[common]
    truth_ds = select_grid(truth_ds, latitude, longitude, truth_where)
    truth_position = {key: index for index, key in reversed(list(enumerate(truth_keys.tolist())))}
    truth_time_index = np.array([truth_position[key] for key in ensemble_keys[common].tolist()])

    units = {name: _units(ensemble_ds, name) for name in names}
    truth_ds = _in_units(truth_ds, names, units, truth_where)
    ensemble_fields: dict[str, xr.DataArray] = {}
    truth_fields: dict[str, xr.DataArray] = {}
    for name in names:
        members_field = ensemble_ds[name]
        if "time" not in members_field.dims:
            members_field = members_field.expand_dims("time")
        ensemble_fields[name] = members_field.transpose(*ENSEMBLE_DIMS).isel(time=np.nonzero(common)[0])
        truth_field = truth_ds[canonical_variable(name)].transpose("time", "latitude", "longitude")
        truth_fields[name] = truth_field.isel(time=truth_time_index)
    height, width = latitude.size, longitude.size
    coarse_fields: dict[str, xr.DataArray] | None = None
    coarse_where = ""
    if coarse is not None:
        coarse_fields, factor, regridded, coarse_where = coarse_fields_on_blocks(
            coarse, names, units, latitude, longitude, factor, times, ensemble_where, regrid
        )
        baseline_source = f"bilinear upsampling of {_describe(coarse)}{regridded}"
    else:
        if factor is None:
            raise ConfigError(
                f"ensemble {ensemble_where} has no coarsening_factor attribute: "
                f"pass {option_name('coarsening_factor')} or {option_name('coarse')}"
            )
        _check_divisible(height, width, factor, ensemble_where)
        baseline_source = f"bilinear upsampling of the truth coarsened {factor}x (area-weighted block mean)"
    coarse_latitude, coarse_longitude = block_centres(latitude, factor), block_centres(longitude, factor)
    derived = {item.name: list(item.sources) for item in derived_variables(names)}
    for name, sources in derived.items():
        units[name] = units[sources[0]]
    return EvaluationSources(
        variables=names + list(derived),
        units=units,
        latitude=latitude,
        longitude=longitude,
        coarse_latitude=coarse_latitude,
        coarse_longitude=coarse_longitude,
        times=times,
        missing_times=int((~common).sum()),
        factor=factor,
        baseline_source=baseline_source,
        sources={
            "ensemble": _absolute(ensemble),
            "truth": _absolute(truth) if not isinstance(truth, str | os.PathLike) else [_absolute(truth)],
            "coarse": _absolute(coarse) if coarse is not None else None,
        },
        derived=derived,
        ensemble_fields=ensemble_fields,
        truth_fields=truth_fields,
        coarse_fields=coarse_fields,
        where={"ensemble": f"ensemble {ensemble_where}", "truth": truth_where, "coarse": coarse_where},
    )


def load_inputs(
    ensemble: EnsembleSource,
    truth: FieldsSource,
    coarse: FieldsSource | None = None,
    variables: Sequence[str] | None = None,
    coarsening_factor: int | None = None,
    regrid: str = "conservative",
) -> EvaluationInputs:
    """Read, check and align the ensemble, the truth and the coarse input and build the bilinear baseline, every
    time at once (:func:`open_inputs` with the same arguments, then all of its times read)."""
    return open_inputs(ensemble, truth, coarse, variables, coarsening_factor, regrid).read()


def coarse_fields_on_blocks(
    coarse: FieldsSource,
    names: Sequence[str],
    units: dict[str, str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    factor: int | None,
    times: np.ndarray,
    ensemble_where: str,
    regrid: str = "conservative",
) -> tuple[dict[str, xr.DataArray], int, str, str]:
    """The coarse input's fields ``names`` (T, h, w), not read yet, at ``times`` on the grid of f x f blocks of
    the ensemble's ``latitude`` x ``longitude`` (ascending), in the ensemble's ``units``, f (``factor``, or the
    ratio of the two grids' sizes when None), the regridding applied (``, regridded ...``, or empty) and how
    messages name the input: an input off those blocks is regridded onto them (``regrid``: ``conservative`` or
    ``bilinear``; ``none`` refuses it). Its values are checked when read (:func:`coarse_on_blocks`).

    Raises:
        ConfigError: a missing variable or time, a grid that is not the ensemble's blocks (and is not regridded, or
            does not cover them), units that do not convert.
    """
    height, width = latitude.size, longitude.size
    coarse_ds = _fields_dataset(coarse, list(names), "coarse input")
    coarse_where = f"coarse input {_describe(coarse)}"
    if factor is None:  # the coarse file covers the ensemble's domain: the factor is the ratio of the sizes
        h, w = coarse_ds.sizes["latitude"], coarse_ds.sizes["longitude"]
        if not (h and w and height % h == 0 and width % w == 0 and height // h == width // w):
            raise ConfigError(
                f"{coarse_where}: its {h} x {w} grid does not coarsen the ensemble's {height} x {width} grid "
                f"by one integer factor (pass {option_name('coarsening_factor')})"
            )
        factor = height // h
    _check_divisible(height, width, factor, ensemble_where)
    coarse_latitude, coarse_longitude = block_centres(latitude, factor), block_centres(longitude, factor)
    regridded = ""
    points = coarse_ds["latitude"].values, coarse_ds["longitude"].values
    if regrid != "none" and not contains_points(*points, coarse_latitude, coarse_longitude):
        regridding = regrid_onto(
            coarse_ds,
            coarse,
            coarse_latitude,
            coarse_longitude,
            regrid,
            what=coarse_where,
            domain=f"the ensemble's {coarse_latitude.size} x {coarse_longitude.size} coarse cells",
        )
        coarse_ds = regridding.apply(coarse_ds)
        regridded = f", {regridding.describe()}"
    coarse_ds = select_grid(coarse_ds, coarse_latitude, coarse_longitude, f"{coarse_where} (coarsened {factor}x)")
    coarse_times = _times(coarse_ds.time.values)
    comparable_calendars(times, coarse_times, coarse_where)
    time_keys, coarse_keys = date_keys(times), date_keys(coarse_times)
    missing = ~np.isin(time_keys, coarse_keys)
    if missing.any():
        raise ConfigError(
            f"{coarse_where}: {int(missing.sum())} of the {times.size} evaluated times are missing "
            f"(first {time_text(times[missing][0], 's')})"
        )
    coarse_position = {key: index for index, key in reversed(list(enumerate(coarse_keys.tolist())))}
    coarse_time_index = np.array([coarse_position[key] for key in time_keys.tolist()])
    coarse_ds = _in_units(coarse_ds, list(names), units, coarse_where)
    fields = {
        name: coarse_ds[canonical_variable(name)]
        .transpose("time", "latitude", "longitude")
        .isel(time=coarse_time_index)
        for name in names
    }
    return fields, factor, regridded, coarse_where


def coarse_on_blocks(
    coarse: FieldsSource,
    names: Sequence[str],
    units: dict[str, str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    factor: int | None,
    times: np.ndarray,
    ensemble_where: str,
    regrid: str = "conservative",
) -> tuple[dict[str, np.ndarray], int, str]:
    """The fields of :func:`coarse_fields_on_blocks` (same arguments) read and checked (no NaN, values in the
    variable's physical range), with f and the regridding applied."""
    fields, factor, regridded, where = coarse_fields_on_blocks(
        coarse, names, units, latitude, longitude, factor, times, ensemble_where, regrid
    )
    return {name: _read_checked(field, name, times, where) for name, field in fields.items()}, factor, regridded


def _read_checked(field: xr.DataArray, name: str, times: np.ndarray, where: str) -> np.ndarray:
    """The values (float64) of a field (t, H, W) at ``times``; ConfigError for NaN or a value outside the
    variable's physical range."""
    values = _finite(np.asarray(field.values, dtype=np.float64), name, where, times)
    _plausible(values, name, field.attrs, times, where)
    return values


def _plausible(values: np.ndarray, name: str, attrs: dict[str, Any], times: np.ndarray, where: str) -> None:
    """ConfigError when a time of ``values`` (..., T, H, W) holds a value outside the variable's physical range
    (:func:`~diffscale.data.climate.plausibility.check_extremes`)."""
    axes = (-2, -1) if values.ndim == 3 else (0, -2, -1)
    check_extremes(name, attrs, times, values.min(axis=axes), values.max(axis=axes), where)


def _in_units(dataset: xr.Dataset, names: list[str], units: dict[str, str], where: str) -> xr.Dataset:
    """``dataset`` with each variable in the ensemble's units (converted through its ``units`` attribute where the
    conversion is unambiguous; ConfigError naming ``where``, the variable and both units otherwise). Nothing is
    asked of variables whose ensemble has no units."""
    expected = {canonical_variable(name): units[name] or None for name in names}
    return convert_units(dataset, expected, source=where)


# -- scoring ---------------------------------------------------------------------------------------------------
def check_seed(seed: Any) -> int:
    """``seed`` if it is an integer >= 0; ConfigError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"{option_name('seed')} = {seed}: must be an integer >= 0")
    return int(seed)


@dataclass
class Evaluation:
    """The scores of every variable (``document``: the JSON of ``scores.json``) and what the figures need."""

    inputs: EvaluationInputs
    variables: list[VariableEvaluation]
    document: dict[str, Any]
    series: SeriesAtPoint | None = None
    """The series the temporal figure draws, kept when ``inputs`` are a sample of the times (default: taken
    from ``inputs``)."""

    def dataset(self) -> xr.Dataset:
        """The scores as an ``xarray.Dataset`` (:func:`scores_dataset`)."""
        return scores_dataset(self.document)


def evaluation_document(
    layout: EvaluationInputs | EvaluationSources, evaluations: Sequence[VariableEvaluation], seed: int
) -> dict[str, Any]:
    """The document (scores.json) of the scores of each variable: the inputs, times, grid and seed of ``layout``
    and ``evaluations``' scores; the derived variables' sources."""
    dy, dx = layout.grid_spacing_km()
    document: dict[str, Any] = {
        **layout.sources,
        "baseline": layout.baseline_source,
        "coarsening_factor": layout.factor,
        "members": layout.members,
        "times": {
            "count": int(layout.times.size),
            "first": _time_label(layout.times[0]),
            "last": _time_label(layout.times[-1]),
            "ensemble_times_without_truth": layout.missing_times,
        },
        "grid": {
            "latitude": [float(layout.latitude[0]), float(layout.latitude[-1]), int(layout.latitude.size)],
            "longitude": [float(layout.longitude[0]), float(layout.longitude[-1]), int(layout.longitude.size)],
            "dy_km": dy,
            "dx_km": dx,
        },
        "area_weighting": "cos(latitude)",
        "seed": int(seed),
        "variables": {evaluation.name: evaluation.scores for evaluation in evaluations},
    }
    for name, sources in layout.derived.items():
        document["variables"][name]["derived_from"] = sources
    return document


def evaluate_inputs(inputs: EvaluationInputs, seed: int = 0, temporal: bool = True) -> Evaluation:
    """Score every variable of checked ``inputs``; ``seed`` breaks the ties of the rank histogram; ``temporal``
    adds the scores of the members as time series (:mod:`diffscale.runs.temporal`)."""
    check_seed(seed)
    evaluations = [
        evaluate_variable(
            name,
            inputs.ensemble[name],
            inputs.truth[name],
            inputs.baseline[name],
            inputs.latitude,
            inputs.longitude,
            inputs.factor,
            units=inputs.units[name],
            seed=int(seed),
        )
        for name in inputs.variables
    ]
    document = evaluation_document(inputs, evaluations, seed)
    if inputs.periodic_longitude:
        for name in inputs.variables:
            document["variables"][name]["seam"] = seam_report(
                inputs.ensemble[name], inputs.truth[name], inputs.baseline[name], inputs.latitude
            )
    modelled = inputs.modelled
    if len(modelled) > 1:
        document["joint"] = {
            "energy_score": energy_scores(inputs.ensemble, inputs.truth, inputs.baseline, inputs.latitude, modelled)
        }
    pairs = order_report(
        {name: inputs.ensemble[name] for name in modelled}, inputs.truth, inputs.baseline, inputs.latitude
    )
    if pairs:
        document["ordered_pairs"] = pairs
    if temporal:
        add_temporal_scores(inputs, document)
    return Evaluation(inputs, evaluations, document)


def evaluate(
    ensemble: EnsembleSource,
    truth: FieldsSource | None = None,
    coarse: FieldsSource | None = None,
    *,
    variables: Sequence[str] | None = None,
    coarsening_factor: int | None = None,
    seed: int = 0,
    regrid: str = "conservative",
    temporal: bool = True,
    run: str | os.PathLike | None = None,
) -> xr.Dataset:
    """The scores of ``ensemble`` against ``truth`` and of the bilinear baseline, as an ``xarray.Dataset``: the
    numbers ``diffscale evaluate`` writes to scores.json (:func:`scores_dataset` has the layout). Without a truth,
    the checks that need none (:mod:`diffscale.runs.truth_free`; layout:
    :func:`~diffscale.runs.truth_free.truth_free_dataset`): coarse consistency, extrapolation share, physical
    range and the spectrum against the run's training period.

    Args:
        ensemble: an ``xarray.Dataset`` with dims (member, time, latitude, longitude), or its file.
        truth: the true fields (Dataset, file or files); None: the truth-free checks.
        coarse: the coarse input the baseline upsamples (default: the truth's block mean); without a truth, the
            coarse input the ensemble was downscaled from (default: the file(s) its ``coarse_input`` attribute
            names).
        variables: the variables to score (default: every ensemble variable; a derived one, ``ws10``, brings its
            sources u10 and v10).
        coarsening_factor: fine cells per coarse cell (default: the ensemble's attribute).
        seed: seed of the random tie-breaking of ranks.
        regrid: a coarse input off the ensemble's coarse cells is regridded onto them (``conservative`` or
            ``bilinear``), or refused (``none``).
        temporal: also score the members as time series (residual autocorrelation, daily aggregates, spells:
            :func:`diffscale.runs.temporal.temporal_dataset_variables` has the variables).
        run: without a truth, the run whose training-period spectrum the members are compared with (default: the
            ensemble's ``run_dir`` attribute).
    """
    check_seed(seed)
    if truth is None:
        from diffscale.runs.truth_free import evaluate_truth_free_sources, open_truth_free_sources

        opened = open_truth_free_sources(ensemble, coarse, variables, coarsening_factor, run, regrid)
        return evaluate_truth_free_sources(opened).dataset()
    if run is not None:
        raise ConfigError(f"{option_name('run')} is for an evaluation without a truth; drop it or the truth")
    from diffscale.runs.blockwise_evaluation import evaluate_sources

    sources = open_inputs(ensemble, truth, coarse, variables, coarsening_factor, regrid)
    return evaluate_sources(sources, seed, temporal=temporal).dataset()


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def scores_dataset(document: dict[str, Any]) -> xr.Dataset:
    """The scores of an evaluation document (scores.json) as an ``xarray.Dataset``.

    Dims: ``variable``, ``prediction`` (ensemble, bilinear), ``percentile`` (p01, p99), ``rank`` (0..M) and
    ``wavenumber`` (1/km); coordinate ``units`` along ``variable``. Data: ``rmse``, ``mae``, ``bias``, ``crps``,
    ``spectral_ratio`` and ``percentile_error`` per (variable, prediction); ``spread``, ``spread_skill_ratio``,
    ``rank_histogram`` (frequencies) and ``ensemble_mean_spectral_ratio`` of the ensemble; ``power``
    (variable, spectrum, wavenumber) the radially averaged spectra of the truth, the members, the ensemble mean and
    the baseline; ``k_nyquist_coarse`` per variable; the rank histogram's flatness ``rank_chi2``, ``rank_p_value``,
    ``rank_p_value_time_clustered``, ``rank_reliability_index`` (and ``..._calibrated``, its value for a
    calibrated ensemble), ``rank_outside_fraction`` (and ``..._calibrated``, 2 / (M + 1)); the binned spread-error
    relation ``spread_error_spread``, ``spread_error_rmse``, ``spread_error_counts`` and
    ``spread_error_weight_share`` (variable, spread_bin; lowest spread first) with its summaries
    ``spread_error_mean_abs_log_ratio`` and ``spread_error_log_slope``. Coordinate ``derived_from`` along
    ``variable``: the sources of a derived variable (``u10,v10`` for ``ws10``), empty otherwise. On a global grid:
    ``seam_difference`` (variable, prediction), ``seam_difference_truth``, ``seam_ratio`` (ensemble / truth),
    ``seam_nearby_ratio`` (the same over the pairs beside the seam), ``seam_excess`` (their quotient: 1 for no
    seam) and the mean |difference| of other neighbouring columns ``interior_difference_{ensemble,truth,bilinear}``.
    With several variables: ``energy_score`` (prediction) of the joint ensemble (its variables and scales in the
    attributes ``energy_score_variables``/``energy_score_scales``). With ordered pairs: ``order_violation``
    (pair, prediction), ``order_violation_truth`` and ``order_mean_excess`` (pair), ``pair`` labelled
    ``low<=high``. The temporal scores (``autocorrelation`` (variable, lag), ``daily_max_crps``, ``spell_length``,
    ...): :func:`~diffscale.runs.temporal.temporal_dataset_variables`. The document's other entries (inputs,
    times, grid, seed) are the attributes. Missing values
    (e.g. a spread-skill ratio of one member) are NaN.
    """
    scores = document["variables"]
    names = list(scores)
    first = scores[names[0]]
    spectrum_labels = [key for key in first["spectra"] if key not in ("k_nyquist_coarse_per_km", "wavenumber_per_km")]

    def per_method(key: str) -> list[list[float]]:
        return [[_number(scores[name][prediction][key]) for prediction in PREDICTIONS] for name in names]

    data = {key: (("variable", "prediction"), per_method(key)) for key in ("rmse", "mae", "bias", "crps")}
    data["spectral_ratio"] = (
        ("variable", "prediction"),
        [
            [_number(scores[name][prediction]["spectral_ratio"]["mean_ratio"]) for prediction in PREDICTIONS]
            for name in names
        ],
    )
    data["percentile_error"] = (
        ("variable", "prediction", "percentile"),
        [
            [
                [_number(scores[name][prediction]["percentile_errors"][key]["bias"]) for key in PERCENTILE_KEYS]
                for prediction in PREDICTIONS
            ]
            for name in names
        ],
    )
    data["spread"] = (("variable",), [_number(scores[name]["ensemble"]["spread"]) for name in names])
    data["spread_skill_ratio"] = (
        ("variable",),
        [_number(scores[name]["ensemble"]["spread_skill_ratio"]) for name in names],
    )
    data["ensemble_mean_spectral_ratio"] = (
        ("variable",),
        [_number(scores[name]["ensemble"]["ensemble_mean"]["spectral_ratio"]["mean_ratio"]) for name in names],
    )
    data["rank_histogram"] = (
        ("variable", "rank"),
        [[_number(value) for value in scores[name]["ensemble"]["rank_histogram"]["frequency"]] for name in names],
    )
    data["power"] = (
        ("variable", "spectrum", "wavenumber"),
        [[[_number(value) for value in scores[name]["spectra"][label]] for label in spectrum_labels] for name in names],
    )
    data["k_nyquist_coarse"] = (
        ("variable",),
        [_number(scores[name]["spectra"]["k_nyquist_coarse_per_km"]) for name in names],
    )
    flatness = [scores[name]["ensemble"].get("rank_flatness") or {} for name in names]
    for key in FLATNESS_KEYS:
        data[f"rank_{key}"] = (("variable",), [_number(item.get(key)) for item in flatness])
    binned = [scores[name]["ensemble"].get("spread_error") or {} for name in names]
    width = max([len(item.get("spread", [])) for item in binned] + [0])
    for key in ("spread", "rmse", "counts", "weight_share"):
        data[f"spread_error_{key}"] = (
            ("variable", "spread_bin"),
            [
                [_number(value) for value in item.get(key, [])] + [math.nan] * (width - len(item.get(key, [])))
                for item in binned
            ],
        )
    for key in ("mean_abs_log_ratio", "log_slope"):
        data[f"spread_error_{key}"] = (("variable",), [_number(item.get(key)) for item in binned])
    sorted_by = {item["sorted_by"] for item in binned if item.get("sorted_by")}
    if any("seam" in scores[name] for name in names):
        seams = [scores[name].get("seam") or {} for name in names]
        data["seam_difference"] = (
            ("variable", "prediction"),
            [[_number(item.get(prediction)) for prediction in PREDICTIONS] for item in seams],
        )
        data["seam_difference_truth"] = (("variable",), [_number(item.get("truth")) for item in seams])
        data["seam_ratio"] = (("variable",), [_number(item.get("ratio")) for item in seams])
        data["seam_nearby_ratio"] = (("variable",), [_number(item.get("nearby_ratio")) for item in seams])
        data["seam_excess"] = (("variable",), [_number(item.get("excess")) for item in seams])
        for label in ("ensemble", "truth", "bilinear"):
            data[f"interior_difference_{label}"] = (
                ("variable",),
                [_number(item.get(f"{label}_interior")) for item in seams],
            )
    joint = (document.get("joint") or {}).get("energy_score")
    if joint:
        data["energy_score"] = (("prediction",), [_number(joint[prediction]) for prediction in PREDICTIONS])
    pairs = document.get("ordered_pairs") or []
    if pairs:
        data["order_violation"] = (
            ("pair", "prediction"),
            [[_number(item[prediction]) for prediction in PREDICTIONS] for item in pairs],
        )
        data["order_violation_truth"] = (("pair",), [_number(item["truth"]) for item in pairs])
        data["order_mean_excess"] = (("pair",), [_number(item["ensemble_mean_excess"]) for item in pairs])
    members = int(document["members"])
    coordinates = {
        "variable": names,
        "prediction": list(PREDICTIONS),
        "percentile": list(PERCENTILE_KEYS),
        "rank": np.arange(members + 1),
        "spectrum": spectrum_labels,
        "wavenumber": ("wavenumber", np.asarray(first["spectra"]["wavenumber_per_km"]), {"units": "km-1"}),
        "units": ("variable", [str(scores[name]["units"]) for name in names]),
        "derived_from": ("variable", [",".join(scores[name].get("derived_from", [])) for name in names]),
        "spread_bin": np.arange(width),
    }
    if pairs:
        coordinates["pair"] = [f"{item['low']}<={item['high']}" for item in pairs]
    attributes = {
        key: value
        for key, value in document.items()
        if key not in ("variables", "figures", "joint", "ordered_pairs") and value is not None
    }
    if joint:
        attributes["energy_score_variables"] = ",".join(joint["variables"])
        attributes["energy_score_scales"] = ",".join(
            f"{name}={joint['scales'][name]:.6g}" for name in joint["variables"]
        )
        attributes["energy_score_vector"] = joint["vector"]
    flat: dict[str, Any] = {}
    for key, value in attributes.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    if sorted_by:
        flat["spread_error_sorted_by"] = "; ".join(sorted(sorted_by))
    temporal_data, temporal_coordinates, temporal_attributes = temporal_dataset_variables(document)
    data.update(temporal_data)
    coordinates.update(temporal_coordinates)
    flat.update(temporal_attributes)
    return xr.Dataset(data, coords=coordinates, attrs=flat)


def _time_label(value: Any) -> str:
    """A time of the report: numpy's text of a datetime64 (``2019-03-25T06:00:00``), the same form in a cftime
    date's own calendar (``2019-02-30T06:00:00``)."""
    return time_text(value, unit="s") if is_cftime(value) else str(value)


# -- the report -----------------------------------------------------------------------------------------------
def check_report_directory(out: Path) -> Path:
    """``out`` if a report directory can be written there (:func:`diffscale.files.check_output`)."""
    return check_output(out, option_name("out"), directory=True)


def _write_files(directory: Path, evaluation: Evaluation, figures: bool) -> list[str]:
    inputs = evaluation.inputs
    written: list[str] = []
    time_label = time_text(inputs.times[0])
    for result in evaluation.variables if figures else []:
        name, units = result.name, result.units
        members = inputs.ensemble[name]
        plot_maps(
            directory / f"{name}_maps.png",
            variable=name,
            units=units,
            latitude=inputs.latitude,
            longitude=inputs.longitude,
            truth=inputs.truth[name][0],
            ensemble_mean=members[:, 0].mean(axis=0),
            spread=members[:, 0].std(axis=0, ddof=1) if members.shape[0] > 1 else np.zeros_like(members[0, 0]),
            members=members[:3, 0],
            coarse=inputs.coarse[name][0],
            coarse_latitude=inputs.coarse_latitude,
            coarse_longitude=inputs.coarse_longitude,
            bilinear=inputs.baseline[name][0],
            title=f"{name} at {time_label}",
        )
        plot_spectra(directory / f"{name}_spectra.png", result.spectra, result.k_nyquist_coarse, name, units)
        ensemble_scores = result.scores["ensemble"]
        frequency = ensemble_scores["rank_histogram"]["frequency"]
        flatness = ensemble_scores.get("rank_flatness")
        plot_rank_histogram(directory / f"{name}_rank_histogram.png", frequency, name, flatness)
        plot_qq(
            directory / f"{name}_qq.png",
            inputs.truth[name],
            {"ensemble members": members, "bilinear": inputs.baseline[name]},
            inputs.latitude,
            name,
            units,
        )
        written += [f"{name}_{kind}.png" for kind in ("maps", "spectra", "rank_histogram", "qq")]
        if ensemble_scores.get("spread_error") is not None:
            plot_spread_error(directory / f"{name}_spread_error.png", ensemble_scores["spread_error"], name, units)
            written.append(f"{name}_spread_error.png")
    if figures:
        written += write_temporal_figures(directory, inputs, evaluation.document, evaluation.series)
    return written


def write_report(out: str | os.PathLike, evaluation: Evaluation, *, figures: bool = True) -> Path:
    """Write ``scores.json`` and (with ``figures``) per variable PNG maps, spectra, rank histogram and
    quantile-quantile plot into the directory ``out``: written to a temporary directory beside it and moved into
    place only when all are done (an error leaves nothing). Returns the path of scores.json."""

    def write(staging: Path) -> None:
        evaluation.document["figures"] = _write_files(staging, evaluation, figures)
        write_scores_json(staging / "scores.json", evaluation.document)

    return write_staged_report(out, write)


def write_staged_report(out: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging)`` to fill a temporary directory beside the report directory ``out`` (checked first),
    then move every file it wrote into ``out``: an error leaves nothing. Returns the path of ``out``/scores.json."""
    out = check_report_directory(Path(out))
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        write(staging)
        out.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "scores.json"
