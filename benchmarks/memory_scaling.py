"""Peak memory against the length of the record: ``diffscale train`` on a short and a long store of the same grid.

Writes two synthetic Zarr stores of t2m on the global 0.25 degree grid (721 x 1440, float32, one time per chunk,
no compression codec so that writing and reading cost little CPU), ``--short`` and ``--long`` hourly times, chunk
by chunk (a block of ``--block`` times in memory at once, never the whole array). Each field mixes two of a pool of
16 Gaussian random fields (:class:`diffscale.data.fields.GaussianRandomField`, correlation length 20 cells),
cos(a) f_i + sin(a) f_j, different at every time.

Then runs ``diffscale train`` as a child process on each store with the small configuration below (every other
data and training setting at its default: no ``data.stats_times``, ``training.num_workers`` at its default) and
watches the whole process tree (the command and any data loading workers): every 0.1 s the sum of VmRSS over the
tree, and at the end the largest of that sum, with the statistics rate the training log prints.

With ``--downscale`` it then downscales and evaluates a long coarse input: two regional fine stores of the same
0.25 degree spacing (``--region-size`` fine cells, ``--downscale-times`` short and long counts of times) are
coarsened by the run trained on the short store (``diffscale coarsen``), downscaled by it (``diffscale downscale``,
one member, 2 solver steps), the ensembles scored against the fine stores (``diffscale evaluate``, with
``--no-figures`` and, unless ``--skip-figures``, with its figures) and without them (``diffscale evaluate
--no-figures`` without ``--truth``: the truth-free checks against the coarse input the ensemble records), each
command watched the same way. The stores are deleted at the end
unless ``--keep``.

    python benchmarks/memory_scaling.py                          # 60 vs 6,000 times (25 GB on disk at most)
    python benchmarks/memory_scaling.py --short 20 --long 200    # a quick check of the pipeline
    python benchmarks/memory_scaling.py --height 181 --width 360 # a coarser grid (same count of chunks)
    python benchmarks/memory_scaling.py --long 0 --downscale     # train on 60 times; downscale, evaluate 96 vs 1536
    python benchmarks/memory_scaling.py --short 20 --long 0 --height 181 --width 360 --steps 4 --downscale
                                                                 # the same on a 1 degree grid (a few minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streaming import process_tree  # this folder's streaming benchmark: the same process-tree walk

ROOT = Path(__file__).resolve().parents[1]
POOL = 16
FIRST_TIME = "2000-01-01T00:00"
MEAN, STD = 280.0, 12.0


# -- the store ----------------------------------------------------------------------------------------------------
def write_store(
    path: Path,
    times: int,
    height: int,
    width: int,
    block: int = 16,
    seed: int = 0,
    origin: tuple[float, float] | None = None,
    spacing: float = 0.25,
) -> float:
    """A store of ``times`` fields of t2m on a global ``height`` x ``width`` grid (or, with ``origin`` (first
    latitude, first longitude), a regional one of ``spacing`` degrees), written ``block`` times at a time (one time
    per chunk, no codec); returns the seconds it took."""
    import dask.array as da
    import numpy as np
    import pandas as pd
    import torch
    import xarray as xr
    import zarr
    from streaming import fill_mixed  # this folder's streaming benchmark: the same mixture of fields

    from diffscale.data.fields import GaussianRandomField

    started = time.perf_counter()
    if origin is None:
        latitude, longitude = np.linspace(90.0, -90.0, height), np.arange(width) * (360.0 / width)
    else:
        latitude, longitude = origin[0] + spacing * np.arange(height), origin[1] + spacing * np.arange(width)
    template = xr.Dataset(
        {
            "t2m": (
                ("time", "latitude", "longitude"),
                da.zeros((times, height, width), chunks=(1, height, width), dtype=np.float32),
                {"units": "K", "long_name": "2 metre temperature"},
            )
        },
        coords={
            "time": pd.date_range(FIRST_TIME, periods=times, freq="h").values,
            "latitude": latitude,
            "longitude": longitude,
        },
    )
    encoding = {"t2m": {"compressors": None, "chunks": (1, height, width)}}
    template.to_zarr(path, mode="w", compute=False, consolidated=False, encoding=encoding, zarr_format=3)
    field = GaussianRandomField(1, height, width, length_scale=20.0, spectral_slope=4.0)
    pool = field.sample(POOL, torch.Generator().manual_seed(seed)).numpy()[:, 0]
    rng = np.random.default_rng(seed)
    fill_mixed(zarr.open_array(str(path / "t2m"), mode="r+"), pool, times, MEAN, STD, rng, block)
    return time.perf_counter() - started


def disk_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def training_config(store: Path, steps: int) -> dict[str, Any]:
    """The small configuration: DDPM++ with 8 channels, 64 x 64 patches, batch 4, every other setting default."""
    return {
        "diffusion": {"type": "EDM", "sigma_data": 1.0},
        "data": {"kind": "climate", "paths": [str(store)], "variables": ["t2m"], "patch": [64, 64]},
        "model": {"arch": "ddpmpp", "model_channels": 8},
        "training": {"steps": steps, "batch_size": 4, "device": "cpu", "tensorboard": False, "log_every": steps},
        "sampling": {"steps": 4},
    }


# -- watching a process tree --------------------------------------------------------------------------------------
def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_watched(argv: list[str], log: Path) -> dict[str, Any]:
    """Run a command (its output to ``log``), sampling the summed VmRSS of its process tree every 0.1 s."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak, processes = 0, set()
        while process.poll() is None:
            pids = process_tree(process.pid)
            processes.update(pids)
            peak = max(peak, sum(_rss(pid) for pid in pids))
            time.sleep(0.1)
    text = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:5])} failed ({process.returncode}):\n{text[-3000:]}")
    return {"peak": peak, "processes": len(processes), "seconds": time.perf_counter() - started, "log": text}


