"""Evaluating a downscaled ensemble without a fine truth: what ``diffscale evaluate`` does without ``--truth``,
e.g. for an ERA5-trained model applied to a climate model's output.

>>> scores = diffscale.evaluate("ensemble.nc")                        # the coarse input and run its attributes name
>>> scores = diffscale.evaluate(ensemble_ds, coarse=coarse_ds, run="runs/era5_uk")

For every variable of the ensemble (dims member, time, latitude, longitude):

* coarse consistency (:func:`~diffscale.evaluation.consistency.coarse_consistency`): bias and RMSE of each
  member's area-weighted f x f block means against the coarse input it was given (0 for an ensemble that keeps the
  coarse field; the coarse input is ``coarse``, else the file(s) recorded in the ensemble's ``coarse_input``
  attribute), in the ensemble's units (converted through the units attributes, or refused);
* the extrapolation share: the per-time share of the area where the coarse input lay outside the run's training
  range (``<variable>_outside_training_range``, written by downscaling), its mean and maximum and the number of
  times over the warning threshold;
* the physical range (:mod:`~diffscale.data.climate.plausibility`): how many member values lie outside the
  variable's plausible range (and the count the ensemble records);
* the members' mean power spectrum over the run's training-period fine climatology
  (:mod:`~diffscale.evaluation.consistency`, :mod:`~diffscale.runs.climatology`): per shell and its mean above the
  coarse Nyquist wavenumber (1: the small scales are as energetic as in training). The run is ``run``, else the
  ensemble's ``run_dir`` attribute; without a readable run the comparison is left out and the report says why.

The inputs' grids, times, variables and units are checked before anything is read, their values (NaN, the coarse
input's physical range) as each block of times is read (ConfigError, one line, nothing written);
:func:`evaluate_truth_free_sources` reads the record block by block over time and merges running sums (the scores
of every time at once, :func:`evaluate_without_truth`, to rounding), and :func:`write_truth_free_report` writes
``scores.json`` and a spectrum-ratio figure per variable.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffscale.data.climate.extrapolation import EXTRAPOLATION_SUFFIXES, WARN_OUTSIDE_FRACTION
from diffscale.data.climate.plausibility import OUTSIDE_COUNT_ATTRIBUTE, count_outside, output_range
from diffscale.evaluation.climate_report import write_scores_json
from diffscale.evaluation.consistency import (
    CoarseConsistencySums,
    coarse_consistency,
    plot_spectrum_ratio,
    spectrum_against_climatology,
)
from diffscale.evaluation.spectra import (
    coarse_nyquist_wavenumber,
    latlon_periodogram,
    latlon_power_spectrum,
    radial_average,
)
from diffscale.runs.climatology import run_fine_spectrum
from diffscale.runs.coarse_grid import check_regrid
from diffscale.runs.evaluation import (
    ENSEMBLE_DIMS,
    EnsembleSource,
    FieldsSource,
    _absolute,
    _check_exists,
    _factor,
    _finite,
    _read_checked,
    _times,
    _units,
    coarse_fields_on_blocks,
    open_ensemble,
    write_staged_report,
)
from diffscale.validation import ConfigError, option_name

__all__ = [
    "TruthFreeEvaluation",
    "TruthFreeInputs",
    "TruthFreeSources",
    "evaluate_truth_free_sources",
    "evaluate_without_truth",
    "load_truth_free_inputs",
    "open_truth_free_sources",
    "truth_free_dataset",
    "write_truth_free_report",
]

IN_MEMORY_SOURCE = "an in-memory xarray.Dataset"


@dataclass
class TruthFreeInputs:
    """The checked ensemble ``ensemble[v]`` (M, T, H, W) on an ascending grid, the coarse input ``coarse[v]``
    (T, H/f, W/f) at its times, the extrapolation share per time (when the ensemble has it), the variables'
    attributes and the run's climatological spectrum (None, with ``spectrum_source`` saying why)."""

    variables: list[str]
    units: dict[str, str]
    attributes: dict[str, dict[str, Any]]
    ensemble: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]
    latitude: np.ndarray
    longitude: np.ndarray
    times: np.ndarray
    factor: int
    sources: dict[str, Any]
    extrapolation: dict[str, np.ndarray] = field(default_factory=dict)
    climatology: dict[str, Any] | None = None
    spectrum_source: str = ""

    @property
    def members(self) -> int:
        """M, the ensemble size."""
        return next(iter(self.ensemble.values())).shape[0]

    def describe(self) -> str:
        """One line: members, times, grid, where the coarse input and the climatology come from."""
        return (
            f"checking {self.members} members at {self.times.size} times on a {self.latitude.size} x "
            f"{self.longitude.size} grid without a truth; coarse input: {self.sources['coarse']}; training "
            f"spectrum: {self.spectrum_source}"
        )


