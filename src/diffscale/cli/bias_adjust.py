"""``diffscale bias-adjust`` (map a coarse input onto a run's training coarse climatology) and ``diffscale
climatology`` (compute that climatology for a run trained before it was saved with runs).

The arguments go to :func:`diffscale.runs.bias_adjustment.bias_adjust` and
:func:`~diffscale.runs.bias_adjustment.compute_climatology`; this module parses and prints. Bad input ends the
command with one line (exit 2) and no output file.
"""

from __future__ import annotations

import argparse

from diffscale.cli.arguments import RUN_HELP, HelpFormatter, count

__all__ = ["add_parsers", "run_bias_adjust", "run_climatology"]

_BIAS_DESCRIPTION = """\
Bias-adjust a coarse input (e.g. a climate model's) before downscaling: per coarse cell and calendar month, its
distribution is mapped onto the run's training coarse climatology (the quantiles of the coarse fields the run was
trained on).

  qm   empirical quantile mapping over the reference period: x -> Q_obs(F_ref(x))
  qdm  quantile delta mapping (Cannon et al. 2015): the climatology plus the input's change from its reference
       period at each quantile (additive for temperature-like variables, multiplicative for precipitation)

The reference period (START END, inclusive) must lie within the input and should stand for the climate of the run's
training period. The output (netCDF) holds the run's variables in its units; its attributes record the method, the
reference period and the climatology. 'diffscale downscale --bias-adjust qm|qdm --bias-reference START END' does the
same before downscaling.

examples:
  diffscale bias-adjust runs/era5_uk --input gcm_1981-2100.nc --reference 1981-01-01 2010-12-31 --method qdm \\
      --start 2071-01-01 --output gcm_2071-2100_adjusted.nc
  diffscale downscale runs/era5_uk --input gcm_adjusted.nc --members 16 --out ensemble.nc
"""

_CLIMATOLOGY_DESCRIPTION = """\
Compute a climate run's training coarse climatology from its configured data (data.paths over its training period)
and save it with the run (RUN_DIR/coarse_climatology.safetensors and .json): per coarse cell and calendar month the
quantiles of the training coarse fields (a month with fewer than --min-times training times takes its season's).
Runs trained by this version save it themselves; older runs need this once before bias adjustment.

example:
  diffscale climatology runs/era5_uk
"""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bias-adjust`` and ``climatology`` subcommands."""
    parser = subparsers.add_parser(
        "bias-adjust",
        help="map a coarse input onto a run's training coarse climatology (QM or QDM)",
        description=_BIAS_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument(
        "--input", action="append", required=True, metavar="FILE", help="coarse fields (repeatable; globs allowed)"
    )
    parser.add_argument(
        "--reference",
        nargs=2,
        required=True,
        metavar=("START", "END"),
        help="the input's reference period (inclusive), standing for the run's training climate",
    )
    parser.add_argument(
        "--method", choices=("qm", "qdm"), default="qm", help="quantile mapping or quantile delta mapping"
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the adjusted input (netCDF, .nc)")
    parser.add_argument("--start", metavar="TIME", help="first time to adjust and write (default: all)")
    parser.add_argument("--end", metavar="TIME", help="last time to adjust and write, inclusive")
    parser.add_argument(
        "--variable", action="append", metavar="NAME", help="variables to adjust (default: all of the run's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(handler=run_bias_adjust, aliases={"coarse": "input", "variables": "variable"})

    parser = subparsers.add_parser(
        "climatology",
        help="compute and save a run's training coarse climatology (for bias adjustment)",
        description=_CLIMATOLOGY_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument("--levels", type=count(2), default=51, metavar="K", help="quantile levels, 0 to 1")
    parser.add_argument(
        "--min-times",
        type=count(1),
        default=50,
        metavar="N",
        help="fewest training times a month keeps to itself (else it takes its season's)",
    )
    parser.set_defaults(handler=run_climatology)


def run_bias_adjust(args: argparse.Namespace) -> int:
    """Handler of ``diffscale bias-adjust``."""
    from diffscale.files import check_output
    from diffscale.runs.bias_adjustment import bias_adjust
    from diffscale.validation import ConfigError

    out = check_output(args.output, "--output")
    if out.suffix != ".nc":
        raise ConfigError(f"--output = '{out}': the adjusted input is written as netCDF (.nc)")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"--output = '{out}': exists; pass --overwrite to replace it")
    coarse = args.input if len(args.input) > 1 else args.input[0]
    adjusted = bias_adjust(
        args.run_dir,
        coarse,
        args.reference,
        args.method,
        start=args.start,
        end=args.end,
        variables=args.variable,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.partial")
    try:
        adjusted.to_netcdf(temporary)
        temporary.replace(out)
    finally:
        temporary.unlink(missing_ok=True)
    print(
        f"wrote {out}: {adjusted.attrs['bias_adjusted_variables']} at {adjusted.sizes['time']} times, "
        f"{args.method.upper()} over the reference period {adjusted.attrs['bias_reference_period']}"
    )
    return 0


def run_climatology(args: argparse.Namespace) -> int:
    """Handler of ``diffscale climatology``."""
    from diffscale.data.climate.climatology import CLIMATOLOGY_SIDECAR
    from diffscale.runs.bias_adjustment import compute_climatology

    climatology = compute_climatology(args.run_dir, levels=args.levels, min_times=args.min_times)
    pools = sorted(set(climatology.pools))
    height, width = climatology.latitude.size, climatology.longitude.size
    print(
        f"wrote {args.run_dir}/{CLIMATOLOGY_SIDECAR}: {climatology.levels.size} quantiles of "
        f"{', '.join(climatology.variables)} per cell of the {height} x {width} "
        f"coarse grid and calendar month, training period {climatology.period[0]} .. {climatology.period[1]} "
        f"(pools: {', '.join(pools)})"
    )
    return 0
