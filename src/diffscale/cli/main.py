"""The ``diffscale`` command: ``train``, ``sample``, ``likelihood`` and ``demo``.

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

from diffscale.cli.arguments import RUN_HELP, HelpFormatter, add_sampler_options, add_threads_option, count, number
from diffscale.validation import ConfigError, command_line_names

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


# -- commands -------------------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from diffscale.config import load_config
    from diffscale.runs import CONFIG_NAME, prepare_training, resolve_run_dir, train
    from diffscale.training import NonFiniteTrainingError
    from diffscale.training.data import DataLoadingError
    from diffscale.training.distributed import init_distributed, shutdown_distributed

    if args.device is not None:
        from diffscale.devices import check_device

        check_device(args.device, "--device")  # named as the user gave it (training.device when set in the file)
    overrides = [
        *args.set,
        *([f"training.threads={args.threads}"] if args.threads is not None else []),
        *([f"training.device={args.device}"] if args.device is not None else []),
    ]
    config = load_config(args.config, overrides)
    resume = None
    if args.resume is not None:
        resume = Path(args.resume)
        run_dir = resume if resume.is_dir() or not resume.suffix else resume.parent
        if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
            raise ConfigError(f"--out '{args.out}' and --resume '{args.resume}' name different run directories")
    else:
        run_dir = resolve_run_dir(config, args.config, args.out)
    context, device = init_distributed(config.training.device)
    try:
        # validates everything (and loads a checkpoint to resume); nothing is written before this returns
        plan = prepare_training(config, run_dir, resume=resume, distributed=context, device=device)
        config = plan.config
        say = print if context.is_main else (lambda *_, **__: None)
        data = config.data.kind + (f" ({config.data.preset})" if hasattr(config.data, "preset") else "")
        processes = f" on {context.world_size} processes" if context.enabled else ""
        what = "regression" if config.training.objective == "regression" else config.diffusion.type
        say(
            f"training {what} / {config.model.arch} on {data} "
            f"for {config.training.steps} steps into {run_dir}{processes}",
            flush=True,
        )
        say(plan.summary, flush=True)
        if plan.statistics_rate is not None:
            say(plan.statistics_rate, flush=True)
        if plan.checkpoint is not None:
            changed = f"; changed since: {', '.join(plan.changes)}" if plan.changes else ""
            say(f"resuming from step {plan.checkpoint.step} ({plan.checkpoint.directory}){changed}", flush=True)
        try:
            summary = train(plan, progress=not args.no_progress)
        except (NonFiniteTrainingError, DataLoadingError) as error:
            sys.stderr.write(f"{PROG}: {_one_line(str(error))}\n")
            return 1
        del plan  # the DDP wrapper goes before its process group
        shutdown_distributed(synchronise=True)
    finally:
        shutdown_distributed()  # after an error (a no-op once shut down)
    loss = ""
    if summary.final_loss is not None:
        loss = f", loss {summary.final_loss:.4g} (mean of the last {summary.final_window_steps} steps, as logged)"
    skipped = f", {summary.skipped_steps} non-finite steps skipped" if summary.skipped_steps else ""
    say(f"trained {summary.steps} steps{loss}{skipped}")
    say(f"wrote {run_dir / CONFIG_NAME}, {summary.metrics} and checkpoint {summary.checkpoint}")
    return 0


def _sample_images(args: argparse.Namespace) -> int:
    """``diffscale sample`` of a class-conditional image run: per-class grids per guidance weight, .npz samples."""
    from diffscale.cli.arguments import sampler_overrides
    from diffscale.files import write_together
    from diffscale.runs import load_run
    from diffscale.runs.images import check_grid_path, check_image_run, check_npz_path
    from diffscale.sampling import number_of_evaluations

    if args.num is not None:
        raise ConfigError("--num: an image run draws --per-class images of each of --classes; leave --num out")
    if args.out is None and args.grid is None:
        raise ConfigError("give --grid FIGURE and/or --out FILE.npz: nothing would be written")
    out = check_npz_path(args.out) if args.out is not None else None
    grid = check_grid_path(args.grid) if args.grid is not None else None
    if args.plot is not None:
        raise ConfigError("--plot: an image run draws its figure with --grid")
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    check_image_run(run)
    settings = run.sampler_settings(**sampler_overrides(args))
    nfe = number_of_evaluations(settings.steps, settings.solver)
    print(
        f"NFE: {nfe} per sample ({settings.solver}, {settings.steps} steps, {settings.schedule} schedule, "
        f"{run.weights} weights, step {run.step}; guidance w other than 0 and 1 evaluates the network twice)"
    )
    drawn = run.sample_images(
        args.classes,
        args.per_class,
        args.guidance,
        settings=settings,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        threads=args.threads,
    )
    written = write_together(drawn.files(out, grid))
    print(
        f"drew {drawn.images.shape[0]} images ({len(drawn.classes)} classes x {drawn.per_class} x guidance "
        f"{', '.join(f'{weight:g}' for weight in drawn.weights)})"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from diffscale import __version__
    from diffscale.cli.arguments import sampler_overrides
    from diffscale.data.samples_io import check_sample_path, encode_samples
    from diffscale.evaluation.sample_plots import check_plot_path, check_plottable, figure_bytes, samples_figure
    from diffscale.files import write_together
    from diffscale.runs import load_run, sample_run
    from diffscale.sampling import number_of_evaluations

    if args.classes is not None or args.grid is not None:
        return _sample_images(args)
    if args.num is None or args.out is None:
        missing = " and ".join(name for name, value in (("--num", args.num), ("--out", args.out)) if value is None)
        raise ConfigError(f"{missing} required (an image run takes --classes and --grid instead)")
    out = check_sample_path(args.out)
    plot = check_plot_path(args.plot) if args.plot is not None else None
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    run.check_sampling()
    settings = run.sampler_settings(**sampler_overrides(args))
    if plot is not None:
        check_plottable(run.data)
    nfe = number_of_evaluations(settings.steps, settings.solver)
    print(
        f"NFE: {nfe} per sample ({settings.solver}, {settings.steps} steps, {settings.schedule} schedule, "
        f"{run.weights} weights, step {run.step})"
    )
    samples = sample_run(
        run,
        args.num,
        settings,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        threads=args.threads,
    )
    metadata = {
        "diffscale_version": __version__,
        "run_dir": str(Path(args.run_dir).resolve()),
        "checkpoint_step": run.step,
        "weights": run.weights,
        "seed": args.seed,
        "nfe_per_sample": nfe,
        "sampler": settings.model_dump(mode="json"),
    }
    files = encode_samples(out, samples, metadata=metadata)
    if plot is not None:  # rendered before anything is written: all the outputs or none
        title = f"{run.config.diffusion.type}, {settings.solver}, {settings.steps} steps (NFE {nfe})"
        files[plot] = figure_bytes(samples_figure(samples, run.data, title=title), plot)
    write_together(files)
    print(f"wrote {samples.shape[0]} samples of shape {tuple(samples.shape)} to {out} (settings in {out}.json)")
    if plot is not None:
        print(f"wrote plot to {plot}")
    return 0


def _likelihood(args: argparse.Namespace) -> int:
    from diffscale.cli.likelihood import check_json_path, parse_data_spec, write_results
    from diffscale.runs import LikelihoodSettings, load_run
    from diffscale.runs.likelihood import evaluate_run, likelihood_data

    out = check_json_path(args.out) if args.out is not None else None
    spec = parse_data_spec(args.data)
    settings = LikelihoodSettings(
        steps=args.steps,
        solver=args.solver,
        num_probes=args.num_probes,
        probe=args.probe,
        exact_trace=args.exact_trace,
        sigma_start=args.sigma_start,
        sigma_end=args.sigma_end,
        zero_noise_correction=args.zero_noise_correction,
    )
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    run.check_likelihood()
    data = likelihood_data(run, spec.count if spec.count is not None else spec.path, args.seed)
    sigma_0, sigma_max = settings.check(run)  # validated before any work
    print(
        f"{data.shape[0]} samples of dimension {data[0].numel()} from {spec.text}; "
        f"{run.config.diffusion.type} run at step {run.step} ({run.weights} weights)",
        flush=True,
    )
    print(f"ODE: {settings.describe()}; sigma from {sigma_0:g} to {sigma_max:g}, prior N(0, {sigma_max:g}^2 I)")
    report = evaluate_run(
        run, data, settings, batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress
    )
    summary = report.summary()
    target = "log p(x; 0) (zero-noise corrected)" if settings.zero_noise_correction else f"log p(x; {sigma_0:g})"
    ll, bpd = summary["log_likelihood"], summary["bits_per_dim"]
    print(f"log-likelihood: {ll['mean']:.5f} +- {ll['stderr']:.5f} nats per sample (mean +- standard error; {target})")
    print(f"bits/dim: {bpd['mean']:.5f} +- {bpd['stderr']:.5f}")
    exact = summary["exact"]
    if exact is not None:
        print(
            f"exact (the run's data distribution): log p_data(x) = {exact['log_likelihood']['mean']:.5f} "
            f"+- {exact['log_likelihood']['stderr']:.5f} nats, {exact['bits_per_dim']['mean']:.5f} bits/dim; "
            f"log p(x; {sigma_0:g}) = {exact['log_likelihood_at_sigma_start']['mean']:.5f}; "
            f"model - exact log p_data = {exact['model_minus_exact']['mean']:.5f} "
            f"+- {exact['model_minus_exact']['stderr']:.5f}"
        )
    if out is not None:
        document = {
            "run_dir": str(run.run_dir),
            "step": run.step,
            "weights": run.weights,
            "formulation": run.config.diffusion.type,
            "data": spec.text,
            "seed": args.seed,
            "settings": {
                "solver": settings.solver,
                "steps": settings.steps,
                "exact_trace": settings.exact_trace,
                "num_probes": None if settings.exact_trace else settings.num_probes,
                "probe": None if settings.exact_trace else settings.probe,
                "zero_noise_correction": settings.zero_noise_correction,
                "prior": "N(0, sigma_end^2 I)",
            },
            **summary,
            "per_sample_log_likelihood": report.log_likelihood.tolist(),
        }
        write_results(out, document)
        print(f"wrote {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from diffscale.demo import run_demo
    except ModuleNotFoundError as error:
        if error.name != "diffscale.demo":
            raise
        _fail("the demo is not available in this installation (module diffscale.demo is missing)")
    run_demo(
        Path(args.out),
        train_steps=args.train_steps,
        progress=not args.no_progress,
        downscaling=not args.no_downscaling,
    )
    return 0


def _models(args: argparse.Namespace) -> int:
    from diffscale.pretrained import pretrained_models

    models = pretrained_models()
    if not models:
        print("no pretrained models are installed")
        return 0
    rows = [("name", "variables", "grid", "factor", "size", "model card")]
    for model in models.values():
        size = f"{model.size_bytes / 1e6:.1f} MB"
        rows.append((model.name, ",".join(model.variables), model.grid, f"{model.factor}x", size, str(model.card_path)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print("use a name wherever a run directory goes, e.g. diffscale downscale NAME --input coarse.nc --out ens.nc")
    return 0


def _coarsen(args: argparse.Namespace) -> int:
    from diffscale.data.climate.calendars import with_encoded_time
    from diffscale.files import DATASET_SUFFIXES, check_output, write_dataset
    from diffscale.runs import load_climate_run

    out = Path(args.out)
    if out.suffix not in DATASET_SUFFIXES:
        raise ConfigError(f"--out = '{out}': the coarse input is written as netCDF (.nc) or a Zarr store (.zarr)")
    check_output(out, "--out", directory=out.suffix == ".zarr")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"--out = '{out}': exists; pass --overwrite to replace it")
    run = load_climate_run(args.run_dir, device="cpu")
    coarse = run.coarsen(args.input, start=args.start, end=args.end)
    write_dataset(with_encoded_time(coarse), out)  # the fine fields' time units and calendar, verbatim
    sizes = coarse.sizes
    print(
        f"wrote {out}: {', '.join(run.section.variables)} at {sizes['time']} times on a {sizes['latitude']} x "
        f"{sizes['longitude']} grid (the fine grid coarsened {run.section.coarsen_factor}x, as in training)"
    )
    return 0


def _fashion_mnist(args: argparse.Namespace) -> int:
    """``diffscale example-data fashion-mnist``: where the files are and what they hold (nothing is downloaded)."""
    from diffscale.data.images import FASHION_MNIST_CLASSES, find_fashion_mnist, summarise_image_folder

    folder = find_fashion_mnist(args.source)
    print(f"Fashion-MNIST in {folder}:")
    for summary in summarise_image_folder(folder, class_names=FASHION_MNIST_CLASSES):
        counts = sorted(set(summary.class_counts))
        each = f"{counts[0]} each" if len(counts) == 1 else f"{min(counts)}-{max(counts)} per class"
        print(
            f"  {summary.split}: {summary.images} images of {' x '.join(map(str, summary.shape[1:]))} "
            f"({summary.shape[0]} channel), {len(summary.class_counts)} classes, {each}"
        )
    print(f"  classes: {', '.join(f'{index} {name}' for index, name in enumerate(FASHION_MNIST_CLASSES))}")
    source = f" --set data.path={folder}" if str(folder) != "/usr/share/datasets/fashion-mnist" else ""
    print(f"train on it with: diffscale train configs/fashion_mnist.yaml{source}")
    return 0


def _example_data(args: argparse.Namespace) -> int:
    from diffscale.data.examples import EXAMPLES, fetch_example

    if args.name == "fashion-mnist":
        return _fashion_mnist(args)
    example = EXAMPLES.get(args.name)
    already = example is not None and (Path(args.out) / example.filename).exists() and not args.overwrite
    path = fetch_example(
        args.name, args.out, source=args.source, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(f"{'kept' if already else 'wrote'} {path}: {EXAMPLES[args.name].description}")
    print("train on it with: diffscale train configs/downscaling_template.yaml")
    return 0


# -- parser ---------------------------------------------------------------------------------------------------
_MAIN_DESCRIPTION = """\
diffscale: diffusion models of gridded data (EDM-style formulations VE, VP, EDM and iDDPM) and probabilistic
downscaling of climate fields.

