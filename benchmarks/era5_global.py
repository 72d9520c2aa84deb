"""ERA5 global at 1 deg, five variables downscaled together 4x (4 deg -> 1 deg): train, downscale held-out times,
score every variable beside the baselines.

``configs/era5_global.yaml`` trains one diffusion model of t2m, u10, v10, msl and tp (tp as log1p of millimetres)
on the first 18 of the 24 times of ``era5_global_1deg_2026-03.nc`` (every 7 h, 25-31 March 2026); the last 6 are
the test times. Their coarse inputs are the fine fields (the 180 x 360 model grid: the row at -90 trimmed) as
4 x 4 area-weighted block means (45 x 90); ``diffscale downscale`` draws the ensemble, ``diffscale.evaluate``
scores it. One table: per variable (and the derived 10 m wind speed) the RMSE of bilinear, bicubic and
lapse-rate-corrected bilinear (t2m) interpolation, the ensemble mean's RMSE and its ratio to bilinear, the fair
CRPS against the bilinear MAE, the spread-skill ratio and the seam ratio (mean |difference| across the wrap-around
column pair of the model's grid, 179 | -180 deg once harmonised, ensemble / truth, and the same over the pairs beside
it: ``diffscale.evaluate``'s seam report); then the energy score of the joint ensemble and one line with the same
ratio across the file's own seam, its 359 | 0 deg pair (-1 | 0 harmonised, inside the model's grid).

    python benchmarks/era5_global.py                        # train (9 min on 2 idle CPU cores) and score
    python benchmarks/era5_global.py --period validation    # train on times 1-12, score times 13-18 (tuning)
    python benchmarks/era5_global.py --skip-training        # score an existing run again
    python benchmarks/era5_global.py --skip-training --period training   # the test run on 5 of its training times
    python benchmarks/era5_global.py --quick                # a few steps, to check the pipeline

Settings were chosen on the validation split (times 13-18, never the test times). Needs ../shared/data.
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
    joint_lines,
    markdown,
    run,
    score_ensemble,
    score_rows,
    section,
    start_benchmark,
    truth_fields,
)

from diffscale.evaluation.multivariate import seam_report

CONFIG = ROOT / "configs" / "era5_global.yaml"
GLOBAL = DATA / "era5_global_1deg_2026-03.nc"
PERIODS = {
    # period: (training period, scored period); the times are every 7 h: 1-12, 13-18, 19-24
    "validation": (("2026-03-25T00:00", "2026-03-28T07:00"), ("2026-03-28T15:00", "2026-03-30T03:00")),
    "test": (("2026-03-25T00:00", "2026-03-30T03:00"), ("2026-03-30T10:00", "2026-03-31T23:00")),
    # the test run scored on its first training times (5 fields, 25-26 March): what it fits in sample
    "training": (("2026-03-25T00:00", "2026-03-30T03:00"), ("2026-03-25T00:00", "2026-03-26T11:00")),
}


def prime_meridian_seam(ensemble: Path, fine: xr.Dataset) -> dict[str, tuple[float, float]]:
    """Per variable, the seam ratio (ensemble / truth) across 359 | 0 deg and beside it
    (:func:`~diffscale.evaluation.multivariate.seam_report` at that column of the harmonised grid)."""
    column = int(np.argmin(np.abs(fine.longitude.values)))
    result = {}
    with xr.open_dataset(ensemble) as members:
        for name in fine.data_vars:
            report = seam_report(
                members[name].values, fine[name].values, fine[name].values, fine.latitude.values, column=column
            )
            result[str(name)] = (report["ratio"], report["nearby_ratio"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period", choices=tuple(PERIODS), default="test")
    add_common_arguments(parser, members=16)
    args = parser.parse_args()
    start_benchmark(args, GLOBAL)
    trained, scored = PERIODS[args.period]
    run_dir = Path(args.runs).resolve() / ("era5_global_validation" if args.period == "validation" else "era5_global")
    overrides = [f"data.train_period=[{trained[0]}, {trained[1]}]", *args.set]
    if args.period == "validation":
        overrides.append(f"data.test_period=[{scored[0]}, {scored[1]}]")
    if args.quick:
        overrides += ["training.steps=4", "training.checkpoint_every=0"]
    wall = {}
    if not args.skip_training:
        command = ["train", str(CONFIG), "--out", str(run_dir), "--no-progress"]
        wall["training"] = run([*command, *[item for value in overrides for item in ("--set", value)]])
    data = section(CONFIG)
    fine = truth_fields(data, *scored)
    with tempfile.TemporaryDirectory() as scratch:
        coarse = coarse_file(fine, data.coarsen_factor, Path(scratch) / "coarse.nc")
        ensemble = Path(scratch) / "ensemble.nc"
        command = ["downscale", str(run_dir), "--input", str(coarse), "--members", str(args.members)]
        wall["downscaling"] = run([*command, "--out", str(ensemble), "--no-progress"])
        scores = score_ensemble(ensemble, fine, coarse)
        meridian = prime_meridian_seam(ensemble, fine)
    methods = baselines(fine, data.variables, data.coarsen_factor)
    rows = score_rows(scores, fine, methods)
    times = fine.sizes["time"]
    print(
        f"\nERA5 global 1 deg, {args.period} times {scored[0]} to {scored[1]} ({times} fields every 7 h, "
        f"180 x 360, coarse 45 x 90), area-weighted; {args.members} members"
    )
    print(markdown(rows, args.members))
    for line in joint_lines(scores):
        print(line)
    print(
        "the file's own seam (359 | 0 deg, inside the model's -180 .. 179 grid), ensemble / truth (beside it): "
        + ", ".join(f"{name} {ratio:.2f} ({nearby:.2f})" for name, (ratio, nearby) in meridian.items())
    )
    print(
        "aims: ensemble-mean RMSE <= 0.7 x bilinear for every variable, CRPS of tp <= 0.8 x bilinear MAE, seam 0.9-1.1"
    )
    for name, seconds in wall.items():
        print(f"{name}: {seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall_seconds": wall}, indent=1, default=float))


if __name__ == "__main__":
    main()