def _recorded_coarse(dataset: xr.Dataset, where: str) -> list[str]:
    """The coarse input files an ensemble's ``coarse_input`` attribute names; ConfigError when it names none that
    can be read (then ``coarse`` must be given)."""
    recorded = str(dataset.attrs.get("coarse_input", "")).strip()
    way_out = f"pass the coarse input it was downscaled from ({option_name('coarse')})"
    if not recorded or recorded == IN_MEMORY_SOURCE:
        what = "records no coarse input file" if not recorded else "was downscaled from an in-memory Dataset"
        raise ConfigError(f"ensemble {where} {what}: {way_out}")
    paths = [part.strip() for part in recorded.split(", ") if part.strip()]
    missing = [path for path in paths if not glob.has_magic(path) and not Path(path).exists()]
    if missing:
        raise ConfigError(f"ensemble {where}: its coarse input {missing[0]} does not exist (any more): {way_out}")
    return paths


@dataclass
class TruthFreeSources:
    """The checked ensemble and coarse input of :func:`open_truth_free_sources`, not read yet: ``ensemble[v]``
    (M, T, H, W) and ``coarse[v]`` (T, H/f, W/f) lazy, ``extrapolation[v]`` the lazy per-time share (when the
    ensemble has it); :meth:`read` reads a span of times as :class:`TruthFreeInputs`."""

    variables: list[str]
    units: dict[str, str]
    attributes: dict[str, dict[str, Any]]
    ensemble: dict[str, xr.DataArray]
    coarse: dict[str, xr.DataArray]
    latitude: np.ndarray
    longitude: np.ndarray
    times: np.ndarray
    factor: int
    sources: dict[str, Any]
    where: str
    coarse_where: str
    extrapolation: dict[str, xr.DataArray] = field(default_factory=dict)
    climatology: dict[str, Any] | None = None
    spectrum_source: str = ""

    @property
    def members(self) -> int:
        """M, the ensemble size."""
        return int(next(iter(self.ensemble.values())).sizes["member"])

    def describe(self) -> str:
        """One line: members, times, grid, where the coarse input and the climatology come from."""
        return (
            f"checking {self.members} members at {self.times.size} times on a {self.latitude.size} x "
            f"{self.longitude.size} grid without a truth; coarse input: {self.sources['coarse']}; training "
            f"spectrum: {self.spectrum_source}"
        )

    def read(self, start: int = 0, stop: int | None = None) -> TruthFreeInputs:
        """The times ``start:stop`` (every time by default) read (float64) and checked: ConfigError for NaN in
        the ensemble, NaN or a value outside the physical range in the coarse input."""
        span = slice(start, stop)
        times = self.times[span]
        values = {
            name: _finite(
                np.asarray(self.ensemble[name].isel(time=span).values, dtype=np.float64),
                name,
                f"ensemble {self.where}",
                times,
            )
            for name in self.variables
        }
        coarse = {
            name: _read_checked(self.coarse[name].isel(time=span), name, times, self.coarse_where)
            for name in self.variables
        }
        extrapolation = {
            name: np.asarray(share.isel(time=span).values, dtype=np.float64).reshape(-1)
            for name, share in self.extrapolation.items()
        }
        return TruthFreeInputs(
            variables=self.variables,
            units=self.units,
            attributes=self.attributes,
            ensemble=values,
            coarse=coarse,
            latitude=self.latitude,
            longitude=self.longitude,
            times=times,
            factor=self.factor,
            sources=self.sources,
            extrapolation=extrapolation,
            climatology=self.climatology,
            spectrum_source=self.spectrum_source,
        )