Run 'diffscale COMMAND --help' for a command's options. Bad input exits with status 2 and one line on stderr.
"""

_TRAIN_DESCRIPTION = """\
Train a model from a YAML configuration (sections diffusion, sampling, model, data, training, output).

The configuration and the --set overrides are validated before anything is written. The run directory
then receives config.yaml (the resolved configuration), metrics.jsonl and tensorboard/ (loss, loss per
decade of sigma, learning rate, gradient norm, EMA decay, every training.log_every steps), samples/ (figures
of EMA-model samples, every training.sample_every steps) and checkpoints (checkpoint.json plus .safetensors
files; the last training.keep_checkpoints are kept). A run directory that holds a checkpoint is resumed
exactly where it stopped (the formulation, model, data, objective and optimiser must not change; raise
training.steps to train longer). Under torchrun every process trains on its share of each batch.

examples:
  diffscale train configs/mixture_1d_edm.yaml
  diffscale train configs/mixture_1d_edm.yaml --set diffusion.type=VP --set training.steps=500 --out runs/vp
  diffscale train configs/mixture_1d_edm.yaml --resume runs/vp --set training.steps=1000
  torchrun --nproc-per-node 4 -m diffscale train configs/mixture_1d_edm.yaml
"""

_SAMPLE_DESCRIPTION = """\
Draw samples from a trained run (EMA weights by default). The sampler settings default to the run's
'sampling:' section; the flags below override single keys and are validated the same way.

