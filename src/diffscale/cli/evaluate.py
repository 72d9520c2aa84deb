"""``diffscale evaluate``: score a downscaled ensemble against the truth, next to the bilinear baseline.

The ensemble file (netCDF/zarr, dims (member, time, latitude, longitude)) is read whole; the truth (any file
:func:`diffscale.data.climate.io.open_fields` reads) is selected at the ensemble's times and grid points by
coordinate; the coarse input is ``--coarse FILE`` or the truth's area-weighted block mean by the ensemble's
``coarsening_factor``. Every input is checked before anything is written; bad input raises
:class:`~diffscale.validation.ConfigError` (one line naming the file, variable or coordinate; exit status 2).
The report directory then receives scores.json and PNG figures per variable, written to a temporary directory
beside it and moved into place only when all are done.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffscale.validation import ConfigError

__all__ = ["DEFAULT_OUT", "EvaluationInputs", "add_parser", "load_inputs", "run"]

DEFAULT_OUT = "report"
ENSEMBLE_DIMS = ("member", "time", "latitude", "longitude")

_DESCRIPTION = """\
Score a downscaled ensemble (dims member, time, latitude, longitude) against the truth, and the bilinear
baseline (the coarse input upsampled bilinearly) alongside it.

Scores, area-weighted by cos(latitude): RMSE, MAE and bias of the ensemble mean; fair CRPS; spread and
spread-skill ratio sqrt((M+1)/M) spread / RMSE; rank histogram; radially averaged power spectra in physical
wavenumbers and their ratio to the truth's above the coarse grid's Nyquist wavenumber; errors of the 1st
and 99th percentiles. The report directory receives scores.json and, per variable, PNG maps, spectra, rank
histogram and quantile-quantile plot; a table of the main scores is printed at the end.

The truth is selected at the ensemble's times (those it lacks are left out and counted) and grid points
(longitudes match modulo 360). The coarse input is --coarse FILE (on the grid of blocks of the ensemble's
grid), else the truth coarsened by the ensemble's coarsening_factor attribute or --coarsening-factor.

examples:
  diffscale evaluate ensemble.nc --truth era5_t2m.nc --out report/
  diffscale evaluate ensemble.nc --truth truth.grib --coarse coarse.nc --variable t2m
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a downscaled ensemble against the truth and the bilinear baseline",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ensemble", metavar="ENSEMBLE", help="ensemble file (netCDF or zarr) written by downscaling")
    parser.add_argument(
        "--truth",
        required=True,
        action="append",
        metavar="FILE",
        help="true fields: netCDF, GRIB or zarr (repeatable, glob patterns allowed; combined along time)",
    )
    parser.add_argument(
        "--coarse", metavar="FILE", default=None, help="coarse input fields (default: the truth, coarsened)"
    )
    parser.add_argument(
        "--coarsening-factor",
        type=int,
        metavar="N",
        default=None,
        help="fine cells per coarse cell along each axis (default: the ensemble's coarsening_factor attribute)",
    )
    parser.add_argument(
        "--variable",
        action="append",
        default=None,
        metavar="NAME",
        help="variable to score (repeatable; default: every data variable of the ensemble)",
    )
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"report directory (default: {DEFAULT_OUT})")
    parser.add_argument("--no-figures", action="store_true", help="write scores.json only (no PNG figures)")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the random tie-breaking of ranks (default: 0)"
    )
    parser.set_defaults(handler=run)


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


def _open_ensemble(path: Path) -> Any:
    from diffscale.data.climate.io import open_dataset

    try:
        return open_dataset(path)
    except ConfigError as error:
        raise ConfigError(f"ensemble: {error}") from None


def _open_fields(paths: Sequence[Path], variables: list[str], what: str) -> Any:
    """The harmonised fields (canonical names and dims, latitude ascending) of ``variables``, via
    :func:`diffscale.data.climate.io.open_fields`; ConfigError names ``what`` and the files."""
    from diffscale.data.climate.io import canonical_variable, open_fields

    names = ", ".join(map(str, paths))
    try:
        dataset = open_fields([str(path) for path in paths], variables)
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


