"""What the ERA5 downscaling benchmarks share: running ``diffscale`` commands in-process and timing them, the
model grid and coarse inputs of a period, the interpolation and lapse-rate baselines, and one Markdown table of
an ensemble's scores per variable beside the baselines.

Used by ``era5_global.py``, ``era5_italy.py`` and ``era5land_quebec.py`` (run from the repository root or
anywhere: the configurations name the data relative to the repository root, where the scripts change to).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import diffscale
from diffscale.cli.main import main as diffscale_main
from diffscale.config import load_config
from diffscale.data.climate import open_fields
from diffscale.data.climate.grid import coarsen, is_global_longitude, trim_to_factor
from diffscale.data.climate.regrid import regrid_bilinear
from diffscale.evaluation.baselines import interpolation_baseline, lapse_rate_baseline
from diffscale.evaluation.scores import deterministic_scores

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STATICS = DATA / "era5_orography_lsm_global.nc"
TEMPERATURES = ("t2m", "tasmax", "tasmin")
"""Variables that get the lapse-rate baseline (temperatures near the surface)."""


def require_data(*paths: Path) -> None:
    """Stop with a message when the shared ERA5 files are not there."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: this benchmark needs the shared ERA5 files (see their README)")


def add_common_arguments(parser: argparse.ArgumentParser, members: int) -> None:
    """The options every climate benchmark takes: --runs, --members, --skip-training, --quick, --set, --threads,
    --json."""
    parser.add_argument("--runs", default="runs", help="directory of the run directory")
    parser.add_argument("--members", type=int, default=members)
    parser.add_argument("--skip-training", action="store_true", help="score the existing run")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (checks the pipeline)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="configuration overrides")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine busy with others)")
    parser.add_argument("--json", help="also write the rows as JSON here")


def start_benchmark(args: argparse.Namespace, *data: Path) -> None:
    """Check the shared files, fix torch's threads, and work from the repository root (the configurations name the
    data relative to it)."""
    require_data(*data, STATICS)
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)


def run(args: Sequence[str]) -> float:
    """``diffscale ARGS`` in this process; its wall time in seconds (a non-zero exit stops the benchmark)."""
    print("$ diffscale " + " ".join(args), flush=True)
    start = time.perf_counter()
    status = diffscale_main(list(args))
    if status != 0:
        sys.exit(f"diffscale {args[0]} failed with status {status}")
    return time.perf_counter() - start


def section(config: Path) -> Any:
    """The ``data:`` section of a configuration file (paths relative to the repository root)."""
    return load_config(config).data


def truth_fields(data: Any, first: str, last: str) -> xr.Dataset:
    """The fine fields of ``data.variables`` from ``first`` to ``last`` (inclusive) on the model's grid (cropped and
    trimmed to the factor as in training), loaded."""
    from diffscale.config.climate import period_bounds

    start, end = period_bounds((first, last))
    fine = open_fields([str(ROOT / path) for path in data.paths], data.variables, time_slice=(start, end))
    if data.crop is not None:
        fine = fine.isel(
            {
                axis: slice(*window)
                for axis, window in (("latitude", data.crop.lat), ("longitude", data.crop.lon))
                if window is not None
            }
        )
    fine, _ = trim_to_factor(fine, data.coarsen_factor, data.remainder, data.periodic_longitude)
    return fine.load()


def coarse_file(fine: xr.Dataset, factor: int, path: Path) -> Path:
    """The coarse input of ``fine``: its area-weighted factor x factor block means, written to ``path``."""
    coarsen(fine, factor).to_netcdf(path)
    return path


