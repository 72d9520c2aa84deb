"""Downscaling on any window of the grid: the ERA5 UK model scored on the window it was trained on and on windows
shifted by whole fine cells (so their coarse cells are other blocks of the fine grid: another coarse lattice),
trained as shipped (`configs/era5_uk.yaml`), with `data.random_alignment: true`, without the latitude/longitude
channels (`data.channels.latlon: false`, so that nothing in the input names the window's position), and with
`data.random_windows: true` (28 x 44 windows anywhere on the file's 33 x 49 points, each coarsened on its own),
with 800 and with 1600 steps (the latter is `configs/era5_uk_windows.yaml`).

The training window is rows 1..32 (50.25 .. 58.0 N) and columns 0..47 (10 W .. 1.75 E) of the ERA5 file (33 x 49
points). The shifted windows move it one row south (50.0 .. 57.75 N), one column east, or both: every window has
the same size and its coarse input is its own area-weighted 4 x 4 block means, as for the training window. Each is
downscaled for the test week (25-31 March, never trained on; 168 hourly fields) and scored against the truth; a
model trained on windows downscales the whole 32 x 48 window in one network call.

    python benchmarks/window_shift.py                   # five trainings (5-15 min each) and 20 ensembles
    python benchmarks/window_shift.py --recipes "as shipped" "random windows, 1600 steps"
    python benchmarks/window_shift.py --members 8       # fewer members, faster
    python benchmarks/window_shift.py --skip-training --runs RUNS
    python benchmarks/window_shift.py --quick           # a few steps, to check the pipeline

Prints one table: per recipe and window, the ensemble-mean RMSE, fair CRPS and spread-skill ratio, and RMSE and CRPS
relative to the training window's (the aim: within 5 %). Needs ../shared/data (see its README).
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
from diffscale.data.climate import coarsen, open_fields

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T2M = DATA / "era5_t2m_uk_2019-03.nc"
TEST = ("2019-03-25", "2019-03-31")
TRAINING_WINDOW = (1, 0)  # first fine row (south -> north) and column (west -> east) of the 32 x 48 crop
SIZE = (32, 48)
FACTOR = 4
WINDOWS = {"training window": (0, 0), "1 row south": (-1, 0), "1 column east": (0, 1), "south and east": (-1, 1)}
# 28 x 44 windows anywhere on the file's whole 33 x 49 grid, each coarsened on its own: every alignment of the
# coarse lattice, and every row and column of the file, is trained
RANDOM_WINDOWS = ["data.random_windows=true", "data.patch=[28,44]", "data.crop=null", "data.remainder=keep"]
RECIPES = {
    "as shipped": [],
    "random alignment": ["data.random_alignment=true"],
    "no lat/lon channels": ["data.channels.latlon=false"],
    "random windows": RANDOM_WINDOWS,
    "random windows, 1600 steps": [*RANDOM_WINDOWS, "training.steps=1600"],
}


def _folder(recipe: str) -> str:
    """The run folder of a recipe."""
    return recipe.replace(", ", "_").replace(" ", "_").replace("/", "")


def train(name: str, overrides: list[str], runs: Path, quick: bool) -> Path:
    """Train configs/era5_uk.yaml with ``overrides`` into ``runs/name`` (through the Python API)."""
    run_dir = runs / _folder(name)
    steps = ["training.steps=20", "training.checkpoint_every=0"] if quick else []
    config = load_config(ROOT / "configs" / "era5_uk.yaml", [*overrides, *steps, "training.sample_every=0"])
    start = time.perf_counter()
    diffscale.train(diffscale.prepare_training(config, run_dir, resume=False))
    print(f"trained {name} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return run_dir


def window_truth(shift: tuple[int, int]) -> object:
    """The test week's fine fields on the training window moved by ``shift`` (rows, columns)."""
    fields = open_fields(T2M, ["t2m"], TEST)  # harmonised: latitude ascending
    top, left = TRAINING_WINDOW[0] + shift[0], TRAINING_WINDOW[1] + shift[1]
    return fields.isel(latitude=slice(top, top + SIZE[0]), longitude=slice(left, left + SIZE[1])).load()


def score(run: diffscale.ClimateRun, shift: tuple[int, int], members: int) -> dict[str, float]:
    truth = window_truth(shift)
    start = time.perf_counter()
    # a run trained on smaller windows downscales the whole window in one network call (a fully convolutional
    # network applies to any size; tiling it with the training patch would cost 4 calls per field here)
    patch = SIZE if run.section.patch is not None else None
    ensemble = run.downscale(coarsen(truth, FACTOR), members=members, seed=0, patch=patch)
    scores = diffscale.evaluate(ensemble, truth).sel(variable="t2m")
    ensemble_scores, bilinear = scores.sel(prediction="ensemble"), scores.sel(prediction="bilinear")
    return {
        "rmse": float(ensemble_scores["rmse"]),
        "crps": float(ensemble_scores["crps"]),
        "spread_skill": float(scores["spread_skill_ratio"]),
        "bilinear_rmse": float(bilinear["rmse"]),
        "seconds": time.perf_counter() - start,
    }


def table(results: dict[str, dict[str, dict[str, float]]], members: int) -> str:
    lines = [
        f"test week 25-31 March 2019, {members} members, K",
        "",
        "| recipe | window | RMSE | fair CRPS | spread-skill | RMSE / training window's | CRPS / training window's "
        "| bilinear RMSE |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe, windows in results.items():
        reference = windows["training window"]
        for window, row in windows.items():
            lines.append(
                f"| {recipe} | {window} | {row['rmse']:.3f} | {row['crps']:.3f} | {row['spread_skill']:.2f} | "
                f"{row['rmse'] / reference['rmse']:.3f} | {row['crps'] / reference['crps']:.3f} | "
                f"{row['bilinear_rmse']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="run directories (default: a temporary folder)")
    parser.add_argument("--skip-training", action="store_true", help="score the runs already in --runs")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="20 training steps and 2 members: checks the pipeline")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--recipes", nargs="+", choices=tuple(RECIPES), default=list(RECIPES), help="recipes to train and score"
    )
    args = parser.parse_args()
    if not T2M.exists():
        sys.exit(f"needs the ERA5 file {T2M} (../shared/data beside the repository)")
    members = 2 if args.quick else args.members
    with tempfile.TemporaryDirectory() as scratch:
        runs = args.runs or Path(scratch)
        results: dict[str, dict[str, dict[str, float]]] = {}
        for recipe in args.recipes:
            overrides = RECIPES[recipe]
            run_dir = runs / _folder(recipe)
            if not args.skip_training:
                train(recipe, overrides, runs, args.quick)
            run = diffscale.load_run(run_dir, device="auto")
            results[recipe] = {}
            for window, shift in WINDOWS.items():
                results[recipe][window] = score(run, shift, members)
                print(f"{recipe}, {window}: {results[recipe][window]}", flush=True)
        print(table(results, members))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
