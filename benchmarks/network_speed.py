"""Speed of the U-Net presets: training samples/s and sampling evaluations/s, with peak memory.

For each preset (ddpmpp, ncsnpp, adm) at 32 x 32 with batch 16, in four modes measured side by side in
one run: float32 eager, bf16 autocast, channels_last (float32) and channels_last + bf16 autocast. A
training step is EDM's loss (a PreconditionedDenoiser around the network, DenoisingLoss) with backward and
an Adam step; a sampling evaluation is one no-grad call of the denoiser on a batch. Ratios are relative to
float32 eager of the same preset in the same run. It also trains DDPM++ for a few steps from one
initialisation on the same batches in float32 and in bf16 and prints both loss trajectories.

Runs on the GPU when one is available (``--device``), else on the CPU. Never asserts on time.

    python benchmarks/network_speed.py            # full-size presets, a few steps each (minutes on 2 cores)
    python benchmarks/network_speed.py --quick    # reduced channel counts (seconds)

With ``--edm DIR`` (a checkout of NVlabs/edm) it instead compares training steps of edm's DDPM++ CIFAR-10 network
(55.7 M parameters, fp32, its loss and Adam) with diffscale's same-size DDPM++ in one process, rounds interleaved
so that other load on the machine hits every setting alike: edm fp32; diffscale fp32 as before (contiguous,
per-parameter Adam); diffscale fp32 with the training defaults (channels_last on a CPU, foreach/fused Adam);
diffscale with ``precision: auto`` (bf16 autocast where the CPU has bf16 instructions). ``--compile`` adds the
last setting under ``torch.compile`` with its compile time and the steps after which it has paid for itself.
It prints the CPU's name and whether it has AVX-512, bf16 instructions and AMX.

    python benchmarks/network_speed.py --edm ../edm --rounds 3 --compile   # many minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import diffscale
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.networks.presets import build_network
from diffscale.networks.unet_base import count_parameters
from diffscale.training.loop import build_optimizer, use_channels_last
from diffscale.training.precision import MixedPrecision, cpu_bf16
from diffscale.training.settings import TrainingSettings

MODES = ("float32", "bf16", "channels_last", "channels_last+bf16")
NETWORK_OPTIONS = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "augment_dim", "dropout")
"""edm's DDPM++ options that diffscale's ``ddpmpp`` preset takes under the same names (the rest are its defaults)."""


@dataclass
class Measurement:
    """Throughputs and peak memory of one preset in one mode."""

    train_samples_per_s: float
    eval_samples_per_s: float
    train_peak_mib: float
    eval_peak_mib: float


def _resident_mib() -> float:
    """The current resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_mib(device: torch.device, baseline_mib: float) -> float:
    """Peak memory since the baseline: CUDA's allocator high-water mark, or the process's peak resident set
    size (ru_maxrss, a high-water mark: each preset and mode runs in its own process for this)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_mib


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager[Any]:
    if "bf16" in mode:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seconds_per_call(step: Callable[[], None], warmup: int, repeats: int, device: torch.device) -> float:
    """The fastest of ``repeats`` timed calls after ``warmup`` untimed ones (the best of several calls is
    the least disturbed by other processes on shared cores)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _synchronise(device)
        start = time.perf_counter()
        step()
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return min(times)


