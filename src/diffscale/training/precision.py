"""Mixed precision: autocast to bf16/fp16 around the forward pass, and for fp16 a dynamic gradient scaler.

With fp16 the loss is multiplied by a scale S before the backward pass, so that small gradients do not
underflow; the gradients are divided by S again before clipping and the optimiser step. A step whose
unscaled gradients are not finite is skipped and S is halved; after ``growth_interval`` finite steps S is
doubled (torch's :class:`torch.amp.GradScaler`). bf16 has fp32's exponent range and needs no scaler.

bf16 on a CPU is only fast where the CPU computes in bf16 (AVX512_BF16 or AMX-BF16 instructions). Elsewhere
torch emulates it. Measured with the ERA5 U-Net (0.69 M parameters, batch 16, 32 x 48, one thread) on a Xeon with
AMX whose instruction sets were capped through oneDNN (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY): with bf16
instructions a bf16 training step took 1.1 s against 1.2 s in fp32; with AVX-512 but no bf16 instructions (oneDNN
converts to fp32 inside its kernels) 3.8 s against 1.3 s; with AVX2 only (e.g. an AMD EPYC before Zen 4; torch then
falls back to reference loops) 14 s against 1.5 s, and one full-size DDPM++ step did not finish in 10 minutes
where fp32 took 26 s. :func:`resolve_precision` therefore refuses bf16 on a CPU without bf16 instructions or
oneDNN's emulation, warns where it is emulated, and resolves ``auto`` to the fastest safe choice: bf16 on a CUDA
device that computes in it (compute capability 8.0 or newer) and on a CPU with bf16 instructions, else fp32
(fp16 needs a gradient scaler and is never chosen automatically).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffscale.validation import ConfigError

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "CpuBf16", "MixedPrecision", "cpu_bf16", "resolve_precision"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
"""What ``training.precision`` accepts: ``auto`` or one of :data:`PRECISIONS`."""

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""CPU flags (Linux /proc/cpuinfo) of bf16 arithmetic: x86 AVX512_BF16 and AMX-BF16, Arm's BF16 extension."""


@dataclass(frozen=True)
class CpuBf16:
    """What a CPU does with bf16: ``native`` (bf16 instructions), ``emulated`` by oneDNN through fp32 (slower than
    fp32), or neither (reference loops, orders of magnitude slower); ``capability`` is torch's name for the CPU's
    vector instructions (``torch.backends.cpu.get_cpu_capability()``, e.g. AVX2 or AVX512)."""

    capability: str
    native: bool
    emulated: bool


@functools.cache
def cpu_bf16() -> CpuBf16:
    """How this CPU runs bf16 (see :class:`CpuBf16`), from torch's and the kernel's view of its instructions."""
    capability = str(torch.backends.cpu.get_cpu_capability())
    native = (
        _probe("_is_avx512_bf16_supported")
        or _probe("_is_amx_tile_supported")
        or bool(_cpuinfo_flags() & NATIVE_BF16_FLAGS)
    )
    emulated = False
    if not native:
        try:
            emulated = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            emulated = False
    return CpuBf16(capability=capability, native=native, emulated=emulated)


def _probe(name: str) -> bool:
    """``torch.cpu.<name>()`` (private instruction probes of torch >= 2.3), False where it is missing."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (x86 ``flags``, Arm ``Features``) from /proc/cpuinfo; empty elsewhere."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return frozenset(value.split())
    return frozenset()


def _cuda_bf16(device: torch.device) -> tuple[bool, bool]:
    """(bf16 runs, bf16 is computed natively: compute capability >= 8.0) on the CUDA ``device``."""
    if not torch.cuda.is_available():
        return False, False
    return bool(torch.cuda.is_bf16_supported()), torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(
    precision: str,
    device: torch.device,
    *,
    cpu: CpuBf16 | None = None,
    cuda_bf16: tuple[bool, bool] | None = None,
) -> str:
    """The precision to train in: ``precision`` itself, or for ``auto`` bf16 where the device computes in bf16
    (a CUDA device of compute capability >= 8.0, a CPU with bf16 instructions) and fp32 elsewhere.

    Raises ConfigError for fp16 off CUDA and for bf16 where the device cannot run it at a usable speed (a CUDA
    device without bf16; a CPU without bf16 instructions or oneDNN's emulation); warns for bf16 on a CPU that
    emulates it. ``cpu`` and ``cuda_bf16`` ((runs, native), see :func:`_cuda_bf16`) replace the device's own
    answers (for tests).
    """
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"training.precision = {precision!r}: allowed: {', '.join(PRECISION_CHOICES)}")
    if precision in ("fp32", "fp16"):
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"training.precision = 'fp16': needs a CUDA device (training on {device.type}); use bf16 or fp32"
            )
        return precision
    if device.type == "cuda":
        supported, native = _cuda_bf16(device) if cuda_bf16 is None else cuda_bf16
        if precision == "auto":
            return "bf16" if native else "fp32"
        if not supported:
            raise ConfigError("training.precision = 'bf16': not supported on this CUDA device; use fp32 or auto")
        return "bf16"
    if device.type != "cpu":
        if precision == "auto":
            return "fp32"
        raise ConfigError(f"training.precision = 'bf16': not supported on {device.type}; use fp32 or auto")
    cpu = cpu_bf16() if cpu is None else cpu
    if precision == "auto":
        return "bf16" if cpu.native else "fp32"
    if cpu.native:
        return "bf16"
    if cpu.emulated:
        warnings.warn(
            f"training.precision = 'bf16': this CPU ({cpu.capability}) has no bf16 instructions and emulates "
            "them, about 3 times slower than fp32; use fp32 or auto",
            RuntimeWarning,
            stacklevel=2,
        )
        return "bf16"
    raise ConfigError(
        f"training.precision = 'bf16': this CPU (torch reports {cpu.capability}) has no bf16 instructions and "
        "torch would emulate them 10 to 25 times slower than fp32; use fp32 or auto"
    )


class MixedPrecision:
    """Autocast and (fp16 only) gradient scaling for ``precision`` (resolved by :func:`resolve_precision`:
    ``auto`` becomes bf16 or fp32) on ``device``.

    Raises ConfigError for fp16 off CUDA and bf16 where the device cannot run it.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.requested = precision
        precision = resolve_precision(precision, device)
        self.precision = precision
        self.device = device
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass in ``self.dtype`` where autocast allows it (a no-op for fp32)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.precision != "fp32"):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """d(S loss)/d theta (S = 1 without a scaler)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by S (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, take: bool) -> None:
        """The optimiser step when ``take`` (finite loss and gradients), then the scaler's update of S."""
        if take:
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (JSON-able: scale, growth tracker, factors), or None without a scaler."""
        if self.scaler is None:
            return None
        return dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s output (ignored without a scaler)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))
