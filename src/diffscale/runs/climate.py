"""The training data of a climate run (``data: {kind: climate}``): the training split read with the run's
statistics, and for a CorrDiff run (``data.target: regression_residual``) the base b = R(c) of its regression run.

The base needs the regression model on the whole domain's conditioning of a time, so it cannot be formed from a
sample's window; it is computed once for every time, in the batches the in-memory base used, and kept in a Zarr
store in the run directory (``regression_base.zarr``, one chunk per time), from which samples read their windows.
Evaluating the regression model per training batch instead would read whole fields for every sample and run the
model once per sample and step (many times per epoch) instead of once per time: on the ERA5 UK CorrDiff
configuration (32 x 48, batch 16, 400 steps, one CPU thread) R of a batch took 0.33 s, 55 % of a training step
(133 s over the run), while the store took 8.8 s once for the 456 training times and reading b from it 1.8 % of a
step. A store whose key (the regression weights, the data section, the statistics and the times) matches is
reused when a run resumes.

Cross-fitted CorrDiff (:func:`cross_fitted_base`) replaces b by the out-of-fold predictions of regression runs
trained without each time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.base_store import write_base_store
from diffscale.data.climate.calendars import check_times, time_text, within
from diffscale.data.climate.conditioning import RegressionFn, regression_base
from diffscale.data.climate.statistics import fit_climate_stats
from diffscale.runs.building import check_grid, check_same_data
from diffscale.runs.run import ClimateRun, load_climate_run
from diffscale.runs.stats import load_stats
from diffscale.training.distributed import DistributedContext
from diffscale.validation import ConfigError

__all__ = [
    "BASE_STORE_NAME",
    "PendingBase",
    "build_climate_data",
    "cross_fitted_base",
    "in_training_split",
    "write_pending_base",
]

BASE_STORE_NAME = "regression_base.zarr"
"""The Zarr store of a CorrDiff run's base b = R(c) in its run directory."""


@dataclass
class PendingBase:
    """A CorrDiff base to be written into ``store`` before training (nothing is written while preparing)."""

    predictor: RegressionFn
    store: Path
    key: str
    device: torch.device | str


def _base_key(regression: ClimateRun, dataset: ClimateDataset) -> str:
    """What the base depends on: the regression weights, the data section, the statistics and the times."""
    times = dataset.times
    record = {
        "regression_weights": regression.weights_sha256,
        "data": dataset.section.model_dump(mode="json"),
        "stats": dataset.stats,
        "times": [str(times[0]), str(times[-1]), int(times.size)],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _shared_stats(section: ClimateData, distributed: DistributedContext) -> dict:
    """The statistics fitted once, by rank 0 (one streaming pass over the training data), and sent to every
    rank; a ConfigError there is raised on every rank."""
    import torch.distributed as dist

    box: list = [None]
    if distributed.is_main:
        try:
            box = [("stats", fit_climate_stats(section))]
        except ConfigError as error:
            box = [("error", str(error))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise ConfigError(value)
    return value


def build_climate_data(
    config: Config,
    run_dir: Path | None = None,
    device: torch.device | str = "cpu",
    base_store: str | Path | None = None,
    distributed: DistributedContext | None = None,
) -> ClimateDataset:
    """The training split of a climate run, ready to draw batches from (``dataset.sample``, or workers).

    The statistics are, in order of preference: those saved in ``run_dir`` (a resumed run), those of the
    regression run (``regression_residual``: both models must see the same conditioning), or fitted on the
    training period (under torchrun by rank 0 alone, for all: ``distributed``). For ``regression_residual`` the
    base b = R(c) is computed with the regression run's EMA
    model: in memory, or with ``base_store`` into that Zarr store (reused when it matches; otherwise recorded as
    ``dataset.pending_base`` for :func:`write_pending_base`, so that nothing is written here). The grid is
    checked against the network here when the configuration could not know it.
    """
    section: ClimateData = config.data
    saved = load_stats(run_dir) if run_dir is not None else None
    stats = saved["transforms"] if saved is not None else None
    regression: ClimateRun | None = None
    if section.target == "regression_residual":
        regression = load_climate_run(section.regression_run, device=str(device), key="data.regression_run")
        check_same_data(regression.config, config)
        stats = stats or regression.stats
    if stats is None and distributed is not None and distributed.enabled:
        stats = _shared_stats(section, distributed)
    dataset = ClimateDataset(section, "train", stats)
    check_grid(config, dataset.latitude.size, dataset.longitude.size)
    if regression is not None:
        predictor = regression.regression_predictor()
        if base_store is None:
            dataset.set_base(predictor, device=device)
        else:
            pending = PendingBase(predictor, Path(base_store), _base_key(regression, dataset), device)
            if not write_base_store(dataset, predictor, pending.store, key=pending.key, check_only=True):
                dataset.attach_base_store(pending.store)
            else:
                dataset.pending_base = pending
    return dataset


def write_pending_base(dataset: object, distributed: DistributedContext | None = None) -> None:
    """Write a CorrDiff run's pending base store (every rank computes its share of the times) and read the base
    from it from now on; nothing to do for other data."""
    pending = getattr(dataset, "pending_base", None)
    if pending is None or not isinstance(dataset, ClimateDataset):
        return
    context = distributed if distributed is not None else DistributedContext()
    barrier = None
    if context.enabled:
        import torch.distributed as dist

        barrier = dist.barrier
    pending.store.parent.mkdir(parents=True, exist_ok=True)
    write_base_store(
        dataset,
        pending.predictor,
        pending.store,
        key=pending.key,
        device=pending.device,
        rank=context.rank,
        world_size=context.world_size,
        barrier=barrier,
    )
    dataset.attach_base_store(pending.store)
    dataset.pending_base = None


def in_training_split(section: ClimateData, times: np.ndarray) -> np.ndarray:
    """Whether each of ``times`` lies in the train split of ``section`` (its train period less the gaps between its
    periods, or everything outside the validation and test periods); ``times`` datetime64 or cftime dates."""
    times = check_times(np.atleast_1d(np.asarray(times)))
    period = section.period("train")
    inside = np.ones(times.size, dtype=bool) if period is None else within(times, *period)
    for start, end in section.excluded_periods("train"):
        inside &= ~within(times, start, end)
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
        first = time_text(times[int(np.argmax(uncovered))])
        raise ConfigError(
            f"cross-fitting: {int(uncovered.sum())} training time(s), first {first}, lie in the train split of every "
            "fold run: each time needs a fold run that left it out"
        )
    channels = len(dataset.variables)
    total = torch.zeros(len(times), channels, dataset.latitude.size, dataset.longitude.size)
    for run, mask in zip(fold_runs, left_out, strict=True):
        predictor = run.regression_predictor()
        left = np.flatnonzero(mask)
        for start in range(0, left.size, batch_size):  # the whole-grid conditioning of a few times at once
            index = left[start : start + batch_size]
            cond = dataset.full_conditioning(index.tolist())
            total[torch.as_tensor(index)] += regression_base(predictor, cond, channels, batch_size, device)
    return total / torch.as_tensor(left_out.sum(axis=0), dtype=total.dtype)[:, None, None, None]
