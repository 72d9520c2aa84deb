"""Class-conditional Fashion-MNIST on one machine and one wall-clock budget: diffscale's recipe against diffusers'.

Both recipes train on the 60,000 Fashion-MNIST training images, padded with black to 32 x 32, batch 64, with the
same CPU threads and the same wall-clock budget each (one after the other, on the same machine; its load is
printed, since the machine may be shared):

- diffscale: ``configs/fashion_mnist.yaml`` as it stands (EDM, DDPM++ U-Net with 32 channels, EMA, label dropout
  0.1), trained by :func:`diffscale.runs.train` until the budget is spent (checked at every 50th step, where a
  checkpoint was just written); sampled with its Heun (NFE 2N - 1) and DPM-Solver++(2M) solvers.
- diffusers: its class-conditional recipe: ``UNet2DModel`` with a class embedding (``num_class_embeds``), blocks
  (32, 64, 64) with attention at 8 x 8 (the DDPM++ network's widths and attention), ``DDPMScheduler`` (1,000
  steps, linear betas, epsilon prediction, MSE loss), AdamW with the tutorial's linear warm-up scaled to the budget
  (200 steps, as diffscale's) and learning rate 1e-3 (the tutorial's 1e-4 is meant for days, not minutes); no
  EMA, as in the tutorial. Sampled with its ``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M).

At NFE 10, 20 and 50 (Heun: 9, 19, 49) each draws ``--per-class`` images of every class (conditional, guidance
weight 1) and they are scored against the 10,000 test images in the shipped classifier's features:
Fréchet distance, KID (± standard error), precision/recall and class accuracy.

    python benchmarks/images_vs_diffusers.py --budget-minutes 10 --per-class 20 --out /tmp/images_vs_diffusers
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` when run as a script

from diffscale.evaluation.image_classifier import load_fashion_mnist_classifier
from diffscale.evaluation.image_report import ImageReference, ImageScores, image_reference, score_images

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.yaml"
NFES = (10, 20, 50)
CHECK_EVERY = 50
BATCH = 64
PAD = 2  # 28 -> 32


class BudgetSpentError(Exception):
    """Raised from the training callback once the wall-clock budget is spent."""


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    from diffscale.data.images import find_fashion_mnist, load_image_dataset

    data = load_image_dataset(find_fashion_mnist(), split=split)  # type: ignore[arg-type]
    return data.images, data.labels


# -- diffscale ---------------------------------------------------------------------------------------------------
def train_diffscale(out: Path, config_path: Path, budget: float, threads: int, check_every: int) -> tuple[object, dict]:
    from diffscale.config import load_config
    from diffscale.runs import load_run, prepare_training, train

    overrides = [
        "training.steps=100000000",
        f"training.checkpoint_every={check_every}",
        "training.keep_checkpoints=1",
        f"training.threads={threads}",
        f"training.log_every={check_every}",
        f"training.batch_size={BATCH}",
    ]
    config = load_config(config_path, overrides)
    run_dir = out / "diffscale_run"
    plan = prepare_training(config, run_dir, resume=False)
    started = time.perf_counter()

    def stop_when_spent(record: object) -> None:
        step = record.step  # type: ignore[attr-defined]
        if step % check_every == 0 and time.perf_counter() - started >= budget:
            raise BudgetSpentError

    with contextlib.suppress(BudgetSpentError):
        train(plan, progress=False, callback=stop_when_spent)
    seconds = time.perf_counter() - started
    run = load_run(run_dir, device="cpu")
    parameters = sum(p.numel() for p in run.model.parameters())
    return run, {"steps": run.step, "seconds": seconds, "parameters": parameters}


def sample_diffscale(run: object, solver: str, nfe: int, per_class: int, seed: int, threads: int) -> np.ndarray:
    steps = (nfe + 1) // 2 if solver == "heun" else nfe
    drawn = run.sample_images(  # type: ignore[attr-defined]
        classes=range(10), per_class=per_class, guidance=1.0, steps=steps, sampler=solver, seed=seed, threads=threads
    )
    return drawn.images


# -- diffusers ---------------------------------------------------------------------------------------------------
def diffusers_model() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=10,
    )


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) or (B, 28, 28) -> [-1, 1] (B, 1, 32, 32), padded with black (-1) as diffscale's
    recipe pads."""
    x = images.to(torch.float32) / 127.5 - 1.0
    x = x[:, None] if x.ndim == 3 else x
    return torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)


def train_diffusers(
    train_images: np.ndarray, train_labels: np.ndarray, budget: float, seed: int, check_every: int
) -> tuple:
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_constant_schedule_with_warmup

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = diffusers_model().train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=200)
    images = torch.from_numpy(np.array(train_images))
    labels = torch.from_numpy(np.array(train_labels)).long()
    started = time.perf_counter()
    step = 0
    while True:
        index = torch.randint(images.shape[0], (BATCH,), generator=generator)
        x = to_model_space(images[index])
        noise = torch.randn(x.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,), generator=generator)
        prediction = model(scheduler.add_noise(x, noise, t), t, class_labels=labels[index]).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
        step += 1
        if step % check_every == 0 and time.perf_counter() - started >= budget:
            break
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    return model.eval().requires_grad_(False), scheduler, {"steps": step, "seconds": seconds, "parameters": parameters}


