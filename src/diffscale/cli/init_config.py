"""``diffscale init-config``: draft a downscaling configuration for your own files, every data-dependent value
measured on them and explained in a comment.

The arguments go to :func:`diffscale.runs.init_config.initial_config` (what ``diffscale.runs.initial_config``
does in Python); this module parses and prints. Bad input ends the command with one line (exit 2).
"""

from __future__ import annotations

import argparse

from diffscale.cli.arguments import HelpFormatter, number

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Write a first configuration for downscaling your own fine files: the grid (whole, the rows and columns the factor
does not divide trimmed), the static fields found beside the files, the transforms (log1p for precipitation),
sigma_data (the standard deviation of the training target, measured by the training pipeline) and the noise levels
derived from it, blocked train/validation/test periods of the record, and the steps and batch that fit the time
budget (a few training steps are timed on this machine). Each of these values carries a comment that says how it
was found. The rest (network, sampler, optimiser) is the shipped ERA5 UK recipe's.

examples:
  diffscale init-config --fine ../shared/data/era5_t2m_uk_2019-03.nc --variables t2m --factor 4 --output my.yaml
  diffscale init-config --fine data/era5_*.nc --variables t2m tp --factor 4 --output my.yaml --budget-minutes 60
  diffscale train my.yaml
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``init-config`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "init-config",
        help="draft a downscaling configuration for your files, every data value measured",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--fine", nargs="+", required=True, metavar="FILE", help="fine (high-resolution) files; globs allowed"
    )
    parser.add_argument("--variables", nargs="+", required=True, metavar="NAME", help="variables to model")
    parser.add_argument(
        "--factor", type=int, required=True, metavar="F", help="coarsening factor: fine cells per coarse cell"
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the YAML configuration to write")
    parser.add_argument(
        "--budget-minutes",
        type=number,
        default=15.0,
        metavar="MIN",
        help="training time to plan the steps for, on this machine (default 15)",
    )
    parser.add_argument(
        "--statics", nargs="+", metavar="FILE", help="static files (default: look beside the fine files)"
    )
    parser.add_argument(
        "--device", default="auto", metavar="DEVICE", help="device to time the steps on: auto, cpu, cuda[:N]"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``diffscale init-config``."""
    from diffscale.runs.init_config import check_config_output, initial_config

    check_config_output(args.output, overwrite=args.overwrite)
    draft = initial_config(
        args.fine,
        args.variables,
        args.factor,
        budget_minutes=args.budget_minutes,
        statics=args.statics,
        device=args.device,
    )
    path = draft.write(args.output, overwrite=args.overwrite)
    diffusion, training = draft.values["diffusion"], draft.values["training"]
    print(
        f"wrote {path}: sigma_data {diffusion['sigma_data']}, {training['steps']} steps of batch "
        f"{training['batch_size']} for {args.budget_minutes:g} minutes; train with: diffscale train {path}"
    )
    return 0
