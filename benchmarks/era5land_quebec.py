"""ERA5-Land daily tasmax and tasmin over southern Quebec, 1970 (0.1 deg), downscaled together 3x: train, downscale
the held-out weeks, score per season beside the baselines, and count the members that break tasmin <= tasmax.

``configs/era5land_quebec.yaml`` trains one diffusion model of both variables on every day outside the test weeks
(every fourth week of the year: days 22-28, 50-56, ..., 358-364; 91 days over all seasons). The coarse inputs
are the 30 x 30 grid's 3 x 3 area-weighted block means (10 x 10 at 0.3 deg); ``diffscale downscale`` draws the
ensemble twice with the same seed, as it comes and with ``--sort-ordered-pairs`` (tasmin, tasmax <- min, max at
every point of every member). One table, a row per variable and season (DJF, MAM, JJA, SON, and all test weeks):
the RMSE of bilinear, bicubic and lapse-rate-corrected bilinear interpolation, the ensemble mean's RMSE and its
ratio to bilinear, the fair CRPS and its ratio to the bilinear MAE, the spread-skill ratio; then per season the
share of member points with tasmin > tasmax, and what sorting changes.

    python benchmarks/era5land_quebec.py                       # train (about 10 min on 2 CPU cores) and score
    python benchmarks/era5land_quebec.py --period validation   # train without weeks 2, 6, ..., 50; score them
    python benchmarks/era5land_quebec.py --skip-training       # score an existing run again

Settings were chosen on the validation weeks (weeks 2, 6, ..., 50, inside the training weeks of the final run).
Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from climate_benchmark import (
    DATA,
    ROOT,
    add_common_arguments,
    baselines,
    coarse_file,
    markdown,
    run,
    score_rows,
    section,
    start_benchmark,
)

import diffscale
from diffscale.data.climate import open_fields

CONFIG = ROOT / "configs" / "era5land_quebec.yaml"
QUEBEC = DATA / "era5land_quebec_1970_daily.nc"
YEAR_START = np.datetime64("1970-01-01")
SEASONS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}


def weeks(first: int) -> list[tuple[str, str]]:
    """Weeks first, first + 4, ... of 1970 (week k: days 7k .. 7k + 6 from 1 January, k < 52) as ISO periods."""
    periods = []
    for k in range(first, 52, 4):
        start = YEAR_START + np.timedelta64(7 * k, "D")
        periods.append((str(start), str(start + np.timedelta64(6, "D"))))
    return periods


def _flow(periods: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"[{start}, {end}]" for start, end in periods) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period", choices=("validation", "test"), default="test")
    add_common_arguments(parser, members=32)
    args = parser.parse_args()
    start_benchmark(args, QUEBEC)
    data = section(CONFIG)
    scored = [tuple(period) for period in data.test_period] if args.period == "test" else weeks(1)
    assert scored == weeks(3) or args.period == "validation", "the configuration's test weeks changed"
    overrides = list(args.set)
    if args.period == "validation":
        overrides.append(f"data.validation_period={_flow(scored)}")
    if args.quick:
        overrides += ["training.steps=4", "training.checkpoint_every=0"]
    run_dir = Path(args.runs).resolve() / ("era5land_quebec" if args.period == "test" else "era5land_quebec_validation")
    wall = {}
    if not args.skip_training:
        command = ["train", str(CONFIG), "--out", str(run_dir), "--no-progress"]
        wall["training"] = run([*command, *[item for value in overrides for item in ("--set", value)]])
    fine = open_fields([str(QUEBEC)], data.variables).load()
    days = np.zeros(fine.sizes["time"], dtype=bool)
    for start, end in scored:
        days |= (fine.time.values >= np.datetime64(start)) & (fine.time.values <= np.datetime64(end))
    fine = fine.isel(time=np.flatnonzero(days))
    with tempfile.TemporaryDirectory() as scratch:
        coarse_path = coarse_file(fine, data.coarsen_factor, Path(scratch) / "coarse.nc")
        ensembles = {}
        for label, extra in (("as drawn", []), ("sorted", ["--sort-ordered-pairs"])):
            out = Path(scratch) / f"ensemble_{label.replace(' ', '_')}.nc"
            command = ["downscale", str(run_dir), "--input", str(coarse_path), "--members", str(args.members)]
            wall[f"downscaling ({label})"] = run([*command, "--out", str(out), "--no-progress", *extra])
            ensembles[label] = xr.open_dataset(out).load()
        coarse = xr.open_dataset(coarse_path).load()
    months = fine.time.dt.month.values
    rows, order, sorting = [], [], []
    for season, members in [*SEASONS.items(), ("all", tuple(range(1, 13)))]:
        mask = np.isin(months, members)
        subset = {name: ds.isel(time=np.flatnonzero(mask)) for name, ds in ensembles.items()}
        truth, coarse_subset = fine.isel(time=np.flatnonzero(mask)), coarse.isel(time=np.flatnonzero(mask))
        scores = diffscale.evaluate(subset["as drawn"], truth=truth, coarse=coarse_subset)
        sorted_scores = diffscale.evaluate(subset["sorted"], truth=truth, coarse=coarse_subset)
        label = f", {season} ({int(mask.sum())} days)"
        rows += score_rows(scores, truth, baselines(truth, data.variables, data.coarsen_factor), label)
        violation = scores.order_violation.sel(pair="tasmin<=tasmax")
        order.append(
            f"| {season} | {100 * float(violation.sel(prediction='ensemble')):.3g} % | "
            f"{float(scores.order_mean_excess.sel(pair='tasmin<=tasmax')):.3g} | "
            f"{100 * float(scores.order_violation_truth.sel(pair='tasmin<=tasmax')):.3g} % | "
            f"{100 * float(violation.sel(prediction='bilinear')):.3g} % |"
        )
        sorting.append(
            f"| {season} | "
            + " | ".join(
                f"{float(scores.crps.sel(variable=name, prediction='ensemble')):.4g} -> "
                f"{float(sorted_scores.crps.sel(variable=name, prediction='ensemble')):.4g}"
                for name in data.variables
            )
            + f" | {float(scores.energy_score.sel(prediction='ensemble')):.4g} -> "
            f"{float(sorted_scores.energy_score.sel(prediction='ensemble')):.4g} |"
        )
    what = "test weeks 4, 8, ..., 52" if args.period == "test" else "validation weeks 2, 6, ..., 50"
    print(
        f"\nERA5-Land Quebec 1970, {what} ({int(days.sum())} days), 30 x 30 at 0.1 deg, coarse 10 x 10, "
        f"area-weighted; {args.members} members"
    )
    print(markdown(rows, args.members))
    print("\n| season | members with tasmin > tasmax | mean excess [degC] | truth | bilinear |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(order))
    print(f"\n| season | CRPS {' | CRPS '.join(data.variables)} (as drawn -> sorted) | energy score |")
    print("|---|" + "---:|" * (len(data.variables) + 1))
    print("\n".join(sorting))
    for name, seconds in wall.items():
        print(f"{name}: {seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall_seconds": wall}, indent=1, default=float))


if __name__ == "__main__":
    main()
