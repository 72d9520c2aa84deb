"""The statistics file of a climate run, ``data_stats.json``: the per-variable transform statistics fitted on the
training period (:class:`~diffscale.data.climate.Transforms`), which validation, testing and downscaling reuse
unchanged, and the training grid (spacing and extent, which a coarse input is checked against; the rows or columns
dropped so that the coarsening factor divides it; how the static fields were brought onto it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.grid import grid_spacing
from diffscale.files import atomic_write_bytes
from diffscale.validation import ConfigError

__all__ = ["STATS_NAME", "load_stats", "save_stats"]

STATS_NAME = "data_stats.json"


def save_stats(run_dir: Path, dataset: ClimateDataset) -> None:
    """Write ``data_stats.json`` atomically: the transform statistics and the training grid (its spacing and
    extent, which downscaling checks a coarse input against)."""
    grid = {
        "latitude_spacing": grid_spacing(dataset.latitude, "latitude"),
        "longitude_spacing": grid_spacing(dataset.longitude, "longitude"),
        "height": int(dataset.latitude.size),
        "width": int(dataset.longitude.size),
        "latitude_range": [float(dataset.latitude.min()), float(dataset.latitude.max())],
        "longitude_range": [float(dataset.longitude.min()), float(dataset.longitude.max())],
    }
    grid["trimmed"] = dataset.grid_trim.to_dict()
    grid["static_regridding"] = dataset.static_regridding
    content = {"transforms": dataset.stats, "grid": grid}
    atomic_write_bytes(run_dir / STATS_NAME, (json.dumps(content, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def load_stats(run_dir: Path) -> dict[str, Any] | None:
    """``{"transforms": ..., "grid": ...}`` saved with a run, or None when it has none yet."""
    path = Path(run_dir) / STATS_NAME
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"'{path}': unreadable statistics ({error})") from None
    if not isinstance(content, dict) or not {"transforms", "grid"} <= set(content):
        raise ConfigError(f"'{path}': expected the keys 'transforms' and 'grid'")
    return content
