"""``diffscale recalibrate``: fit a run's spread recalibration on held-out ensembles and store it with the run.

The arguments go to :func:`diffscale.runs.recalibration.fit_recalibration` (what ``diffscale.runs.fit_recalibration``
does in Python); this module parses and prints. Bad input ends the command with one line (exit 2).
"""

from __future__ import annotations

import argparse

from diffscale.cli.arguments import RUN_HELP, HelpFormatter, add_threads_option

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Fit the spread recalibration of a climate run on ensembles it did not train on, and store it with the run
(RUN_DIR/recalibration.json): 'diffscale downscale' then inflates every time's members about their mean, so that
the ensemble's spread matches the error of its mean (the mean itself is unchanged; --no-recalibration turns it off).

For each variable the dispersion rho = sum w ((xbar - y)^2 - s^2/M) / sum w s^2 (the truth's variance about the
members' centre over the members' variance, area-weighted, pooled over every given ensemble) is stored; an
M-member ensemble is inflated by k = sqrt((M rho + 1) / (M + 1)). Fit it on held-out periods: the run's validation
period, or (better when later weather may differ from the training period's) ensembles of held-out blocks drawn by
models trained without them (see benchmarks/calibration.py).

examples:
  diffscale downscale runs/era5_uk --input coarse_validation.nc --members 16 --out validation.nc --no-recalibration
  diffscale recalibrate runs/era5_uk --ensemble validation.nc --truth ../shared/data/era5_t2m_uk_2019-03.nc
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``recalibrate`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "recalibrate",
        help="fit a run's spread recalibration on held-out ensembles (applied when it downscales)",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument(
        "--ensemble",
        action="append",
        required=True,
        metavar="FILE",
        help="held-out ensemble (netCDF or zarr) drawn without recalibration (repeatable)",
    )
    parser.add_argument(
        "--truth",
        action="append",
        required=True,
        metavar="FILE",
        help="true fields at the ensembles' times (repeatable, glob patterns allowed; combined along time)",
    )
    parser.add_argument("--variable", action="append", metavar="NAME", help="variables to fit (default: all)")
    add_threads_option(parser)
    parser.set_defaults(handler=run, aliases={"ensembles": "ensemble"})


def run(args: argparse.Namespace) -> int:
    """Handler of ``diffscale recalibrate``."""
    from diffscale.runs.recalibration import RECALIBRATION_NAME, check_recalibration_output, fit_recalibration
    from diffscale.runs.run import load_climate_run

    check_recalibration_output(args.run_dir)  # before the run is loaded
    load_climate_run(args.run_dir, device="cpu")  # a climate run, before any ensemble is read
    truth = args.truth if len(args.truth) > 1 else args.truth[0]
    recalibration = fit_recalibration(args.run_dir, args.ensemble, truth, variables=args.variable, threads=args.threads)
    for name, rho in recalibration.dispersion.items():
        factors = ", ".join(f"{recalibration.factors(m)[name]:.3f} ({m} members)" for m in (8, 16, 32))
        print(f"{name}: dispersion rho = {rho:.3f} over {recalibration.cases[name]} cases; inflation k = {factors}")
    print(f"wrote {args.run_dir}/{RECALIBRATION_NAME}")
    return 0
