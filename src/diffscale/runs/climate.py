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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.base_store import write_base_store
from diffscale.data.climate.conditioning import RegressionFn
from diffscale.data.climate.statistics import fit_climate_stats
from diffscale.runs.building import check_grid, check_same_data
from diffscale.runs.run import ClimateRun, load_climate_run
from diffscale.runs.stats import load_stats
from diffscale.training.distributed import DistributedContext
from diffscale.validation import ConfigError

__all__ = ["BASE_STORE_NAME", "PendingBase", "build_climate_data", "write_pending_base"]

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
