"""The training data of a climate run (``data: {kind: climate}``): the training split read with the run's
statistics, and for a CorrDiff run (``data.target: regression_residual``) the base b = R(c) of its regression run,
or (cross-fitting, :func:`cross_fitted_base`) the out-of-fold predictions of regression runs trained without each
time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.dataset import regression_base
from diffscale.runs.building import check_grid, check_same_data
from diffscale.runs.run import ClimateRun, load_climate_run
from diffscale.runs.stats import load_stats
from diffscale.validation import ConfigError

__all__ = ["build_climate_data", "cross_fitted_base", "in_training_split"]


def build_climate_data(
    config: Config, run_dir: Path | None = None, device: torch.device | str = "cpu"
) -> ClimateDataset:
    """The training split of a climate run, ready to draw batches from (``dataset.sample``).

    The statistics are, in order of preference: those saved in ``run_dir`` (a resumed run), those of the
    regression run (``regression_residual``: both models must see the same conditioning), or fitted on the
    training period. For ``regression_residual`` the base b = R(c) is precomputed with the regression run's EMA
    model. The grid is checked against the network here when the configuration could not know it.
    """
    section: ClimateData = config.data
    saved = load_stats(run_dir) if run_dir is not None else None
    stats = saved["transforms"] if saved is not None else None
    regression: ClimateRun | None = None
    if section.target == "regression_residual":
        regression = load_climate_run(section.regression_run, device=str(device), key="data.regression_run")
        check_same_data(regression.config, config)
        stats = stats or regression.stats
    dataset = ClimateDataset(section, "train", stats)
    check_grid(config, dataset.latitude.size, dataset.longitude.size)
    if regression is not None:
        dataset.set_base(regression.regression_predictor(), device=device)
    return dataset


def in_training_split(section: ClimateData, times: np.ndarray) -> np.ndarray:
    """Whether each of ``times`` lies in the train split of ``section`` (its train period less the gaps between its
    periods, or everything outside the validation and test periods)."""
    times = np.asarray(times).astype("datetime64[ns]")
    period = section.period("train")
    inside = np.ones(times.size, dtype=bool) if period is None else (times >= period[0]) & (times <= period[1])
    for start, end in section.excluded_periods("train"):
        inside &= (times < start) | (times > end)
    return inside


def cross_fitted_base(
    dataset: ClimateDataset,
    fold_runs: Sequence[ClimateRun],
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Out-of-fold regression base of every time of ``dataset`` (T, C, H, W), for cross-fitted CorrDiff.

    The base of a CorrDiff diffusion model is the prediction R(c) of a regression model; trained on the regression's
    own training times, the diffusion model learns the regression's in-sample error, far smaller than its error on
    new weather. Cross-fitting (Chernozhukov et al. 2018, Econom. J. 21, C1-C68; the stacking of Wolpert 1992)
    trains K regression runs ``fold_runs``, each leaving out a fold of the training period, and gives every time t
    the mean prediction of the runs whose train split leaves t out:

        b(t) = mean_{j : t not in train(R_j)} R_j(c_t),

    so the diffusion target z - b carries the regression's real generalisation error. At downscaling time the base
    is the regression run trained on the whole training period (``data.regression_run``).

    Raises:
        ConfigError: a time that every fold run trained on (it has no out-of-fold prediction).
    """
    times = dataset.times
    left_out = np.stack([~in_training_split(run.section, times) for run in fold_runs])
    uncovered = ~left_out.any(axis=0)
    if uncovered.any():
        first = np.datetime_as_string(times[int(np.argmax(uncovered))], unit="m")
        raise ConfigError(
            f"cross-fitting: {int(uncovered.sum())} training time(s), first {first}, lie in the train split of every "
            "fold run: each time needs a fold run that left it out"
        )
    channels = len(dataset.variables)
    cond = dataset.cond_fields
    total = torch.zeros(len(times), channels, *cond.shape[-2:])
    for run, mask in zip(fold_runs, left_out, strict=True):
        index = torch.as_tensor(np.flatnonzero(mask))
        if index.numel():
            total[index] += regression_base(run.regression_predictor(), cond[index], channels, batch_size, device)
    return total / torch.as_tensor(left_out.sum(axis=0), dtype=total.dtype)[:, None, None, None]