examples:
  diffscale sample runs/mixture_1d_edm --num 10000 --out samples.npy
  diffscale sample runs/mixture_1d_edm --num 5000 --out samples.csv --sampler euler --steps 64 --plot samples.png
  diffscale sample runs/fashion_mnist --classes 0-9 --per-class 8 --guidance 0,1,2,4 --grid grid.png --out s.npz
"""

_LIKELIHOOD_DESCRIPTION = """\
Log-likelihood of data under a trained run, through the probability-flow ODE
d x/d sigma = (x - D(x; sigma)) / sigma integrated in ln sigma from sigma-start (the data end) to sigma-end,
with the change in log-density from the trace of the denoiser's Jacobian (exact, or Hutchinson's estimator
with a fixed set of probes per sample) and the prior N(0, sigma-end^2 I) at sigma-end.

The result is log p(x; sigma-start), the model's density of the data blurred by N(0, sigma-start^2), in nats
of the data space the model was trained on (it differs from log p(x; 0) by O(d sigma-start^2 / s^2) for data
of local scale s; --zero-noise-correction estimates log p(x; 0)). It is printed as mean +- standard error
over the samples, in nats and in bits per dimension; when the run's data is a known mixture the exact values
are printed alongside. ODE error with an exact denoiser (toy mixtures, rk4): mean 4e-4 / max 6e-3 nats at
32 steps, 2e-5 / 3e-4 at 64; a trained network's own error is usually larger.

