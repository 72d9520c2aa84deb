"""Throughput on an idle CPU and beside one busy process, with torch's default threads and with diffscale's policy.

Workloads (each measured in a fresh process, so that nothing carries over):

* ``mlp``: training steps/s of ``configs/mixture_1d_edm.yaml`` (MLP 128 x 3, batch 512);
* ``unet``: training steps/s of the ERA5 U-Net of ``configs/era5_uk.yaml`` (DDPM++, 0.69 M parameters, batch 16,
  1 + 8 channels of 32 x 48; random fields, no data files needed);
* ``sample``: network evaluations/s of the same U-Net in ``diffscale.sample`` (DPM-Solver++(2M), a batch of 64
  fields, the block size of ``diffscale downscale``).

Policies: ``default`` is torch's own thread count (one per core) kept fixed; ``auto`` is
:func:`diffscale.threads.thread_policy` (training through ``Trainer.run`` with ``training.threads: auto``,
sampling ticking the governor once per ``sample`` call). ``loaded`` runs beside ``python -c "while True: pass"``,
which the benchmark starts and stops itself. For each row it prints the throughput idle and loaded, the CPUs the
process used (its CPU time over the wall time; spinning counts), the requirement's ratio: loaded throughput per
CPU used over idle throughput per CPU used (1: each CPU it gets does as much as on an idle machine), and the
most CPUs that other users of the machine took during any of the row's runs (``background``: 0 on a quiet
machine). Nothing is asserted; figures vary with whatever else runs (``--repeats`` prints the spread).

    python benchmarks/contention.py                      # about 3 minutes on 2 cores
    python benchmarks/contention.py --workloads unet --policies auto --seconds 8 --repeats 3
    python benchmarks/contention.py --repeats 3 --quiet-below 0.3   # on a shared machine: wait for quiet spells
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("mlp", "unet", "sample")
POLICIES = ("default", "auto")
UNITS = {"mlp": "steps/s", "unet": "steps/s", "sample": "evals/s"}


class _EnoughError(Exception):
    """Raised by the training callback when the measuring time is over."""


def _timed(run: Callable[[Callable[[], bool]], None], seconds: float) -> dict[str, float]:
    """Calls ``run(tick)``; ``run`` calls ``tick()`` after each unit of work and stops when it returns False. The
    first unit is a warm-up; the rate and the CPUs used are those of the units after it (at least one)."""
    marks: list[tuple[float, float]] = []

    def tick() -> bool:
        marks.append((time.perf_counter(), _cpu_seconds()))
        return len(marks) < 3 or marks[-1][0] - marks[0][0] < seconds

    run(tick)
    (wall0, cpu0), (wall1, cpu1) = marks[0], marks[-1]
    wall = wall1 - wall0
    return {"units": len(marks) - 1, "rate": (len(marks) - 1) / wall, "cpus": (cpu1 - cpu0) / wall}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(workload: str, policy: str, seconds: float) -> dict[str, Any]:
    """One measurement in this process (see the module docstring)."""
    import torch

    from diffscale.config import load_config
    from diffscale.config.models import build_initial_model
    from diffscale.data.batch import Batch
    from diffscale.denoiser import PreconditionedDenoiser
    from diffscale.sampling import number_of_evaluations, sample
    from diffscale.threads import thread_policy
    from diffscale.training import Trainer

    default_threads = torch.get_num_threads()
    threads: int | str = "auto" if policy == "auto" else default_threads
    name = "mixture_1d_edm.yaml" if workload == "mlp" else "era5_uk.yaml"
    config = load_config(ROOT / "configs" / name, overrides=["training.device=cpu", f"training.threads={threads}"])
    shape = config.data_shape()
    network = build_initial_model(config.resolved_model(), shape, False, config.training.seed)
    denoiser = PreconditionedDenoiser(network, config.formulation())
    used: list[int] = []
    if workload in ("mlp", "unet"):
        if workload == "mlp":
            mixture = config.data.build()
            source: Callable[[int, torch.Generator], Any] = mixture.sample
        else:
            cond_channels = config.resolved_model().cond_channels

            def source(n: int, generator: torch.Generator) -> Batch:
                cond = torch.randn(n, cond_channels, *shape[1:], generator=generator)
                return Batch(torch.randn(n, *shape, generator=generator), {"cond_fields": cond})

        trainer = Trainer(denoiser, source, config.training)

        def train(tick: Callable[[], bool]) -> None:
            def callback(record: Any) -> None:
                used.append(torch.get_num_threads())
                if not tick():
                    raise _EnoughError

            with contextlib.suppress(_EnoughError):
                trainer.run(10**9, progress=False, callback=callback)

        result = _timed(train, seconds)
    else:
        settings = config.sampling.to_sampler_settings().model_dump()
        batch = 64
        noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
        cond = {"cond_fields": torch.randn(batch, config.resolved_model().cond_channels, *shape[1:])}
        denoiser.eval()

        def draw(tick: Callable[[], bool]) -> None:
            policy_block = thread_policy("auto") if policy == "auto" else contextlib.nullcontext()
            with policy_block as governor, torch.no_grad():
                while True:
                    if governor is not None:
                        governor.tick()
                    used.append(torch.get_num_threads())
                    sample(denoiser, noise, config.formulation(), **settings, cond=cond)
                    if not tick():
                        return

        result = _timed(draw, seconds)
        result["rate"] *= number_of_evaluations(settings["steps"], settings["solver"])
    return {**result, "threads": sorted(set(used)), "default_threads": default_threads}


def _own_and_children_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the worker and the busy loop)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _measure(workload: str, policy: str, loaded: bool, seconds: float) -> dict[str, Any]:
    """:func:`worker` in a fresh process, beside a busy process when ``loaded``; ``background`` is the CPUs that
    processes other than these used meanwhile (other users of the machine)."""
    from diffscale.threads import LoadProbe

    probe = LoadProbe(own_seconds=_own_and_children_seconds)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        if busy is not None:
            time.sleep(0.5)
        command = [sys.executable, __file__, "--worker", workload, policy, "--seconds", str(seconds)]
        env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    background = probe.busy_elsewhere()
    if done.returncode != 0:
        raise RuntimeError(f"{workload}/{policy} failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "background": background}


def _measure_when_quiet(workload: str, policy: str, loaded: bool, seconds: float, quiet: float | None) -> dict:
    """:func:`_measure`; with ``quiet``, first wait until other processes use less than ``quiet`` CPUs, and
    measure again (up to 5 times) when they used more during the run."""
    from diffscale.threads import LoadProbe

    for _ in range(5):
        while quiet is not None:
            probe = LoadProbe(own_seconds=_own_and_children_seconds)
            time.sleep(1.0)
            if (probe.busy_elsewhere() or 0.0) < quiet:
                break
        result = _measure(workload, policy, loaded, seconds)
        if quiet is None or (result["background"] or 0.0) < quiet:
            break
    return result


def _spread(values: list[float], digits: int = 1) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per run after one warm-up unit")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (median and range printed)")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=None,
        help="on a shared machine: run only while other processes use fewer CPUs than this (e.g. 0.3)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.seconds)))
        return

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpus} CPUs; loaded = beside one `python -c 'while True: pass'`; {args.seconds:g} s per run, "
          f"{args.repeats} run(s) per cell; CPUs = CPU time / wall time of the measured process")  # fmt: skip
    header = (f"{'workload':<8} {'policy':<8} {'idle':>22} {'CPUs':>5} {'threads':>7} | {'loaded':>22} {'CPUs':>5} "
              f"{'threads':>7} | {'per-CPU ratio':>13} | {'background':>10}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for workload in args.workloads:
        for policy in args.policies:
            runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for loaded in (False, True):  # interleaved, so that slow drifts of the machine hit both
                    runs[loaded].append(_measure_when_quiet(workload, policy, loaded, args.seconds, args.quiet_below))
            cells = []
            for loaded in (False, True):
                rates = [run["rate"] for run in runs[loaded]]
                used = [run["cpus"] for run in runs[loaded]]
                threads = sorted({t for run in runs[loaded] for t in run["threads"]})
                rate = f"{_spread(rates, 2)} {UNITS[workload]}"
                cells.append(f"{rate:>22} {statistics.median(used):5.2f} {','.join(map(str, threads)):>7}")
            ratios = [
                (loaded["rate"] / loaded["cpus"]) / (idle["rate"] / idle["cpus"])
                for idle, loaded in zip(runs[False], runs[True], strict=True)
            ]
            background = max((run["background"] or 0.0) for run in runs[False] + runs[True])
            print(f"{workload:<8} {policy:<8} {cells[0]} | {cells[1]} | {_spread(ratios, 2):>13} | "
                  f"{background:10.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