def statistics_rate(log: str) -> str:
    """The statistics line of a training log (times/s and MB/s)."""
    found = re.search(r"statistics of .*", log)
    return found.group(0) if found else "(no statistics line)"


# -- main ---------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", type=int, default=60, help="times in the short store (default 60)")
    parser.add_argument(
        "--long", type=int, default=6000, help="times in the long store (default 6000: 25 GB; 0: train on the short)"
    )
    parser.add_argument("--height", type=int, default=721)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--block", type=int, default=16, help="times written at once")
    parser.add_argument("--steps", type=int, default=12, help="training steps")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a new dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and runs")
    parser.add_argument("--reuse", action="store_true", help="reuse stores already in --dir")
    parser.add_argument("--downscale", action="store_true", help="also downscale and evaluate a long coarse input")
    parser.add_argument("--downscale-times", type=int, nargs=2, default=[96, 1536], metavar=("SHORT", "LONG"))
    parser.add_argument("--region-size", type=int, nargs=2, default=[32, 64], metavar=("H", "W"))
    parser.add_argument("--skip-figures", action="store_true", help="leave out diffscale evaluate with its figures")
    return parser.parse_args(argv)


def gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores ({model or platform.processor()}), {memory / 2**30:.0f} GiB, load {load:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import yaml

    root = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="diffscale-memory-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "diffscale"]
    results: dict[int, dict[str, Any]] = {}
    downscaling: dict[int, dict[str, Any]] = {}
    try:
        for times in (args.short, args.long) if args.long else (args.short,):
            store = root / f"t2m_{times}.zarr"
            if not (args.reuse and store.exists()):
                print(f"writing {times} times of {args.height} x {args.width} into {store} ...", flush=True)
                seconds = write_store(store, times, args.height, args.width, args.block)
                print(f"  {disk_bytes(store) / 1e9:.2f} GB in {seconds:.0f} s", flush=True)
            config = root / f"train_{times}.yaml"
            config.write_text(yaml.safe_dump(training_config(store, args.steps)))
            run = root / f"run_{times}"
            shutil.rmtree(run, ignore_errors=True)
            print(f"diffscale train on {times} times ...", flush=True)
            train = run_watched([*cli, "train", str(config), "--out", str(run), "--no-progress"], root / "train.log")
            results[times] = {"store": store, "run": run, "train": train, "rate": statistics_rate(train["log"])}
            print(f"  peak {gib(train['peak'])}, {train['seconds']:.0f} s; {results[times]['rate']}", flush=True)
        if args.downscale:
            run = results[args.short]["run"]
            for times in args.downscale_times:
                fine = root / f"region_{times}.zarr"
                write_store(fine, times, *args.region_size, args.block, 1, (0.0, 0.0), 360.0 / args.width)
                coarse, ensemble = root / f"coarse_{times}.nc", root / f"ensemble_{times}.nc"
                for path in (coarse, ensemble):
                    path.unlink(missing_ok=True)
                coarsened = run_watched(
                    [*cli, "coarsen", str(run), "--input", str(fine), "--out", str(coarse)], root / "coarsen.log"
                )
                print(f"downscaling {times} times ...", flush=True)
                options = ["--members", "1", "--steps", "2", "--out", str(ensemble), "--no-progress"]
                downscaled = run_watched(
                    [*cli, "downscale", str(run), "--input", str(coarse), *options], root / "ds.log"
                )
                print(f"evaluating {times} times ...", flush=True)
                options = ["--truth", str(fine), "--no-figures", "--out", str(root / f"report_{times}")]
                evaluated = run_watched([*cli, "evaluate", str(ensemble), *options], root / "evaluate.log")
                options = ["--no-figures", "--out", str(root / f"truth_free_{times}")]
                truth_free = run_watched([*cli, "evaluate", str(ensemble), *options], root / "evaluate.log")
                downscaling[times] = {
                    "coarsen": coarsened,
                    "downscale": downscaled,
                    "evaluate --no-figures": evaluated,
                    "evaluate --no-figures (no --truth)": truth_free,
                }
                if not args.skip_figures:
                    options = ["--truth", str(fine), "--out", str(root / f"figures_{times}")]
                    drawn = run_watched([*cli, "evaluate", str(ensemble), *options], root / "evaluate.log")
                    downscaling[times]["evaluate"] = drawn
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"machine: {machine()}")
    if args.long:
        train_table(args, results)
    if downscaling:
        downscaling_table(args, downscaling)
    return 0


