"""The statistics file of a climate run, ``data_stats.json``: the per-variable transform statistics fitted on the
training period (:class:`~diffscale.data.climate.Transforms`), which validation, testing and downscaling reuse
unchanged, and the training grid (spacing and extent, which a coarse input is checked against; the rows or columns
dropped so that the coarsening factor divides it; how the static fields were brought onto it), and the per-cell
range of the training inputs (:mod:`~diffscale.data.climate.extrapolation`), which downscaling measures a coarse
input against, and the mean power spectrum of the training fine fields (:mod:`~diffscale.runs.climatology`), which
an ensemble is compared with when there is no truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.extrapolation import InputRange, fit_input_range
from diffscale.data.climate.grid import grid_spacing
from diffscale.data.climate.statistics import stats_time_indices
from diffscale.files import atomic_write_bytes
from diffscale.validation import ConfigError

__all__ = [
    "INPUT_RANGE_KEY",
    "STATS_NAME",
    "input_range_of",
    "load_stats",
    "save_stats",
    "stats_content",
    "training_input_range",
]

STATS_NAME = "data_stats.json"
INPUT_RANGE_KEY = "input_range"


def training_input_range(dataset: ClimateDataset) -> InputRange:
    """The per-cell range of the training inputs of ``dataset`` (its conditioning's coarse channels, read in
    chunks of times: memory stays bounded by one chunk), over the times the statistics are fitted on (every
    training time, or the ``data.stats_times`` evenly spaced ones of a long record)."""
    chosen = stats_time_indices(len(dataset), dataset.section.stats_times)
    return fit_input_range(
        lambda indices: dataset.full_conditioning(chosen[indices].tolist()),
        int(chosen.size),
        dataset.variables,
        dataset.section.coarsen_factor,
        dataset.latitude,
        dataset.longitude,
    )


def input_range_of(saved: dict[str, Any] | None) -> InputRange | None:
    """The training input range recorded in a run's statistics (:func:`load_stats`), or None for a run saved
    before it was recorded."""
    if saved is None or saved.get(INPUT_RANGE_KEY) is None:
        return None
    return InputRange.from_dict(saved[INPUT_RANGE_KEY])


def stats_content(dataset: ClimateDataset) -> dict[str, Any]:
    """What ``data_stats.json`` holds for ``dataset``: the transform statistics, the training grid (its spacing
    and extent, which downscaling checks a coarse input against), the training inputs' range
    (:func:`training_input_range`, which reads the training inputs once) and the mean power spectrum of the
    training fine fields (:func:`~diffscale.runs.climatology.fine_spectrum`, on up to 64 evenly spaced times),
    which a downscaled ensemble is compared with when there is no fine truth."""
    from diffscale.runs.climatology import SPECTRUM_KEY

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
    return {
        "transforms": dataset.stats,
        "grid": grid,
        INPUT_RANGE_KEY: training_input_range(dataset).to_dict(),
        SPECTRUM_KEY: _fine_spectrum_or_why_not(dataset),
    }


def _fine_spectrum_or_why_not(dataset: ClimateDataset) -> dict[str, Any]:
    """:func:`~diffscale.runs.climatology.fine_spectrum` of the training fields, or ``{"unavailable": why}`` for a
    grid without one spacing (a radial spectrum needs a regular grid): training goes on without it."""
    from diffscale.runs.climatology import fine_spectrum

    try:
        return fine_spectrum(dataset.series)
    except ValueError as error:
        return {"unavailable": f"no power spectrum on the training grid ({error})"}


def save_stats(run_dir: Path, dataset: ClimateDataset | dict[str, Any]) -> None:
    """Write ``data_stats.json`` atomically: :func:`stats_content` of a dataset, or that content itself."""
    content = dataset if isinstance(dataset, dict) else stats_content(dataset)
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
