"""Command-line argument types and the sampler options shared by the commands that sample (``sample``,
``downscale``): one definition of the flags, and the settings they give on top of a run's ``sampling:`` section."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from diffscale.config import SamplingSection
from diffscale.runs.sampling import SAMPLER_KEYS
from diffscale.sampling import SOLVERS, SamplerSettings

RUN_HELP = "run directory written by 'diffscale train', or the name of a pretrained model ('diffscale models')"
"""Help of every command's RUN_DIR argument (resolved by :func:`diffscale.pretrained.resolve_run`)."""

__all__ = [
    "RUN_HELP",
    "HelpFormatter",
    "add_sampler_options",
    "count",
    "number",
    "sampler_overrides",
    "sampler_settings",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions, lists the commands one per line, and appends non-trivial defaults to an
    option's help (``(default: 0)``)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=18, width=116)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        trivial = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if action.option_strings and not trivial and "%(default)" not in text and "default:" not in text:
            text += " (default: %(default)s)"
        return text


def count(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def number(text: str) -> float:
    """argparse type: a float (``inf`` allowed)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def threads(text: str) -> str | int:
    """argparse type: ``auto`` or an integer >= 1 (torch's CPU threads)."""
    return text if text == "auto" else count(1)(text)


def add_threads_option(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--threads auto|N``: torch's CPU threads (see :mod:`diffscale.threads`)."""
    parser.add_argument(
        "--threads",
        type=threads,
        default=default,
        metavar="auto|N",
        help="torch's CPU threads: auto gives one per CPU that other processes leave idle, re-chosen every 5 s "
        "(fast on a busy machine); N fixes the count"
        + ("" if default is not None else " (default: training.threads of the configuration)"),
    )


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """--steps, --sampler, --s-churn, --s-min, --s-max, --s-noise and --schedule (defaults: the run's)."""
    group = parser.add_argument_group("sampler settings (default: the run's 'sampling:' section)")
    group.add_argument("--steps", type=int, metavar="N", help="number of time steps N (>= 1)")
    group.add_argument("--sampler", metavar="NAME", help="solver, one of: " + ", ".join(SOLVERS))
    group.add_argument("--s-churn", type=number, metavar="X", help="overall stochasticity S_churn (>= 0; 0: ODE)")
    group.add_argument("--s-min", type=number, metavar="X", help="churn only where sigma >= S_min (>= 0)")
    group.add_argument("--s-max", type=number, metavar="X", help="churn only where sigma <= S_max (>= S_min; inf)")
    group.add_argument("--s-noise", type=number, metavar="X", help="noise inflation S_noise of the churn (> 0)")
    group.add_argument(
        "--schedule",
        metavar="NAME",
        help="time grid: native (the formulation's own; default), edm (rho = 7 in sigma) or tuned "
        "(few steps with dpmpp_2m/dpmpp_3m)",
    )


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options given on the command line (None where not given), as keyword arguments of the runs API
    (``steps``, ``sampler``, ``s_churn``, ``s_min``, ``s_max``, ``s_noise``, ``schedule``)."""
    return {key: getattr(args, key) for key in (*SAMPLER_KEYS, "schedule")}


def sampler_settings(sampling: SamplingSection, args: argparse.Namespace) -> SamplerSettings:
    """The run's ``sampling:`` section with the options given on the command line (validated like the file)."""
    from diffscale.runs.sampling import sampler_settings as settings_with

    return settings_with(sampling, None, **sampler_overrides(args))