examples:
  diffscale likelihood runs/mixture_1d_edm --data mixture:2000
  diffscale likelihood runs/mixture_1d_edm --data samples.npy --num-probes 4 --out likelihood.json
"""

_DEMO_DESCRIPTION = """\
Train one model per formulation (VE, VP, EDM, iDDPM) on the 1-D two-Gaussian mixture, sample each, and
write a figure of the forward and learned reverse processes plus a table of distances to the exact
mixture into the output directory. Then downscale a held-out UK day (ERA5 2 m temperature, 28 March 2019,
bundled with the package) with the shipped pretrained model era5-uk-t2m and draw the coarse input, four members,
the truth and the ensemble spread (demo_downscaling.png).
"""


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model from a YAML configuration",
        description=_TRAIN_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="YAML configuration file (e.g. configs/mixture_1d_edm.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key with a YAML value, e.g. --set training.steps=100 "
        "--set diffusion.type=VP --set data.channels.latlon=false (repeatable; changing diffusion.type starts "
        "that section from the new formulation's defaults)",
    )
    parser.add_argument(
        "--out",
        metavar="RUN_DIR",
        default=None,
        help="run directory (default: output.dir of the configuration, else runs/<CONFIG name>)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="resume the run in RUN_DIR from its latest checkpoint (or from a checkpoint-<step>.json in it); "
        "a run directory that holds a checkpoint is resumed without this flag too",
    )
    add_threads_option(parser, default=None)
    parser.add_argument(
        "--device",
        default=None,
        metavar="D",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: training.device of the configuration)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=_train)


def _add_sample(commands: argparse._SubParsersAction) -> None:

    parser = commands.add_parser(
        "sample",
        help="draw samples from a trained run",
        description=_SAMPLE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument("--num", type=count(1), metavar="N", help="number of samples to draw (not for image runs)")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="output file; the extension picks the format: .npy, .csv or .safetensors (tensor 'samples'); for an "
        "image run .npz (images uint8, labels, guidance, class_names)",
    )
    images = parser.add_argument_group("class-conditional image runs (data.kind: images)")
    images.add_argument(
        "--classes",
        metavar="SPEC",
        default=None,
        help="classes to draw: 0-9, 0,3,5-7 or class names (Sneaker,Bag); rows of the grid",
    )
    images.add_argument("--per-class", type=count(1), default=8, metavar="K", help="images per class and weight")
    images.add_argument(
        "--guidance",
        default="1",
        metavar="W[,W...]",
        help="classifier-free guidance weights, one grid panel each: 0 unconditional, 1 conditional, >1 guided",
    )
    images.add_argument("--grid", metavar="PNG", default=None, help="figure of the images (.png, .pdf, .svg)")
    add_sampler_options(parser)
    parser.add_argument("--seed", type=count(0), default=0, metavar="S", help="seed of the sampling noise")
    parser.add_argument("--batch-size", type=count(1), default=10_000, metavar="B", help="samples per batch")
    add_threads_option(parser)
    parser.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--weights",
        default="ema",
        metavar="ema|raw|NAME",
        help="EMA-averaged weights, the raw trained weights, or a post-hoc EMA variant (diffscale ema --name)",
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="also draw a figure (.png, .pdf, .svg): for mixtures a histogram (1-D) or scatter (2-D) of the samples "
        "over the exact density; for fields generated next to true fields, and their power spectra",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=_sample, aliases={"labels": "classes"})


def _add_likelihood(commands: argparse._SubParsersAction) -> None:
    from diffscale.evaluation.likelihood import PROBE_KINDS, SOLVERS

    parser = commands.add_parser(
        "likelihood",
        help="log-likelihood of data under a trained run",
        description=_LIKELIHOOD_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument(
        "--data",
        required=True,
        metavar="FILE|mixture:N",
        help="samples of shape (N, D): a .npy, .csv (optional header line) or .safetensors file (tensor "
        "'samples'), or mixture:N for N fresh draws (seeded by --seed) of the run's own mixture",
    )
    group = parser.add_argument_group("ODE and trace estimator")
    group.add_argument("--steps", type=count(1), default=64, metavar="N", help="solver steps, uniform in ln sigma")
    group.add_argument("--solver", choices=SOLVERS, default="rk4", help="rk4 (4 evaluations per step) or heun (2)")
    group.add_argument(
        "--num-probes",
        type=count(1),
        default=1,
        metavar="K",
        help="Hutchinson probes per sample (fixed along the path)",
    )
    group.add_argument("--probe", choices=PROBE_KINDS, default="rademacher", help="distribution of the probes")
    group.add_argument(
        "--exact-trace", action="store_true", help="exact trace with D vector-Jacobian products (small D) instead"
    )
    group.add_argument(
        "--sigma-start", type=number, metavar="X", help="sigma at the data end (default: the formulation's sigma_min)"
    )
    group.add_argument(
        "--sigma-end",
        type=number,
        metavar="X",
        help="sigma of the Gaussian prior (default: the formulation's sigma_max)",
    )
    group.add_argument(
        "--zero-noise-correction",
        action="store_true",
        help="add the O(sigma-start^2) heat-equation term to estimate log p(x; 0) (amplifies denoiser error)",
    )
    parser.add_argument("--batch-size", type=count(1), default=1000, metavar="B", help="samples per batch")
    parser.add_argument("--seed", type=count(0), default=0, metavar="S", help="seed of the probes and of mixture:N")
    parser.add_argument(
        "--out", metavar="JSON", default=None, help="also write the settings, summary and per-sample values (.json)"
    )
    parser.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--weights",
        default="ema",
        metavar="ema|raw|NAME",
        help="EMA-averaged weights, the raw trained weights, or a post-hoc EMA variant (diffscale ema --name)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=_likelihood)


def _add_models(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models",
        help="list the pretrained models shipped with diffscale (usable by name as RUN_DIR)",
        description="List the pretrained models shipped with the package: name, variables, grid, coarsening "
        "factor, size and model card. Every command that takes a RUN_DIR (downscale, coarsen, sample, evaluate "
        "--run, ...) and diffscale.load_run accept a name in its place.",
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(handler=_models)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="train and compare all formulations on a 1-D mixture; downscale a held-out UK day",
        description=_DEMO_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR", help="output directory for figure and table")
    parser.add_argument(
        "--train-steps", type=count(1), default=2000, metavar="N", help="training steps per formulation"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.add_argument(
        "--no-downscaling",
        action="store_true",
        help="skip the second part (a held-out UK day downscaled by the shipped model era5-uk-t2m)",
    )
    parser.set_defaults(handler=_demo)


_COARSEN_DESCRIPTION = """\
Make the coarse input a climate run expects from fine fields on its grid: the run's crop and trimming (what they
remove is logged in one line each), then the area-weighted block mean by its coarsening factor, as training built
it. Use it to test a run on held-out fine data (downscale the result, then evaluate the ensemble against the fine
fields). The output is a netCDF file, or a Zarr store when --out ends in .zarr.