def open_truth_free_sources(
    ensemble: EnsembleSource,
    coarse: FieldsSource | None = None,
    variables: Sequence[str] | None = None,
    coarsening_factor: int | None = None,
    run: str | os.PathLike | None = None,
    regrid: str = "conservative",
) -> TruthFreeSources:
    """Open and check the ensemble and its coarse input (grids, times, variables, units), reading no field yet, and
    find the run's climatological spectrum. A coarse input off the ensemble's coarse cells is regridded onto them
    by ``regrid`` (``conservative``, ``bilinear``; ``none`` refuses it). The values are checked as they are read
    (:meth:`TruthFreeSources.read`).

    Raises:
        ConfigError: a missing file or variable, a coarse input that is not on the ensemble's blocks (nor
            regridded onto them, or does not cover them), lacks a time or is in units that do not convert, or no
            coarse input.
    """
    regrid = check_regrid(regrid)
    _check_exists(ensemble, "ensemble")
    _check_exists(coarse, "coarse")
    where, dataset, names = open_ensemble(ensemble, variables)
    latitude = np.asarray(dataset.latitude, dtype=np.float64)
    longitude = np.asarray(dataset.longitude, dtype=np.float64)
    times = _times(dataset.time.values)
    factor = _factor(dataset, coarsening_factor, where)
    coarse_source: FieldsSource = coarse if coarse is not None else _recorded_coarse(dataset, where)
    units = {name: _units(dataset, name) for name in names}
    members: dict[str, xr.DataArray] = {}
    extrapolation: dict[str, xr.DataArray] = {}
    for name in names:
        values = dataset[name]
        if "time" not in values.dims:
            values = values.expand_dims("time")
        members[name] = values.transpose(*ENSEMBLE_DIMS)
        share = f"{name}{EXTRAPOLATION_SUFFIXES[0]}"
        if share in dataset.data_vars:
            extrapolation[name] = dataset[share]
    coarse_fields, factor, _, coarse_where = coarse_fields_on_blocks(
        coarse_source, names, units, latitude, longitude, factor, times, where, regrid
    )
    run_dir = run if run is not None else dataset.attrs.get("run_dir")
    climatology, spectrum_source = (None, "no run given and the ensemble names none")
    if run_dir is not None:
        climatology, spectrum_source = run_fine_spectrum(run_dir)
    return TruthFreeSources(
        variables=names,
        units=units,
        attributes={name: dict(dataset[name].attrs) for name in names},
        ensemble=members,
        coarse=coarse_fields,
        latitude=latitude,
        longitude=longitude,
        times=times,
        factor=factor,
        sources={
            "ensemble": _absolute(ensemble),
            "coarse": _absolute(coarse_source)
            if not isinstance(coarse_source, str | os.PathLike)
            else [_absolute(coarse_source)],
            "run": str(Path(run_dir).resolve()) if run_dir is not None else None,
        },
        where=where,
        coarse_where=coarse_where,
        extrapolation=extrapolation,
        climatology=climatology,
        spectrum_source=spectrum_source,
    )


def load_truth_free_inputs(
    ensemble: EnsembleSource,
    coarse: FieldsSource | None = None,
    variables: Sequence[str] | None = None,
    coarsening_factor: int | None = None,
    run: str | os.PathLike | None = None,
    regrid: str = "conservative",
) -> TruthFreeInputs:
    """Every time of :func:`open_truth_free_sources` (same arguments) read and checked at once (the whole record
    in memory: :func:`evaluate_truth_free_sources` reads it block by block).

    Raises:
        ConfigError: a missing file or variable, NaNs, a coarse input that is not on the ensemble's blocks (nor
            regridded onto them, or does not cover them), lacks a time, is in units that do not convert or holds
            values outside its physical range, or no coarse input.
    """
    return open_truth_free_sources(ensemble, coarse, variables, coarsening_factor, run, regrid).read()


