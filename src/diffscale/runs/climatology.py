"""The training period's fine-scale climatology of a climate run: the mean radially averaged power spectrum of its
training fine fields, which a downscaled ensemble's spectrum is compared with when there is no fine truth.

P_clim(k) = (1/N) sum_n P_n(k) over N evenly spaced training times (:func:`~diffscale.data.climate.statistics.
stats_time_indices`: every time when there are at most :data:`SPECTRUM_TIMES`), each P_n the radially averaged,
windowed spectrum of the field on the training grid (:func:`~diffscale.evaluation.spectra.latlon_power_spectrum`),
in the units of the run's statistics. It is computed at training time and saved in ``data_stats.json``
(:data:`SPECTRUM_KEY`, a few kB); for a run saved before that, :func:`run_fine_spectrum` computes it from the run's
training data when they can still be read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffscale.data.climate.series import FieldSeries, format_time
from diffscale.data.climate.statistics import stats_time_indices
from diffscale.evaluation.spectra import latlon_power_spectrum
from diffscale.validation import ConfigError

__all__ = ["SPECTRUM_KEY", "SPECTRUM_TIMES", "fine_spectrum", "run_fine_spectrum"]

SPECTRUM_KEY = "fine_spectrum"
SPECTRUM_TIMES = 64
"""Training times the climatological spectrum averages at most (evenly spaced)."""
_CHUNK = 8


def fine_spectrum(series: FieldSeries, count: int = SPECTRUM_TIMES) -> dict[str, Any]:
    """P_clim of every variable of ``series`` (module docstring), read :data:`_CHUNK` times at a time: a JSON-able
    dict with the wavenumbers [1/km], the power per variable, the times used, the grid and the units."""
    indices = stats_time_indices(len(series), count)
    sums: dict[str, np.ndarray] = {}
    wavenumber = np.array([])
    for start in range(0, indices.size, _CHUNK):
        chosen = indices[start : start + _CHUNK]
        fields = [series.read(int(index)) for index in chosen]
        for position, name in enumerate(series.variables):
            stack = np.stack([values[position] for values in fields]).astype(np.float64)
            wavenumber, power = latlon_power_spectrum(stack, series.latitude, series.longitude)
            sums[name] = sums.get(name, 0.0) + power * chosen.size
    latitude, longitude = np.asarray(series.latitude), np.asarray(series.longitude)
    return {
        "times": int(indices.size),
        "first": format_time(series.times[indices[0]]),
        "last": format_time(series.times[indices[-1]]),
        "latitude": [float(latitude.min()), float(latitude.max()), int(latitude.size)],
        "longitude": [float(longitude[0]), float(longitude[-1]), int(longitude.size)],
        "wavenumber_per_km": wavenumber.tolist(),
        "power": {name: (total / indices.size).tolist() for name, total in sums.items()},
        "units": {name: series.units.get(name) for name in series.variables},
    }


def run_fine_spectrum(run_dir: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """(P_clim of the run in ``run_dir``, where it came from): saved with the run, else computed from the run's
    training data; (None, why not) when neither is possible (no statistics, or the data cannot be read)."""
    from diffscale.config.schema import stored_config
    from diffscale.data.climate.splits import open_fine_series
    from diffscale.pretrained import pretrained_models
    from diffscale.runs.stats import load_stats
    from diffscale.training.checkpoint import SIDECAR_NAME, CheckpointError, load_checkpoint

    if not Path(run_dir).exists() and str(run_dir) in pretrained_models():
        run_dir = pretrained_models()[str(run_dir)].directory
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None, f"the run directory {run_dir} does not exist"
    saved = load_stats(run_dir)
    if saved is None:
        return None, f"{run_dir} has no training statistics"
    if saved.get(SPECTRUM_KEY) is not None:
        if "unavailable" in saved[SPECTRUM_KEY]:
            return None, f"{run_dir}: {saved[SPECTRUM_KEY]['unavailable']}"
        return saved[SPECTRUM_KEY], f"saved with the run {run_dir}"
    try:
        checkpoint = load_checkpoint(run_dir, parts=())
        section = stored_config(checkpoint.config, str(run_dir / SIDECAR_NAME)).data
        series = open_fine_series(section, "train")[0]
        series.convert_to({name: saved["transforms"].get(name, {}).get("units") for name in series.variables})
        spectrum = fine_spectrum(series)
    except (ConfigError, CheckpointError, OSError, ValueError) as error:
        return None, f"the training data of {run_dir} cannot be read ({error})"
    return spectrum, f"computed from the training data of {run_dir}"
