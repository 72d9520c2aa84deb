"""``diffscale downscale``: coarse fields in, a CF ensemble of fine fields out (netCDF, or a Zarr store).

The arguments go to :class:`diffscale.runs.downscaling.DownscalingJob` (what ``run.downscale`` does in Python):
a coarse input on another grid is regridded onto the run's coarse cells (``--regrid``); everything is checked
before the first block is sampled (run, input variables, NaNs, the grid or its coverage of the run's cells, output
path); bad input ends the command with one line (exit 2) and no output file. Under ``torchrun`` the blocks are
shared between processes. An interrupted run keeps the blocks it wrote and ``--resume`` continues it (a damaged
input or a full disk ends with one line saying so). This module parses the arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from diffscale.cli.arguments import RUN_HELP, HelpFormatter, add_sampler_options, add_threads_option, count, number

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Downscale coarse fields with a trained climate run: write an ensemble of fine fields (netCDF, dims member,
time, latitude, longitude, physical units, CF attributes; or the same layout as a Zarr store with --out NAME.zarr).
A coarse input on the run's coarse lattice (spacing: the run's coarsening factor times the training grid's) may
have any extent (the U-Net is convolutional; with --patch the domain is tiled with overlapping windows blended at
every solver step). An input on any other rectilinear grid (a GCM's, a global 1 deg file, latitude either way,
longitude 0..360 or -180..180) is regridded onto the run's coarse cells over its training domain, which it must
cover: first-order conservative by default, --regrid bilinear, or --regrid none to refuse it.

A regression run (training.objective: regression) is deterministic: it writes one member.

examples:
  diffscale downscale runs/era5_uk --input coarse.nc --members 32 --out ensemble.nc
  diffscale downscale runs/era5_uk --input coarse.grib --members 8 --steps 32 --s-churn 0 --seed 1 --out e.nc
  diffscale downscale runs/era5_uk --input coarse.nc --members 16 --time-correlation 3 --out coherent.nc
  torchrun --nproc-per-node 4 -m diffscale downscale runs/era5_uk --input coarse.nc --members 64 --out e.zarr
  diffscale downscale runs/era5_uk --input gcm_tas_1.25x0.9375.nc --regrid conservative --out ensemble.nc

An interrupted run (killed, Ctrl-C, a full disk, an unreadable input) keeps the blocks it wrote in a hidden store
beside the output (.NAME.partial); the same command with --resume continues from them and writes the ensemble an
uninterrupted run would have written, bit for bit (same device and threads):
  diffscale downscale runs/era5_uk --input 'coarse_*.nc' --members 32 --out decade.zarr --resume
"""