examples:
  diffscale coarsen runs/era5_uk --input era5_t2m.nc --start 2019-03-25 --end 2019-03-31 --out runs/coarse.nc
  diffscale downscale runs/era5_uk --input runs/coarse.nc --members 16 --out runs/ensemble.nc
  diffscale coarsen runs/era5_uk --input era5_t2m.nc --out runs/coarse.zarr     # a Zarr store instead
"""


def _add_coarsen(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "coarsen",
        help="make a climate run's coarse input from fine fields (as in training)",
        description=_COARSEN_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=RUN_HELP)
    parser.add_argument(
        "--input", action="append", required=True, metavar="FILE", help="fine fields (repeatable; globs allowed)"
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="output: a netCDF file (.nc) or a Zarr store (.zarr)"
    )
    parser.add_argument(
        "--start", metavar="TIME", help="first time (ISO date or time of the input's calendar; default: all)"
    )
    parser.add_argument("--end", metavar="TIME", help="last time, inclusive")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file or store")
    parser.set_defaults(handler=_coarsen, aliases={"fine": "input"})


_EXAMPLE_DATA_DESCRIPTION = """\
Fetch example data (online): the file is downloaded once, checked against its sha256 and written as netCDF into
the output folder. Offline, copy the original file by other means and convert it with --source.

