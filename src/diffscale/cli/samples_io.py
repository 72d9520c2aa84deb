"""Writing samples to a file chosen by its extension: ``.npy``, ``.csv`` or ``.safetensors``.

``.npy`` and ``.safetensors`` keep the shape of the samples, (N, D) for vectors or (N, C, H, W) for fields;
``.csv`` writes one row per sample with its values flattened in C order (columns x0, x1, ...).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from diffscale.training.checkpoint import atomic_write_bytes
from diffscale.validation import ConfigError

__all__ = ["SAMPLES_KEY", "SAMPLE_FORMATS", "check_sample_path", "write_samples"]

SAMPLE_FORMATS: tuple[str, ...] = (".npy", ".csv", ".safetensors")
SAMPLES_KEY = "samples"
"""The tensor name in a ``.safetensors`` samples file."""


def check_sample_path(path: str | Path, option: str = "--out") -> Path:
    """``path`` if its extension names a known format and it is not a directory; ConfigError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in SAMPLE_FORMATS:
        raise ConfigError(
            f"{option} = '{path}': unknown sample file type {path.suffix or '(none)'!r}; "
            f"allowed: {', '.join(SAMPLE_FORMATS)}"
        )
    if path.is_dir():
        raise ConfigError(f"{option} = '{path}': is a directory; give a file name")
    return path


def _encode(path: Path, samples: torch.Tensor) -> bytes:
    array = samples.detach().cpu().numpy()
    suffix = path.suffix.lower()
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    if suffix == ".csv":
        text = io.StringIO()
        rows = array.reshape(array.shape[0], -1)
        header = ",".join(f"x{index}" for index in range(rows.shape[1]))
        np.savetxt(text, rows, delimiter=",", header=header, comments="", fmt="%.9g")
        return text.getvalue().encode("utf-8")
    return safetensors.torch.save({SAMPLES_KEY: samples.detach().cpu().contiguous()})


def write_samples(path: str | Path, samples: torch.Tensor) -> Path:
    """Write ``samples`` ((N, D) or (N, C, H, W)) atomically in the format of ``path``'s extension; create parents."""
    path = check_sample_path(path)
    data = _encode(path, samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path