def train_table(args: argparse.Namespace, results: dict[int, dict[str, Any]]) -> None:
    short, long = results[args.short], results[args.long]
    size = 4 * args.height * args.width
    print(
        f"settings: diffscale train, t2m on {args.height} x {args.width} float32 (one time per chunk, "
        f"{size / 1e6:.2f} MB a time), ddpmpp model_channels 8, patch 64 x 64, batch 4, {args.steps} steps, "
        "every other setting default"
    )
    print(f"{'':36} {args.short:>12} {args.long:>12}")
    print(f"{'data (GB)':36} {args.short * size / 1e9:>12.2f} {args.long * size / 1e9:>12.2f}")
    print(f"{'peak RSS of the process tree':36} {gib(short['train']['peak']):>12} {gib(long['train']['peak']):>12}")
    print(f"{'processes':36} {short['train']['processes']:>12} {long['train']['processes']:>12}")
    print(f"{'wall time (s)':36} {short['train']['seconds']:>12.0f} {long['train']['seconds']:>12.0f}")
    print(f"peak ratio long / short: {long['train']['peak'] / short['train']['peak']:.3f}")
    print(f"statistics ({args.short} times): {short['rate']}")
    print(f"statistics ({args.long} times): {long['rate']}")


def downscaling_table(args: argparse.Namespace, downscaling: dict[int, dict[str, Any]]) -> None:
    few, many = args.downscale_times
    height, width = args.region_size
    spacing = 360.0 / args.width
    print(f"downscaling and evaluation on a {height} x {width} region ({spacing:g} degree), 1 member, 2 steps")
    print(f"{'peak RSS of the process tree':46} {few:>12} {many:>12} {'ratio':>8}")
    for command in downscaling[few]:
        low, high = downscaling[few][command]["peak"], downscaling[many][command]["peak"]
        print(f"{'diffscale ' + command:46} {gib(low):>12} {gib(high):>12} {high / low:>8.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
