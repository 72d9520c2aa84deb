"""Resolution of training.precision: auto, and bf16 refused or warned about where the device lacks it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from diffscale.training.precision import CpuBf16, MixedPrecision, _cpuinfo_flags, resolve_precision
from diffscale.validation import ConfigError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
AMX = CpuBf16(capability="AVX512", native=True, emulated=False)
SKYLAKE = CpuBf16(capability="AVX512", native=False, emulated=True)
EPYC_AVX2 = CpuBf16(capability="AVX2", native=False, emulated=False)


@pytest.mark.parametrize(("cpu", "expected"), [(AMX, "bf16"), (SKYLAKE, "fp32"), (EPYC_AVX2, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_bf16_instructions(cpu: CpuBf16, expected: str) -> None:
    assert resolve_precision("auto", CPU, cpu=cpu) == expected


@pytest.mark.parametrize(
    ("cuda_bf16", "expected"), [((True, True), "bf16"), ((True, False), "fp32"), ((False, False), "fp32")]
)
def test_auto_on_cuda_is_bf16_where_the_device_computes_in_it(cuda_bf16: tuple[bool, bool], expected: str) -> None:
    """(runs bf16, natively): a compute capability 7.x GPU runs bf16 only by emulation, so auto keeps fp32."""
    assert resolve_precision("auto", CUDA, cuda_bf16=cuda_bf16) == expected


def test_explicit_bf16_on_a_cpu_without_bf16_or_its_emulation_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_precision("bf16", CPU, cpu=EPYC_AVX2)
    message = str(error.value)
    assert "\n" not in message
    assert "training.precision = 'bf16'" in message and "AVX2" in message and "use fp32 or auto" in message


def test_explicit_bf16_on_a_cpu_that_emulates_it_warns_and_is_kept() -> None:
    with pytest.warns(RuntimeWarning, match="emulates them, about 3 times slower than fp32; use fp32 or auto"):
        assert resolve_precision("bf16", CPU, cpu=SKYLAKE) == "bf16"


def test_explicit_bf16_with_bf16_instructions_is_kept_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU, cpu=AMX) == "bf16"


def test_bf16_on_a_cuda_device_without_it_is_refused() -> None:
    with pytest.raises(ConfigError, match="not supported on this CUDA device; use fp32 or auto"):
        resolve_precision("bf16", CUDA, cuda_bf16=(False, False))
    assert resolve_precision("bf16", CUDA, cuda_bf16=(True, False)) == "bf16"


@pytest.mark.parametrize("cpu", [AMX, SKYLAKE, EPYC_AVX2])
def test_fp32_is_always_fp32_and_fp16_needs_cuda(cpu: CpuBf16) -> None:
    assert resolve_precision("fp32", CPU, cpu=cpu) == "fp32"
    assert resolve_precision("fp16", CUDA, cuda_bf16=(False, False)) == "fp16"
    with pytest.raises(ConfigError, match="'fp16': needs a CUDA device"):
        resolve_precision("fp16", CPU, cpu=cpu)


def test_an_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="allowed: auto, fp32, bf16, fp16"):
        resolve_precision("fp8", CPU, cpu=AMX)


def test_cpuinfo_flags_of_x86_and_arm(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n")
    assert _cpuinfo_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_tile"}
    assert "bf16" in _cpuinfo_flags(arm)
    assert _cpuinfo_flags(tmp_path / "missing") == frozenset()


def test_mixed_precision_keeps_what_was_asked_and_what_it_resolved_to() -> None:
    mixed = MixedPrecision("auto", CPU)
    assert mixed.requested == "auto" and mixed.precision in ("bf16", "fp32")
    assert mixed.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[mixed.precision]
    assert mixed.scaler is None
