"""Held-out scores of a run, as a model card records them (:func:`held_out_scores`).

For the chosen times of the true fine fields y: the coarse input x is y coarsened as in training
(:meth:`~diffscale.ClimateRun.coarsen`), the run draws ``members`` fine fields from x with ``seed``, and
:func:`diffscale.evaluate` scores them against y beside the bilinear interpolation of x. Per variable:

* ``rmse``: the RMSE of the ensemble mean, sqrt(sum_i w_i (mean_m y_m - y)_i^2 / sum_i w_i), w = cos(latitude);
* ``bilinear_rmse``: the same for the bilinear interpolation;
* ``crps``: the fair CRPS of the ensemble (area-weighted mean);
* ``bilinear_mae``: the bilinear interpolation's MAE (its CRPS, a point forecast's);
* ``spread_skill``: the spread-skill ratio sqrt((M + 1) / M * mean spread^2) / RMSE (1: calibrated).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SCORE_KEYS", "held_out_scores"]

SCORE_KEYS = ("rmse", "bilinear_rmse", "crps", "bilinear_mae", "spread_skill")


def _value(scores: Any, key: str, **selection: Any) -> float:
    return float(scores[key].sel(**selection).values)


def held_out_scores(
    run: Any,
    truth: str | os.PathLike[str],
    times: Sequence[str],
    *,
    members: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Scores (see the module docstring) of ``run`` (a ClimateRun, run directory or model name) at ``times`` (ISO
    strings, each one time of the file ``truth``) with ``members`` members drawn with ``seed``; by variable."""
    import xarray as xr

    import diffscale
    from diffscale.runs.run import load_climate_run

    climate = run if hasattr(run, "coarsen") else load_climate_run(run, device="cpu")
    wanted = np.array([np.datetime64(time, "ns") for time in times])
    coarse = climate.coarsen(truth, start=str(wanted.min()), end=str(wanted.max())).sel(time=wanted).load()
    ensemble = climate.downscale(coarse, members=members, seed=seed, progress=False)
    with xr.open_dataset(truth) as fine:
        selected = fine[climate.variables].sel(time=wanted).load()
    scores = diffscale.evaluate(ensemble, truth=selected, coarse=coarse, temporal=False)
    result = {}
    for name in climate.variables:
        result[name] = {
            "rmse": _value(scores, "rmse", variable=name, prediction="ensemble"),
            "bilinear_rmse": _value(scores, "rmse", variable=name, prediction="bilinear"),
            "crps": _value(scores, "crps", variable=name, prediction="ensemble"),
            "bilinear_mae": _value(scores, "mae", variable=name, prediction="bilinear"),
            "spread_skill": _value(scores, "spread_skill_ratio", variable=name),
        }
    return result
