"""Calibration of downscaled ensembles under blocked cross-validation over time, in two regions.

One block of time is held out at a time, with a buffer of one day on each side left out of training (neighbouring
hours are nearly the same weather), and every method is trained on the rest:

    UK    ERA5 t2m, March 2019, hourly, 32 x 48 at 0.25 deg (configs/era5_uk.yaml):
          blocks 1-7, 8-14, 15-21, 22-31 March
    Italy ERA5 t2m, May-June 2022, 3-hourly, 40 x 48 on an offset 0.25 deg grid (configs/era5_italy.yaml):
          blocks 1-15 May, 16-31 May, 1-15 June, 16-30 June

For every held-out block the ensemble is scored against the truth (area-weighted): ensemble-mean RMSE, fair CRPS,
the spread-skill ratio sqrt((M+1)/M) spread / RMSE, the rank histogram's flatness (reliability index RI against
the level sampling noise alone gives a calibrated ensemble, the share of truths outside the ensemble against
2/(M+1), the chi-square p-value with times as independent clusters) and the binned spread-error relation (bins
sorted by a held-out half of the members: a calibrated ensemble lies on the diagonal, mean |ln(spread/RMSE)| = 0,
slope of ln RMSE on ln spread = 1). Means are over the folds; the pooled rows join the folds' cases. The UK test
week of configs/era5_uk.yaml (25-31 March) is reported from the fold that holds it out (22-31 March).

Methods (``--methods``; each is trained through the ``diffscale`` command, as a user would):

    present              the shipped configuration's settings (EDM diffusion of the residual over bilinear
                         interpolation) trained for --steps steps (400; the shipped files train 800)
    present+inflation    the same ensembles, members' deviations from the ensemble mean scaled by a factor k fitted
                         by nested cross-validation inside the training blocks (below)
    scaled               the residual divided by a local scale s(c) the coarse field predicts (its smoothed squared
                         gradient G: s^2 = a + b G, fitted to r^2 on the training blocks; prototype here)
    scaled+inflation     both
    crossfit             cross-fitted CorrDiff: the regression U-Net (configs/era5_uk_regression.yaml) trained on the
                         training blocks, the diffusion model on the residual of regressions that left each block out
                         (one per pair of blocks, as the nested folds); prototype here, library piece
                         diffscale.runs.climate.cross_fitted_base
    regions              one model per fold trained on the UK and Italy training blocks together (statistics pooled,
                         32 x 48 samples; diffscale.data.climate.regions), scored on each region's held-out block

Nested cross-validation (what ``+inflation`` is fitted on): for an outer fold k the factor comes only from
ensembles of blocks j != k drawn by models that saw neither block k nor block j (trained on the two other blocks,
with buffers); one such model per pair {k, j} serves both outer folds k and j. The truth's variance about the
members' centre over the members' variance, rho = sum w ((xbar - y)^2 - s^2 / M) / sum w s^2, is pooled over those
out-of-fold cases and k = sqrt((M rho + 1) / (M + 1)) for the M members of the outer ensemble
(:func:`diffscale.downscaling.recalibration.fit_spread_inflation`).

Every choice is made inside the training blocks: the noise levels (sigma_data, sigma_min, sigma_max, P_mean) follow
the standard deviation of each fold's own training target by the rule of configs/era5_uk.yaml; the inflation
factors come from the nested folds. Nothing is tuned on a held-out block.

    python benchmarks/calibration.py                                  # both regions, present and present+inflation
    python benchmarks/calibration.py --methods present,scaled --regions uk
    python benchmarks/calibration.py --score-only                     # score what the work folder holds
    python benchmarks/calibration.py --quick                          # a few steps of everything (checks the code)

Runs, ensembles and timings are kept in ``--work`` (default ``runs/calibration``) and reused: a second call only
computes what is missing. Needs ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BUFFER_DAYS = 1
TEST_WEEK = ("2019-03-25", "2019-03-31")
SEED = 0


@dataclass(frozen=True)
class Region:
    """A region's data, its configuration and its blocks of time (first and last day, inclusive)."""

    name: str
    config: Path
    data: Path
    blocks: tuple[tuple[str, str], ...]
    score_hours: int
    """Held-out blocks are downscaled every this many hours (00 UTC first)."""
    inner_hours: int
    """The nested (pair) ensembles, every this many hours."""


REGIONS = {
    "uk": Region(
        "uk",
        ROOT / "configs" / "era5_uk.yaml",
        DATA / "era5_t2m_uk_2019-03.nc",
        (
            ("2019-03-01", "2019-03-07"),
            ("2019-03-08", "2019-03-14"),
            ("2019-03-15", "2019-03-21"),
            ("2019-03-22", "2019-03-31"),
        ),
        score_hours=3,
        inner_hours=6,
    ),
    "italy": Region(
        "italy",
        ROOT / "configs" / "era5_italy.yaml",
        DATA / "era5_t2m_italy_2022-05-06_3h.nc",
        (
            ("2022-05-01", "2022-05-15"),
            ("2022-05-16", "2022-05-31"),
            ("2022-06-01", "2022-06-15"),
            ("2022-06-16", "2022-06-30"),
        ),
        score_hours=6,
        inner_hours=6,
    ),
}


