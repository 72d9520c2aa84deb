"""Streaming climate training at scale: a global 0.25 degree Zarr store larger than memory, trained on without
loading it.

Writes a synthetic store on the global 0.25 degree grid (721 x 1440, variables t2m and u10, one time per chunk,
``--times`` hourly fields: 12 GB or more on disk with the default zstd codec). Each field is a Gaussian random
field with a Matérn-like spectrum (:class:`diffscale.data.fields.GaussianRandomField`, correlation length 20
cells): a time mixes two of a pool of 64 independent fields, cos(a) f_i + sin(a) f_j, which has the same spectrum
and variance and is different at every time, so the codec gets no more redundancy than it would from real fields.

Then trains the same small DDPM++ model (EDM, 128 x 128 random patches, coarsening factor 4, batch ``--batch-size``,
one torch thread) three times, each in a child process whose whole tree (the process and its data loading
workers) is watched from here:

* ``store``: on the full store, read by ``--workers`` worker processes (statistics fitted in one streaming pass);
* ``slice``: the same on the first ``--slice`` fields of the store (``data.train_period``);
* ``memory``: the batches of the ``store`` run, read beforehand into memory, fed in the same order (so the model
  ends bitwise as in the ``store`` run: checked).

Printed side by side: the peak resident memory of the process tree (the largest sum of VmRSS over the tree,
sampled every 0.2 s; and, as an upper bound, the sum of every process's own peak VmHWM), training samples/s
(after ``--warmup`` steps, which include the workers' start) and the fraction of step time spent waiting for data,
with the load average of the machine. The store is deleted at the end unless ``--keep``.

    python benchmarks/streaming.py                              # about 15 minutes on 2 CPU cores
    python benchmarks/streaming.py --dir /work/tmp --keep       # keep the store (then --reuse it)
    python benchmarks/streaming.py --times 200 --steps 12       # a quick check of the pipeline (small store)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEIGHT, WIDTH = 721, 1440
VARIABLES = {"t2m": (280.0, 12.0, "K"), "u10": (0.0, 6.0, "m s**-1")}  # mean, std, units
POOL = 64
FIRST_TIME = "2000-01-01T00:00"


# -- the store --------------------------------------------------------------------------------------------------
def write_store(path: Path, times: int, seed: int = 0) -> float:
    """Write the synthetic store; returns the seconds it took."""
    import dask.array as da
    import numpy as np
    import pandas as pd
    import torch
    import xarray as xr
    import zarr

    from diffscale.data.fields import GaussianRandomField

    started = time.perf_counter()
    stamps = pd.date_range(FIRST_TIME, periods=times, freq="h").values
    latitude = np.linspace(90.0, -90.0, HEIGHT)
    longitude = np.arange(WIDTH) * 0.25
    template = xr.Dataset(
        {
            name: (
                ("time", "latitude", "longitude"),
                da.zeros((times, HEIGHT, WIDTH), chunks=(1, HEIGHT, WIDTH), dtype=np.float32),
                {"units": units},
            )
            for name, (_, _, units) in VARIABLES.items()
        },
        coords={"time": stamps, "latitude": latitude, "longitude": longitude},
    )
    template.to_zarr(path, mode="w", compute=False, consolidated=False)
    field = GaussianRandomField(1, HEIGHT, WIDTH, length_scale=20.0, spectral_slope=4.0)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    for name, (mean, std, _) in VARIABLES.items():
        pool = np.concatenate([field.sample(8, generator).numpy()[:, 0] for _ in range(POOL // 8)])
        fill_mixed(zarr.open_array(str(path / name), mode="r+"), pool, times, mean, std, rng)
    return time.perf_counter() - started


def fill_mixed(array: Any, pool: Any, times: int, mean: float, std: float, rng: Any, block: int = 32) -> None:
    """Write ``times`` fields into ``array`` (time first), ``block`` times at a time: each mean + std (cos a P_i +
    sin a P_j) of two distinct fields of ``pool`` and a random angle a (unit variance, never the whole record in
    memory). ``pool`` is a (P, H, W) NumPy array and ``rng`` a NumPy Generator."""
    import numpy as np

    for start in range(0, times, block):
        count = min(block, times - start)
        first, second = rng.integers(0, len(pool), count), rng.integers(0, len(pool), count)
        second = np.where(second == first, (second + 1) % len(pool), second)
        angle = rng.uniform(0.0, 2.0 * math.pi, count).astype(np.float32)
        mixed = np.cos(angle)[:, None, None] * pool[first] + np.sin(angle)[:, None, None] * pool[second]
        array[start : start + count] = (mean + std * mixed).astype(np.float32)


def disk_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


# -- the training runs (child processes) --------------------------------------------------------------------------
def training_config(args: argparse.Namespace, store: Path, workers: int, period: list[str] | None) -> dict[str, Any]:
    return {
        "diffusion": {"type": "EDM", "sigma_data": 1.0},
        "data": {
            "kind": "climate",
            "paths": [str(store)],
            "variables": list(VARIABLES),
            "coarsen_factor": 4,
            "patch": [args.patch, args.patch],
            "channels": {"latlon": True},
            "train_period": period,
        },
        "model": {
            "arch": "ddpmpp",
            "model_channels": args.model_channels,
            "channel_mult": [1, 2, 2],
            "num_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "training": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "warmup_steps": 5,
            "log_every": args.steps,
            "tensorboard": False,
            "device": "cpu",
            "num_workers": workers,
            "prefetch_factor": 2,
            "seed": 0,
        },
        "sampling": {"steps": 4},
    }


def _rates(marks: list[tuple[float, float, float]], warmup: int, batch_size: int) -> dict[str, float]:
    """Samples/s and data-wait fraction over the steps after ``warmup`` (marks: wall time at each step's end,
    its data wait, its step time)."""
    timed = marks[warmup:]
    wall = marks[-1][0] - marks[warmup - 1][0]
    return {
        "samples_per_second": batch_size * len(timed) / wall,
        "data_wait_fraction": sum(m[1] for m in timed) / sum(m[2] for m in timed),
        "seconds_per_step": wall / len(timed),
    }


def child_store(args: argparse.Namespace) -> dict[str, Any]:
    """Train from the store (full or sliced) with worker processes; the statistics go to --stats-out."""
    import torch

    from diffscale.config import config_from_dict
    from diffscale.runs import prepare_training, train

    torch.set_num_threads(1)
    period = [FIRST_TIME, args.slice_end] if args.slice_end else None
    config = config_from_dict(training_config(args, Path(args.store), args.workers, period))
    torch.manual_seed(0)
    started = time.perf_counter()
    plan = prepare_training(config, Path(args.run_dir))
    prepared = time.perf_counter() - started
    marks: list[tuple[float, float, float]] = []
    train(plan, progress=False, callback=lambda r: marks.append((time.perf_counter(), r.data_seconds, r.step_seconds)))
    if args.stats_out:
        Path(args.stats_out).write_text(json.dumps(plan.data.stats))
    return {"fields": len(plan.data), "prepare_seconds": prepared, **_rates(marks, args.warmup, args.batch_size)}


def child_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The batches of the store run read first (not timed), then trained on from memory in the same order."""
    import torch

    from diffscale.config import config_from_dict
    from diffscale.data.climate import ClimateDataset
    from diffscale.runs.building import build_model_for, training_objective
    from diffscale.training import Trainer
    from diffscale.training.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    config = config_from_dict(training_config(args, Path(args.store), 0, None))
    stats = json.loads(Path(args.stats_in).read_text())
    dataset = ClimateDataset(config.data, "train", stats)
    torch.manual_seed(0)
    trainer = Trainer(build_model_for(config), dataset, config.training, objective=training_objective(config))
    draws = [trainer.draw_step() for _ in range(args.steps)]
    batches = iter([dataset.read(step.data) for step in draws])
    trainer.generator.set_state(draws[0].generator_state)

    def from_memory(batch_size: int, generator: torch.Generator) -> Any:
        dataset.draw(batch_size, generator)  # the same draws from the generator as the store run made
        return next(batches)

    trainer.source = from_memory
    marks: list[tuple[float, float, float]] = []
    trainer.run(progress=False, callback=lambda r: marks.append((time.perf_counter(), r.data_seconds, r.step_seconds)))
    store_run = load_checkpoint(Path(args.compare_with))
    same = all(torch.equal(store_run.weights[key], value) for key, value in trainer.model.state_dict().items())
    return {"fields": len(dataset), "same_weights_as_store_run": same, **_rates(marks, args.warmup, args.batch_size)}


