"""``diffscale evaluate``: score a downscaled ensemble against the truth, next to the bilinear baseline.

The arguments go to :func:`diffscale.runs.evaluation.load_inputs` and :func:`~diffscale.runs.evaluation.write_report`
(the same scores as ``diffscale.evaluate`` in Python); this module parses and prints. Every input is checked before
anything is written; bad input raises :class:`~diffscale.validation.ConfigError` (one line; exit status 2).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from diffscale.cli.arguments import HelpFormatter, add_threads_option

__all__ = ["DEFAULT_OUT", "add_parser", "run"]

DEFAULT_OUT = "report"

_DESCRIPTION = """\
Score a downscaled ensemble (dims member, time, latitude, longitude) against the truth, and the bilinear
baseline (the coarse input upsampled bilinearly) alongside it.

Scores, area-weighted by cos(latitude): RMSE, MAE and bias of the ensemble mean; fair CRPS; spread and
spread-skill ratio sqrt((M+1)/M) spread / RMSE; rank histogram and its flatness (chi-square p-value, reliability
index, share of truths outside the ensemble); the binned spread-error relation (spread against the RMSE of the
ensemble mean in bins of spread: a calibrated ensemble lies on the diagonal); radially averaged power spectra in
physical wavenumbers and their ratio to the truth's above the coarse grid's Nyquist wavenumber; errors of the 1st
and 99th percentiles. The 10 m wind speed (ws10) is derived from u10 and v10 and scored like a variable. With
several variables: the energy score of the joint ensemble (the variables at each point, each divided by the
truth's standard deviation) and, for ordered pairs (tasmin <= tasmax), the share of member points that break
the order. On a global grid: the mean |difference| across the longitude seam, ensemble against truth. The truth
and coarse input are converted to the ensemble's units (K/degC, m/mm, Pa/hPa) or refused.

Temporal scores (the members as time series, against the truth's; --no-temporal leaves them out): the lag-k
autocorrelation of the residual (field minus the bilinear baseline) for lags up to one day, the fair CRPS and bias
of daily max, min, mean (and precipitation sums) over the whole days, and spells above the truth's 90th
percentile per cell (precipitation: wet and dry spells from 1 mm/day) with their count and mean length.

The report directory receives scores.json and, per variable, PNG maps, spectra, rank histogram, spread-error,
quantile-quantile and temporal (autocorrelations and series at the grid's centre) plots; a table of the main
scores is printed at the end.

The truth is selected at the ensemble's times (those it lacks are left out and counted) and grid points
(longitudes match modulo 360). The coarse input is --coarse FILE (on the grid of blocks of the ensemble's
grid, or on any rectilinear grid that covers them: regridded onto them by --regrid, first-order conservative by
default), else the truth coarsened by the ensemble's coarsening_factor attribute or --coarsening-factor.

Without --truth (e.g. a climate model's output downscaled: no fine truth exists), the checks that need none:
the coarse consistency (RMSE and bias of each member's area-weighted block means against the coarse input it was
given: --coarse FILE, default the file the ensemble's coarse_input attribute names), the share of the area where
the coarse input lay outside the training range (recorded in the ensemble), the member values outside the
variable's physical range, and the members' power spectrum over the mean spectrum of the run's training fine
fields (the run of --run DIR, default the ensemble's run_dir attribute; saved with the run, or computed from its
training data), with a spectrum-ratio figure per variable.

examples:
  diffscale evaluate ensemble.nc --truth era5_t2m.nc --out report/
  diffscale evaluate ensemble.nc --truth truth.grib --coarse coarse.nc --variable t2m
  diffscale evaluate cmip_ensemble.nc --out report/              # no truth: consistency, range, spectrum
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a downscaled ensemble against the truth and the bilinear baseline",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("ensemble", metavar="ENSEMBLE", help="ensemble file (netCDF or zarr) written by downscaling")
    parser.add_argument(
        "--truth",
        action="append",
        default=None,
        metavar="FILE",
        help="true fields: netCDF, GRIB or zarr (repeatable, glob patterns allowed; combined along time); "
        "without it, the checks that need no truth",
    )
    parser.add_argument(
        "--coarse",
        metavar="FILE",
        default=None,
        help="coarse input fields (default: the truth, coarsened; without a truth: the ensemble's coarse_input)",
    )
    parser.add_argument(
        "--run",
        metavar="DIR",
        default=None,
        help="without a truth: the run whose training spectrum the members are compared with "
        "(a run directory or a pretrained model's name; default: the ensemble's run_dir attribute)",
    )
    parser.add_argument(
        "--regrid",
        choices=("conservative", "bilinear", "none"),
        default="conservative",
        help="a --coarse input off the ensemble's coarse cells: regrid it onto them (first-order conservative or "
        "bilinear), or refuse it (none)",
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
    parser.add_argument(
        "--no-temporal",
        dest="temporal",
        action="store_false",
        help="leave out the temporal scores (autocorrelation, daily aggregates, spells) and their figure",
    )
    add_threads_option(parser)
    parser.set_defaults(handler=run)


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
    seam = scores.get("seam")
    if seam:
        rows.append((f"seam |difference|{unit}", seam["ensemble"], seam["bilinear"]))
    derived = f" (derived from {', '.join(scores['derived_from'])})" if scores.get("derived_from") else ""
    lines = [
        f"{name}{derived}: {members} members, {times} times",
        f"{'score':<34}{'ensemble':>12}{'bilinear':>12}",
    ]
    lines += [f"{label:<34}{_format(a):>12}{_format(b):>12}" for label, a, b in rows]
    if seam:
        lines.append(
            f"seam at the longitude wrap: truth {_format(seam['truth'])}, ensemble / truth = "
            f"{_format(seam['ratio'], 3)} (no seam: within 0.9-1.1); beside the seam "
            f"{_format(seam['nearby_ratio'], 3)}, so the seam's own excess is {_format(seam['excess'], 3)} (no seam: 1)"
        )
    return "\n".join(lines + _calibration_lines(ensemble))


def _joint_lines(document: dict[str, Any]) -> list[str]:
    """The energy score of the joint ensemble and the order of ordered pairs, when there are any."""
    lines = []
    joint = (document.get("joint") or {}).get("energy_score")
    if joint:
        scales = ", ".join(f"{name} {_format(joint['scales'][name], 3)}" for name in joint["variables"])
        lines.append(
            f"joint ({', '.join(joint['variables'])}): energy score {_format(joint['ensemble'])} (ensemble), "
            f"{_format(joint['bilinear'])} (bilinear); each variable divided by the truth's std. dev. ({scales})"
        )
    for pair in document.get("ordered_pairs") or []:
        lines.append(
            f"{pair['low']} <= {pair['high']} broken at {_format(100 * pair['ensemble'], 3)} % of member points "
            f"(mean excess {_format(pair['ensemble_mean_excess'], 3)}; truth {_format(100 * pair['truth'], 3)} %, "
            f"bilinear {_format(100 * pair['bilinear'], 3)} %)"
        )
    return lines


def _calibration_lines(ensemble: dict[str, Any]) -> list[str]:
    """The rank histogram's flatness and the spread-error relation, each beside what a calibrated ensemble gives."""
    lines = []
    flatness = ensemble.get("rank_flatness")
    if flatness:
        lines.append(
            f"rank histogram: chi-square p = {_format(flatness['p_value'], 2)} (times as clusters: "
            f"{_format(flatness.get('p_value_time_clustered'), 2)}), reliability index "
            f"{_format(flatness['reliability_index'], 3)} "
            f"(calibrated: {_format(flatness['reliability_index_calibrated'], 3)}), "
            f"outside the ensemble {_format(100 * flatness['outside_fraction'], 3)} % "
            f"(calibrated: {_format(100 * flatness['outside_fraction_calibrated'], 3)} %)"
        )
    binned = ensemble.get("spread_error")
    if binned:
        pairs = ", ".join(
            f"{_format(a, 3)}/{_format(b, 3)}" for a, b in zip(binned["spread"], binned["rmse"], strict=True)
        )
        lines.append(
            f"spread-error ({binned['bins']} bins, spread/RMSE): {pairs}; mean |ln(spread/RMSE)| = "
            f"{_format(binned['mean_abs_log_ratio'], 3)} (calibrated: 0), log-log slope "
            f"{_format(binned['log_slope'], 3)} (calibrated: 1)"
        )
    return lines


def _truth_free_lines(name: str, scores: dict[str, Any], members: int, times: int) -> list[str]:
    """The truth-free checks of one variable, a line each."""
    units = scores["units"]
    unit = f" {units}" if units else ""
    consistency = scores["coarse_consistency"]
    per_member = "/".join(_format(value, 3) for value in consistency["rmse_per_member"])
    lines = [
        f"{name}: {members} members, {times} times, no truth",
        f"coarse consistency (members' block means - coarse input): RMSE {_format(consistency['rmse'])}{unit}, "
        f"bias {_format(consistency['bias'])}{unit}, largest |difference| "
        f"{_format(consistency['max_abs_difference'])}{unit}; RMSE per member {per_member}",
    ]
    extrapolation = scores.get("extrapolation")
    if extrapolation is None:
        lines.append("extrapolation: the ensemble records no training-range share of its coarse input")
    else:
        lines.append(
            f"extrapolation: the coarse input lay outside the training range over "
            f"{_format(100 * extrapolation['mean_outside_fraction'], 3)} % of the area on average (at most "
            f"{_format(100 * extrapolation['max_outside_fraction'], 3)} %; {extrapolation['times_over_threshold']} "
            f"of {extrapolation['times']} times over {_format(100 * extrapolation['threshold'], 3)} %)"
        )
    physical = scores["physical_range"]
    if physical["checked"]:
        low, high = physical["range"]
        lines.append(
            f"physical range {_format(low)} to {_format(high)}{unit}: {physical['outside_count']} member values "
            f"outside ({_format(100 * physical['outside_fraction'], 3)} %)"
        )
    else:
        lines.append(f"physical range: not checked ({physical['reason']})")
    spectrum = scores.get("spectrum_vs_training")
    if spectrum is None:
        lines.append("spectrum against the training period: not available (see the training spectrum line above)")
    else:
        lines.append(
            f"spectrum of the members / training fine fields above the coarse Nyquist wavenumber: mean "
            f"{_format(spectrum['mean_ratio'], 3)}, geometric mean {_format(spectrum['geometric_mean_ratio'], 3)} "
            f"over {spectrum['shells']} shells (as energetic as training: 1; on {spectrum['grid']})"
        )
    return lines


def _run_truth_free(args: argparse.Namespace, out: Path) -> int:
    """``diffscale evaluate`` without ``--truth``: the truth-free checks (:mod:`diffscale.runs.truth_free`)."""
    from diffscale.runs.truth_free import evaluate_truth_free_sources, open_truth_free_sources, write_truth_free_report
    from diffscale.threads import thread_policy

    inputs = open_truth_free_sources(
        Path(args.ensemble),
        Path(args.coarse) if args.coarse is not None else None,
        args.variable,
        args.coarsening_factor,
        args.run,
        args.regrid,
    )
    print(inputs.describe(), flush=True)
    with thread_policy(args.threads):
        evaluation = evaluate_truth_free_sources(inputs)
        scores_path = write_truth_free_report(out, evaluation, figures=not args.no_figures)
    for name, scores in evaluation.document["variables"].items():
        for line in _truth_free_lines(name, scores, inputs.members, inputs.times.size):
            print(line)
    print(f"wrote {scores_path} and {len(evaluation.document['figures'])} figures to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``diffscale evaluate`` with parsed ``args``; bad input raises ConfigError before anything is written."""
    from diffscale.runs.blockwise_evaluation import evaluate_sources
    from diffscale.runs.evaluation import check_report_directory, check_seed, open_inputs, write_report
    from diffscale.runs.temporal import temporal_lines
    from diffscale.threads import thread_policy
    from diffscale.validation import ConfigError

    check_seed(args.seed)
    out = check_report_directory(Path(args.out))
    if args.truth is None:
        return _run_truth_free(args, out)
    if args.run is not None:
        raise ConfigError("--run is for an evaluation without --truth; drop one of them")
    sources = open_inputs(
        Path(args.ensemble),
        [Path(path) for path in args.truth],
        Path(args.coarse) if args.coarse is not None else None,
        args.variable,
        args.coarsening_factor,
        args.regrid,
    )
    print(sources.describe(), flush=True)
    with thread_policy(args.threads):  # torch computes the coarsened truth and the interpolated baselines
        evaluation = evaluate_sources(sources, args.seed, temporal=args.temporal, figures=not args.no_figures)
        scores_path = write_report(out, evaluation, figures=not args.no_figures)
    for result in evaluation.variables:
        print(_table(result.name, result.units, result.scores, sources.members, sources.times.size))
        for line in temporal_lines(result.name, result.units, evaluation.document):
            print(line)
    if evaluation.document.get("temporal_note"):
        print(evaluation.document["temporal_note"])
    for line in _joint_lines(evaluation.document):
        print(line)
    print(f"wrote {scores_path} and {len(evaluation.document['figures'])} figures to {out}")
    return 0
