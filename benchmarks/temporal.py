"""Members as time series on real data: independent sampling against noise correlated in time.

The run is configs/era5_uk.yaml (ERA5 2 m temperature over the UK, trained on 1-19 March 2019; trained here with
``--train`` when ``--run`` holds none). The coarse input is the test week, 25-31 March 2019 (168 hours), of the
32 x 48 crop coarsened 4x by the area-weighted block mean; the truth is the fine field. It is downscaled with
``--members`` members by the run's sampler, once with every (time, member) drawn independently
(``time_correlation`` 0) and once for every correlation length L in ``--correlations`` (each member's noise
blended between seeded noises at calendar anchors every L hours: :mod:`diffscale.downscaling.coherence`), all with
one seed, and each ensemble is scored by ``diffscale.evaluate``:

* residual autocorrelation (r = x - U(x_c)) at lags 1, 3 and 6 h, the members' mean against the truth's;
* daily maximum and minimum over the 7 whole days: fair CRPS and bias of the members' aggregates (K);
* spells above the truth's 90th percentile: mean length (h) against the truth's;
* hourly area-weighted RMSE of the ensemble mean, fair CRPS and spread-skill ratio;
* wall time per member-field (the downscaling's wall time / (members x times), best of ``--repeats``).

    python benchmarks/temporal.py --train                       # trains the run first (about 20 min on 2 cores)
    python benchmarks/temporal.py --run ../bench-runs/uk --members 16 --correlations 3 6 12

Needs ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr

import diffscale
from diffscale.cli.main import main as diffscale_cli
from diffscale.data.climate import open_fields
from diffscale.data.climate.grid import coarsen
from diffscale.runs import load_climate_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T2M = DATA / "era5_t2m_uk_2019-03.nc"
CONFIG = ROOT / "configs" / "era5_uk.yaml"
TEST_WEEK = ("2019-03-25", "2019-03-31")
CROP = {"latitude": slice(1, 33), "longitude": slice(0, 48)}
FACTOR = 4
LAGS = (1, 3, 6)


def train(run_dir: Path, threads: str) -> None:
    """``diffscale train configs/era5_uk.yaml --out RUN_DIR`` (resumes a run directory that holds a checkpoint)."""
    status = diffscale_cli(["train", str(CONFIG), "--out", str(run_dir), "--threads", threads, "--no-progress"])
    if status != 0:
        sys.exit(f"diffscale train failed with status {status}")


def test_week(directory: Path, days: int) -> tuple[Path, Path, int]:
    """(coarse input file, truth file, number of times) of the first ``days`` days of the test week."""
    fine = open_fields(T2M, ["t2m"], TEST_WEEK).isel(CROP).isel(time=slice(0, 24 * days)).load()
    coarse_path, truth_path = directory / "coarse.nc", directory / "truth.nc"
    coarsen(fine, FACTOR).to_netcdf(coarse_path)
    fine.to_netcdf(truth_path)
    return coarse_path, truth_path, int(fine.sizes["time"])


def scores_row(hours: float, scores: xr.Dataset, seconds: float, fields: int) -> dict[str, float]:
    """The figures of one ensemble (``scores`` from ``diffscale.evaluate``)."""
    t2m = scores.sel(variable="t2m")
    ensemble = t2m.sel(prediction="ensemble")
    row: dict[str, float] = {"L": hours}
    for lag in LAGS:
        row[f"acf{lag}"] = float(t2m["autocorrelation"].sel(lag=lag))
        row[f"acf{lag}_truth"] = float(t2m["autocorrelation_truth"].sel(lag=lag))
    for statistic in ("max", "min"):
        row[f"{statistic}_crps"] = float(ensemble[f"daily_{statistic}_crps"])
        row[f"{statistic}_bias"] = float(ensemble[f"daily_{statistic}_bias"])
    row["spell"] = float(ensemble["spell_length"])
    row["spell_truth"] = float(t2m["spell_length_truth"])
    row["rmse"] = float(ensemble["rmse"])
    row["crps"] = float(ensemble["crps"])
    row["ssr"] = float(t2m["spread_skill_ratio"])
    row["ms_per_field"] = 1000.0 * seconds / fields
    return row


def print_table(rows: list[dict[str, float]], members: int, days: int) -> None:
    rows = sorted(rows, key=lambda row: row["L"])
    truth = rows[0]
    print(
        f"\nERA5 t2m UK test week from {TEST_WEEK[0]}, {days} days, {members} members; truth: residual "
        + ", ".join(f"acf({lag} h) {truth[f'acf{lag}_truth']:.3f}" for lag in LAGS)
        + f", spells above p90 {truth['spell_truth']:.2f} h"
    )
    header = (
        "| time correlation | acf 1 h | acf 3 h | acf 6 h | daily max CRPS / bias (K) | daily min CRPS / bias (K) "
        "| spell (h) | RMSE (K) | CRPS (K) | spread-skill | ms per member-field |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(11)) + "|")
    print(
        f"| truth | {truth['acf1_truth']:.3f} | {truth['acf3_truth']:.3f} | {truth['acf6_truth']:.3f} | | | "
        f"{truth['spell_truth']:.2f} | | | | |"
    )
    for row in rows:
        label = "independent" if row["L"] == 0 else f"{row['L']:g} h"
        print(
            f"| {label} | {row['acf1']:.3f} | {row['acf3']:.3f} | {row['acf6']:.3f} | "
            f"{row['max_crps']:.4f} / {row['max_bias']:+.4f} | {row['min_crps']:.4f} / {row['min_bias']:+.4f} | "
            f"{row['spell']:.2f} | {row['rmse']:.4f} | {row['crps']:.4f} | {row['ssr']:.3f} | "
            f"{row['ms_per_field']:.1f} |"
        )
    base = rows[0]
    print("\nrelative to independent sampling (aims: |acf - truth| <= 0.05; daily |bias| <= 0.03 K and CRPS >= 10 %")
    print("below; hourly RMSE/CRPS within 2 %; cost <= 1.5x):")
    for row in rows[1:]:
        print(
            f"  L = {row['L']:g} h: acf - truth "
            + ", ".join(f"{row[f'acf{lag}'] - row[f'acf{lag}_truth']:+.3f}" for lag in LAGS)
            + f"; daily max CRPS {100 * (row['max_crps'] / base['max_crps'] - 1):+.1f} %, min CRPS "
            f"{100 * (row['min_crps'] / base['min_crps'] - 1):+.1f} %; hourly RMSE "
            f"{100 * (row['rmse'] / base['rmse'] - 1):+.1f} %, CRPS {100 * (row['crps'] / base['crps'] - 1):+.1f} %; "
            f"cost {row['ms_per_field'] / base['ms_per_field']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT.parent / "bench-runs" / "uk", help="the era5_uk run")
    parser.add_argument("--train", action="store_true", help="train (or finish training) the run first")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--correlations", type=float, nargs="+", default=[3.0, 6.0, 12.0], metavar="HOURS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default="1", help="torch's CPU threads (auto or N)")
    parser.add_argument("--repeats", type=int, default=1, help="downscalings timed per setting (best kept)")
    parser.add_argument("--days", type=int, default=7, help="days of the test week (7: all; fewer to check quickly)")
    args = parser.parse_args()
    if not T2M.exists():
        raise SystemExit(f"{T2M} is missing (see ../shared/data/README.md)")
    if args.train:
        train(args.run, args.threads)
    threads = args.threads if args.threads == "auto" else int(args.threads)
    run = load_climate_run(args.run, device="cpu")
    print(f"run {args.run} (step {run.step}); sampler {run.sampler_settings(None).model_dump()}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        coarse, truth, times = test_week(Path(scratch), args.days)
        for hours in [0.0, *args.correlations]:
            out = Path(scratch) / f"ensemble_{hours:g}.nc"
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                run.downscale(
                    coarse,
                    members=args.members,
                    seed=args.seed,
                    time_correlation=hours,
                    threads=threads,
                    out=out,
                    overwrite=True,
                ).close()
                best = min(best, time.perf_counter() - start)
            scores = diffscale.evaluate(out, truth=truth, variables=["t2m"])
            rows.append(scores_row(hours, scores, best, args.members * times))
            print(
                f"time correlation {hours:g} h: {best:.1f} s for {args.members} x {times} fields; {rows[-1]}",
                flush=True,
            )
    print_table(rows, args.members, args.days)


if __name__ == "__main__":
    main()
