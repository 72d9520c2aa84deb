"""Downscaling climate-model output with a run trained on ERA5: inputs on another grid, in another calendar, from
another product, and with a bias, given to an existing any-window UK 2 m temperature run.

The run must exist (``--run``, required: e.g. one trained with ``configs/era5_uk_windows.yaml``, 1600 steps, which
models 28 x 44 windows anywhere on the ERA5 UK file's 33 x 49 points, ``data.random_windows``). Nothing is trained
here. A run trained before coarse climatologies were saved needs ``diffscale climatology RUN`` once (part d and the
quantile mapping of part c need it). The test week (25-31 March 2019) was never trained on (the run's training
period is 1-19 March); every 3rd hour of it is downscaled (56 times; ``--every``), with 16 members (``--members``):
5-25 minutes on 2 CPU cores shared with other jobs.

(a) GCM-like grid: the test week coarsened by the run (``run.coarsen``: its 1 deg lattice, centres 50.625 ..
    57.625 N, -9.375 .. 1.625 E), regridded conservatively onto a 1 deg (latitude) x 1.25 deg (longitude) grid off
    that lattice (centres 51.1 .. 57.1 N, -9.125 .. 0.875 E) and given to the run, which regrids it back onto the
    window of its cells the grid covers (6 x 10 cells: 24 x 40 fine points). Ensemble-mean RMSE and fair CRPS
    against the on-lattice input's, both scored on that window; beside them the regridding's own error (the GCM-like
    field regridded back onto the lattice window against the on-lattice coarse field, RMSE over cells and times).
(b) Calendars: the on-lattice input (and the truth) converted to ``noleap`` and ``360_day`` (xarray
    ``convert_calendar``; ``360_day`` with ``align_on="year"``, which keeps all seven days of a late-March week:
    ``"date"`` would drop the 31st). The fields are checked to be unchanged; only the dates change, and with them
    the seeds (the scores differ by sampling noise only).
(c) Another product: the global 1 deg ERA5 file (March 2026, 24 times 7 h apart; its points lie 0.375 deg off the
    run's lattice), regridded conservatively onto the cells of the run's training coarse climatology (bias
    adjustment is per cell of it: the benchmark regrids itself and downscales with ``regrid="none"``, whichever
    lattice an older climatology was fitted on),
    downscaled without and with quantile mapping
    (QM) against the run's training coarse climatology, the reference period being the file's own week: a
    demonstration of the mechanics, not a bias correction. There is no fine truth: the truth-free checks (coarse
    consistency against the input the run was given, extrapolation share, spectrum against the run's training
    fine fields).
(d) A synthetic bias: +2 K and 1.3 x the variability about each coarse cell's mean over the test week, applied to
    the whole coarse month (one affine map per cell), on the climatology's cells (as in c). Downscaled without
    adjustment, with QM and with QDM (reference period 1-24 March of the biased input, which overlaps the run's
    training period 1-19 March; the climatology is that training period's; the test week is held out), against the
    unbiased input's ensemble.

    python benchmarks/foreign_input.py --run runs/uk_windows            # 5-25 min on 2 shared cores
    python benchmarks/foreign_input.py --run RUN --members 8 --every 6 --json figures.json
    python benchmarks/foreign_input.py --run RUN --quick                # 2 members, 4 times
    python benchmarks/foreign_input.py --run RUN --parts a b            # some parts only

Prints one Markdown table per part. Needs ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import diffscale
from diffscale.data.climate import coarsen, open_fields
from diffscale.data.climate.coarse_regrid import covered_cells, plan_regridding, source_grid
from diffscale.runs.bias_adjustment import bias_adjust, load_climatology
from diffscale.runs.coarse_grid import coarse_lattice
from diffscale.runs.downscaling import coarse_fields

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T2M = DATA / "era5_t2m_uk_2019-03.nc"
GLOBAL = DATA / "era5_global_1deg_2026-03.nc"
TEST = ("2019-03-25", "2019-03-31")
REFERENCE = ("2019-03-01", "2019-03-24")
FACTOR = 4
GCM_LATITUDE = np.arange(51.1, 57.2, 1.0)  # cells 50.6 .. 57.6 N
GCM_LONGITUDE = np.arange(-9.125, 1.0, 1.25)  # cells -9.75 .. 1.5 E
BIAS_SHIFT, BIAS_SCALE = 2.0, 1.3


def machine(threads: int) -> str:
    """CPU model, its widest vector extensions and the threads used."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if "amx_tile" in flags and "avx512f" in flags:
        vector = "AVX-512/AMX"
    elif "avx512f" in flags:
        vector = "AVX-512"
    elif "avx2" in flags:
        vector = "AVX2"
    else:
        vector = "no AVX2"
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{model} ({vector}), {threads} threads{gpu}"


