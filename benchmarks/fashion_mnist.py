"""Class-conditional Fashion-MNIST with classifier-free guidance (`configs/fashion_mnist.yaml`): trains the run (or
takes a trained one), prints its training time and loss from metrics.jsonl, then draws 8 images of each class for
the guidance weights 0, 1, 2, 4 with the run's sampler (the same noise for every weight), prints how long that
took, and writes the grid (and the images as .npz).

    python benchmarks/fashion_mnist.py --run runs/fashion_mnist --figure docs/figures/images/fashion_mnist_grid.png
    python benchmarks/fashion_mnist.py --quick             # 20 training steps into a temporary folder

Needs the Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`, or see `diffscale example-data
fashion-mnist`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import diffscale
from diffscale.config import load_config
from diffscale.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist.yaml"


def train(run_dir: Path, quick: bool) -> None:
    """Train configs/fashion_mnist.yaml into ``run_dir``."""
    overrides = ["training.steps=20", "training.checkpoint_every=0"] if quick else []
    config = load_config(CONFIG, overrides)
    start = time.perf_counter()
    diffscale.train(diffscale.prepare_training(config, run_dir, resume=False), progress=False)
    print(f"trained {run_dir} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)


def training_summary(run: diffscale.Run) -> str:
    """Steps, wall time and last logged loss of a run, from its metrics.jsonl."""
    text = (run.run_dir / "metrics.jsonl").read_text()
    last = [json.loads(line) for line in text.splitlines() if line.strip()][-1]
    return (
        f"training: {last['step']} steps of batch {run.config.training.batch_size} in {last['seconds'] / 60:.1f} min "
        f"(loss {last['loss']:.3f} over the last logged window); {run.step} steps in the checkpoint"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="the run directory (trained there first when it holds no run)")
    parser.add_argument("--quick", action="store_true", help="20 training steps: checks the pipeline")
    parser.add_argument("--figure", type=Path, help="write the grid here (.png)")
    parser.add_argument("--npz", type=Path, help="write the images here (.npz)")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--guidance", default="0,1,2,4")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    parser.add_argument("--threads", default="auto")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-") as scratch:
        run_dir = args.run if args.run is not None else Path(scratch) / "run"
        try:
            if not (run_dir / "checkpoint.json").is_file():
                train(run_dir, args.quick)
            run = diffscale.load_run(run_dir, device="cpu")
            print(training_summary(run), flush=True)
            threads = int(args.threads) if args.threads.isdigit() else args.threads
            start = time.perf_counter()
            drawn = run.sample_images(None, args.per_class, args.guidance, steps=args.steps, seed=0, threads=threads)
            seconds = time.perf_counter() - start
            sampler = drawn.metadata["sampler"]
            print(
                f"sampling: {drawn.images.shape[0]} images (10 classes x {args.per_class} x guidance {args.guidance}), "
                f"{sampler['solver']} {sampler['steps']} steps (NFE {drawn.metadata['nfe_per_sample']}; twice the "
                f"network evaluations for w not 0 or 1) in {seconds:.0f} s",
                flush=True,
            )
            for path in drawn.save(args.npz, args.figure):
                print(f"wrote {path}")
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