@torch.no_grad()
def sample_diffusers(
    model: torch.nn.Module, trained: object, kind: str, nfe: int, per_class: int, seed: int
) -> np.ndarray:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if kind == "ddim":
        scheduler = DDIMScheduler.from_config(trained.config)  # type: ignore[attr-defined]
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(
            trained.config,  # type: ignore[attr-defined]
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
    scheduler.set_timesteps(nfe)
    labels = torch.arange(10).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((labels.shape[0], 1, 32, 32), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t, class_labels=labels).sample
        x = scheduler.step(eps, t, x).prev_sample
    x = x[:, :, PAD:-PAD, PAD:-PAD]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


# -- scoring -----------------------------------------------------------------------------------------------------
def first_of_each_class(images: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` images of each class 0..9, class by class (the layout of the drawn images)."""
    return np.concatenate([images[labels == c][:per_class] for c in range(10)])


def score(images: np.ndarray, per_class: int, reference: ImageReference, classifier: object) -> ImageScores:
    labels = np.repeat(np.arange(10), per_class)
    return score_images(
        images,
        labels,
        reference,
        classifier=classifier,
        kid_subsets=100,
        kid_subset_size=1000,
        seed=0,  # type: ignore[arg-type]
    )


def row(recipe: str, sampler: str, nfe: int, seconds: float, s: ImageScores) -> str:
    kid = f"{1e3 * s.kid.mean:.2f} ± {1e3 * s.kid.standard_error:.2f}"
    return (
        f"| {recipe} | {sampler} | {nfe} | {s.frechet_distance:.2f} | {kid} | {s.precision:.3f} | {s.recall:.3f} | "
        f"{s.accuracy:.3f} | {seconds:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="training wall-clock budget per recipe")
    parser.add_argument("--per-class", type=int, default=20, help="images per class for every sampler and NFE")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of both recipes")
    parser.add_argument("--check-every", type=int, default=CHECK_EVERY, help="steps between looks at the clock")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=CONFIG, help="diffscale's configuration")
    parser.add_argument("--out", type=Path, default=Path("images_vs_diffusers"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = 60.0 * args.budget_minutes
    args.out.mkdir(parents=True, exist_ok=True)
    import diffusers

    print(f"machine: {machine_line()}; diffusers {diffusers.__version__}; {args.threads} torch threads")
    print(f"budget {args.budget_minutes:g} min of training per recipe; {args.per_class} images per class per sampler")
    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    drawn: list[tuple[str, str, int, float, np.ndarray]] = [
        ("training images (the floor)", "-", 0, 0.0, first_of_each_class(train_images, train_labels, args.per_class))
    ]

    print(f"[{time.strftime('%H:%M:%S')}] diffscale training; {load_line()}", flush=True)
    run, fit = train_diffscale(args.out, args.config, budget, args.threads, args.check_every)
    print(
        f"diffscale: {fit['steps']} steps ({fit['steps'] * BATCH:,} images) in {fit['seconds']:.0f} s, "
        f"{fit['parameters']:,} parameters; {load_line()}",
        flush=True,
    )
    for solver in ("heun", "dpmpp_2m"):
        for nfe in NFES:
            started = time.perf_counter()
            images = sample_diffscale(run, solver, nfe, args.per_class, args.seed, args.threads)
            used = 2 * ((nfe + 1) // 2) - 1 if solver == "heun" else nfe
            drawn.append(("diffscale", solver, used, time.perf_counter() - started, images))
            print(f"diffscale {solver} NFE {used}: {drawn[-1][3]:.1f} s", flush=True)

    print(f"[{time.strftime('%H:%M:%S')}] diffusers training; {load_line()}", flush=True)
    model, trained, fit = train_diffusers(train_images, train_labels, budget, args.seed, args.check_every)
    print(
        f"diffusers: {fit['steps']} steps ({fit['steps'] * BATCH:,} images) in {fit['seconds']:.0f} s, "
        f"{fit['parameters']:,} parameters; {load_line()}",
        flush=True,
    )
    for kind in ("ddim", "dpmsolver++"):
        for nfe in NFES:
            started = time.perf_counter()
            images = sample_diffusers(model, trained, kind, nfe, args.per_class, args.seed)
            drawn.append(("diffusers", kind, nfe, time.perf_counter() - started, images))
            print(f"diffusers {kind} NFE {nfe}: {drawn[-1][3]:.1f} s", flush=True)

    np.savez_compressed(
        args.out / "samples.npz",
        **{f"{recipe}_{sampler}_{nfe}".replace(" ", "_"): images for recipe, sampler, nfe, _, images in drawn},
    )
    print(f"[{time.strftime('%H:%M:%S')}] scoring; {load_line()}", flush=True)
    classifier = load_fashion_mnist_classifier()
    reference = image_reference(test_images, test_labels, classifier=classifier)
    lines = ["| recipe | sampler | NFE | FD | KID ×1e3 | precision | recall | class accuracy | sampling s |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for recipe, sampler, nfe, seconds, images in drawn:
        lines.append(row(recipe, sampler, nfe, seconds, score(images, args.per_class, reference, classifier)))
    print(f"[{time.strftime('%H:%M:%S')}] done; {load_line()}")
    print("\n".join(lines))
    (args.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
