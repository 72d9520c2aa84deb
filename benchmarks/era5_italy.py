"""ERA5 2 m temperature over Italy, May-June 2022 (3-hourly, 0.25 deg), downscaled 4x: train, downscale the
validation and test periods, score beside the baselines.

``configs/era5_italy.yaml`` trains the diffusion model of the residual over bilinear interpolation on 1 May -
10 June (328 fields); the validation period 11-19 June (72 fields) is where its settings were chosen, the test
period 20-30 June (88 fields) was scored once. The coarse inputs are the 40 x 48 model grid's (the 43 x 48 file
less 3 rows) 4 x 4 area-weighted block means; ``diffscale downscale`` draws 32 members, ``diffscale.evaluate``
scores them. One table, a row per period: the RMSE of bilinear, bicubic and lapse-rate-corrected bilinear
interpolation, the ensemble mean's RMSE and its ratio to bilinear, the fair CRPS and its ratio to the bilinear
MAE, and the spread-skill ratio.

    python benchmarks/era5_italy.py                  # train (about 10 min on 2 CPU cores) and score
    python benchmarks/era5_italy.py --skip-training  # score an existing run again
    python benchmarks/era5_italy.py --quick          # a few steps, to check the pipeline

Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from climate_benchmark import (
    DATA,
    ROOT,
    add_common_arguments,
    baselines,
    coarse_file,
    markdown,
    run,
    score_ensemble,
    score_rows,
    section,
    start_benchmark,
    truth_fields,
)

CONFIG = ROOT / "configs" / "era5_italy.yaml"
ITALY = DATA / "era5_t2m_italy_2022-05-06_3h.nc"
PERIODS = {"validation": ("2022-06-11", "2022-06-19"), "test": ("2022-06-20", "2022-06-30")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--periods", nargs="+", choices=tuple(PERIODS), default=list(PERIODS))
    add_common_arguments(parser, members=32)
    args = parser.parse_args()
    start_benchmark(args, ITALY)
    run_dir = Path(args.runs).resolve() / "era5_italy"
    overrides = [*args.set, *(["training.steps=4", "training.checkpoint_every=0"] if args.quick else [])]
    wall = {}
    if not args.skip_training:
        command = ["train", str(CONFIG), "--out", str(run_dir), "--no-progress"]
        wall["training"] = run([*command, *[item for value in overrides for item in ("--set", value)]])
    data = section(CONFIG)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for period in args.periods:
            fine = truth_fields(data, *PERIODS[period])
            coarse = coarse_file(fine, data.coarsen_factor, Path(scratch) / f"coarse_{period}.nc")
            ensemble = Path(scratch) / f"ensemble_{period}.nc"
            command = ["downscale", str(run_dir), "--input", str(coarse), "--members", str(args.members)]
            wall[f"downscaling ({period})"] = run([*command, "--out", str(ensemble), "--no-progress"])
            scores = score_ensemble(ensemble, fine, coarse)
            first, last = PERIODS[period]
            label = f", {period} {first[5:]} to {last[5:]} ({fine.sizes['time']} fields)"
            rows += score_rows(scores, fine, baselines(fine, data.variables, data.coarsen_factor), label)
    print(f"\nERA5 t2m Italy 2022, 40 x 48 at 0.25 deg, coarse 10 x 12, area-weighted; {args.members} members")
    print(markdown(rows, args.members))
    print("aims (test period): ensemble-mean RMSE <= 0.5 x bilinear, spread-skill 0.8-1.2")
    for name, seconds in wall.items():
        print(f"{name}: {seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall_seconds": wall}, indent=1, default=float))


if __name__ == "__main__":
    main()