def _finite(values: np.ndarray, variable: str, where: str, times: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        time_axis = values.ndim - 3
        first_time = np.nonzero(bad.reshape(*values.shape[: time_axis + 1], -1).any(axis=-1))[-1][0]
        raise ConfigError(
            f"{where}: variable {variable!r} holds {int(bad.sum())} NaN or infinite values "
            f"(first at time {np.datetime_as_string(times[first_time], unit='s')})"
        )
    return values


def _ensemble_variables(dataset: Any, requested: list[str] | None, path: Path) -> list[str]:
    available = [name for name in dataset.data_vars if set(dataset[name].dims) == set(ENSEMBLE_DIMS)]
    if requested is None:
        if not available:
            raise ConfigError(f"ensemble {path}: no data variable with dims {ENSEMBLE_DIMS}")
        return available
    for name in requested:
        if name not in dataset.data_vars:
            raise ConfigError(
                f"ensemble {path} has no variable {name!r}; it has: {', '.join(map(str, dataset.data_vars))}"
            )
        if name not in available:
            raise ConfigError(
                f"ensemble {path}: variable {name!r} has dims {tuple(dataset[name].dims)}, not {ENSEMBLE_DIMS}"
            )
    return list(dict.fromkeys(requested))


def _factor(dataset: Any, override: int | None, path: Path) -> int | None:
    if override is not None:
        if override < 1:
            raise ConfigError(f"--coarsening-factor = {override}: must be an integer >= 1")
        return override
    value = dataset.attrs.get("coarsening_factor")
    if value is None:
        return None
    try:
        factor = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"ensemble {path}: attribute coarsening_factor = {value!r} is not an integer") from None
    if factor < 1 or factor != float(np.asarray(value)):
        raise ConfigError(f"ensemble {path}: attribute coarsening_factor = {value!r} must be an integer >= 1")
    return factor


def _check_divisible(height: int, width: int, factor: int, path: Path) -> None:
    if height % factor or width % factor:
        raise ConfigError(
            f"ensemble {path}: its {height} x {width} grid is not divisible by the coarsening factor {factor}"
        )


def _units(dataset: Any, name: str) -> str:
    return str(dataset[name].attrs.get("units", ""))