@dataclass(frozen=True)
class Method:
    """A recipe: ``--set`` overrides of the region's configuration, and whether the nested inflation is applied."""

    name: str
    trained_as: str
    """The method whose runs and ensembles it uses (itself, or the one it post-processes)."""
    overrides: tuple[str, ...] = ()
    inflation: bool = False
    description: str = ""


METHODS = {
    "present": Method(
        "present", "present", description="the shipped settings (residual over bilinear) at --steps steps"
    ),
    "present+inflation": Method(
        "present+inflation", "present", inflation=True, description="present, spread inflated by nested CV"
    ),
    "scaled": Method(
        "scaled",
        "scaled",
        description="residual over a local scale predicted from the coarse field's contrast",
    ),
    "scaled+inflation": Method(
        "scaled+inflation", "scaled", inflation=True, description="scaled, spread inflated by nested CV"
    ),
    "crossfit": Method(
        "crossfit",
        "crossfit",
        description="cross-fitted CorrDiff: diffusion of the out-of-fold residual of regressions",
    ),
    "regions": Method("regions", "regions", description="one model trained on the UK and Italy blocks at once"),
}
PATCH = (32, 48)
"""Training samples of the two-region model: the whole UK crop, 32-row windows of Italy's 40 x 48 grid."""
REGRESSION = (
    "training.objective=regression",
    "model.model_channels=32",
    "model.dropout=0.1",
    "training.steps=240",
    "training.batch_size=32",
    "training.warmup_steps=20",
    "training.ema_halflife=0",
)
"""The MSE U-Net of configs/era5_uk_regression.yaml, as overrides of a region's configuration."""
CORRDIFF = ("data.target=regression_residual", "model.dropout=0.0")
"""configs/era5_uk_corrdiff.yaml's differences from the region's configuration (beside the regression run)."""


@dataclass
class Settings:
    """What the benchmark trains and draws (the same for every method)."""

    steps: int = 400
    members: int = 16
    inner_members: int = 8
    threads: int = 1
    extra: list[str] = field(default_factory=list)


# -- folds ------------------------------------------------------------------------------------------------------
def _day(text: str) -> np.datetime64:
    return np.datetime64(text, "D")


def training_periods(region: Region, held_out: tuple[int, ...], buffer_days: int = BUFFER_DAYS) -> list[list[str]]:
    """[first, last] day ranges of the record outside the held-out blocks and ``buffer_days`` around each."""
    first, last = _day(region.blocks[0][0]), _day(region.blocks[-1][1])
    days = np.arange(first, last + np.timedelta64(1, "D"))
    keep = np.ones(days.size, dtype=bool)
    for index in held_out:
        start, end = region.blocks[index]
        gap_start = _day(start) - np.timedelta64(buffer_days, "D")
        gap_end = _day(end) + np.timedelta64(buffer_days, "D")
        keep &= (days < gap_start) | (days > gap_end)
    periods = []
    for is_kept, group in itertools.groupby(zip(days, keep, strict=True), key=lambda item: item[1]):
        if is_kept:
            run = [day for day, _ in group]
            periods.append([str(run[0]), str(run[-1])])
    return periods


def block_name(region: Region, index: int) -> str:
    start, end = region.blocks[index]
    return f"{start[5:]}..{end[5:]}"


# -- one task: train a model on some blocks, downscale others ------------------------------------------------------
def run_diffscale(args: list[str]) -> None:
    from diffscale.cli.main import main as diffscale

    print("$ diffscale " + " ".join(args), flush=True)
    status = diffscale(args)
    if status != 0:
        raise SystemExit(f"diffscale {args[0]} failed with status {status}")


def target_std(config: Path, overrides: list[str]) -> float:
    """The standard deviation of the normalised training target of ``config`` with ``overrides`` (all times)."""
    from diffscale.config import load_config
    from diffscale.data.climate import ClimateDataset
    from diffscale.runs.init_config import target_std as measured_target_std

    return measured_target_std(ClimateDataset(load_config(config, overrides).data, "train"))[0]


def noise_overrides(sigma_data: float) -> list[str]:
    """The rule of configs/era5_uk.yaml (:func:`diffscale.runs.init_config.noise_levels`): sigma_max = 10 sigma_data,
    sigma_min = 0.002 sigma_data, P_mean = -0.6 + ln(sigma_data)."""
    from diffscale.runs.init_config import noise_levels

    return [f"diffusion.{key}={value:.4g}" for key, value in noise_levels(sigma_data).items()]


def truth_fields(region: Region, index: int, every_hours: int) -> xr.Dataset:
    """The fine fields of block ``index`` at hours 0, every_hours, ... (harmonised, loaded)."""
    from diffscale.data.climate import open_fields

    start, end = region.blocks[index]
    fine = open_fields(region.data, ["t2m"], (start, end))
    hours = fine["time"].dt.hour.values
    return fine.isel(time=np.flatnonzero(hours % every_hours == 0)).load()