def _physical_range(name: str, members: np.ndarray, attributes: dict[str, Any]) -> dict[str, Any]:
    bounds = output_range(name, attributes)
    count = 0 if bounds is None else count_outside(members, bounds)
    return _range_counted(name, count, members.size, attributes)


def _range_counted(name: str, count: int, values: int, attributes: dict[str, Any]) -> dict[str, Any]:
    """The physical range's entry of scores.json: ``count`` of ``values`` member values outside it."""
    bounds = output_range(name, attributes)
    if bounds is None:
        return {
            "checked": False,
            "reason": f"no known physical range for {name!r} in units {attributes.get('units')!r}",
        }
    recorded = attributes.get(OUTSIDE_COUNT_ATTRIBUTE)
    return {
        "checked": True,
        "range": list(bounds),
        "outside_count": count,
        "outside_fraction": count / values,
        "recorded_outside_count": None if recorded is None else int(recorded),
    }


def _extrapolation(share: np.ndarray | None) -> dict[str, Any] | None:
    if share is None:
        return None
    return {
        "mean_outside_fraction": float(share.mean()),
        "max_outside_fraction": float(share.max()),
        "times_over_threshold": int((share > WARN_OUTSIDE_FRACTION).sum()),
        "threshold": WARN_OUTSIDE_FRACTION,
        "times": int(share.size),
    }


def _has_climatology(inputs: TruthFreeInputs | TruthFreeSources, name: str) -> bool:
    return inputs.climatology is not None and name in inputs.climatology.get("power", {})


def _spectrum(inputs: TruthFreeInputs, name: str) -> dict[str, Any] | None:
    if not _has_climatology(inputs, name):
        return None
    members = inputs.ensemble[name]
    wavenumber, power = latlon_power_spectrum(
        members.reshape(-1, *members.shape[2:]), inputs.latitude, inputs.longitude
    )
    return _against_climatology(inputs, name, wavenumber, power)


def _against_climatology(
    inputs: TruthFreeInputs | TruthFreeSources, name: str, wavenumber: np.ndarray, power: np.ndarray
) -> dict[str, Any]:
    """The members' spectrum (``wavenumber``, ``power``) against the run's climatology of ``name``."""
    climatology = inputs.climatology
    assert climatology is not None
    k_min = coarse_nyquist_wavenumber(inputs.latitude, inputs.longitude, inputs.factor)
    result = spectrum_against_climatology(
        wavenumber,
        power,
        np.asarray(climatology["wavenumber_per_km"]),
        np.asarray(climatology["power"][name]),
        k_min,
    )
    result["climatology_units"] = (climatology.get("units") or {}).get(name)
    reference_k = np.asarray(climatology["wavenumber_per_km"], dtype=np.float64)
    same_grid = reference_k.shape == wavenumber.shape and np.allclose(reference_k, wavenumber, rtol=1e-9, atol=0.0)
    result["grid"] = "the training grid" if same_grid else "another grid than the training grid (interpolated)"
    return result


@dataclass
class TruthFreeEvaluation:
    """The truth-free scores (``document``: the JSON of ``scores.json``) and the inputs they were computed from."""

    inputs: TruthFreeInputs | TruthFreeSources
    document: dict[str, Any]

    def dataset(self) -> xr.Dataset:
        """The scores as an ``xarray.Dataset`` (:func:`truth_free_dataset`)."""
        return truth_free_dataset(self.document)


def evaluate_without_truth(inputs: TruthFreeInputs) -> TruthFreeEvaluation:
    """The truth-free scores of every variable of checked ``inputs`` (module docstring)."""
    scores: dict[str, Any] = {}
    for name in inputs.variables:
        scores[name] = {
            "units": inputs.units[name],
            "coarse_consistency": coarse_consistency(
                inputs.ensemble[name], inputs.coarse[name], inputs.latitude, inputs.factor
            ),
            "extrapolation": _extrapolation(inputs.extrapolation.get(name)),
            "physical_range": _physical_range(name, inputs.ensemble[name], inputs.attributes[name]),
            "spectrum_vs_training": _spectrum(inputs, name),
        }
    return TruthFreeEvaluation(inputs, _document(inputs, scores))


