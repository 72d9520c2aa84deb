"""ERA5 2 m temperature over the UK, March 2019: train, downscale the test period, score against baselines.

Trains, on 1-19 March, the MSE regression U-Net (configs/era5_uk_regression.yaml), the diffusion model of the
residual over bilinear interpolation (configs/era5_uk.yaml) and the CorrDiff-style diffusion model of the
regression's residual (configs/era5_uk_corrdiff.yaml); builds the coarse test input (25-31 March, the 32 x 48 crop
coarsened 4x by the area-weighted block mean); downscales it with ``diffscale downscale`` (32 members) and scores
every method on the test period against the true fine fields:

    bilinear, bicubic, lapse-rate-corrected bilinear, MSE U-Net (regression run), CorrDiff, diffusion

with area-weighted RMSE / MAE of the (ensemble) mean, fair CRPS, spread-skill ratio and the power ratio above
the coarse Nyquist wavenumber. Everything runs through the ``diffscale`` command, as a user would.

    python benchmarks/era5_uk.py                       # about 20 minutes on 2 CPU cores
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
TEST_PERIOD = ("2019-03-25", "2019-03-31")
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


def test_fields(directory: Path) -> tuple[xr.Dataset, Path]:
    """The true fine test fields (harmonised, cropped) and the coarse input file made from them."""
    fine = open_fields(T2M, ["t2m"], TEST_PERIOD).isel(CROP).load()
    coarse_path = directory / "coarse_test.nc"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="directory of the two run directories")
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
    ensembles = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        fine, coarse_path = test_fields(scratch)
        for name, run_dir, members in (
            ("regression", regression_dir, 1),
            ("CorrDiff", corrdiff_dir, args.members),
            ("diffusion", diffusion_dir, args.members),
        ):
            out = scratch / f"{name}.nc"
            wall[f"{name} downscaling"] = run(
                [
                    "downscale",
                    str(run_dir),
                    "--input",
                    str(coarse_path),
                    "--members",
                    str(members),
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            ensembles[name] = xr.open_dataset(out)["t2m"].values
    truth = fine["t2m"].values
    latitude, longitude = fine["latitude"].values, fine["longitude"].values
    coarse = coarsen(torch.from_numpy(np.array(truth, dtype=np.float64)), FACTOR, torch.as_tensor(latitude))
    orography = select_grid(open_fields(STATICS, ["orography"]), latitude, longitude, "orography")
    orography = torch.as_tensor(orography["orography"].squeeze().values, dtype=torch.float64)
    baselines = {
        "bilinear": interpolation_baseline(coarse, FACTOR),
        "bicubic": interpolation_baseline(coarse, FACTOR, mode="bicubic"),
        "lapse-rate bilinear": lapse_rate_baseline(coarse, orography, FACTOR, torch.as_tensor(latitude)),
    }
    _, truth_power = latlon_power_spectrum(truth, latitude, longitude)
    spectra = {
        "longitude": longitude,
        "truth": truth_power,
        "k_min": coarse_nyquist_wavenumber(latitude, longitude, FACTOR),
    }
    rows = [scores_row(name, field.numpy(), truth, latitude, spectra) for name, field in baselines.items()]
    rows.append(scores_row("MSE U-Net (regression run)", ensembles["regression"][0], truth, latitude, spectra))
    rows.append(scores_row(f"CorrDiff ({args.members} members)", ensembles["CorrDiff"], truth, latitude, spectra))
    rows.append(scores_row(f"diffusion ({args.members} members)", ensembles["diffusion"], truth, latitude, spectra))
    print(
        f"\nERA5 t2m UK, test period {TEST_PERIOD[0]} to {TEST_PERIOD[1]} ({truth.shape[0]} hourly fields, "
        f"32 x 48, coarse 8 x 12); area-weighted scores in K"
    )
    print(f"{'method':32s} {'RMSE':>7s} {'MAE':>7s} {'CRPS':>7s} {'SSR':>6s} {'power>Nyq':>10s}")
    for row in rows:
        ssr = f"{row['ssr']:6.2f}" if row["ssr"] is not None else f"{'-':>6s}"
        print(
            f"{row['method']:32s} {row['rmse']:7.3f} {row['mae']:7.3f} {row['crps']:7.3f} {ssr} "
            f"{row['power_ratio']:10.2f}"
        )
    print("targets (diffusion): RMSE <= 0.35, CRPS <= 0.18, SSR in [0.8, 1.2]")
    for name, seconds in wall.items():
        print(f"{name}: {seconds / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall_seconds": wall}, indent=1))


if __name__ == "__main__":
    main()
