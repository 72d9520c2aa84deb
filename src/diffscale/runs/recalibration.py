"""A run's spread recalibration: fitted on held-out ensembles, stored with the run, applied when it downscales.

>>> recalibration = diffscale.runs.fit_recalibration("runs/era5_uk", ["validation_ensemble.nc"], truth="era5.nc")
>>> ensemble = diffscale.load_run("runs/era5_uk").downscale(coarse, members=32)    # inflated by k(32)
>>> raw = diffscale.load_run("runs/era5_uk").downscale(coarse, members=32, recalibrate=False)

The dispersion rho of every variable (the truth's variance about the members' centre over the members' variance,
:func:`diffscale.downscaling.recalibration.fit_dispersion`) is pooled over the given ensembles, each matched with the
truth at its times and grid points, and written to ``recalibration.json`` in the run directory. Downscaling with the
run then inflates every time's members about their mean by k = sqrt((M rho + 1) / (M + 1)) for its M members
(:func:`~diffscale.downscaling.recalibration.inflate`): the ensemble mean is unchanged, the spread grows by k.

Fit it on ensembles the run did not train on: its validation period, or better (when the weather of the later
inputs may differ from the training period's) ensembles of held-out blocks drawn by models trained without them,
as ``benchmarks/calibration.py`` does by nested cross-validation.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffscale.downscaling.recalibration import fit_dispersion, inflation_for
from diffscale.files import atomic_write_bytes, check_output
from diffscale.threads import Threads, check_threads, thread_policy
from diffscale.validation import ConfigError, option_name

__all__ = [
    "RECALIBRATION_NAME",
    "Recalibration",
    "check_recalibration_output",
    "fit_recalibration",
    "load_recalibration",
]

RECALIBRATION_NAME = "recalibration.json"


@dataclass(frozen=True)
class Recalibration:
    """Per variable, the dispersion rho fitted on held-out ensembles (and how many cases and which files)."""

    dispersion: dict[str, float]
    cases: dict[str, int]
    sources: list[str]

    def factors(self, members: int) -> dict[str, float]:
        """k = sqrt((M rho + 1) / (M + 1)) of each variable for an ensemble of ``members`` members."""
        return {name: inflation_for(rho, members) for name, rho in self.dispersion.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "spread inflation about the ensemble mean",
            "dispersion": dict(self.dispersion),
            "cases": dict(self.cases),
            "sources": list(self.sources),
        }

    @classmethod
    def from_dict(cls, content: Any, where: str) -> Recalibration:
        try:
            dispersion = {str(name): float(value) for name, value in content["dispersion"].items()}
            cases = {str(name): int(value) for name, value in content.get("cases", {}).items()}
            sources = [str(source) for source in content.get("sources", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"{where}: unreadable recalibration ({error})") from None
        return cls(dispersion, cases, sources)

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``recalibration.json`` into ``run_dir`` atomically; its path."""
        path = Path(run_dir) / RECALIBRATION_NAME
        content = {**self.to_dict(), "written": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        atomic_write_bytes(path, (json.dumps(content, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        return path


def load_recalibration(run_dir: str | os.PathLike) -> Recalibration | None:
    """The recalibration stored with a run, or None when it has none."""
    path = Path(run_dir) / RECALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"'{path}': unreadable recalibration ({error})") from None
    return Recalibration.from_dict(content, f"'{path}'")


def check_recalibration_output(run_dir: str | os.PathLike) -> Path:
    """The path of the run's ``recalibration.json`` if it can be written (:func:`diffscale.files.check_output`: the
    run directory exists, is writable, and is on no read-only or pseudo file system); ConfigError otherwise."""
    from diffscale.pretrained import writable_run

    return check_output(writable_run(run_dir) / RECALIBRATION_NAME, "recalibration file")


def fit_recalibration(
    run_dir: str | os.PathLike | None,
    ensembles: Sequence[Any],
    truth: Any,
    variables: Sequence[str] | None = None,
    threads: Threads = "auto",
) -> Recalibration:
    """Fit the dispersion of every variable on ``ensembles`` (Datasets, netCDF files or Zarr stores with dims
    member, time, latitude, longitude) against ``truth`` (fields at their times and grid points: a Dataset, a
    file or files), and save it with the run in ``run_dir`` (None: only return it). ``threads``: torch's CPU threads
    for the moments (:func:`diffscale.threads.thread_policy`; ``auto`` takes the CPUs other processes leave idle).

    Raises:
        ConfigError: a run directory that is missing or cannot be written (checked before any ensemble is read),
            no ensemble, a file or variable missing, grids or times that do not match the truth (as
            :func:`diffscale.evaluate`), or an ensemble without spread.
    """
    from diffscale.runs.evaluation import load_inputs

    threads = check_threads(threads, option_name("threads"))
    if run_dir is not None:
        check_recalibration_output(run_dir)
    if isinstance(ensembles, str | os.PathLike) or not len(ensembles):
        raise ConfigError(f"{option_name('ensembles')}: give one or more held-out ensembles (a list)")
    cases: dict[str, list[tuple[Any, Any, Any]]] = {}
    for ensemble in ensembles:
        inputs = load_inputs(ensemble, truth, variables=variables, coarsening_factor=1)
        if inputs.members < 2:
            raise ConfigError(f"{option_name('ensembles')}: {ensemble} has {inputs.members} member; a spread needs 2")
        for name in inputs.variables:
            cases.setdefault(name, []).append((inputs.ensemble[name], inputs.truth[name], inputs.latitude))
    dispersion: dict[str, float] = {}
    with thread_policy(threads):
        for name, pairs in cases.items():
            try:
                dispersion[name] = fit_dispersion(pairs)
            except ValueError as error:
                raise ConfigError(f"{option_name('ensembles')}: variable {name}: {error}") from None
    counts = {name: sum(int(truth_values.size) for _, truth_values, _ in pairs) for name, pairs in cases.items()}
    sources = [
        str(Path(item).resolve()) if isinstance(item, str | os.PathLike) else "xarray.Dataset" for item in ensembles
    ]
    recalibration = Recalibration(dispersion, counts, sources)
    if run_dir is not None:
        recalibration.save(run_dir)
    return recalibration