def smooth_fields(count: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random smooth periodic fields (sums of low-wavenumber waves), a stand-in for data."""
    grid = torch.arange(size) * (2 * math.pi / size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    fields = torch.zeros(count, channels, size, size)
    for _ in range(4):
        kx, ky = torch.randint(0, 4, (2, count, channels, 1, 1), generator=generator).float()
        phase = torch.rand(count, channels, 1, 1, generator=generator) * 2 * math.pi
        fields += torch.cos(kx * xx + ky * yy + phase) / 2
    return fields


def _network(arch: str, args: argparse.Namespace, **extra: Any) -> torch.nn.Module:
    options: dict[str, Any] = {"in_channels": 3, "img_resolution": args.resolution, **extra}
    if arch == "adm":
        options["attn_resolutions"] = tuple(args.resolution >> level for level in (1, 2, 3))
    if args.model_channels:
        options["model_channels"] = args.model_channels
        if arch == "adm":
            options["channels_per_head"] = max(8, args.model_channels // 3)
    if args.num_blocks:
        options["num_blocks"] = args.num_blocks
    return build_network(arch, **options)


def measure(arch: str, mode: str, args: argparse.Namespace) -> Measurement:
    """Sampling, then training throughput of one preset in one mode, with the peak memory of each phase."""
    device = torch.device(args.device)
    baseline = _resident_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    memory_format = torch.channels_last if "channels_last" in mode else torch.contiguous_format
    network = _network(arch, args).to(device, memory_format=memory_format)
    f = diffscale.formulation("EDM", sigma_data=0.5)
    denoiser = PreconditionedDenoiser(network, f)
    generator = torch.Generator().manual_seed(0)
    batch = smooth_fields(args.batch, 3, args.resolution, generator).to(device, memory_format=memory_format)

    network.eval()
    sigma = torch.full((args.batch,), 2.0, device=device)
    noisy = (batch + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(batch)).contiguous(memory_format=memory_format)

    def eval_step() -> None:
        with torch.inference_mode(), _autocast(device, mode):
            denoiser(noisy, sigma)

    eval_seconds = _seconds_per_call(eval_step, args.warmup, args.evals, device)
    eval_peak = _peak_mib(device, baseline)

    network.train()
    loss = diffscale.DenoisingLoss(f)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, mode):
            value = loss(denoiser, batch).mean
        value.backward()
        optimizer.step()

    train_seconds = _seconds_per_call(train_step, args.warmup, args.steps, device)
    train_peak = _peak_mib(device, baseline)
    return Measurement(args.batch / train_seconds, args.batch / eval_seconds, train_peak, eval_peak)


def _measure_in_child(arch: str, mode: str, args: argparse.Namespace, results: Any) -> None:
    with _threads(args.threads):
        results.put(measure(arch, mode, args))


def measure_isolated(arch: str, mode: str, args: argparse.Namespace) -> Measurement:
    """:func:`measure` in a fresh process, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_measure_in_child, args=(arch, mode, args, results))
    process.start()
    result = results.get()
    process.join()
    return result


def loss_trajectories(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """DDPM++ trained from one initialisation on identical batches, sigmas and noise in float32 and in
    channels_last + bf16 autocast."""
    trajectories: dict[str, list[float]] = {}
    for mode in ("float32", "channels_last+bf16"):
        torch.manual_seed(1)
        network = _network("ddpmpp", args, dropout=0.0).to(device)  # no dropout: identical computations
        memory_format = torch.channels_last if "channels_last" in mode else torch.contiguous_format
        network = network.to(memory_format=memory_format).train()
        f = diffscale.formulation("EDM", sigma_data=0.5)
        denoiser = PreconditionedDenoiser(network, f)
        optimizer = torch.optim.Adam(network.parameters(), lr=2e-4)
        data_generator, noise_generator = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
        values = []
        for _ in range(args.loss_steps):
            batch = smooth_fields(args.batch, 3, args.resolution, data_generator)
            batch = batch.to(device, memory_format=memory_format)
            # sigma and n come from a CPU generator, so both runs see the same draws on any device.
            sigma = f.sample_sigma(args.batch, noise_generator).to(device)
            noise = torch.randn(batch.shape, generator=noise_generator).to(device, memory_format=memory_format)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, mode):
                denoised = denoiser(batch + sigma.reshape(-1, 1, 1, 1) * noise, sigma)
            error = (denoised.float() - batch).square().mean(dim=(1, 2, 3))
            value = (f.loss_weight(sigma) * error).mean()
            value.backward()
            optimizer.step()
            values.append(float(value.detach()))
        trajectories[mode] = values
    return trajectories


def cpu_description() -> str:
    """The CPU's model name and whether it has AVX-512, bf16 instructions (AVX512_BF16) and AMX (Linux)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass

    def has(*names: str) -> str:
        return "yes" if flags & set(names) else "no"

    return (
        f"{name}, {os.cpu_count()} logical CPUs; AVX-512 {has('avx512f')}, bf16 instructions "
        f"{has('avx512_bf16', 'amx_bf16')}, AMX {has('amx_tile')}; torch sees {cpu_bf16().capability}"
    )


@dataclass
class _Setting:
    """One side of the edm comparison: a name and a training step (closure over its network and optimizer)."""

    name: str
    step: Callable[[], None]
    times: list[float]
    parameters: int = 0


def _ddpmpp_options(args: argparse.Namespace) -> dict[str, Any]:
    """edm's CIFAR-10 DDPM++ options, with ``--model-channels``/``--num-blocks`` (quick checks) on both sides."""
    from benchmarks.peers.edm_network import CIFAR_DDPMPP

    options = dict(CIFAR_DDPMPP)
    if args.model_channels:
        options["model_channels"] = args.model_channels
    if args.num_blocks:
        options["num_blocks"] = args.num_blocks
    return options