ALIASES = {
    "coarse": "input",
    "recalibrate": "no_recalibration",
    "method": "bias_adjust",
    "reference": "bias_reference",
}
"""Python parameters whose command-line flag has another name (for one-line messages)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``downscale`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "downscale",
        help="downscale coarse fields into an ensemble of fine fields (netCDF or Zarr)",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument(
        "--input", action="append", required=True, metavar="FILE", help="coarse fields (repeatable; globs allowed)"
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="output: a netCDF file (.nc) or a Zarr store (.zarr)"
    )
    parser.add_argument(
        "--members", type=count(1), metavar="M", help="ensemble members (default: 16; 1 for a regression run)"
    )
    parser.add_argument(
        "--member-batch",
        type=count(1),
        default=16,
        metavar="B",
        help="members per block of work (shared between processes)",
    )
    parser.add_argument(
        "--batch-size",
        type=count(1),
        default=None,
        metavar="N",
        help="samples per network call: consecutive blocks (times) are sampled together (default: 64, fewer for "
        "grids over 16,384 points, so that a call holds at most 2^20 grid points)",
    )
    parser.add_argument(
        "--start",
        metavar="TIME",
        help="first time to downscale (ISO date or time of the input's calendar, e.g. 2050-02-30 for "
        "360_day; default: all)",
    )
    parser.add_argument("--end", metavar="TIME", help="last time to downscale, inclusive")
    parser.add_argument(
        "--patch",
        type=count(1),
        nargs=2,
        metavar=("H", "W"),
        help="tile the domain with H x W windows (default: the run's data.patch when the domain is larger)",
    )
    parser.add_argument("--overlap", type=count(0), metavar="N", help="window overlap in grid points (default H/4)")
    add_sampler_options(parser)
    parser.add_argument("--seed", type=count(0), default=0, metavar="S", help="seed of the ensemble")
    parser.add_argument(
        "--time-correlation",
        type=number,
        default=0.0,
        metavar="HOURS",
        help="make every member a time series: its noise is blended between seeded noises at calendar anchors every "
        "HOURS hours (e.g. 3 for hourly temperature, 48 for daily data); 0 (default): every time sampled independently",
    )
    add_threads_option(parser)
    parser.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="EMA-averaged weights or the raw trained weights"
    )
    parser.add_argument(
        "--sort-ordered-pairs",
        action="store_true",
        help="sort ordered pairs (tasmin <= tasmax) pointwise in every member: min/max of the two values",
    )
    parser.add_argument(
        "--no-recalibration",
        action="store_true",
        help="the members as sampled, without the run's spread recalibration (diffscale recalibrate)",
    )
    parser.add_argument(
        "--regrid",
        choices=("conservative", "bilinear", "none"),
        default="conservative",
        help="a coarse input off the run's coarse lattice: regrid it onto the run's coarse cells (first-order "
        "conservative or bilinear), or refuse it (none)",
    )
    parser.add_argument(
        "--bias-adjust",
        choices=("qm", "qdm"),
        help="map the coarse input onto the run's training coarse climatology first (quantile mapping or quantile "
        "delta mapping, per cell and calendar month; see 'diffscale bias-adjust --help'); needs --bias-reference",
    )
    parser.add_argument(
        "--bias-reference",
        nargs=2,
        metavar=("START", "END"),
        help="the input's reference period for --bias-adjust (inclusive, within the input)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file (and any resumable state an interrupted run left for it)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into --out from the blocks it wrote (refused when the run, input, seed or "
        "settings differ); without a previous run, start from the beginning",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=run, aliases=ALIASES)


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Ours (extrapolation, values outside the plausible range) as one line each; any other as Python shows it."""
    from diffscale.data.climate.extrapolation import ExtrapolationWarning
    from diffscale.data.climate.plausibility import OutputRangeWarning

    for caught_warning in caught:
        if issubclass(caught_warning.category, ExtrapolationWarning | OutputRangeWarning):
            print(f"warning: {caught_warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(
                caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno
            )


def run(args: argparse.Namespace) -> int:
    """Handler of ``diffscale downscale``."""
    from diffscale.cli.arguments import sampler_overrides
    from diffscale.data.climate.extrapolation import ExtrapolationWarning
    from diffscale.data.climate.plausibility import OutputRangeWarning
    from diffscale.runs.downscaling import check_ensemble_output
    from diffscale.runs.run import load_climate_run
    from diffscale.training.distributed import init_distributed, shutdown_distributed

    check_ensemble_output(args.out, args.overwrite, args.resume)
    context, device_name = init_distributed(args.device)
    try:
        climate = load_climate_run(args.run_dir, weights=args.weights, device=device_name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ExtrapolationWarning)
            job = climate.prepare_downscaling(
                args.input,
                members=args.members,
                **sampler_overrides(args),
                seed=args.seed,
                start=args.start,
                end=args.end,
                patch=args.patch,
                overlap=args.overlap,
                member_batch=args.member_batch,
                batch_size=args.batch_size,
                threads=args.threads,
                sort_ordered_pairs=args.sort_ordered_pairs,
                recalibrate=not args.no_recalibration,
                regrid=args.regrid,
                bias_adjust=args.bias_adjust,
                bias_reference=args.bias_reference,
                time_correlation=args.time_correlation,
            )
        _print_warnings(caught)
        if context.is_main:
            print(job.describe(context.world_size), flush=True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OutputRangeWarning)
                job.write(
                    args.out,
                    overwrite=args.overwrite,
                    resume=args.resume,
                    progress=not args.no_progress,
                    distributed=context,
                    report=lambda line: print(line, flush=True),
                )
            _print_warnings(caught)
        except KeyboardInterrupt:
            state = job.resumable_state(args.out) if context.is_main else None
            if state is not None:
                sys.stderr.write(f"diffscale: interrupted; {state.describe()}: rerun with --resume to continue\n")
                return 130
            raise
        if context.enabled:
            shutdown_distributed(synchronise=True)
    finally:
        shutdown_distributed()  # after an error (a no-op once shut down)
    if context.is_main:
        print(f"wrote {args.out}")
    return 0
