"""EDM2's magnitude-preserving U-Net against DDPM++ on the ERA5 UK configuration, at equal steps, by validation loss;
and post-hoc EMA of each run.

Trains configs/era5_uk.yaml as it is (DDPM++, 0.69 M parameters) and with ``model: {arch: edm2}`` of the same width
(0.68 M parameters; the same dropout, data and training settings), then once more with EDM2's higher learning rate,
every run saving post-hoc EMA snapshots (sigma_rel 0.05 and 0.10 every 25 steps). Each run is scored by the training
loss (the EDM-weighted denoising loss) on the validation days (21-24 March), every time ``--repeats`` times, with the
same noise levels and noise for every model: the raw weights, the trainer's EMA (half-life 2000 samples) and the
post-hoc EMA of several widths (the lowest is what ``diffscale ema RUN --validation`` would choose).

    python benchmarks/edm2_uk.py                  # 3 runs of 400 steps: most of an hour on 2 busy CPU cores
    python benchmarks/edm2_uk.py --steps 800      # the configuration's full length
    python benchmarks/edm2_uk.py --quick          # a few steps of each, to check the pipeline
    python benchmarks/edm2_uk.py --only edm2-lr0.01 --threads 1   # one of the runs (several can run side by side)

Needs ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffscale.config import config_from_dict
from diffscale.config.loader import read_yaml_mapping
from diffscale.runs import load_run, posthoc_ema, prepare_training, train
from diffscale.runs.posthoc_ema import validation_batches, validation_loss
from diffscale.threads import thread_policy

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "era5_uk.yaml"
DATA = ROOT.parent / "shared" / "data"
STDS = [0.02, 0.04, 0.06, 0.08, 0.10, 0.13, 0.16, 0.2]
EDM2_MODEL = {
    "arch": "edm2",
    "model_channels": 24,
    "channel_mult": [1, 2, 2],
    "num_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.2,
}


def configuration(model: dict | None, steps: int, learning_rate: float | None, out: Path) -> dict:
    data = read_yaml_mapping(CONFIG)
    data["data"]["paths"] = [str(DATA / "era5_t2m_uk_2019-03.nc")]
    data["data"]["static_paths"] = [str(DATA / "era5_orography_lsm_global.nc")]
    if model is not None:
        data["model"] = model
    training = data["training"]
    training.update(steps=steps, posthoc_ema_stds=[0.05, 0.10], posthoc_ema_every=25, checkpoint_every=steps)
    training.update(tensorboard=False, device="cpu")
    if learning_rate is not None:
        training["learning_rate"] = learning_rate
    data["output"] = {"dir": str(out)}
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=8, help="noise draws per validation time")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "edm2_uk")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("ddpmpp", "edm2", "edm2-lr0.01"), help="train and score this run alone")
    parser.add_argument("--threads", default="auto", help="training.threads of every run")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found (see ../shared/data/README.md)")
    steps = 10 if args.quick else args.steps
    repeats = 1 if args.quick else args.repeats
    runs = {
        "ddpmpp (lr 0.002)": (None, None),
        "edm2 (lr 0.002)": (EDM2_MODEL, None),
        "edm2 (lr 0.01)": (EDM2_MODEL, 0.01),
    }
    keys = dict(zip(("ddpmpp", "edm2", "edm2-lr0.01"), runs, strict=True))
    if args.only is not None:
        runs = {keys[args.only]: runs[keys[args.only]]}
    rows = []
    for label, (model, learning_rate) in runs.items():
        out = args.out / label.split()[0] / f"lr{learning_rate or 0.002}"
        data = configuration(model, steps, learning_rate, out)
        data["training"]["threads"] = int(args.threads) if args.threads.isdigit() else args.threads
        config = config_from_dict(data)
        start = time.perf_counter()
        plan = prepare_training(config, out, resume=False if not (out / "checkpoint.json").is_file() else None)
        print(f"{label}: {plan.summary}", flush=True)
        if plan.trainer.step < steps:
            train(plan, progress=False)
        seconds = time.perf_counter() - start
        stored = load_run(out, device="cpu").config
        count, batches = validation_batches(
            stored, out, batch_size=64, repeats=repeats, seed=0, device=torch.device("cpu")
        )
        models = [load_run(out, weights=weights, device="cpu").model for weights in ("raw", "ema")]
        with thread_policy(data["training"]["threads"]):
            raw, ema = validation_loss(stored, models, batches, seed=0)
            result = posthoc_ema(out, STDS, validation=True, write=False, repeats=repeats, device="cpu")
        posthoc = {c.std: c.validation_loss for c in result.candidates}
        rows.append((label, seconds, raw, ema, posthoc, result.chosen.std))
        print(f"{label}: {seconds:.0f} s; validation loss raw {raw:.5f}, EMA {ema:.5f}, post-hoc {posthoc}", flush=True)
    print(f"\nvalidation loss after {steps} steps ({count} samples: every validation time x {repeats}, same noise)")
    header = "| model | train s | raw | EMA (half-life 2000) | " + " | ".join(f"std {s}" for s in STDS) + " |"
    print(header)
    print("|" + "---|" * (4 + len(STDS)))
    for label, seconds, raw, ema, posthoc, chosen in rows:
        cells = " | ".join(f"**{posthoc[s]:.4f}**" if s == chosen else f"{posthoc[s]:.4f}" for s in STDS)
        print(f"| {label} | {seconds:.0f} | {raw:.4f} | {ema:.4f} | {cells} |")


if __name__ == "__main__":
    main()
