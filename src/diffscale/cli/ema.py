"""``diffscale ema``: post-hoc EMA of a trained run, reconstructed from its snapshots, optionally chosen by the
validation loss, written as the run's EMA weights or as a named variant.

The arguments go to :func:`diffscale.runs.posthoc_ema.posthoc_ema` (``diffscale.runs.posthoc_ema`` in Python); this
module parses and prints. Bad input ends the command with one line (exit 2).
"""

from __future__ import annotations

import argparse

from diffscale.cli.arguments import HelpFormatter, add_threads_option
from diffscale.validation import ConfigError

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Reconstruct the EMA of the run's weights for any relative width sigma_rel ("std") from the power-function EMA
snapshots saved while it trained (training.posthoc_ema_stds), by the least-squares fit of Karras et al. 2024
("Analyzing and Improving the Training Dynamics of Diffusion Models", Section 3).

With one --std the reconstruction is written; with --validation every given std is scored by the training loss on
the run's validation period (climate runs; fresh samples of the distribution for toy runs), with the same noise for
each, and the lowest wins. The weights become the EMA weights of the run's latest checkpoint (used by every
command; the trainer's own EMA stays for a resume), or with --name a variant RUN_DIR/ema_variants/NAME.safetensors
(diffscale sample RUN_DIR --weights NAME; diffscale.load_run(RUN_DIR, weights=NAME)).

examples:
  diffscale ema runs/era5_uk --std 0.08
  diffscale ema runs/era5_uk --std 0.03,0.05,0.07,0.09,0.11,0.13 --validation
  diffscale ema runs/era5_uk --std 0.05,0.1,0.15 --validation --name best --dry-run
"""


def _stds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers expected, e.g. 0.05,0.1") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ema`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "ema",
        help="post-hoc EMA: reconstruct the EMA of any width from a run's snapshots (and choose it by validation)",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'diffscale train'")
    parser.add_argument(
        "--std", type=_stds, required=True, metavar="S[,S...]", help="relative EMA widths sigma_rel, in (0, 0.2887)"
    )
    parser.add_argument(
        "--validation", action="store_true", help="score every std by the validation loss and keep the lowest"
    )
    parser.add_argument("--name", metavar="NAME", help="write a named variant instead of the run's EMA weights")
    parser.add_argument("--step", type=int, metavar="N", help="reconstruct at step N (default: the last snapshot's)")
    parser.add_argument("--repeats", type=int, default=4, metavar="N", help="noise draws per validation sample")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="validation batch size")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the validation noise")
    parser.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda or cuda:N (validation)")
    parser.add_argument("--dry-run", action="store_true", help="print the candidates, write nothing")
    add_threads_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``diffscale ema``."""
    from diffscale.runs.posthoc_ema import posthoc_ema
    from diffscale.threads import thread_policy

    for option, value in (("--repeats", args.repeats), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{option} = {value}: must be >= 1")
    with thread_policy(args.threads):
        result = posthoc_ema(
            args.run_dir,
            args.std,
            validation=args.validation,
            name=args.name,
            write=not args.dry_run,
            step=args.step,
            device=args.device,
            batch_size=args.batch_size,
            repeats=args.repeats,
            seed=args.seed,
        )
    print(f"{result.run_dir}: {result.snapshots} snapshot profiles up to step {result.step}")
    for candidate in result.candidates:
        loss = "" if candidate.validation_loss is None else f", validation loss {candidate.validation_loss:.6f}"
        mark = "  <- chosen" if candidate is result.chosen else ""
        print(f"  std {candidate.std:.4f} (gamma {candidate.gamma:.2f}){loss}{mark}")
    if result.validation_samples:
        print(f"validation: {result.validation_samples} samples (the same noise for every std)")
    if result.written is not None:
        print(f"wrote {result.written}")
    return 0