def every(fields: xr.Dataset, step: int, count: int | None) -> xr.Dataset:
    """Every ``step``-th time of ``fields`` (the first ``count`` of them when given)."""
    thinned = fields.isel(time=slice(None, None, step))
    return thinned.isel(time=slice(0, count)) if count is not None else thinned


def scores(ensemble: xr.Dataset, truth: xr.Dataset, coarse: xr.Dataset) -> dict[str, float]:
    """Ensemble-mean RMSE, fair CRPS and spread-skill ratio of t2m (K) against ``truth``."""
    table = diffscale.evaluate(ensemble, truth=truth, coarse=coarse, temporal=False).sel(variable="t2m")
    chosen = table.sel(prediction="ensemble")
    return {
        "rmse": float(chosen["rmse"]),
        "crps": float(chosen["crps"]),
        "spread_skill": float(table["spread_skill_ratio"]),
    }


class Bench:
    """The run, the test week and the settings shared by the parts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.run = diffscale.load_run(args.run, device="auto")
        if not isinstance(self.run, diffscale.ClimateRun):
            sys.exit(f"{args.run} is not a climate run")
        self.members = 2 if args.quick else args.members
        self.count = 4 if args.quick else None
        self.every = args.every
        self.threads = args.threads
        month = open_fields(T2M, ["t2m"])  # harmonised: latitude ascending
        self.fine_month = every(month, self.every, None).load()
        self.fine = every(self.fine_month.sel(time=slice(TEST[0], f"{TEST[1]}T23:59")), 1, self.count)
        self.coarse_month = self.run.coarsen(self.fine_month)
        self.coarse = self.run.coarsen(self.fine)
        self.lattice = coarse_lattice(self.run.grid, FACTOR)
        self.timings: dict[str, float] = {}

    def downscale(self, name: str, coarse: Any, **options: Any) -> xr.Dataset:
        """The ensemble of ``coarse``, downscaled in one network call per member batch (the whole window)."""
        start = time.perf_counter()
        ensemble = self.run.downscale(coarse, members=self.members, seed=0, threads=self.threads, **options)
        ensemble = ensemble.load()
        self.timings[name] = time.perf_counter() - start
        print(
            f"  {name}: {ensemble.sizes['time']} times on {ensemble.sizes['latitude']} x "
            f"{ensemble.sizes['longitude']} in {self.timings[name]:.0f} s",
            flush=True,
        )
        return ensemble

    @property
    def window(self) -> tuple[int, int]:
        """The fine size of the run's whole lattice."""
        return self.lattice[0].size * FACTOR, self.lattice[1].size * FACTOR

    def header(self, what: str, data: str) -> list[str]:
        steps = self.run.config.sampling.steps
        return [
            f"### {what}",
            "",
            f"run: {self.run.run_dir} (step {self.run.step}; recipe configs/era5_uk_windows.yaml), "
            f"{steps} sampler steps ({self.run.config.sampling.sampler}); data: {data}; "
            f"{self.members} members; machine: {machine(self.threads)}",
            "",
        ]


