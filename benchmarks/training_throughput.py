"""Training throughput of diffscale's Trainer on 1 and 2 CPU processes (gloo DistributedDataParallel).

A fixed small configuration: EDM with a DDPM++ U-Net (m = 16, levels 16 x 24 and 8 x 12, attention at 8)
on 16 x 24 Gaussian random fields, global batch 32, fp32, one intra-op thread per process. Each run takes
``--warmup`` untimed steps and then ``--steps`` timed optimiser steps (the global batch is the same whatever
the process count, so 2 processes each compute half of it). Printed per process count: samples/s (global
batch x steps / wall time of the timed steps, the slowest rank), seconds per step and the peak resident memory
of each process (max RSS; on CUDA also the peak allocated GPU memory). Nothing is written to disk; nothing is
asserted.

    python benchmarks/training_throughput.py                 # 1 and 2 processes
    python benchmarks/training_throughput.py --steps 20 --processes 1 2 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CONFIG: dict[str, Any] = {
    "diffusion": {"type": "EDM", "sigma_data": 1.0},
    "model": {
        "arch": "ddpmpp",
        "model_channels": 16,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "img_resolution": 16,
        "attn_resolutions": [8],
        "dropout": 0.0,
    },
    "data": {"kind": "gaussian_fields", "channels": 1, "height": 16, "width": 24, "length_scale": 3.0},
    "training": {"batch_size": 32, "device": "cpu", "warmup_steps": 10, "tensorboard": False},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, args: argparse.Namespace, results: Any) -> None:
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)}
    os.environ.update({**environment, "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(args.threads)
    from diffscale.config import config_from_dict
    from diffscale.runs import prepare_training
    from diffscale.training.distributed import init_distributed, shutdown_distributed

    config = config_from_dict(
        {**CONFIG, "training": {**CONFIG["training"], "batch_size": args.batch_size, "steps": 10**6}}
    )
    context, device = init_distributed(args.device)
    plan = prepare_training(config, "unused-benchmark-run", distributed=context, device=device)
    trainer = plan.trainer
    for _ in range(args.warmup):
        trainer.train_step()
    if context.enabled:
        dist.barrier()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    seconds = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda" else 0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    results.put((rank, seconds, rss_mib, gpu_peak / 2**20, plan.summary))
    shutdown_distributed()


def measure(world_size: int, args: argparse.Namespace) -> list[tuple[int, float, float, float, str]]:
    """Run ``world_size`` processes; one (rank, seconds, peak RSS MiB, peak GPU MiB, summary) per rank."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_worker, args=(rank, world_size, port, args, results)) for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    rows = [results.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a benchmark process exited with status {process.exitcode}")
    return sorted(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; {os.cpu_count()} CPU cores; global batch {args.batch_size}, {args.steps} timed "
          f"steps after {args.warmup}, {args.threads} thread(s) per process, device {args.device}")  # fmt: skip
    for world_size in args.processes:
        rows = measure(world_size, args)
        if world_size == args.processes[0]:
            print(rows[0][4])
        seconds = max(row[1] for row in rows)
        rate = args.batch_size * args.steps / seconds
        memory = ", ".join(f"rank {rank}: {rss:.0f} MiB" + (f" (GPU {gpu:.0f} MiB)" if gpu else "")
                           for rank, _, rss, gpu, _ in rows)  # fmt: skip
        print(f"{world_size} process(es): {rate:8.1f} samples/s, {seconds / args.steps * 1000:7.1f} ms/step; "
              f"peak memory {memory}")  # fmt: skip


if __name__ == "__main__":
    main()