def train_crossfit(task: dict[str, Any], region: Region, run_dir: Path, periods: list[list[str]]) -> float:
    """Prototype of cross-fitted CorrDiff (the library piece is diffscale.runs.climate.cross_fitted_base; a
    configuration key for it is not wired yet): the diffusion model of fold k is trained on z - b with b the
    out-of-fold base of the pair regressions R_{k,j} (each left out block j), then downscales with the base of the
    regression trained on all of fold k's training blocks (its data.regression_run). Returns sigma_data."""
    import diffscale
    from diffscale.config import load_config
    from diffscale.data.climate import ClimateDataset
    from diffscale.runs import prepare_training, train
    from diffscale.runs.climate import cross_fitted_base

    outer = diffscale.load_run(task["regression_run"], device="cpu")
    folds = [diffscale.load_run(path, device="cpu") for path in task["fold_runs"]]
    overrides = [
        f"data.train_period={json.dumps(periods)}",
        "data.validation_period=null",
        "data.test_period=null",
        *CORRDIFF,
        f"data.regression_run={task['regression_run']}",
    ]
    dataset = ClimateDataset(load_config(region.config, overrides).data, "train", outer.stats)
    base = cross_fitted_base(dataset, folds)
    sigma_data = float((dataset.transforms.forward_channels(dataset.fine, dataset.variables) - base).std())
    config = load_config(region.config, [*overrides, *noise_overrides(sigma_data), *task["training"]])
    plan = prepare_training(config, run_dir)
    if not np.array_equal(plan.data.times, dataset.times):
        raise AssertionError("the training split changed between two reads")
    plan.data.use_base(base)  # the out-of-fold base replaces the in-sample R(c)
    train(plan, progress=False)
    return sigma_data


# -- prototype: a residual target normalised by a local scale the coarse field predicts ---------------------------
SCALE_WINDOWS = (5, 9, 17)
"""Box sizes (fine cells) over which the squared gradient of the coarse field is averaged; each fold keeps the one
whose s^2 = a + b G fits r^2 best on its own training blocks."""