def part_a(bench: Bench) -> tuple[str, dict[str, Any]]:
    """(a) the GCM-like grid against the lattice, on the window the GCM-like grid covers."""
    print("(a) GCM-like grid", flush=True)
    lattice_source = source_grid(bench.coarse)
    gcm = plan_regridding(lattice_source, GCM_LATITUDE, GCM_LONGITUDE).apply(bench.coarse)
    rows, columns = covered_cells(source_grid(gcm), *bench.lattice)
    window_latitude, window_longitude = bench.lattice[0][rows], bench.lattice[1][columns]
    back = plan_regridding(source_grid(gcm), window_latitude, window_longitude).apply(gcm)
    on_window = bench.coarse.sel(latitude=window_latitude, longitude=window_longitude, method="nearest")
    regridding_rmse = float(np.sqrt(np.mean((back["t2m"].values - on_window["t2m"].values) ** 2)))
    fine_window = (window_latitude.size * FACTOR, window_longitude.size * FACTOR)
    lattice_ensemble = bench.downscale("on the lattice", bench.coarse, patch=bench.window)
    gcm_ensemble = bench.downscale("GCM-like grid", gcm, patch=fine_window)
    lattice_on_window = lattice_ensemble.sel(
        latitude=gcm_ensemble["latitude"].values, longitude=gcm_ensemble["longitude"].values, method="nearest"
    )
    results = {
        "on the lattice": scores(lattice_on_window, bench.fine, bench.coarse),
        "GCM-like 1.25 x 1 deg, regridded": scores(gcm_ensemble, bench.fine, bench.coarse),
        "regridding_rmse": regridding_rmse,
        "window": f"{window_latitude.size} x {window_longitude.size} coarse cells, centres "
        f"{window_latitude[0]:g} .. {window_latitude[-1]:g} N, {window_longitude[0]:g} .. {window_longitude[-1]:g} E",
        "full_lattice": scores(lattice_ensemble, bench.fine, bench.coarse),
    }
    reference = results["on the lattice"]
    times = bench.fine.sizes["time"]
    lines = bench.header(
        "(a) A GCM-like grid",
        f"ERA5 UK t2m test week 25-31 March 2019, every {bench.every} h ({times} times), coarsened 4x by the run",
    )
    lines += [
        f"Scored on the window the GCM-like grid covers: {results['window']} "
        f"({fine_window[0]} x {fine_window[1]} fine points). Regridding's own error (GCM-like field regridded back "
        f"onto the window's cells against the on-lattice coarse field): RMSE {regridding_rmse:.3f} K.",
        "",
        "| input | RMSE (K) | fair CRPS (K) | spread-skill | RMSE / on-lattice | CRPS / on-lattice |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("on the lattice", "GCM-like 1.25 x 1 deg, regridded"):
        row = results[name]
        lines.append(
            f"| {name} | {row['rmse']:.3f} | {row['crps']:.3f} | {row['spread_skill']:.2f} | "
            f"{row['rmse'] / reference['rmse']:.3f} | {row['crps'] / reference['crps']:.3f} |"
        )
    bench.lattice_ensemble = lattice_ensemble  # part (d)'s unbiased reference
    return "\n".join(lines), results


def part_b(bench: Bench) -> tuple[str, dict[str, Any]]:
    """(b) the on-lattice input in the noleap and 360_day calendars."""
    print("(b) calendars", flush=True)
    lattice_ensemble = getattr(bench, "lattice_ensemble", None)
    if lattice_ensemble is None:
        lattice_ensemble = bench.downscale("on the lattice", bench.coarse, patch=bench.window)
        bench.lattice_ensemble = lattice_ensemble
    results: dict[str, Any] = {"standard": scores(lattice_ensemble, bench.fine, bench.coarse)}
    results["standard"]["unchanged"] = "(the input)"
    for calendar, options in (("noleap", {}), ("360_day", {"align_on": "year"})):
        coarse = bench.coarse.convert_calendar(calendar, **options)
        truth = bench.fine.convert_calendar(calendar, **options)
        same = coarse.sizes["time"] == bench.coarse.sizes["time"] and np.array_equal(
            coarse["t2m"].values, bench.coarse["t2m"].values
        )
        if not same:
            sys.exit(f"converting to {calendar} changed the fields or dropped times")
        first = coarse["time"].values[0]
        ensemble = bench.downscale(calendar, coarse, patch=bench.window)
        results[calendar] = scores(ensemble, truth, coarse)
        results[calendar]["unchanged"] = f"yes, {coarse.sizes['time']} times; 25 March 00:00 -> {first}"
    reference = results["standard"]
    lines = bench.header(
        "(b) Climate-model calendars",
        f"ERA5 UK t2m test week, every {bench.every} h ({bench.fine.sizes['time']} times), coarsened 4x by the "
        "run, converted with xarray convert_calendar (360_day: align_on='year')",
    )
    lines += [
        "| calendar | fields unchanged, dates | RMSE (K) | fair CRPS (K) | spread-skill | RMSE / standard | "
        "CRPS / standard |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for calendar in ("standard", "noleap", "360_day"):
        row = results[calendar]
        lines.append(
            f"| {calendar} | {row['unchanged']} | {row['rmse']:.3f} | {row['crps']:.3f} | {row['spread_skill']:.2f} | "
            f"{row['rmse'] / reference['rmse']:.3f} | {row['crps'] / reference['crps']:.3f} |"
        )
    return "\n".join(lines), results


def _truth_free(ensemble: xr.Dataset, coarse: xr.Dataset, run_dir: Path) -> dict[str, float]:
    """Coarse consistency, extrapolation share and spectrum ratio of t2m (no truth)."""
    table = diffscale.evaluate(ensemble, coarse=coarse, run=run_dir).sel(variable="t2m")

    def value(name: str) -> float:
        return float(table[name]) if name in table else float("nan")

    return {
        "coarse_rmse": value("coarse_rmse"),
        "coarse_bias": value("coarse_bias"),
        "extrapolation_mean": value("extrapolation_mean_outside_fraction"),
        "spectral_ratio": value("spectral_ratio_vs_training"),
        "outside_range": value("outside_range_count"),
    }


def climatology_lattice(bench: Bench) -> tuple[np.ndarray, np.ndarray]:
    """The cells of the run's training coarse climatology (what bias adjustment maps onto)."""
    climatology = load_climatology(bench.run.run_dir)
    if climatology is None:
        sys.exit(f"{bench.run.run_dir} has no coarse climatology: run 'diffscale climatology {bench.run.run_dir}' once")
    return np.asarray(climatology.latitude), np.asarray(climatology.longitude)


def part_c(bench: Bench) -> tuple[str, dict[str, Any]]:
    """(c) the global 1 deg ERA5 file over the UK, without and with QM; truth-free checks."""
    print("(c) global 1 deg ERA5, no truth", flush=True)
    raw, _ = coarse_fields(str(GLOBAL), ["t2m"])
    if bench.count is not None:
        raw = raw.isel(time=slice(0, bench.count))
    # regridded onto the climatology's cells: bias adjustment is per cell of the run's training coarse grid
    latitude, longitude = climatology_lattice(bench)
    regridding = plan_regridding(source_grid(raw, xr.open_dataset(GLOBAL)), latitude, longitude)
    on_cells = regridding.apply(raw)
    stamps = [str(value)[:19] for value in raw["time"].values[[0, -1]]]
    adjusted = bias_adjust(bench.run, on_cells, stamps, "qm")  # the reference: the file's own week
    patch = (latitude.size * FACTOR, longitude.size * FACTOR)
    results: dict[str, Any] = {"regridding": regridding.describe()}
    plain = bench.downscale("global file", on_cells, patch=patch, regrid="none")
    results["without adjustment"] = _truth_free(plain, on_cells, Path(bench.run.run_dir))
    quantile_mapped = bench.downscale("global file, QM", adjusted, patch=patch, regrid="none")
    results["QM (reference: the file's own week)"] = _truth_free(quantile_mapped, adjusted, Path(bench.run.run_dir))
    lines = bench.header(
        "(c) Another product, no fine truth",
        f"ERA5 global 1 deg t2m, 25-31 March 2026 ({raw.sizes['time']} times 7 h apart), {regridding.describe()} onto "
        f"the {latitude.size} x {longitude.size} cells of the run's training coarse climatology (centres "
        f"{latitude[0]:g} .. {latitude[-1]:g} N, {longitude[0]:g} .. {longitude[-1]:g} E)",
    )
    lines += [
        "| input | coarse consistency RMSE (K) | coarse bias (K) | extrapolation share (mean) | spectrum / training "
        "(above coarse Nyquist) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("without adjustment", "QM (reference: the file's own week)"):
        row = results[name]
        lines.append(
            f"| {name} | {row['coarse_rmse']:.3f} | {row['coarse_bias']:.3f} | {100 * row['extrapolation_mean']:.1f} % "
            f"| {row['spectral_ratio']:.2f} |"
        )
    lines += [
        "",
        "Coarse consistency: the members' block means against the input they were given (for QM: the adjusted one). "
        "QM's reference period is the file's own week, so it maps that week onto the run's training climatology "
        "(1-19 March 2019): a demonstration of the mechanics, not a bias correction.",
    ]
    return "\n".join(lines), results


def part_d(bench: Bench) -> tuple[str, dict[str, Any]]:
    """(d) a synthetic bias, without adjustment, with QM and with QDM (on the climatology's cells)."""
    print("(d) synthetic bias", flush=True)
    latitude, longitude = climatology_lattice(bench)
    rows = np.flatnonzero(
        (bench.fine_month["latitude"].values > latitude[0] - 2)
        & (bench.fine_month["latitude"].values < latitude[-1] + 2)
    )[: latitude.size * FACTOR]
    columns = np.flatnonzero(
        (bench.fine_month["longitude"].values > longitude[0] - 2)
        & (bench.fine_month["longitude"].values < longitude[-1] + 2)
    )[: longitude.size * FACTOR]
    month = coarsen(bench.fine_month.isel(latitude=rows, longitude=columns), FACTOR)
    if not (np.allclose(month["latitude"], latitude) and np.allclose(month["longitude"], longitude)):
        sys.exit("the fine grid's blocks are not the climatology's cells")
    patch = (latitude.size * FACTOR, longitude.size * FACTOR)
    week = slice(TEST[0], f"{TEST[1]}T23:59")
    times = bench.coarse["time"].values
    unbiased = month.sel(time=times)
    week_mean = month["t2m"].sel(time=week).mean("time")
    biased_values = week_mean + BIAS_SCALE * (month["t2m"] - week_mean) + BIAS_SHIFT
    biased = month.copy()
    biased["t2m"] = biased_values.transpose(*month["t2m"].dims).assign_attrs(month["t2m"].attrs)
    # regrid none: the climatology's cells are not the lattice downscaling regrids onto for this run (the report)
    window = {"start": str(times[0])[:19], "end": str(times[-1])[:19], "patch": patch, "regrid": "none"}
    results = {
        "unbiased input": scores(
            bench.downscale("unbiased", unbiased, patch=patch, regrid="none"), bench.fine, unbiased
        )
    }
    ensemble = bench.downscale("biased", biased.sel(time=times), patch=patch, regrid="none")
    results["biased, not adjusted"] = scores(ensemble, bench.fine, unbiased)
    for method in ("qm", "qdm"):
        ensemble = bench.downscale(f"biased, {method}", biased, bias_adjust=method, bias_reference=REFERENCE, **window)
        results[f"biased, {method.upper()}"] = scores(ensemble, bench.fine, unbiased)
    reference = results["unbiased input"]
    lines = bench.header(
        "(d) A synthetic bias",
        f"ERA5 UK t2m March 2019 every {bench.every} h, coarsened 4x onto the {latitude.size} x {longitude.size} "
        f"cells of the run's training coarse climatology (centres {latitude[0]:g} .. {latitude[-1]:g} N, "
        f"{longitude[0]:g} .. {longitude[-1]:g} E), +{BIAS_SHIFT:g} K and {BIAS_SCALE:g} x the variability about each "
        f"cell's test-week mean; reference period {REFERENCE[0]} .. {REFERENCE[1]} of the biased input; scored on the "
        f"test week ({bench.fine.sizes['time']} times)",
    )
    lines += [
        "| input | RMSE (K) | fair CRPS (K) | spread-skill | RMSE / unbiased | CRPS / unbiased |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['rmse']:.3f} | {row['crps']:.3f} | {row['spread_skill']:.2f} | "
            f"{row['rmse'] / reference['rmse']:.3f} | {row['crps'] / reference['crps']:.3f} |"
        )
    lines += [
        "",
        "The climatology is the run's training period (1-19 March 2019) and the reference period (1-24 March) "
        "overlaps it; the test week (25-31 March) is held out of both.",
    ]
    return "\n".join(lines), results


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", type=Path, required=True, help="an existing ERA5 UK t2m climate run (not trained here)"
    )
    parser.add_argument("--members", type=int, default=16, help="ensemble members (default 16)")
    parser.add_argument("--every", type=int, default=3, help="downscale every N-th hour of the test week (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 members and 4 times: checks the pipeline")
    parser.add_argument("--parts", nargs="+", choices=tuple(PARTS), default=list(PARTS), help="parts to run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    for path in (T2M, GLOBAL):
        if not path.exists():
            sys.exit(f"needs the ERA5 file {path} (../shared/data beside the repository)")
    if not (args.run / "checkpoint.json").exists():
        sys.exit(f"--run {args.run}: no trained run there (train one, e.g. with configs/era5_uk_windows.yaml)")
    if load_climatology(args.run) is None and ({"c", "d"} & set(args.parts)):
        sys.exit(f"--run {args.run} has no coarse climatology: run 'diffscale climatology {args.run}' once")
    start = time.perf_counter()
    bench = Bench(args)
    tables, figures = [], {}
    for part in args.parts:
        text, results = PARTS[part](bench)
        tables.append(text)
        figures[part] = results
        print(text + "\n", flush=True)
    figures["seconds"] = {**bench.timings, "total": time.perf_counter() - start}
    print(f"total {figures['seconds']['total'] / 60:.1f} min")
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