def _edm_setting(module: Any, images: torch.Tensor, options: dict[str, Any]) -> _Setting:
    from benchmarks.peers.edm_network import edm_training_step

    torch.manual_seed(0)
    network = module.EDMPrecond(img_resolution=images.shape[-1], img_channels=images.shape[1], **options)
    network = network.to(images.device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    step = lambda: edm_training_step(network, optimizer, images)  # noqa: E731
    return _Setting("edm fp32", step, [], count_parameters(network))


def _diffscale_setting(
    name: str, images: torch.Tensor, options: dict[str, Any], *, precision: str, defaults: bool, compiled: bool = False
) -> _Setting:
    """diffscale's DDPM++ of the same size in a training step as the Trainer takes it (EDM loss, backward, Adam):
    with ``defaults`` the training defaults (channels_last on a CPU, foreach/fused Adam), else contiguous weights
    and torch's per-parameter Adam (what training did before)."""
    device = images.device
    torch.manual_seed(0)
    network = build_network(
        "ddpmpp",
        in_channels=images.shape[1],
        img_resolution=images.shape[-1],
        **{key: options[key] for key in NETWORK_OPTIONS},
    )
    f = diffscale.formulation("EDM", sigma_data=0.5)
    denoiser = PreconditionedDenoiser(network, f).to(device).train()
    mixed = MixedPrecision(precision, device)
    settings = TrainingSettings(learning_rate=1e-4, precision=precision, device=str(device))
    if defaults:
        if use_channels_last(settings.channels_last, device, mixed.precision):
            denoiser = denoiser.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(denoiser.parameters(), settings, device)
    else:
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4, foreach=False)
    if compiled:
        denoiser.compile()
    loss = diffscale.DenoisingLoss(f)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with mixed.autocast():
            value = loss(denoiser, images).mean
        value.backward()
        optimizer.step()

    return _Setting(name, step, [], count_parameters(denoiser))


