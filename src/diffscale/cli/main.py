"""The ``diffscale`` command: ``train``, ``sample`` and ``demo``.

Bad input (a bad configuration, an unknown option, a missing file, a corrupt checkpoint) ends the command
with exit status 2 and exactly one line on stderr, ``diffscale: error: <message>``, before anything is
written. Anything else that goes wrong is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from diffscale.validation import ConfigError

__all__ = ["PROG", "build_parser", "main"]

PROG = "diffscale"
DEFAULT_DEMO_DIR = "demo_output"

CommandHandler = Callable[[argparse.Namespace], int]


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _fail(message: str) -> NoReturn:
    """Report bad input on one line and exit with status 2."""
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    raise SystemExit(2)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``diffscale: error: ... (see 'diffscale train --help')``)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions and appends non-trivial defaults to option help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        trivial = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if action.option_strings and not trivial and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _count(minimum: int) -> Callable[[str], int]:
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


def _number(text: str) -> float:
    """argparse type: a float (``inf`` allowed)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


# -- commands -------------------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from diffscale.cli.runs import CONFIG_NAME, prepare_training, resolve_run_dir, train
    from diffscale.config import load_config

    config = load_config(args.config, args.set)
    run_dir = resolve_run_dir(config, args.config, args.out)
    plan = prepare_training(config, run_dir)  # validates everything; nothing is written before this returns
    config = plan.config
    data = config.data.kind + (f" ({config.data.preset})" if hasattr(config.data, "preset") else "")
    print(
        f"training {config.diffusion.type} / {config.model.arch} on {data} "
        f"for {config.training.steps} steps into {run_dir}",
        flush=True,
    )
    summary = train(plan, progress=not args.no_progress)
    loss = f", final loss {summary.final_loss:.4g}" if summary.final_loss is not None else ""
    print(f"trained {summary.steps} steps{loss}")
    print(f"wrote {run_dir / CONFIG_NAME}, {summary.metrics} and checkpoint {summary.checkpoint}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from diffscale.cli.plot import check_plot_path, plot_samples
    from diffscale.cli.runs import load_run, sample_run
    from diffscale.cli.samples_io import check_sample_path, write_samples
    from diffscale.sampling import number_of_evaluations

    out = check_sample_path(args.out)
    plot = check_plot_path(args.plot) if args.plot is not None else None
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    sampling = run.config.sampling.with_overrides(
        steps=args.steps,
        sampler=args.sampler,
        s_churn=args.s_churn,
        s_min=args.s_min,
        s_max=args.s_max,
        s_noise=args.s_noise,
    )
    settings = sampling.to_sampler_settings()
    if plot is not None and run.mixture.dims > 2:
        raise ConfigError(f"--plot: the data has {run.mixture.dims} dimensions; plots show 1-D or 2-D data only")
    samples = sample_run(
        run, args.num, settings, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress
    )
    write_samples(out, samples)
    nfe = number_of_evaluations(settings.steps, settings.solver)
    print(f"NFE: {nfe} per sample ({settings.solver}, {settings.steps} steps, {run.weights} weights, step {run.step})")
    print(f"wrote {samples.shape[0]} samples of shape {tuple(samples.shape)} to {out}")
    if plot is not None:
        title = f"{run.config.diffusion.type}, {settings.solver}, {settings.steps} steps (NFE {nfe})"
        plot_samples(plot, samples, run.mixture, title=title)
        print(f"wrote plot to {plot}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from diffscale.demo import run_demo
    except ModuleNotFoundError as error:
        if error.name != "diffscale.demo":
            raise
        _fail("the demo is not available in this installation (module diffscale.demo is missing)")
    run_demo(Path(args.out), train_steps=args.train_steps, progress=not args.no_progress)
    return 0


# -- parser ---------------------------------------------------------------------------------------------------
_MAIN_DESCRIPTION = """\
diffscale: diffusion models of gridded data (EDM-style formulations VE, VP, EDM and iDDPM).

Commands:
  train   train a model from a YAML configuration into a run directory
  sample  draw samples from a trained run
  demo    train every formulation on a 1-D mixture and compare them

Run 'diffscale COMMAND --help' for a command's options. Bad input exits with status 2 and one line on stderr.
"""

_TRAIN_DESCRIPTION = """\
Train a model from a YAML configuration (sections diffusion, sampling, model, data, training, output).

The configuration and the --set overrides are validated before anything is written. The run directory
then receives config.yaml (the resolved configuration), metrics.jsonl (loss, learning rate, gradient norm
and loss per decade of sigma, every training.log_every steps) and a checkpoint (checkpoint.json plus
.safetensors files). A directory that already holds a checkpoint is never overwritten.

examples:
  diffscale train configs/mixture_1d_edm.yaml
  diffscale train configs/mixture_1d_edm.yaml --set diffusion.type=VP --set training.steps=500 --out runs/vp
"""

_SAMPLE_DESCRIPTION = """\
Draw samples from a trained run (EMA weights by default). The sampler settings default to the run's
'sampling:' section; the flags below override single keys and are validated the same way.

examples:
  diffscale sample runs/mixture_1d_edm --num 10000 --out samples.npy
  diffscale sample runs/mixture_1d_edm --num 5000 --out samples.csv --sampler euler --steps 64 --plot samples.png
"""

_DEMO_DESCRIPTION = """\
Train one model per formulation (VE, VP, EDM, iDDPM) on the 1-D two-Gaussian mixture, sample each, and
write a figure of the forward and learned reverse processes plus a table of distances to the exact
mixture into the output directory.
"""


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model from a YAML configuration",
        description=_TRAIN_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="YAML configuration file (e.g. configs/mixture_1d_edm.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key with a YAML value, e.g. --set training.steps=100 "
        "--set diffusion.type=VP (repeatable; changing diffusion.type starts that section from the new "
        "formulation's defaults)",
    )
    parser.add_argument(
        "--out",
        metavar="RUN_DIR",
        default=None,
        help="run directory (default: output.dir of the configuration, else runs/<CONFIG name>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=_train)


def _add_sample(commands: argparse._SubParsersAction) -> None:
    from diffscale.sampling.settings import SOLVERS

    parser = commands.add_parser(
        "sample",
        help="draw samples from a trained run",
        description=_SAMPLE_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'diffscale train'")
    parser.add_argument("--num", type=_count(1), required=True, metavar="N", help="number of samples to draw")
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output file; the extension picks the format: .npy, .csv or .safetensors (tensor 'samples')",
    )
    group = parser.add_argument_group("sampler settings (default: the run's 'sampling:' section)")
    group.add_argument("--steps", type=int, metavar="N", help="number of time steps N (>= 1)")
    group.add_argument("--sampler", metavar="NAME", help="solver, one of: " + ", ".join(SOLVERS))
    group.add_argument("--s-churn", type=_number, metavar="X", help="overall stochasticity S_churn (>= 0; 0: ODE)")
    group.add_argument("--s-min", type=_number, metavar="X", help="churn only where sigma >= S_min (>= 0)")
    group.add_argument("--s-max", type=_number, metavar="X", help="churn only where sigma <= S_max (>= S_min; inf)")
    group.add_argument("--s-noise", type=_number, metavar="X", help="noise inflation S_noise of the churn (> 0)")
    parser.add_argument("--seed", type=_count(0), default=0, metavar="S", help="seed of the sampling noise")
    parser.add_argument("--batch-size", type=_count(1), default=10_000, metavar="B", help="samples per batch")
    parser.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="EMA-averaged weights or the raw trained weights"
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="also draw a histogram (1-D) or scatter (2-D) of the samples over the exact density (.png, .pdf, .svg)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=_sample)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="train and compare all formulations on a 1-D mixture",
        description=_DEMO_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR", help="output directory for figure and table")
    parser.add_argument(
        "--train-steps", type=_count(1), default=2000, metavar="N", help="training steps per formulation"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.set_defaults(handler=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``diffscale`` argument parser with its subcommands."""
    from diffscale import __version__

    parser = _ArgumentParser(prog=PROG, description=_MAIN_DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}", help="print the version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_ArgumentParser)
    _add_train(commands)
    _add_sample(commands)
    _add_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffscale`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad input raises ``SystemExit(2)`` after one line on stderr.
    """
    args = build_parser().parse_args(argv)
    handler: CommandHandler = args.handler
    try:
        return handler(args)
    except ConfigError as error:  # bad user input (CheckpointError included); bugs keep their traceback
        _fail(str(error))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