fashion-mnist is not downloaded: install Debian's package (apt-get install dataset-fashion-mnist, IDX files in
/usr/share/datasets/fashion-mnist) or download its four IDX files from the dataset's site
(https://github.com/zalandoresearch/fashion-mnist) into a folder given with --source; the command finds the files,
reads them and prints the image counts and classes.

examples:
  diffscale example-data                        # example_data/era5_t2m_uk_2019-03.nc
  diffscale train configs/downscaling_template.yaml
  diffscale example-data fashion-mnist          # checks /usr/share/datasets/fashion-mnist
  diffscale train configs/fashion_mnist.yaml
"""


def _add_example_data(commands: argparse._SubParsersAction) -> None:
    from diffscale.data.examples import EXAMPLES

    parser = commands.add_parser(
        "example-data",
        help="fetch the example data the downscaling template trains on",
        description=_EXAMPLE_DATA_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "name",
        nargs="?",
        default="era5_uk",
        choices=(*EXAMPLES, "fashion-mnist"),
        help="the example: "
        + "; ".join(f"{key}: {item.description}" for key, item in EXAMPLES.items())
        + "; fashion-mnist: finds and checks the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)",
    )
    parser.add_argument("--out", default="example_data", metavar="DIR", help="folder that receives the file")
    parser.add_argument(
        "--source",
        metavar="FILE",
        help="convert this local copy of the original file instead (fashion-mnist: the folder of its IDX files)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the file if it is already there")
    parser.add_argument("--no-progress", action="store_true", help="do not show the download progress bar")
    parser.set_defaults(handler=_example_data)


def build_parser() -> argparse.ArgumentParser:
    """The ``diffscale`` argument parser with its subcommands."""
    from diffscale import __version__
    from diffscale.cli.bias_adjust import add_parsers as add_bias_adjustment
    from diffscale.cli.downscale import add_parser as add_downscale
    from diffscale.cli.ema import add_parser as add_ema
    from diffscale.cli.evaluate import add_parser as add_evaluate
    from diffscale.cli.evaluate_images import add_parser as add_evaluate_images
    from diffscale.cli.init_config import add_parser as add_init_config
    from diffscale.cli.recalibrate import add_parser as add_recalibrate

    parser = _ArgumentParser(prog=PROG, description=_MAIN_DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}", help="print the version")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands", required=True, parser_class=_ArgumentParser
    )
    add_init_config(commands)
    _add_train(commands)
    add_ema(commands)
    _add_sample(commands)
    _add_likelihood(commands)
    add_downscale(commands)
    _add_coarsen(commands)
    add_bias_adjustment(commands)
    add_evaluate(commands)
    add_evaluate_images(commands)
    add_recalibrate(commands)
    _add_models(commands)
    _add_demo(commands)
    _add_example_data(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffscale`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad input raises ``SystemExit(2)`` after one line on stderr.
    """
    args = build_parser().parse_args(argv)
    handler: CommandHandler = args.handler
    try:
        with command_line_names(getattr(args, "aliases", None)):
            return handler(args)
    except ConfigError as error:  # bad user input (CheckpointError included); bugs keep their traceback
        _fail(str(error))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
