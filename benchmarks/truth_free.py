"""Evaluation without a truth on real data: the ERA5 UK model (`configs/era5_uk.yaml`) downscales the test week
(25-31 March 2019) from its own coarse fields, from the same fields 3 K warmer (a stand-in for a climate model's
warmer output, whose fine truth does not exist), and from the fields in degC labelled K (refused before any work).

For each accepted input it prints the truth-free checks (``diffscale.evaluate(ensemble)`` without a truth): the
coarse consistency (RMSE and bias of the members' block means against the coarse input), the extrapolation share,
the member values outside 170..340 K and the members' spectrum over the training period's (its mean ratio above
the coarse Nyquist wavenumber); for the plain input also the spectral ratio against the true fine fields, which a
user without a truth cannot compute, to show how the two compare. Writes the spectrum-ratio figure of the plain
input to --figures.

    python benchmarks/truth_free.py                          # trains the model (5-15 min on 2 CPU cores)
    python benchmarks/truth_free.py --run runs/era5_uk       # that run (trained there first if it does not exist)
    python benchmarks/truth_free.py --quick                  # 20 training steps, 2 members: checks the pipeline

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
from diffscale.config import load_config
from diffscale.data.climate import coarsen, open_fields
from diffscale.runs.truth_free import evaluate_without_truth, load_truth_free_inputs, write_truth_free_report
from diffscale.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T2M = DATA / "era5_t2m_uk_2019-03.nc"
TEST = ("2019-03-25", "2019-03-31")
FACTOR = 4


def train(run_dir: Path, quick: bool) -> None:
    """Train configs/era5_uk.yaml into ``run_dir``."""
    steps = ["training.steps=20", "training.checkpoint_every=0"] if quick else []
    config = load_config(ROOT / "configs" / "era5_uk.yaml", [*steps, "training.sample_every=0"])
    start = time.perf_counter()
    diffscale.train(diffscale.prepare_training(config, run_dir, resume=False))
    print(f"trained {run_dir} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)


def report(label: str, scores: xr.Dataset) -> None:
    """The truth-free figures of one ensemble, one line."""
    row = scores.sel(variable="t2m")
    print(
        f"| {label} | {float(row['coarse_rmse']):.4f} | {float(row['coarse_bias']):+.4f} | "
        f"{100 * float(row['extrapolation_mean_outside_fraction']):.1f} % | "
        f"{int(row['extrapolation_times_over_threshold'])} | {int(row['outside_range_count'])} | "
        f"{float(row['spectral_ratio_vs_training']):.3f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        type=Path,
        help="a run of configs/era5_uk.yaml (trained there when it does not exist; default: a temporary one)",
    )
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="20 training steps and 2 members")
    parser.add_argument("--figures", type=Path, help="write the spectrum-ratio figure of the plain input here")
    args = parser.parse_args()
    if not T2M.exists():
        sys.exit(f"needs the ERA5 file {T2M} (../shared/data beside the repository)")
    members = 2 if args.quick else args.members
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        run_dir = args.run if args.run is not None else scratch / "era5_uk"
        if not run_dir.exists():
            train(run_dir, args.quick)
        run = diffscale.load_run(run_dir, device="auto")
        fine = open_fields(T2M, ["t2m"], TEST).isel(latitude=slice(1, 33), longitude=slice(0, 48)).load()
        coarse = coarsen(fine, FACTOR)
        warm = coarse.assign(t2m=coarse["t2m"] + 3.0)
        celsius = coarse.assign(t2m=(coarse["t2m"] - 273.15).assign_attrs(units="K"))
        try:
            run.downscale(celsius, members=members)
        except ConfigError as error:
            print(f"degC labelled K: refused: {error}", flush=True)
        print(
            f"\ntest week 25-31 March 2019, {members} members, {fine.sizes['time']} times, K\n\n"
            "| coarse input | consistency RMSE | consistency bias | outside training range (mean) | times > 25 % "
            "| values outside 170..340 K | spectrum / training's (> coarse Nyquist) |\n"
            "|---|---:|---:|---:|---:|---:|---:|",
            flush=True,
        )
        for label, source in (("ERA5 coarsened", coarse), ("ERA5 coarsened + 3 K", warm)):
            path = scratch / f"{label.replace(' ', '_')}.nc"
            coarse_path = scratch / f"coarse_{label.replace(' ', '_')}.nc"
            source.to_netcdf(coarse_path)
            start = time.perf_counter()
            run.downscale(coarse_path, members=members, seed=0, out=path).close()
            inputs = load_truth_free_inputs(path)
            evaluation = evaluate_without_truth(inputs)
            report(label, evaluation.dataset())
            if label == "ERA5 coarsened":
                if args.figures is not None:
                    write_truth_free_report(args.figures, evaluation)
                with_truth = diffscale.evaluate(path, fine).sel(variable="t2m", prediction="ensemble")
                plain_seconds = time.perf_counter() - start
        print(
            f"\nplain input against the true fine fields: spectral ratio {float(with_truth['spectral_ratio']):.3f} "
            f"(members / truth above the coarse Nyquist wavenumber); downscaling and both evaluations "
            f"{plain_seconds:.0f} s",
            flush=True,
        )
        # the true fine fields as a one-member ensemble: their own consistency and their spectrum over training's
        truth = fine.expand_dims(member=[0]).transpose("member", "time", "latitude", "longitude")
        truth.attrs["coarsening_factor"] = FACTOR
        truth_scores = diffscale.evaluate(truth, coarse=coarse, run=run_dir).sel(variable="t2m")
        print(
            f"the true fine fields as a one-member ensemble: consistency RMSE {float(truth_scores['coarse_rmse']):.2g} "
            f"K, spectrum / training's {float(truth_scores['spectral_ratio_vs_training']):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
