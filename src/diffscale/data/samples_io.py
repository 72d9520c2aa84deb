"""Reading and writing samples in a file chosen by its extension: ``.npy``, ``.csv`` or ``.safetensors``, with their
metadata (sampler settings, NFE, seed, checkpoint) in a JSON file beside them (``FILE.json``) and, for
``.safetensors``, also in the file's own header.

``.npy`` and ``.safetensors`` keep the shape of the samples, (N, D) for vectors or (N, C, H, W) for fields;
``.csv`` writes one row per sample with its values flattened in C order (columns x0, x1, ...).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from diffscale.files import check_output, write_together
from diffscale.validation import ConfigError, option_name

__all__ = ["SAMPLES_KEY", "SAMPLE_FORMATS", "check_sample_path", "encode_samples", "read_samples", "write_samples"]

SAMPLE_FORMATS: tuple[str, ...] = (".npy", ".csv", ".safetensors")
SAMPLES_KEY = "samples"
"""The tensor name in a ``.safetensors`` samples file."""


def check_sample_path(path: str | Path, option: str | None = None) -> Path:
    """``path`` if its extension names a known format and it can be written (:func:`diffscale.files.check_output`);
    ConfigError naming ``option`` (default: the ``out`` argument) otherwise."""
    return check_output(path, option or option_name("out"), suffixes=tuple(SAMPLE_FORMATS), kind="sample file")


def _encode(path: Path, samples: torch.Tensor, metadata: dict[str, Any] | None) -> bytes:
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
    header = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    return safetensors.torch.save({SAMPLES_KEY: samples.detach().cpu().contiguous()}, metadata=header or None)


def encode_samples(
    path: str | Path, samples: torch.Tensor, metadata: dict[str, Any] | None = None
) -> dict[Path, bytes]:
    """The files of :func:`write_samples` as bytes, by path: the samples in the format of ``path``'s extension and,
    with ``metadata`` (JSON-serialisable values), ``FILE.json`` holding it with the samples' shape."""
    path = check_sample_path(path)
    files = {path: _encode(path, samples, metadata)}
    if metadata is not None:
        sidecar = {**metadata, "file": path.name, "shape": list(samples.shape)}
        files[path.with_name(path.name + ".json")] = (json.dumps(sidecar, indent=2) + "\n").encode()
    return files


def write_samples(path: str | Path, samples: torch.Tensor, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``samples`` ((N, D) or (N, C, H, W)) in the format of ``path``'s extension and, with ``metadata``,
    ``FILE.json`` beside it: both or neither (:func:`diffscale.files.write_together`; parents created)."""
    write_together(encode_samples(path, samples, metadata))
    return Path(path)


def _read_csv(path: Path) -> np.ndarray:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    first = lines[0] if lines else ""
    try:
        [float(value) for value in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header such as "x0,x1" (as written by write_samples)
    return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)


def _read_safetensors(path: Path) -> np.ndarray:
    tensors = safetensors.torch.load_file(str(path))
    if SAMPLES_KEY in tensors:
        return tensors[SAMPLES_KEY].to(torch.float64).numpy()
    if len(tensors) == 1:
        return next(iter(tensors.values())).to(torch.float64).numpy()
    raise ValueError(f"holds tensors {sorted(tensors)} but none called {SAMPLES_KEY!r}")


def read_samples(path: str | Path, option: str = "data") -> torch.Tensor:
    """Samples of shape (N, ...) as float64 from a ``.npy``, ``.csv`` (optional header line) or ``.safetensors``
    file (tensor ``samples``, or its only tensor); 1-D arrays are read as (N, 1). ConfigError (naming ``option``)
    for unreadable files, no samples or non-finite values."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            array = _read_csv(path)
        elif suffix == ".safetensors":
            array = _read_safetensors(path)
        else:
            raise ValueError(f"unknown file type {suffix!r}; allowed: {', '.join(SAMPLE_FORMATS)}")
        array = np.asarray(array, dtype=np.float64)
    except (OSError, ValueError, safetensors.SafetensorError) as error:
        raise ConfigError(f"{option} = '{path}': cannot read samples: {error}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim < 2 or array.shape[0] == 0:
        raise ConfigError(f"{option} = '{path}': expected samples of shape (N, D) with N >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ConfigError(f"{option} = '{path}': samples must be finite")
    return torch.from_numpy(np.ascontiguousarray(array))