def orography_on(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """ERA5 orography [m] on the grid (bilinear from the 0.25 deg invariants, copied where points coincide)."""
    statics = open_fields([str(STATICS)], ["orography"])
    if "time" in statics.dims:
        statics = statics.isel(time=0, drop=True)
    return np.asarray(regrid_bilinear(statics, latitude, longitude, "orography")["orography"].values, dtype=np.float64)


def baselines(fine: xr.Dataset, variables: Sequence[str], factor: int) -> dict[str, dict[str, np.ndarray]]:
    """method -> variable -> (T, H, W): bilinear and bicubic interpolation of the block means, and for the
    temperatures the lapse-rate-corrected bilinear (periodic in longitude on a global grid)."""
    latitude = torch.tensor(np.asarray(fine.latitude.values, dtype=np.float64))
    periodic = is_global_longitude(np.asarray(fine.longitude.values))
    orography = None
    methods: dict[str, dict[str, np.ndarray]] = {"bilinear": {}, "bicubic": {}, "lapse-rate bilinear": {}}
    for name in variables:
        values = torch.tensor(np.asarray(fine[name].values, dtype=np.float64))
        coarse = coarsen(values, factor, latitude)
        for mode in ("bilinear", "bicubic"):
            methods[mode][name] = interpolation_baseline(coarse, factor, mode, periodic).numpy()
        if name in TEMPERATURES:
            if orography is None:
                orography = torch.tensor(orography_on(fine.latitude.values, fine.longitude.values))
            methods["lapse-rate bilinear"][name] = lapse_rate_baseline(
                coarse, orography, factor, latitude, periodic_longitude=periodic
            ).numpy()
    return methods


def score_ensemble(ensemble: Path, fine: xr.Dataset, coarse: Path) -> xr.Dataset:
    """``diffscale.evaluate`` of the ensemble file against the true fine fields (and the bilinear baseline of the
    coarse input): the scores Dataset."""
    return diffscale.evaluate(ensemble, truth=fine, coarse=coarse)


def _value(scores: xr.Dataset, key: str, **selection: Any) -> float:
    if key not in scores:
        return math.nan
    return float(scores[key].sel(**selection))


def score_rows(
    scores: xr.Dataset, fine: xr.Dataset, methods: Mapping[str, Mapping[str, np.ndarray]], label: str = ""
) -> list[dict[str, Any]]:
    """One row per scored variable (the derived ws10 too): the RMSE of each baseline method (NaN where a method
    does not apply), the ensemble mean's RMSE, the fair CRPS, the bilinear MAE, the spread-skill ratio and on a
    global grid the seam ratio; ``label`` follows the variable's name in the table."""
    latitude = np.asarray(fine.latitude.values)
    rows = []
    for name in [str(value) for value in scores.variable.values]:
        units = str(scores.units.sel(variable=name).values)
        row: dict[str, Any] = {"variable": name, "units": units, "label": f"{name} [{units}]{label}"}
        truth = _truth(fine, name)
        for method, fields in methods.items():
            prediction = _prediction(fields, name)
            row[f"{method} rmse"] = (
                deterministic_scores(prediction, truth, latitude)["rmse"] if prediction is not None else math.nan
            )
        row["ensemble rmse"] = _value(scores, "rmse", variable=name, prediction="ensemble")
        row["crps"] = _value(scores, "crps", variable=name, prediction="ensemble")
        row["bilinear mae"] = _value(scores, "mae", variable=name, prediction="bilinear")
        row["ssr"] = _value(scores, "spread_skill_ratio", variable=name)
        row["seam ratio"] = _value(scores, "seam_ratio", variable=name)
        row["seam nearby ratio"] = _value(scores, "seam_nearby_ratio", variable=name)
        row["seam excess"] = _value(scores, "seam_excess", variable=name)
        row["times"] = int(scores.attrs.get("times_count", 0))
        rows.append(row)
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], members: int) -> str:
    """The rows as one Markdown table: RMSE of bilinear, bicubic and (temperatures) lapse-rate bilinear; the
    ensemble mean's RMSE and its ratio to bilinear; the fair CRPS and its ratio to the bilinear MAE; the
    spread-skill ratio; the seam ratio (ensemble / truth across the seam, and beside it) when any row has one."""
    seam = any(math.isfinite(row["seam ratio"]) for row in rows)
    header = (
        "| variable | bilinear RMSE | bicubic RMSE | lapse-rate RMSE | ensemble-mean RMSE (/ bilinear) | "
        f"CRPS ({members} members) | CRPS / bilinear MAE | spread-skill |"
        + (" seam ratio (beside the seam) |" if seam else "")
    )
    lines = [header, "|---|" + "---:|" * (7 + seam)]
    for row in rows:
        cells = [
            row["label"],
            _number(row["bilinear rmse"]),
            _number(row["bicubic rmse"]),
            _number(row["lapse-rate bilinear rmse"]),
            f"{_number(row['ensemble rmse'])} ({row['ensemble rmse'] / row['bilinear rmse']:.2f})",
            _number(row["crps"]),
            f"{row['crps'] / row['bilinear mae']:.2f}",
            f"{row['ssr']:.2f}",
        ]
        if seam:
            cells.append(f"{row['seam ratio']:.2f} ({row['seam nearby ratio']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def joint_lines(scores: xr.Dataset) -> list[str]:
    """The energy score and order-violation lines under the table."""
    lines = []
    if "energy_score" in scores:
        lines.append(
            f"energy score of the joint ensemble ({scores.attrs['energy_score_variables']}; each variable divided by "
            f"the truth's std. dev.): {float(scores.energy_score.sel(prediction='ensemble')):.4g} "
            f"(bilinear {float(scores.energy_score.sel(prediction='bilinear')):.4g})"
        )
    if "order_violation" in scores:
        for pair in scores.pair.values:
            lines.append(
                f"{pair}: broken at {100 * float(scores.order_violation.sel(pair=pair, prediction='ensemble')):.3g} % "
                f"of member points (truth {100 * float(scores.order_violation_truth.sel(pair=pair)):.3g} %, "
                f"bilinear {100 * float(scores.order_violation.sel(pair=pair, prediction='bilinear')):.3g} %)"
            )
    return lines


def _truth(fine: xr.Dataset, name: str) -> np.ndarray:
    if name in fine:
        return np.asarray(fine[name].values, dtype=np.float64)
    if name == "ws10":
        return np.hypot(np.asarray(fine["u10"].values, np.float64), np.asarray(fine["v10"].values, np.float64))
    raise KeyError(name)


def _prediction(fields: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    if name in fields:
        return fields[name]
    if name == "ws10" and "u10" in fields and "v10" in fields:
        return np.hypot(fields["u10"], fields["v10"])
    return None


def _number(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}"