# -- watching a process tree ----------------------------------------------------------------------------------------
def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (their pids are larger: only those are looked at, to keep the watching
    cheap on a busy machine)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) < root:
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def run_watched(argv: list[str]) -> dict[str, Any]:
    """Run a child and sample its process tree's memory every 0.2 s; its JSON result plus the memory figures."""
    load_before = os.getloadavg()[0]
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    process = subprocess.Popen([*argv, "--result", str(out)])
    peak_sum, peak_of_each, processes = 0, {}, set()
    while process.poll() is None:
        pids = process_tree(process.pid)
        total = 0
        for pid in pids:
            status = _status(pid)
            total += status.get("VmRSS", 0)
            peak_of_each[pid] = max(peak_of_each.get(pid, 0), status.get("VmHWM", 0))
            processes.add(pid)
        peak_sum = max(peak_sum, total)
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"child {argv[-1]} failed with status {process.returncode}")
    result = json.loads(out.read_text())
    out.unlink()
    return {
        **result,
        "peak_tree_rss": peak_sum,
        "sum_of_process_peaks": sum(peak_of_each.values()),
        "processes": len(processes),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


# -- main -----------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--times", type=int, default=1900, help="hourly fields in the store (default 1900: 12.6 GB)")
    parser.add_argument("--slice", type=int, default=150, help="fields of the sliced run")
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a new temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store (and the runs)")
    parser.add_argument("--reuse", action="store_true", help="use the store already in --dir")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8, help="steps left out of the rates (the workers start)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--model-channels", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", choices=["store", "memory"], help=argparse.SUPPRESS)
    for name in ("store", "run-dir", "stats-out", "stats-in", "compare-with", "slice-end", "result"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child is not None:
        result = child_store(args) if args.child == "store" else child_memory(args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    import numpy as np

    root = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="diffscale-streaming-"))
    root.mkdir(parents=True, exist_ok=True)
    store = root / "global_0.25deg.zarr"
    try:
        if args.reuse and store.exists():
            written = float("nan")
        else:
            print(f"writing {args.times} x {len(VARIABLES)} fields of {HEIGHT} x {WIDTH} into {store} ...", flush=True)
            written = write_store(store, args.times)
        size = disk_bytes(store)
        print(f"store: {size / 1e9:.2f} GB on disk ({written:.0f} s to write), load {os.getloadavg()[0]:.1f}")
        common = [sys.executable, __file__, "--store", str(store), "--steps", str(args.steps)]
        common += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--patch", str(args.patch)]
        common += ["--model-channels", str(args.model_channels), "--workers", str(args.workers)]
        slice_end = str(np.datetime64(FIRST_TIME) + np.timedelta64(args.slice - 1, "h"))
        runs = {}
        for name, extra in (
            ("store", ["--run-dir", str(root / "run_store"), "--stats-out", str(root / "stats.json")]),
            ("slice", ["--run-dir", str(root / "run_slice"), "--slice-end", slice_end]),
        ):
            shutil.rmtree(root / f"run_{name}", ignore_errors=True)
            print(f"training on the {name} ...", flush=True)
            runs[name] = run_watched([*common, *extra, "--child", "store"])
        print("training from memory ...", flush=True)
        extra = ["--stats-in", str(root / "stats.json"), "--compare-with", str(root / "run_store")]
        runs["memory"] = run_watched([*common, *extra, "--child", "memory"])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    full, part, memory = runs["store"], runs["slice"], runs["memory"]
    print()
    print(f"{'':34} {'full store':>14} {'slice':>14} {'in memory':>14}")
    print(f"{'fields':34} {full['fields']:>14} {part['fields']:>14} {'(same batches)':>14}")
    for key, label in (
        ("peak_tree_rss", "peak RSS of the process tree"),
        ("sum_of_process_peaks", "sum of per-process peaks"),
    ):
        print(f"{label:34} {gib(full[key]):>14} {gib(part[key]):>14} {gib(memory[key]):>14}")
    print(f"{'processes in the tree':34} {full['processes']:>14} {part['processes']:>14} {memory['processes']:>14}")
    for key, label, form in (
        ("samples_per_second", "training samples/s", "{:.2f}"),
        ("data_wait_fraction", "data wait / step time", "{:.1%}"),
        ("seconds_per_step", "seconds per step", "{:.2f}"),
    ):
        print(f"{label:34} {form.format(full[key]):>14} {form.format(part[key]):>14} {form.format(memory[key]):>14}")
    print(f"{'prepare (statistics pass) s':34} {full['prepare_seconds']:>14.1f} {part['prepare_seconds']:>14.1f}")
    loads = [f"{run['load_before']:.1f}-{run['load_after']:.1f}" for run in (full, part, memory)]
    print(f"{'load average (1 min, before-after)':34} {loads[0]:>14} {loads[1]:>14} {loads[2]:>14}")
    difference = abs(full["peak_tree_rss"] - part["peak_tree_rss"]) / part["peak_tree_rss"]
    print()
    print(f"store on disk: {size / 1e9:.2f} GB ({args.times} fields)")
    print(f"peak RSS of the process tree, full store vs slice: differs by {difference:.1%}")
    print(f"samples/s from the store / from memory: {full['samples_per_second'] / memory['samples_per_second']:.2f}")
    print(f"the in-memory run ends with the store run's weights (same batches): {memory['same_weights_as_store_run']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