def _document(inputs: TruthFreeInputs | TruthFreeSources, scores: dict[str, Any]) -> dict[str, Any]:
    """scores.json: the sources, sizes and the per-variable ``scores``."""
    return {
        "truth": None,
        **inputs.sources,
        "coarsening_factor": inputs.factor,
        "members": inputs.members,
        "times": {"count": int(inputs.times.size), "first": str(inputs.times[0]), "last": str(inputs.times[-1])},
        "training_spectrum": inputs.spectrum_source,
        "training_spectrum_times": (inputs.climatology or {}).get("times"),
        "area_weighting": "cos(latitude)",
        "variables": scores,
    }


@dataclass
class _VariableSums:
    """What the truth-free scores of one variable keep between blocks: the coarse consistency sums, the count of
    member values outside the physical range, the extrapolation share's sum, maximum and count over the threshold,
    and the sum over fields of the members' periodogram."""

    consistency: CoarseConsistencySums
    outside: int = 0
    values: int = 0
    share_sum: float = 0.0
    share_max: float = -np.inf
    shares_over: int = 0
    shares: int = 0
    periodogram: np.ndarray | None = None
    fields: int = 0
    frequencies: tuple[np.ndarray, np.ndarray] | None = None


def evaluate_truth_free_sources(sources: TruthFreeSources, block: int | None = None) -> TruthFreeEvaluation:
    """:func:`evaluate_without_truth` of every time of ``sources``, read ``block`` times at a time (default: about
    :data:`~diffscale.runs.blockwise_evaluation.EVALUATION_BLOCK_BYTES` of the ensemble's float64 values), so that
    memory holds one block whatever the record's length. The scores are sums over times merged across blocks:
    the coarse consistency's per-member sums of W d and W d^2 (:class:`CoarseConsistencySums`), the count of
    values outside the physical range, the extrapolation share's sum, maximum and count over the threshold, and
    the members' periodogram summed over fields (its mean over all M T fields is radially averaged at the end,
    as :func:`~diffscale.evaluation.spectra.latlon_power_spectrum` does at once): the scores of
    :func:`evaluate_without_truth` to rounding."""
    from diffscale.runs import blockwise_evaluation

    if block is None:
        per_time = 8 * sources.members * len(sources.variables) * sources.latitude.size * sources.longitude.size
        block = max(1, blockwise_evaluation.EVALUATION_BLOCK_BYTES // per_time)
    sums = {name: _VariableSums(CoarseConsistencySums(sources.latitude, sources.factor)) for name in sources.variables}
    for start in range(0, sources.times.size, block):
        inputs = sources.read(start, start + block)
        for name in sources.variables:
            members, held = inputs.ensemble[name], sums[name]
            held.consistency.add(members, inputs.coarse[name])
            bounds = output_range(name, inputs.attributes[name])
            if bounds is not None:
                held.outside += count_outside(members, bounds)
            held.values += members.size
            share = inputs.extrapolation.get(name)
            if share is not None and share.size:
                held.share_sum += float(share.sum())
                held.share_max = max(held.share_max, float(share.max()))
                held.shares_over += int((share > WARN_OUTSIDE_FRACTION).sum())
                held.shares += share.size
            if _has_climatology(inputs, name):
                fields = members.reshape(-1, *members.shape[2:])
                ky, kx, power = latlon_periodogram(fields, inputs.latitude, inputs.longitude)
                total = power * fields.shape[0]
                held.periodogram = total if held.periodogram is None else held.periodogram + total
                held.fields += fields.shape[0]
                held.frequencies = (ky, kx)
    scores: dict[str, Any] = {}
    for name in sources.variables:
        held = sums[name]
        spectrum = None
        if held.periodogram is not None and held.frequencies is not None:
            wavenumber, power = radial_average(
                *held.frequencies, held.periodogram / held.fields, sources.latitude, sources.longitude
            )
            spectrum = _against_climatology(sources, name, wavenumber, power)
        scores[name] = {
            "units": sources.units[name],
            "coarse_consistency": held.consistency.result(),
            "extrapolation": None
            if name not in sources.extrapolation
            else {
                "mean_outside_fraction": held.share_sum / held.shares,
                "max_outside_fraction": held.share_max,
                "times_over_threshold": held.shares_over,
                "threshold": WARN_OUTSIDE_FRACTION,
                "times": held.shares,
            },
            "physical_range": _range_counted(name, held.outside, held.values, sources.attributes[name]),
            "spectrum_vs_training": spectrum,
        }
    return TruthFreeEvaluation(sources, _document(sources, scores))


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def truth_free_dataset(document: dict[str, Any]) -> xr.Dataset:
    """The truth-free scores as an ``xarray.Dataset`` along ``variable`` (coordinate ``units``):
    ``coarse_rmse``, ``coarse_bias``, ``coarse_max_abs_difference`` and ``coarse_rmse_per_member`` (variable,
    member); ``extrapolation_mean_outside_fraction``, ``extrapolation_max_outside_fraction`` and
    ``extrapolation_times_over_threshold``; ``outside_range_count`` and ``outside_range_fraction`` (NaN where the
    variable has no known range); ``spectral_ratio_vs_training`` (mean above the coarse Nyquist wavenumber) and
    ``spectral_geometric_ratio_vs_training`` (NaN without the run's spectrum). The document's other entries are
    the attributes."""
    scores = document["variables"]
    names = list(scores)

    def per_variable(section: str, key: str) -> tuple[tuple[str], list[float]]:
        return ("variable",), [_number((scores[name].get(section) or {}).get(key)) for name in names]

    data = {
        "coarse_rmse": per_variable("coarse_consistency", "rmse"),
        "coarse_bias": per_variable("coarse_consistency", "bias"),
        "coarse_max_abs_difference": per_variable("coarse_consistency", "max_abs_difference"),
        "coarse_rmse_per_member": (
            ("variable", "member"),
            [scores[name]["coarse_consistency"]["rmse_per_member"] for name in names],
        ),
        "extrapolation_mean_outside_fraction": per_variable("extrapolation", "mean_outside_fraction"),
        "extrapolation_max_outside_fraction": per_variable("extrapolation", "max_outside_fraction"),
        "extrapolation_times_over_threshold": per_variable("extrapolation", "times_over_threshold"),
        "outside_range_count": per_variable("physical_range", "outside_count"),
        "outside_range_fraction": per_variable("physical_range", "outside_fraction"),
        "spectral_ratio_vs_training": per_variable("spectrum_vs_training", "mean_ratio"),
        "spectral_geometric_ratio_vs_training": per_variable("spectrum_vs_training", "geometric_mean_ratio"),
    }
    attributes: dict[str, Any] = {}
    for key, value in document.items():
        if key in ("variables", "figures") or value is None:
            continue
        if isinstance(value, dict):
            attributes.update({f"{key}_{inner}": item for inner, item in value.items()})
        elif isinstance(value, list):
            attributes[key] = ", ".join(map(str, value))
        else:
            attributes[key] = value
    coordinates = {
        "variable": names,
        "member": np.arange(int(document["members"])),
        "units": ("variable", [str(scores[name]["units"]) for name in names]),
    }
    return xr.Dataset(data, coords=coordinates, attrs=attributes)


def write_truth_free_report(out: str | os.PathLike, evaluation: TruthFreeEvaluation, *, figures: bool = True) -> Path:
    """Write ``scores.json`` and (with ``figures`` and the run's spectrum) ``<variable>_spectrum_ratio.png`` into
    the directory ``out``, staged beside it and moved into place only when all are written. Returns the path of
    scores.json."""

    def write(staging: Path) -> None:
        written = []
        for name, scores in evaluation.document["variables"].items():
            spectrum = scores.get("spectrum_vs_training")
            if figures and spectrum is not None:
                plot_spectrum_ratio(staging / f"{name}_spectrum_ratio.png", spectrum, name)
                written.append(f"{name}_spectrum_ratio.png")
        evaluation.document["figures"] = written
        write_scores_json(staging / "scores.json", evaluation.document)

    return write_staged_report(out, write)
