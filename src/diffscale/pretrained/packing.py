"""Reduce a trained climate run directory to what sampling needs, for shipping it (:func:`pack_run`).

The packed run holds:

* ``checkpoint.json``: the sidecar of the latest checkpoint with only its EMA weights recorded (no optimizer,
  trainer or RNG state: it cannot be resumed, only sampled), and its stored configuration with the file paths
  rewritten: the static fields as ``statics.nc`` (bundled, resolved against the run directory when loaded) and
  the training files by their bare names (they are not shipped; the model card says where they come from);
* ``ema-<step>.safetensors``: the EMA weights, byte for byte (their sha256 is the one the sidecar records);
* ``config.yaml`` (the same configuration), ``data_stats.json`` (normalisation, grid, input range, and the
  training fields' power spectrum that a truth-free evaluation compares with: computed from the training data
  when the run was saved without it);
* ``statics.nc``: the static fields (orography, land-sea mask) on the run's fine grid, as the run's conditioning
  builder regrids them, so that a packed run needs no global orography file;
* ``coarse_climatology.json`` and ``.safetensors`` (bias adjustment) and ``recalibration.json`` when the run has
  them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from diffscale.files import atomic_write_bytes, write_dataset
from diffscale.validation import ConfigError

__all__ = ["STATICS_NAME", "fine_grid_axes", "pack_run", "sha256_of"]

STATICS_NAME = "statics.nc"
_OPTIONAL_FILES = ("coarse_climatology.json", "coarse_climatology.safetensors", "recalibration.json")


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fine_grid_axes(grid: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(latitude, longitude) of a run's whole fine grid before trimming, from ``data_stats.json``'s ``grid``:
    ``n = round((last - first) / spacing) + 1`` points from the first to the last of each range."""
    axes = []
    for axis in ("latitude", "longitude"):
        first, last = (float(value) for value in grid[f"{axis}_range"])
        spacing = float(grid[f"{axis}_spacing"])
        count = round((last - first) / spacing) + 1
        axes.append(np.linspace(first, last, count))
    return axes[0], axes[1]


def _bundled_statics(run_dir: Path) -> Any:
    """The run's static fields on its fine grid (None without statics)."""
    from diffscale.data.climate.conditioning import load_statics, statics_on_grid
    from diffscale.runs.run import load_climate_run

    run = load_climate_run(run_dir, device="cpu")
    section = run.section
    if not section.static_variables:
        return None
    latitude, longitude = fine_grid_axes(run.grid)
    statics = load_statics(section.static_paths, section.static_variables)
    assert statics is not None
    fields = statics_on_grid(statics, section.static_variables, latitude, longitude, section.static_interpolation)
    fields.attrs = {"what": "static fields on the run's fine grid, as its conditioning builder regrids them"}
    for name in fields.data_vars:
        fields[name].encoding = {"zlib": True, "complevel": 9}
    return fields


def pack_run(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the sampling part of the climate run in ``run_dir`` (its latest checkpoint) into ``out_dir``.

    Returns the written files by name. ``out_dir`` must not exist or be empty. Raises ConfigError for a run
    that is not a climate run or has no EMA weights.
    """
    from diffscale.config.schema import stored_config
    from diffscale.runs.climatology import SPECTRUM_KEY, run_fine_spectrum
    from diffscale.runs.stats import STATS_NAME, load_stats, save_stats
    from diffscale.training.checkpoint import EMA, SIDECAR_NAME, load_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"'{out_dir}': not empty; remove it first (a packed run is written whole)")
    checkpoint = load_checkpoint(run_dir, parts=(EMA,))
    config = stored_config(checkpoint.config, str(run_dir / SIDECAR_NAME))
    if config.data.kind != "climate" or not checkpoint.ema_weights:
        raise ConfigError(f"'{run_dir}': only a climate run with EMA weights can be packed")
    statics = _bundled_statics(run_dir)
    section = config.data
    data_update: dict[str, Any] = {"paths": [Path(path).name for path in section.paths]}
    data_update["static_paths"] = [STATICS_NAME] if statics is not None else []
    if section.coarse_paths is not None:
        data_update["coarse_paths"] = [Path(path).name for path in section.coarse_paths]
    packed_config = config.model_copy(update={"data": section.model_copy(update=data_update)})
    packed_config = packed_config.model_copy(update={"output": packed_config.output.model_copy(update={"dir": None})})

    sidecar = checkpoint.sidecar
    ema_entry = dict(sidecar["files"][EMA])
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    ema_name = str(ema_entry["path"])
    shutil.copyfile(run_dir / ema_name, out_dir / ema_name)
    if sha256_of(out_dir / ema_name) != ema_entry["sha256"]:
        raise ConfigError(f"'{run_dir / ema_name}': its sha256 differs from the sidecar's; the run is damaged")
    written[ema_name] = out_dir / ema_name
    packed_sidecar = {
        "format": sidecar["format"],
        "format_version": sidecar["format_version"],
        "diffscale_version": sidecar.get("diffscale_version", "unknown"),
        "step": sidecar["step"],
        "created_utc": sidecar.get("created_utc"),
        "files": {EMA: ema_entry},
        "optimizer": None,
        "trainer": None,
        "config": packed_config.to_dict(),
    }
    from diffscale.config.schema import encode_non_finite

    packed_sidecar["config"] = encode_non_finite(packed_sidecar["config"])
    atomic_write_bytes(out_dir / SIDECAR_NAME, (json.dumps(packed_sidecar, indent=1) + "\n").encode("utf-8"))
    written[SIDECAR_NAME] = out_dir / SIDECAR_NAME
    atomic_write_bytes(out_dir / "config.yaml", packed_config.to_yaml().encode("utf-8"))
    written["config.yaml"] = out_dir / "config.yaml"
    for name in _OPTIONAL_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
            written[name] = out_dir / name
    stats = load_stats(run_dir)
    if stats is None:
        raise ConfigError(f"'{run_dir}': has no {STATS_NAME}")
    if SPECTRUM_KEY not in stats:  # a run saved before spectra were: computed once, from its training data
        spectrum, source = run_fine_spectrum(run_dir)
        stats[SPECTRUM_KEY] = spectrum if spectrum is not None else {"unavailable": source}
    save_stats(out_dir, stats)
    written[STATS_NAME] = out_dir / STATS_NAME
    if statics is not None:
        written[STATICS_NAME] = write_dataset(statics, out_dir / STATICS_NAME)
    return written
