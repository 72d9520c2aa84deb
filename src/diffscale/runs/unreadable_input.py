"""Which file of a coarse input cannot be read at a time: the diagnosis behind the one-line message of a downscaling
that meets a damaged input (a truncated netCDF file, a corrupt Zarr chunk) after its checks.

The input is re-read file by file at the time in question; for a Zarr store, chunk by chunk along the other axes, so
the message names the chunk file itself (``store/VARIABLE/KEY``)."""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["expand_input_paths", "locate_unreadable"]


def expand_input_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files (and Zarr stores) that ``paths`` name, glob patterns expanded, in order."""
    found: list[Path] = []
    for path in paths:
        text = str(path)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        found.extend(Path(match) for match in matches)
    return found


def _zarr_chunk(store: Path, variable: str, time_index: int) -> Path | None:
    """The chunk file of ``variable`` at ``time_index`` (along its first, time, axis) of a Zarr v2 store that
    cannot be decoded, or None."""
    import zarr

    metadata_path = store / variable / ".zarray"
    if not metadata_path.is_file():
        return None
    metadata = json.loads(metadata_path.read_text())
    separator = metadata.get("dimension_separator", ".")
    chunks, shape = metadata["chunks"], metadata["shape"]
    array = zarr.open_array(store / variable, mode="r", zarr_format=2)
    counts = [range(-(-size // chunk)) for size, chunk in zip(shape[1:], chunks[1:], strict=True)]
    for rest in itertools.product(*counts):
        others = [slice(index * chunk, (index + 1) * chunk) for index, chunk in zip(rest, chunks[1:], strict=True)]
        selection = (slice(time_index, time_index + 1), *others)
        try:
            array[selection]
        except Exception:  # any decoding failure is the diagnosis
            key = separator.join(str(index) for index in (time_index // chunks[0], *rest))
            return store / variable / key
    return None


def locate_unreadable(paths: Sequence[Path], times: Sequence[Any]) -> tuple[str, Any, str] | None:
    """(the file, the time, the reading error) of the first of ``times`` that one of ``paths`` holds but cannot
    deliver, or None when every file reads at these times."""
    import xarray as xr

    for path in paths:
        try:
            dataset = xr.open_zarr(path, consolidated=None) if path.is_dir() else xr.open_dataset(path, chunks={})
        except Exception as error:
            return str(path), times[0] if len(times) else None, f"{type(error).__name__}: {error}"
        with dataset:
            if "time" not in dataset.dims:
                continue
            held = dataset["time"].values
            for value in times:
                where = np.nonzero(held == np.asarray(value, dtype=held.dtype))[0]
                if where.size == 0:
                    continue
                index = int(where[0])
                for name, variable in dataset.data_vars.items():
                    if "time" not in variable.dims:
                        continue
                    try:
                        variable.isel(time=index).load()
                    except Exception as error:
                        chunk = _zarr_chunk(path, str(name), index) if path.is_dir() else None
                        return str(chunk or path), value, f"{type(error).__name__}: {error}"
    return None