def compare_with_edm(args: argparse.Namespace) -> None:
    """Training steps of edm's DDPM++ and of diffscale's in several settings, interleaved round by round; prints
    samples/s (the fastest of each setting's timed steps) and the ratio to edm fp32."""
    from benchmarks.peers.edm_network import edm_networks

    device = torch.device(args.device)
    module = edm_networks(args.edm)
    images = smooth_fields(args.batch, 3, args.resolution, torch.Generator().manual_seed(0)).to(device)
    best = MixedPrecision("auto", device).precision
    options = _ddpmpp_options(args)
    settings = [
        _edm_setting(module, images, options),
        _diffscale_setting("diffscale fp32, before", images, options, precision="fp32", defaults=False),
        _diffscale_setting("diffscale fp32", images, options, precision="fp32", defaults=True),
        _diffscale_setting(f"diffscale auto ({best})", images, options, precision="auto", defaults=True),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    print(f"training step, edm vs diffscale DDPM++ (CIFAR-10 configuration, {settings[0].parameters / 1e6:.1f} M "
          f"parameters each: edm {settings[0].parameters}, diffscale {settings[1].parameters}), batch {args.batch}, "
          f"{args.resolution} x {args.resolution}; {where}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average {load:.1f}")  # fmt: skip
    for setting in settings:  # untimed warm-up steps
        for _ in range(args.warmup):
            setting.step()
    for _ in range(args.rounds):
        for setting in settings:
            _synchronise(device)
            started = time.perf_counter()
            setting.step()
            _synchronise(device)
            setting.times.append(time.perf_counter() - started)
    reference = args.batch / min(settings[0].times)
    print(f"{'setting':28} {'samples/s':>10} {'x edm':>7}   seconds per step (each round)")
    for setting in settings:
        rate = args.batch / min(setting.times)
        rounds = " ".join(f"{seconds:.2f}" for seconds in setting.times)
        print(f"{setting.name:28} {rate:10.3f} {rate / reference:7.2f}   {rounds}")
    if args.compile:
        _compiled_row(args, images, options, best, reference, min(settings[-1].times))
    print("(samples/s: batch / fastest timed step; every setting stepped once per round, in turn)")


def _compiled_row(
    args: argparse.Namespace, images: torch.Tensor, options: dict[str, Any], best: str, reference: float, eager: float
) -> None:
    """The best setting under torch.compile: compile time (first step minus a compiled step) and break-even."""
    device = images.device
    name = f"diffscale auto ({best}) compiled"
    try:
        setting = _diffscale_setting(name, images, options, precision="auto", defaults=True, compiled=True)
        _synchronise(device)
        started = time.perf_counter()
        setting.step()
        _synchronise(device)
        first = time.perf_counter() - started
        for _ in range(max(args.rounds, 2)):
            _synchronise(device)
            started = time.perf_counter()
            setting.step()
            _synchronise(device)
            setting.times.append(time.perf_counter() - started)
    except Exception as error:  # the toolchain's failure is the result to print
        print(f"{name}: torch.compile failed here: {type(error).__name__}: {str(error).strip().splitlines()[0]}")
        return
    compiled = min(setting.times)
    rate = args.batch / compiled
    overhead = first - compiled
    gain = eager - compiled
    breakeven = f"{math.ceil(overhead / gain)} steps" if gain > 0 else "never (no faster than eager)"
    rounds = " ".join(f"{seconds:.2f}" for seconds in setting.times)
    print(f"{name:28} {rate:10.3f} {rate / reference:7.2f}   {rounds}")
    print(f"  compile: first step {first:.1f} s, i.e. {overhead:.1f} s of compiling; {gain:+.2f} s per step against "
          f"eager ({eager:.2f} s); pays for itself after {breakeven}")  # fmt: skip


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced networks (32 channels, 2 blocks), fewer steps")
    parser.add_argument("--presets", nargs="+", default=["ddpmpp", "ncsnpp", "adm"], help="presets to measure")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="modes to measure")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--resolution", type=int, default=32, help="grid size (square)")
    parser.add_argument("--model-channels", type=int, default=None, help="override model_channels of every preset")
    parser.add_argument("--num-blocks", type=int, default=None, help="override num_blocks of every preset")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per mode")
    parser.add_argument("--evals", type=int, default=None, help="timed sampling evaluations per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--loss-steps", type=int, default=None, help="steps of the float32-vs-bf16 loss comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--edm", default=None, help="a checkout of NVlabs/edm: compare training steps with its DDPM++")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the edm comparison")
    parser.add_argument("--compile", action="store_true", help="edm comparison: also the best setting compiled")
    args = parser.parse_args(argv)
    if args.quick:
        args.model_channels = args.model_channels or 32
        args.num_blocks = args.num_blocks or 2
    args.steps = args.steps or (4 if args.quick else 2)
    args.evals = args.evals or (8 if args.quick else 3)
    args.loss_steps = args.loss_steps if args.loss_steps is not None else (40 if args.quick else 8)
    return args


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    device = torch.device(args.device)
    if args.edm is not None:
        with _threads(args.threads):
            compare_with_edm(args)
        return
    with _threads(args.threads):
        where = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        )
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"network speed on {where}; torch {torch.__version__}; batch {args.batch}; "
            f"{args.resolution} x {args.resolution}; load average {load:.1f}"
        )
        header = f"{'preset':8} {'params':>8} {'mode':20} {'train/s':>9} {'x f32':>6} {'evals/s':>9} {'x f32':>6} "
        print(header + f"{'train MiB':>10} {'eval MiB':>9}")
        for arch in args.presets:
            parameters = count_parameters(_network(arch, args)) / 1e6
            results = {mode: measure_isolated(arch, mode, args) for mode in args.modes}
            base = results.get("float32")
            for mode, result in results.items():
                train_ratio = result.train_samples_per_s / base.train_samples_per_s if base else float("nan")
                eval_ratio = result.eval_samples_per_s / base.eval_samples_per_s if base else float("nan")
                print(
                    f"{arch:8} {parameters:7.2f}M {mode:20} {result.train_samples_per_s:9.2f} {train_ratio:6.2f} "
                    f"{result.eval_samples_per_s:9.2f} {eval_ratio:6.2f} {result.train_peak_mib:10.0f} "
                    f"{result.eval_peak_mib:9.0f}"
                )
        print(
            "(train/s: training samples per second, Adam step included; evals/s: denoiser evaluations of one sample"
            " per second; best of the timed calls; MiB: peak memory above the process's start, each preset and"
            " mode in its own process)"
        )
        if args.loss_steps:
            trajectories = loss_trajectories(args, device)
            reference, low = trajectories["float32"], trajectories["channels_last+bf16"]
            relative = [abs(b - a) / a for a, b in zip(reference, low, strict=True)]
            print(
                f"ddpmpp loss, float32 vs channels_last+bf16, same init, batches, sigma and noise ({len(low)} steps):"
            )
            every = max(1, len(low) // 10)
            for step in range(0, len(low), every):
                print(
                    f"  step {step:3d}  float32 {reference[step]:9.4f}  bf16 {low[step]:9.4f}  "
                    f"relative difference {relative[step]:7.4f}"
                )
            print(f"  largest relative difference over all steps: {max(relative):.4f}")


if __name__ == "__main__":
    main()