def contrast_energy(upsampled: Any, factor: int, window: int) -> Any:
    """G: |grad U(T(x))|^2 (central differences, per coarse cell) averaged over a window x window box."""
    from torch.nn import functional

    u = upsampled.double()
    dy = functional.pad((u[:, :, 2:] - u[:, :, :-2]) / 2, (0, 0, 1, 1), mode="replicate")
    dx = functional.pad((u[..., 2:] - u[..., :-2]) / 2, (1, 1, 0, 0), mode="replicate")
    energy = (dx**2 + dy**2) * factor**2
    if window > 1:
        energy = functional.avg_pool2d(functional.pad(energy, (window // 2,) * 4, mode="replicate"), window, stride=1)
    return energy


def fit_target_scale(cond: Any, residual: Any, factor: int) -> dict[str, float]:
    """Least squares of r^2 on [1, G] for each window; the best (highest R^2), with s^2 floored at 10% of the mean."""
    import torch

    best: dict[str, float] = {}
    target = (residual.double() ** 2).reshape(-1)
    for window in SCALE_WINDOWS:
        energy = contrast_energy(cond, factor, window).reshape(-1)
        design = torch.stack([torch.ones_like(energy), energy], dim=1)
        a, b = torch.linalg.lstsq(design, target[:, None]).solution[:, 0].tolist()
        fitted = design @ torch.tensor([a, b], dtype=torch.float64)
        r2 = 1 - float(((target - fitted) ** 2).mean() / target.var())
        if not best or r2 > best["r2"]:
            best = {"a": a, "b": b, "window": window, "r2": r2, "floor": 0.1 * float(target.mean())}
    return best


def target_scale(cond: Any, factor: int, fit: dict[str, float]) -> Any:
    """s = sqrt(max(a + b G, floor))."""
    energy = contrast_energy(cond, factor, int(fit["window"]))
    return (fit["a"] + fit["b"] * energy).clamp_min(fit["floor"]).sqrt().float()


class ScaledTargets:
    """A batch source whose targets are the dataset's residuals r divided by s(c) (c the batch's conditioning:
    whole-domain samples, so s is the field's own)."""

    def __init__(self, source: Any, factor: int, fit: dict[str, float]) -> None:
        self.source, self.factor, self.fit = source, factor, fit

    def __call__(self, batch_size: int, generator: Any = None) -> Any:
        from diffscale.data.batch import Batch

        batch = self.source(batch_size, generator)
        scale = target_scale(batch.cond["cond_fields"][:, :1], self.factor, self.fit)
        return Batch(batch.target / scale, batch.cond)


def train_scaled(task: dict[str, Any], region: Region, run_dir: Path, overrides: list[str]) -> float:
    """Prototype (not in the library): train on r / s(c), the batch source wrapped (:class:`ScaledTargets`); the
    fit is saved as target_scale.json beside the run."""
    from diffscale.config import load_config
    from diffscale.data.climate import ClimateDataset
    from diffscale.runs import prepare_training, train

    section = load_config(region.config, overrides).data
    dataset = ClimateDataset(section, "train")
    fields = dataset.fields(slice(None))
    fit = fit_target_scale(fields.cond_fields[:, :1], fields.target, section.coarsen_factor)
    sigma_data = float((fields.target / target_scale(fields.cond_fields[:, :1], section.coarsen_factor, fit)).std())
    config = load_config(region.config, [*overrides, *noise_overrides(sigma_data), *task["training"]])
    plan = prepare_training(config, run_dir)
    plan.trainer.source = ScaledTargets(plan.data.sample, section.coarsen_factor, fit)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "target_scale.json").write_text(json.dumps(fit, indent=1))
    train(plan, progress=False)
    return sigma_data


def downscale_scaled(run: Any, coarse: xr.Dataset, members: int, out: Path) -> None:
    """Prototype: sample r' with the run's denoiser (base 0, no transform), then y = T^-1(b + s r')."""
    import torch

    from diffscale.downscaling import (
        EnsembleWriter,
        MemoryEnsembleWriter,
        generate_ensemble,
        sampling_groups,
        work_blocks,
    )

    fit = json.loads((Path(run.run_dir) / "target_scale.json").read_text())
    job = run.prepare_downscaling(coarse, members=members, seed=SEED)
    every = torch.arange(len(job.times))  # the conditioning is formed lazily; these inputs are small
    cond, base = job.conditioning.cond_fields[every], job.base[every]
    scale = target_scale(cond[:, :1], run.section.coarsen_factor, fit)
    layout = job.layout()
    groups = sampling_groups(work_blocks(len(job.times), members, job.member_batch), job.batch_size)
    with MemoryEnsembleWriter(**layout) as memory:
        generate_ensemble(
            run.model,
            run.model.formulation,
            cond,
            torch.zeros_like(base),
            [],
            memory,
            run.section.variables,
            lambda values: values,
            settings=job.settings,
            seed=SEED,
            times=job.times,
            groups=groups,
            progress=False,
        )
    residual = torch.as_tensor(memory.dataset["t2m"].values)  # (M, T, H, W), r' in normalised units
    normalised = base[None, :, 0] + scale[None, :, 0] * residual
    physical = job.to_physical(normalised[:, :, None]).numpy()[:, :, 0]
    with EnsembleWriter(out, **layout) as writer:
        writer.write("t2m", range(members), slice(0, len(job.times)), physical)


# -- prototype: one model trained on both regions ------------------------------------------------------------------
def region_section(name: str, held_out: tuple[int, ...]) -> Any:
    """A region's data section for the two-region model: its training blocks, the common patch."""
    from diffscale.config import load_config

    region = REGIONS[name]
    overrides = [
        f"data.train_period={json.dumps(training_periods(region, held_out))}",
        "data.validation_period=null",
        "data.test_period=null",
        f"data.patch={list(PATCH)}",
    ]
    return load_config(region.config, overrides).data.with_absolute_paths(), overrides


def train_regions(task: dict[str, Any], run_dir: Path) -> float:
    """Prototype: the UK configuration's model trained on both regions' training blocks (RegionMixture), with
    statistics pooled over both (pooled_stats); the run directory is a UK run holding the pooled statistics."""
    from diffscale.config import load_config
    from diffscale.data.climate import ClimateDataset
    from diffscale.data.climate.regions import RegionMixture, pooled_stats
    from diffscale.runs import prepare_training, train

    held_out = tuple(task["held_out"])
    sections = {name: region_section(name, held_out) for name in ("uk", "italy")}
    own = {name: ClimateDataset(section, "train") for name, (section, _) in sections.items()}
    counts = []
    for dataset in own.values():
        points = dataset.latitude.size * dataset.longitude.size
        counts.append(
            {name: (len(dataset) * points if name in dataset.variables else points) for name in dataset.stats}
        )
    stats = pooled_stats([dataset.stats for dataset in own.values()], counts)
    datasets = {name: ClimateDataset(section, "train", stats) for name, (section, _) in sections.items()}
    squares = [float((dataset.fields(slice(None)).target.double() ** 2).sum()) for dataset in datasets.values()]
    sizes = [dataset.fields(slice(None)).target.numel() for dataset in datasets.values()]
    sigma_data = math.sqrt(sum(squares) / sum(sizes))
    overrides = sections["uk"][1]
    config = load_config(REGIONS["uk"].config, [*overrides, *noise_overrides(sigma_data), *task["training"]])
    plan = prepare_training(config, run_dir)
    plan.data = datasets["uk"]  # the run's statistics file: the pooled statistics (and the UK grid)
    plan.statistics = None  # written from plan.data by train()
    plan.trainer.source = RegionMixture(list(datasets.values()))
    train(plan, progress=False)
    return sigma_data


def downscale_other_region(run: Any, name: str, index: int, task: dict[str, Any], out: Path) -> None:
    """Prototype: a two-region run downscales a region other than its configuration's (that region's section,
    the run's pooled statistics and network)."""
    from diffscale.data.climate import ConditioningBuilder
    from diffscale.data.climate.cf import cf_attributes
    from diffscale.data.climate.grid import coarsen
    from diffscale.data.climate.splits import model_grid
    from diffscale.downscaling import EnsembleWriter, generate_ensemble, sampling_groups, work_blocks

    section, _ = region_section(name, tuple(task["held_out"]))
    fine = truth_fields(REGIONS[name], index, task["every_hours"])
    grid, _ = model_grid(fine, section)
    builder = ConditioningBuilder.from_section(section, run.stats)
    conditioning = builder.build(coarsen(grid, section.coarsen_factor))
    members, times = task["members"], conditioning.times
    layout = {
        "latitude": conditioning.latitude,
        "longitude": conditioning.longitude,
        "times": times,
        "num_members": members,
        "variables": {"t2m": cf_attributes("t2m", {"units": "K"})},
        "global_attributes": {"run_dir": str(run.run_dir), "region": name, "seed": SEED},
    }
    with EnsembleWriter(out, **layout) as writer:
        generate_ensemble(
            run.model,
            run.model.formulation,
            conditioning.cond_fields,
            conditioning.base,
            [],
            writer,
            ["t2m"],
            builder.to_physical,
            settings=run.sampler_settings(),
            seed=SEED,
            times=times,
            groups=sampling_groups(work_blocks(len(times), members, 16), 64),
            progress=False,
        )


def regions_tasks(settings: Settings, work: Path) -> list[dict[str, Any]]:
    """One two-region model per fold k (the UK and Italy blocks k held out): it downscales both blocks k."""
    return [
        {
            "region": "uk",
            "method": "regions",
            "kind": "regions",
            "threads": settings.threads,
            "run_dir": str(work / "uk" / "regions" / f"outer-{k}"),
            "other_dir": str(work / "italy" / "regions" / f"outer-{k}"),
            "held_out": [k],
            "predict": [k],
            "members": settings.members,
            "training": [f"training.steps={settings.steps}", "training.checkpoint_every=0", *settings.extra],
        }
        for k in range(len(REGIONS["uk"].blocks))
    ]


def run_task(task: dict[str, Any]) -> None:
    """Train (unless the run exists) on the blocks outside ``task['held_out']`` and downscale ``task['predict']``."""
    import torch

    torch.set_num_threads(task["threads"])
    region = REGIONS[task["region"]]
    method = METHODS[task["method"]]
    run_dir = Path(task["run_dir"])
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    os.chdir(ROOT)
    if not (run_dir / "checkpoint.json").is_file():
        periods = training_periods(region, tuple(task["held_out"]))
        overrides = [
            f"data.train_period={json.dumps(periods)}",
            "data.validation_period=null",
            "data.test_period=null",
            *method.overrides,
        ]
        start = time.perf_counter()
        kind = task.get("kind", "diffusion")
        if kind == "crossfit":
            sigma_data = train_crossfit(task, region, run_dir, periods)
        elif kind == "scaled":
            sigma_data = train_scaled(task, region, run_dir, overrides)
        elif kind == "regions":
            sigma_data = train_regions(task, run_dir)
        else:
            noise = []
            sigma_data = None
            if kind == "diffusion":
                sigma_data = target_std(region.config, overrides)
                noise = noise_overrides(sigma_data)
            command = ["train", str(region.config), "--out", str(run_dir), "--no-progress"]
            for item in [*overrides, *noise, *task["training"]]:
                command += ["--set", item]
            run_diffscale(command)
        timing["train_seconds"] = time.perf_counter() - start
        timing["sigma_data"] = sigma_data
        timing["train_periods"] = periods
        timing_path.write_text(json.dumps(timing, indent=1))
    import diffscale

    run = diffscale.load_run(run_dir, device="cpu")
    if task.get("kind") == "regions":
        other = Path(task["other_dir"])
        other.mkdir(parents=True, exist_ok=True)
        for index in task["predict"]:
            out = other / f"ensemble-{index}.nc"
            if not out.exists():
                start = time.perf_counter()
                downscale_other_region(run, "italy", index, {**task, "every_hours": REGIONS["italy"].score_hours}, out)
                seconds = time.perf_counter() - start
                shared = {"trained_in": str(run_dir), "sigma_data": timing.get("sigma_data")}
                (other / "timing.json").write_text(json.dumps({**shared, f"downscale_seconds_{index}": seconds}))
        task = {**task, "every_hours": REGIONS["uk"].score_hours}
    for index in task["predict"]:
        out = run_dir / f"ensemble-{index}.nc"
        if out.exists():
            continue
        start = time.perf_counter()
        fine = truth_fields(region, index, task["every_hours"])
        if task.get("kind") == "scaled":
            downscale_scaled(run, run.coarsen(fine), task["members"], out)
        else:
            run.downscale(run.coarsen(fine), members=task["members"], seed=SEED, out=out)
        timing[f"downscale_seconds_{index}"] = time.perf_counter() - start
        timing_path.write_text(json.dumps(timing, indent=1))


def tasks_for(region: Region, method: Method, settings: Settings, work: Path, nested: bool) -> list[dict[str, Any]]:
    """The outer folds of ``method`` (and with ``nested`` the pair models of its nested folds)."""
    base = {
        "region": region.name,
        "method": method.trained_as,
        "kind": "scaled" if method.trained_as == "scaled" else "diffusion",
        "threads": settings.threads,
        "training": [f"training.steps={settings.steps}", "training.checkpoint_every=0", *settings.extra],
    }
    folder = work / region.name / method.trained_as
    tasks = []
    for k in range(len(region.blocks)):
        tasks.append(
            {
                **base,
                "run_dir": str(folder / f"outer-{k}"),
                "held_out": [k],
                "predict": [k],
                "members": settings.members,
                "every_hours": region.score_hours,
            }
        )
    if nested:
        for k, j in itertools.combinations(range(len(region.blocks)), 2):
            tasks.append(
                {
                    **base,
                    "run_dir": str(folder / f"pair-{k}-{j}"),
                    "held_out": [k, j],
                    "predict": [k, j],
                    "members": settings.inner_members,
                    "every_hours": region.inner_hours,
                }
            )
    return tasks


def crossfit_tasks(region: Region, settings: Settings, work: Path) -> list[list[dict[str, Any]]]:
    """Two stages: the regressions (of every outer fold, and of every pair of blocks), then the cross-fitted
    diffusion model of every outer fold."""
    folder = work / region.name / "crossfit"
    base = {"region": region.name, "method": "crossfit", "threads": settings.threads, "predict": []}
    steps = ["training.steps=4"] if settings.steps < 10 else []
    regression = [*REGRESSION, "training.checkpoint_every=0", *steps]
    blocks = range(len(region.blocks))
    stage1 = [
        {
            **base,
            "kind": "regression",
            "run_dir": str(folder / f"reg-outer-{k}"),
            "held_out": [k],
            "training": regression,
        }
        for k in blocks
    ]
    stage1 += [
        {
            **base,
            "kind": "regression",
            "run_dir": str(folder / f"reg-pair-{k}-{j}"),
            "held_out": [k, j],
            "training": regression,
        }
        for k, j in itertools.combinations(blocks, 2)
    ]
    stage2 = [
        {
            **base,
            "kind": "crossfit",
            "run_dir": str(folder / f"outer-{k}"),
            "held_out": [k],
            "predict": [k],
            "members": settings.members,
            "every_hours": region.score_hours,
            "regression_run": str(folder / f"reg-outer-{k}"),
            "fold_runs": [str(folder / f"reg-pair-{min(k, j)}-{max(k, j)}") for j in blocks if j != k],
            "training": [f"training.steps={settings.steps}", "training.checkpoint_every=0", *settings.extra],
        }
        for k in blocks
    ]
    return [stage1, stage2]


def task_done(task: dict[str, Any]) -> bool:
    run_dir = Path(task["run_dir"])
    if task.get("kind") == "regions" and not all(
        (Path(task["other_dir"]) / f"ensemble-{index}.nc").exists() for index in task["predict"]
    ):
        return False
    if not task["predict"]:
        return (run_dir / "checkpoint.json").is_file()
    return all((run_dir / f"ensemble-{index}.nc").exists() for index in task["predict"])


def run_tasks(tasks: list[dict[str, Any]], jobs: int, log_dir: Path) -> None:
    """Every task not done yet, ``jobs`` at a time, each in its own process (one thread each by default)."""
    pending = [task for task in tasks if not task_done(task)]
    if not pending:
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(pending[0]["threads"]), "PYTHONPATH": str(ROOT / "src")}

    def launch(task: dict[str, Any]) -> None:
        name = Path(task["run_dir"]).relative_to(log_dir.parent).as_posix().replace("/", "_")
        with open(log_dir / f"{name}.log", "w") as log:
            status = subprocess.run(
                [sys.executable, __file__, "--task", json.dumps(task)], stdout=log, stderr=subprocess.STDOUT, env=env
            ).returncode
        print(f"  {'done' if status == 0 else f'FAILED ({status})'}: {name}", flush=True)
        if status != 0:
            raise RuntimeError(f"task {name} failed; see {log_dir / (name + '.log')}")

    print(f"{len(pending)} task(s), {jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(launch, task) for task in pending]:
            future.result()


# -- scoring ----------------------------------------------------------------------------------------------------
def load_case(region: Region, run_dir: Path, index: int, every_hours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ensemble (M, T, H, W), truth (T, H, W), latitude (H,)) of block ``index`` drawn by ``run_dir``."""
    ensemble = xr.open_dataset(run_dir / f"ensemble-{index}.nc")
    fine = truth_fields(region, index, every_hours)
    truth = fine["t2m"].sel(
        time=ensemble["time"].values,
        latitude=ensemble["latitude"].values,
        longitude=ensemble["longitude"].values,
        method="nearest",
    )
    for axis in ("latitude", "longitude"):
        if not np.allclose(truth[axis].values, ensemble[axis].values, atol=1e-4):
            raise AssertionError(f"the truth's {axis} does not match the ensemble's")
    values = ensemble["t2m"].values.astype(np.float64)
    ensemble.close()
    return values, truth.values.astype(np.float64), ensemble["latitude"].values


def input_flags(run_dir: Path, region: Region, index: int, every_hours: int) -> dict[str, np.ndarray]:
    """The extrapolation measure of block ``index``'s coarse input against the run's training inputs (from the
    ensemble file when it holds it, else computed now; a run saved before the range was recorded gets it added to
    its statistics file first)."""
    from diffscale.runs.stats import INPUT_RANGE_KEY, STATS_NAME, training_input_range

    with xr.open_dataset(run_dir / f"ensemble-{index}.nc") as ensemble:
        if "t2m_outside_training_range" in ensemble:
            return {
                "outside_fraction": ensemble["t2m_outside_training_range"].values.astype(np.float64),
                "excess": ensemble["t2m_training_range_excess"].values.astype(np.float64),
            }
    import diffscale
    from diffscale.data.climate import ClimateDataset

    stats_path = run_dir / STATS_NAME
    saved = json.loads(stats_path.read_text())
    if INPUT_RANGE_KEY not in saved:
        run = diffscale.load_run(run_dir, device="cpu")
        dataset = ClimateDataset(run.section, "train", run.stats)
        if run.section.target == "regression_residual":
            dataset.set_base(run.base_run().regression_predictor())
        saved[INPUT_RANGE_KEY] = training_input_range(dataset).to_dict()
        stats_path.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    run = diffscale.load_run(run_dir, device="cpu")
    fine = truth_fields(region, index, every_hours)
    job = run.prepare_downscaling(run.coarsen(fine), members=2)
    return {key: np.asarray(job.extrapolation["t2m"][key]) for key in ("outside_fraction", "excess")}


def inflation_factor(region: Region, folder: Path, k: int, members: int) -> tuple[float, int]:
    """The nested factor of outer fold ``k`` for ensembles of ``members``: fitted on the blocks j != k drawn by the
    models of pairs {k, j}."""
    from diffscale.downscaling.recalibration import fit_spread_inflation

    cases = []
    for j in range(len(region.blocks)):
        if j == k:
            continue
        pair = folder / f"pair-{min(j, k)}-{max(j, k)}"
        ensemble, truth, latitude = load_case(region, pair, j, region.inner_hours)
        cases.append((ensemble, truth, latitude))
    factor = fit_spread_inflation(cases, members)
    return factor, sum(case[1].shape[0] for case in cases)


def scores(ensemble: np.ndarray, truth: np.ndarray, latitude: np.ndarray) -> dict[str, Any]:
    from diffscale.evaluation.calibration import rank_histogram_flatness, spread_error_bins
    from diffscale.evaluation.scores import ensemble_scores

    basic = ensemble_scores(ensemble, truth, latitude)
    flat = rank_histogram_flatness(ensemble, truth, latitude)
    binned = spread_error_bins(ensemble, truth, latitude)
    return {
        "times": int(truth.shape[0]),
        "members": int(ensemble.shape[0]),
        "rmse": basic["rmse"],
        "crps": basic["crps"],
        "spread": basic["spread"],
        "ssr": basic["spread_skill_ratio"],
        "ri": flat["reliability_index"],
        "ri_calibrated": flat["reliability_index_calibrated"],
        "outside": flat["outside_fraction"],
        "outside_calibrated": flat["outside_fraction_calibrated"],
        "p_clustered": flat["p_value_time_clustered"],
        "se_mean_abs_log": binned["mean_abs_log_ratio"],
        "se_slope": binned["log_slope"],
        "se_spread": binned["spread"],
        "se_rmse": binned["rmse"],
    }


def score_method(region: Region, method: Method, work: Path) -> dict[str, Any]:
    """Per fold, mean over folds and pooled (the folds' cases joined) scores of ``method`` in ``region``."""
    from diffscale.downscaling.recalibration import inflate

    folder = work / region.name / method.trained_as
    folds, joined = [], []
    test_week = None
    for k in range(len(region.blocks)):
        run_dir = folder / f"outer-{k}"
        ensemble, truth, latitude = load_case(region, run_dir, k, region.score_hours)
        factor, inner_times = (None, 0)
        if method.inflation:
            factor, inner_times = inflation_factor(region, folder, k, ensemble.shape[0])
            ensemble = inflate(ensemble, factor)
        row = scores(ensemble, truth, latitude)
        timing_path = run_dir / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        row.update(
            fold=k,
            block=block_name(region, k),
            inflation=factor,
            inflation_fitted_on_times=inner_times,
            sigma_data=timing.get("sigma_data"),
        )
        folds.append(row)
        joined.append((ensemble, truth, latitude))
        if region.name == "uk" and k == len(region.blocks) - 1:
            times = xr.open_dataset(run_dir / f"ensemble-{k}.nc")["time"].values
            keep = (times >= np.datetime64(TEST_WEEK[0])) & (times < _day(TEST_WEEK[1]) + np.timedelta64(1, "D"))
            test_week = scores(ensemble[:, keep], truth[keep], latitude)
    pooled = scores(
        np.concatenate([case[0] for case in joined], axis=1),
        np.concatenate([case[1] for case in joined], axis=0),
        joined[0][2],
    )
    mean = {key: float(np.mean([row[key] for row in folds])) for key in ("rmse", "crps", "ssr", "ri", "outside")}
    return {"folds": folds, "mean": mean, "pooled": pooled, "test_week": test_week}


def wall_seconds(region: Region, method: Method, work: Path) -> dict[str, float]:
    """Training and downscaling seconds recorded by the tasks of ``method`` (outer folds and nested pairs)."""
    folder = work / region.name / method.trained_as
    totals = {"train": 0.0, "downscale": 0.0}
    prefixes = ("outer-", "pair-") if method.inflation else ("outer-",)
    if method.trained_as == "crossfit":
        prefixes = ("outer-", "reg-")
    for run_dir in sorted(folder.glob("*")):
        if not run_dir.name.startswith(prefixes) or not (run_dir / "timing.json").is_file():
            continue
        timing = json.loads((run_dir / "timing.json").read_text())
        totals["train"] += timing.get("train_seconds", 0.0)
        totals["downscale"] += sum(v for key, v in timing.items() if key.startswith("downscale_seconds"))
    return totals


def print_tables(results: dict[str, dict[str, Any]], settings: Settings) -> None:
    header = (
        f"{'fold':<16s} {'times':>5s} {'RMSE':>6s} {'CRPS':>6s} {'SSR':>5s} {'RI':>5s} {'RI_0':>5s} "
        f"{'out':>5s} {'out_0':>5s} {'p_RS':>7s} {'|lnSE|':>6s} {'slope':>5s} {'k':>5s}"
    )
    for key, result in results.items():
        region, method = key.split(":")
        print(f"\n{region}, {method} ({METHODS[method].description}); {settings.members} members, area-weighted, K")
        print(header)

        def line(name: str, row: dict[str, Any]) -> str:
            factor = f"{row['inflation']:5.2f}" if row.get("inflation") else f"{'-':>5s}"
            return (
                f"{name:<16s} {row['times']:5d} {row['rmse']:6.3f} {row['crps']:6.3f} {row['ssr']:5.2f} "
                f"{row['ri']:5.3f} {row['ri_calibrated']:5.3f} {row['outside']:5.3f} {row['outside_calibrated']:5.3f} "
                f"{row['p_clustered']:7.1e} {row['se_mean_abs_log']:6.3f} {row['se_slope']:5.2f} {factor}"
            )

        for row in result["folds"]:
            print(line(row["block"], row))
        mean = result["mean"]
        print(
            f"{'mean of folds':<16s} {'':5s} {mean['rmse']:6.3f} {mean['crps']:6.3f} {mean['ssr']:5.2f} "
            f"{mean['ri']:5.3f} {'':5s} {mean['outside']:5.3f}"
        )
        print(line("pooled", result["pooled"]))
        if result["test_week"] is not None:
            print(line("test week 25-31", result["test_week"]))
        pooled = result["pooled"]
        bins = " ".join(f"{s:.2f}/{r:.2f}" for s, r in zip(pooled["se_spread"], pooled["se_rmse"], strict=True))
        print(f"pooled spread/RMSE per bin (K, lowest spread first): {bins}")
        wall = result["wall_seconds"]
        print(
            f"wall time of its tasks: training {wall['train'] / 60:.1f} min, "
            f"downscaling {wall['downscale'] / 60:.1f} min"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", default="uk,italy")
    parser.add_argument("--methods", default="present,present+inflation")
    parser.add_argument("--work", default="runs/calibration", help="folder of the runs, ensembles and timings")
    parser.add_argument("--jobs", type=int, default=2, help="tasks run at the same time (one thread each)")
    parser.add_argument("--threads", type=int, default=1, help="threads per task")
    parser.add_argument("--steps", type=int, default=400, help="training steps of every model")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--inner-members", type=int, default=8, help="members of the nested ensembles")
    parser.add_argument("--set", action="append", default=[], dest="extra", help="more overrides for every run")
    parser.add_argument("--score-only", action="store_true", help="score what --work holds; train nothing")
    parser.add_argument("--quick", action="store_true", help="4 training steps, 4 members: checks the code")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        run_task(json.loads(args.task))
        return
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs the shared ERA5 files (see its README)")
    settings = Settings(args.steps, args.members, args.inner_members, args.threads, args.extra)
    if args.quick:
        settings.steps, settings.members, settings.inner_members = 4, 4, 4
    work = Path(args.work).resolve()
    regions = [REGIONS[name] for name in args.regions.split(",")]
    methods = [METHODS[name] for name in args.methods.split(",")]
    start = time.perf_counter()
    if not args.score_only:
        tasks, later = [], []
        for region in regions:
            for trained in dict.fromkeys(method.trained_as for method in methods):
                if trained == "crossfit":
                    first, second = crossfit_tasks(region, settings, work)
                    tasks += first
                    later += second
                    continue
                if trained == "regions":
                    if region is regions[0]:  # one model for both regions
                        tasks += regions_tasks(settings, work)
                    continue
                nested = any(m.inflation for m in methods if m.trained_as == trained)
                tasks += tasks_for(region, METHODS[trained], settings, work, nested)
        run_tasks(tasks, args.jobs, work / "logs")
        run_tasks(later, args.jobs, work / "logs")
    results = {}
    for region in regions:
        for method in methods:
            result = score_method(region, method, work)
            result["wall_seconds"] = wall_seconds(region, method, work)
            results[f"{region.name}:{method.name}"] = result
    print_tables(results, settings)
    print(f"\nthis call: {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