def load_inputs(
    ensemble_path: Path,
    truth_paths: Sequence[Path],
    coarse_path: Path | None = None,
    variables: list[str] | None = None,
    factor: int | None = None,
) -> EvaluationInputs:
    """Read, check and align the ensemble, the truth and the coarse input; build the bilinear baseline.

    Raises ConfigError on a missing file or variable, grids that do not match, NaNs, differing units, no
    common time or a grid that is not divisible by the coarsening factor.
    """
    from diffscale.data.climate.grid import block_centres, is_global_longitude, select_grid
    from diffscale.data.climate.io import canonical_variable
    from diffscale.evaluation.climate_report import coarsen_block_mean, upsample_bilinear

    for path, what in [(ensemble_path, "ensemble"), *((p, "truth") for p in truth_paths), (coarse_path, "coarse")]:
        if path is not None and not glob.has_magic(str(path)) and not Path(path).exists():
            raise ConfigError(f"{what} file {path} does not exist")
    ensemble_ds = _open_ensemble(Path(ensemble_path))
    names = _ensemble_variables(ensemble_ds, variables, ensemble_path)
    for coordinate in ("time", "latitude", "longitude"):
        if coordinate not in ensemble_ds.coords:
            raise ConfigError(f"ensemble {ensemble_path} has no {coordinate!r} coordinate")
    if ensemble_ds.sizes["latitude"] > 1 and float(ensemble_ds.latitude[0]) > float(ensemble_ds.latitude[-1]):
        ensemble_ds = ensemble_ds.sortby("latitude")
    latitude = np.asarray(ensemble_ds.latitude, dtype=np.float64)
    longitude = np.asarray(ensemble_ds.longitude, dtype=np.float64)
    ensemble_times = np.asarray(ensemble_ds.time.values).astype("datetime64[s]")
    factor = _factor(ensemble_ds, factor, ensemble_path)

    truth_where = "truth " + ", ".join(map(str, truth_paths))
    truth_ds = _open_fields(truth_paths, names, "truth")
    truth_times = np.asarray(truth_ds.time.values).astype("datetime64[s]")
    common = np.isin(ensemble_times, truth_times)
    if not common.any():
        raise ConfigError(
            f"{truth_where}: no time in common with the ensemble (ensemble {ensemble_times[0]} to "
            f"{ensemble_times[-1]}, truth {truth_times.min()} to {truth_times.max()})"
        )
    times = ensemble_times[common]
    truth_ds = select_grid(truth_ds, latitude, longitude, truth_where)
    truth_time_index = np.array([int(np.nonzero(truth_times == time)[0][0]) for time in times])

    ensemble: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    for name in names:
        members = ensemble_ds[name].transpose(*ENSEMBLE_DIMS).isel(time=np.nonzero(common)[0])
        ensemble[name] = _finite(np.asarray(members.values, dtype=np.float64), name, f"ensemble {ensemble_path}", times)
        field = truth_ds[canonical_variable(name)].transpose("time", "latitude", "longitude")
        field = field.isel(time=truth_time_index)
        truth[name] = _finite(np.asarray(field.values, dtype=np.float64), name, truth_where, times)
        units[name] = _units(ensemble_ds, name)
        truth_units = _units(truth_ds, canonical_variable(name))
        if units[name] and truth_units and units[name] != truth_units:
            raise ConfigError(
                f"{truth_where}: variable {name!r} is in {truth_units!r}, the ensemble in {units[name]!r}"
            )

    height, width = latitude.size, longitude.size
    coarse: dict[str, np.ndarray] = {}
    if coarse_path is not None:
        coarse_ds = _open_fields([Path(coarse_path)], names, "coarse input")
        coarse_where = f"coarse input {coarse_path}"
        if factor is None:  # the coarse file covers the ensemble's domain: the factor is the ratio of the sizes
            h, w = coarse_ds.sizes["latitude"], coarse_ds.sizes["longitude"]
            if not (h and w and height % h == 0 and width % w == 0 and height // h == width // w):
                raise ConfigError(
                    f"{coarse_where}: its {h} x {w} grid does not coarsen the ensemble's {height} x {width} grid "
                    "by one integer factor (pass --coarsening-factor N)"
                )
            factor = height // h
        _check_divisible(height, width, factor, ensemble_path)
        coarse_latitude, coarse_longitude = block_centres(latitude, factor), block_centres(longitude, factor)
        coarse_ds = select_grid(coarse_ds, coarse_latitude, coarse_longitude, f"{coarse_where} (coarsened {factor}x)")
        coarse_times = np.asarray(coarse_ds.time.values).astype("datetime64[s]")
        missing = ~np.isin(times, coarse_times)
        if missing.any():
            raise ConfigError(
                f"{coarse_where}: {int(missing.sum())} of the {times.size} evaluated times are missing "
                f"(first {times[missing][0]})"
            )
        c_time = np.array([int(np.nonzero(coarse_times == time)[0][0]) for time in times])
        for name in names:
            field = coarse_ds[canonical_variable(name)].transpose("time", "latitude", "longitude")
            field = field.isel(time=c_time)
            coarse[name] = _finite(np.asarray(field.values, dtype=np.float64), name, coarse_where, times)
            coarse_units = _units(coarse_ds, canonical_variable(name))
            if units[name] and coarse_units and units[name] != coarse_units:
                raise ConfigError(
                    f"{coarse_where}: variable {name!r} is in {coarse_units!r}, the ensemble in {units[name]!r}"
                )
        source = f"bilinear upsampling of {coarse_path}"
    else:
        if factor is None:
            raise ConfigError(
                f"ensemble {ensemble_path} has no coarsening_factor attribute: "
                "pass --coarsening-factor N or --coarse FILE"
            )
        _check_divisible(height, width, factor, ensemble_path)
        coarse_latitude, coarse_longitude = block_centres(latitude, factor), block_centres(longitude, factor)
        for name in names:
            coarse[name] = coarsen_block_mean(truth[name], latitude, factor)
        source = f"bilinear upsampling of the truth coarsened {factor}x (area-weighted block mean)"
    periodic = is_global_longitude(longitude)
    baseline = {name: upsample_bilinear(coarse[name], factor, periodic_longitude=periodic) for name in names}
    return EvaluationInputs(
        variables=names,
        units=units,
        ensemble=ensemble,
        truth=truth,
        coarse=coarse,
        baseline=baseline,
        latitude=latitude,
        longitude=longitude,
        coarse_latitude=coarse_latitude,
        coarse_longitude=coarse_longitude,
        times=times,
        missing_times=int((~common).sum()),
        factor=factor,
        baseline_source=source,
    )


# -- the report ------------------------------------------------------------------------------------------------
def _check_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    parent = out.resolve().parent
    if parent.exists() and not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write into {parent}")
    return out


def _format(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _table(name: str, units: str, scores: dict[str, Any], members: int, times: int) -> str:
    ensemble, bilinear = scores["ensemble"], scores["bilinear"]
    unit = f" [{units}]" if units else ""
    rows = [
        (f"RMSE{unit}", ensemble["rmse"], bilinear["rmse"]),
        (f"MAE{unit}", ensemble["mae"], bilinear["mae"]),
        (f"bias{unit}", ensemble["bias"], bilinear["bias"]),
        (f"CRPS{unit}", ensemble["crps"], bilinear["crps"]),
        (f"spread{unit}", ensemble["spread"], None),
        ("spread-skill ratio", ensemble["spread_skill_ratio"], None),
        (
            "spectral ratio > coarse Nyquist",
            ensemble["spectral_ratio"]["mean_ratio"],
            bilinear["spectral_ratio"]["mean_ratio"],
        ),
    ]
    for key, item in ensemble["percentile_errors"].items():
        rows.append((f"{key} error{unit}", item["bias"], bilinear["percentile_errors"][key]["bias"]))
    lines = [f"{name}: {members} members, {times} times", f"{'score':<34}{'ensemble':>12}{'bilinear':>12}"]
    lines += [f"{label:<34}{_format(a):>12}{_format(b):>12}" for label, a, b in rows]
    return "\n".join(lines)


def _write_report(
    directory: Path, inputs: EvaluationInputs, evaluations: list[Any], document: dict[str, Any], figures: bool
) -> None:
    from diffscale.evaluation.climate_report import (
        plot_maps,
        plot_qq,
        plot_rank_histogram,
        plot_spectra,
        write_scores_json,
    )

    written: list[str] = []
    time_label = np.datetime_as_string(inputs.times[0], unit="m")
    for evaluation in evaluations if figures else []:
        name, units = evaluation.name, evaluation.units
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
        plot_spectra(directory / f"{name}_spectra.png", evaluation.spectra, evaluation.k_nyquist_coarse, name, units)
        frequency = evaluation.scores["ensemble"]["rank_histogram"]["frequency"]
        plot_rank_histogram(directory / f"{name}_rank_histogram.png", frequency, name)
        plot_qq(
            directory / f"{name}_qq.png",
            inputs.truth[name],
            {"ensemble members": members, "bilinear": inputs.baseline[name]},
            inputs.latitude,
            name,
            units,
        )
        written += [f"{name}_{kind}.png" for kind in ("maps", "spectra", "rank_histogram", "qq")]
    document["figures"] = written
    write_scores_json(directory / "scores.json", document)


def run(args: argparse.Namespace) -> int:
    """Run ``diffscale evaluate`` with parsed ``args``; bad input raises ConfigError before anything is written."""
    from diffscale.evaluation.climate_report import evaluate_variable
    from diffscale.evaluation.spectra import grid_spacing_km

    if args.seed < 0:
        raise ConfigError(f"--seed = {args.seed}: must be an integer >= 0")
    out = _check_out(Path(args.out))
    inputs = load_inputs(
        Path(args.ensemble),
        [Path(path) for path in args.truth],
        Path(args.coarse) if args.coarse is not None else None,
        args.variable,
        args.coarsening_factor,
    )
    try:
        dy, dx = grid_spacing_km(inputs.latitude, inputs.longitude)
    except ValueError as error:
        raise ConfigError(f"ensemble {args.ensemble}: {error}") from None
    members = next(iter(inputs.ensemble.values())).shape[0]
    print(
        f"scoring {members} members at {inputs.times.size} times on a {inputs.latitude.size} x "
        f"{inputs.longitude.size} grid ({dy:.3g} x {dx:.3g} km); baseline: {inputs.baseline_source}",
        flush=True,
    )
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
            seed=args.seed,
        )
        for name in inputs.variables
    ]
    document: dict[str, Any] = {
        "ensemble": str(Path(args.ensemble).resolve()),
        "truth": [str(Path(path).resolve()) for path in args.truth],
        "coarse": str(Path(args.coarse).resolve()) if args.coarse is not None else None,
        "baseline": inputs.baseline_source,
        "coarsening_factor": inputs.factor,
        "members": members,
        "times": {
            "count": int(inputs.times.size),
            "first": str(inputs.times[0]),
            "last": str(inputs.times[-1]),
            "ensemble_times_without_truth": inputs.missing_times,
        },
        "grid": {
            "latitude": [float(inputs.latitude[0]), float(inputs.latitude[-1]), int(inputs.latitude.size)],
            "longitude": [float(inputs.longitude[0]), float(inputs.longitude[-1]), int(inputs.longitude.size)],
            "dy_km": dy,
            "dx_km": dx,
        },
        "area_weighting": "cos(latitude)",
        "seed": args.seed,
        "variables": {evaluation.name: evaluation.scores for evaluation in evaluations},
    }
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        _write_report(staging, inputs, evaluations, document, figures=not args.no_figures)
        out.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for evaluation in evaluations:
        print(_table(evaluation.name, evaluation.units, evaluation.scores, members, inputs.times.size))
    print(f"wrote {out / 'scores.json'} and {len(document['figures'])} figures to {out}")
    return 0
