"""ERA5 2 m temperature over the UK, March 2019: train, downscale the validation and test periods, score against
baselines.

Trains, on 1-19 March, the MSE regression U-Net (configs/era5_uk_regression.yaml), the diffusion model of the
residual over bilinear interpolation (configs/era5_uk.yaml) and the CorrDiff-style diffusion model of the
regression's residual (configs/era5_uk_corrdiff.yaml); builds the coarse inputs of the validation (21-24 March)
and test (25-31 March) periods (the 32 x 48 crop coarsened 4x by the area-weighted block mean); downscales them
with ``diffscale downscale`` (32 members) and scores every method against the true fine fields:

    bilinear, bicubic, lapse-rate-corrected bilinear, MSE U-Net (regression run), CorrDiff, diffusion

with area-weighted RMSE / MAE of the (ensemble) mean, fair CRPS, spread-skill ratio and the power ratio above
the coarse Nyquist wavenumber, one table per period (the validation table shows how calibration changes from
the days the settings were chosen on to the unseen test week). Everything runs through the ``diffscale``
command, as a user would.

    python benchmarks/era5_uk.py                       # about 25 minutes on 2 CPU cores
    python benchmarks/era5_uk.py --skip-training       # score existing runs again
    python benchmarks/era5_uk.py --quick               # a few steps of each, to check the pipeline

Needs ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from diffscale.cli.main import main as diffscale
from diffscale.data.climate import open_fields
from diffscale.data.climate.grid import coarsen, select_grid
from diffscale.evaluation.baselines import interpolation_baseline, lapse_rate_baseline
from diffscale.evaluation.scores import deterministic_scores, ensemble_scores
from diffscale.evaluation.spectra import coarse_nyquist_wavenumber, latlon_power_spectrum, spectral_ratio

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T2M = DATA / "era5_t2m_uk_2019-03.nc"
STATICS = DATA / "era5_orography_lsm_global.nc"
PERIODS = {"validation": ("2019-03-21", "2019-03-24"), "test": ("2019-03-25", "2019-03-31")}
CROP = {"latitude": slice(1, 33), "longitude": slice(0, 48)}  # drop the southernmost row and the easternmost column
FACTOR = 4


def run(args: list[str]) -> float:
    """``diffscale ARGS`` in this process; its wall time in seconds (a non-zero exit stops the benchmark)."""
    print("$ diffscale " + " ".join(args), flush=True)
    start = time.perf_counter()
    status = diffscale(args)
    if status != 0:
        sys.exit(f"diffscale {args[0]} failed with status {status}")
    return time.perf_counter() - start


def period_fields(directory: Path, period: str) -> tuple[xr.Dataset, Path]:
    """The true fine fields of a period (harmonised, cropped) and the coarse input file made from them."""
    fine = open_fields(T2M, ["t2m"], PERIODS[period]).isel(CROP).load()
    coarse_path = directory / f"coarse_{period}.nc"
    coarsen(fine, FACTOR).to_netcdf(coarse_path)
    return fine, coarse_path


def scores_row(name: str, prediction: np.ndarray, truth: np.ndarray, latitude: np.ndarray, spectra: dict) -> dict:
    """Scores of a deterministic (T, H, W) or ensemble (M, T, H, W) prediction."""
    if prediction.ndim == 3:
        scores = deterministic_scores(prediction, truth, latitude)
        mean = prediction
    else:
        scores = ensemble_scores(prediction, truth, latitude)
        mean = prediction[0]  # spectra of single members, not of the smooth mean
    k, power = latlon_power_spectrum(mean, latitude, spectra["longitude"])
    ratio = spectral_ratio(k, power, spectra["truth"], spectra["k_min"])
    return {
        "method": name,
        "rmse": scores["rmse"],
        "mae": scores["mae"],
        "crps": scores["crps"],
        "ssr": scores.get("spread_skill_ratio"),
        "members": scores.get("members", 1),
        "power_ratio": ratio["mean_ratio"],
    }


def score_period(scratch: Path, period: str, members: int, wall: dict, runs: dict[str, Path]) -> list[dict]:
    """Downscale one period with every run (``diffscale downscale``) and score them with the baselines."""
    fine, coarse_path = period_fields(scratch, period)
    ensembles = {}
    for name, count in (("regression", 1), ("CorrDiff", members), ("diffusion", members)):
        out = scratch / f"{name}_{period}.nc"
        command = ["downscale", str(runs[name]), "--input", str(coarse_path), "--members", str(count)]
        wall[f"{name} downscaling ({period})"] = run([*command, "--out", str(out), "--no-progress"])
        ensembles[name] = xr.open_dataset(out)["t2m"].values
    truth = fine["t2m"].values
    latitude, longitude = fine["latitude"].values, fine["longitude"].values
    latitude_tensor = torch.tensor(latitude)  # a copy: xarray index values are read-only
    coarse = coarsen(torch.tensor(truth, dtype=torch.float64), FACTOR, latitude_tensor)
    orography = select_grid(open_fields(STATICS, ["orography"]), latitude, longitude, "orography")
    orography = torch.as_tensor(orography["orography"].squeeze().values, dtype=torch.float64)
    baselines = {
        "bilinear": interpolation_baseline(coarse, FACTOR),
        "bicubic": interpolation_baseline(coarse, FACTOR, mode="bicubic"),
        "lapse-rate bilinear": lapse_rate_baseline(coarse, orography, FACTOR, latitude_tensor),
    }
    _, truth_power = latlon_power_spectrum(truth, latitude, longitude)
    spectra = {
        "longitude": longitude,
        "truth": truth_power,
        "k_min": coarse_nyquist_wavenumber(latitude, longitude, FACTOR),
    }
    rows = [scores_row(name, field.numpy(), truth, latitude, spectra) for name, field in baselines.items()]
    rows.append(scores_row("MSE U-Net (regression run)", ensembles["regression"][0], truth, latitude, spectra))
    rows.append(scores_row(f"CorrDiff ({members} members)", ensembles["CorrDiff"], truth, latitude, spectra))
    rows.append(scores_row(f"diffusion ({members} members)", ensembles["diffusion"], truth, latitude, spectra))
    for row in rows:
        row["times"] = int(truth.shape[0])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="directory of the three run directories")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--skip-training", action="store_true", help="score the existing runs")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (checks the pipeline)")
    parser.add_argument("--json", help="also write the table as JSON here")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs the shared ERA5 files (see its README)")
    torch.set_num_threads(2)
    runs = Path(args.runs).resolve()
    os.chdir(ROOT)  # the configurations name the data relative to the repository root
    regression_dir, diffusion_dir, corrdiff_dir = (
        runs / "era5_uk_regression",
        runs / "era5_uk",
        runs / "era5_uk_corrdiff",
    )
    runs_by_name = {"regression": regression_dir, "CorrDiff": corrdiff_dir, "diffusion": diffusion_dir}
    quick = ["--set", "training.steps=4", "--set", "training.checkpoint_every=0"] if args.quick else []
    wall = {}
    if not args.skip_training:
        for name, config, run_dir, extra in (
            ("regression", "era5_uk_regression.yaml", regression_dir, []),
            ("diffusion", "era5_uk.yaml", diffusion_dir, []),
            ("CorrDiff", "era5_uk_corrdiff.yaml", corrdiff_dir, ["--set", f"data.regression_run={regression_dir}"]),
        ):
            command = ["train", str(ROOT / "configs" / config), "--out", str(run_dir), "--no-progress"]
            wall[f"{name} training"] = run([*command, *extra, *quick])
    tables = {}
    with tempfile.TemporaryDirectory() as scratch:
        for period in PERIODS:
            tables[period] = score_period(Path(scratch), period, args.members, wall, runs_by_name)
    for period, rows in tables.items():
        first, last = PERIODS[period]
        print(
            f"\nERA5 t2m UK, {period} period {first} to {last} ({rows[0]['times']} hourly fields, 32 x 48, "
            f"coarse 8 x 12); area-weighted scores in K"
        )
        print(f"{'method':32s} {'RMSE':>7s} {'MAE':>7s} {'CRPS':>7s} {'SSR':>6s} {'power>Nyq':>10s}")
        for row in rows:
            ssr = f"{row['ssr']:6.2f}" if row["ssr"] is not None else f"{'-':>6s}"
            print(
                f"{row['method']:32s} {row['rmse']:7.3f} {row['mae']:7.3f} {row['crps']:7.3f} {ssr} "
                f"{row['power_ratio']:10.2f}"
            )
    print("targets (diffusion, test period): RMSE <= 0.35, CRPS <= 0.18, SSR in [0.8, 1.2]")
    for name, seconds in wall.items():
        print(f"{name}: {seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"periods": tables, "wall_seconds": wall}, indent=1))


if __name__ == "__main__":
    main()
