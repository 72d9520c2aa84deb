"""The base b = R(c) of a CorrDiff run (``data.target: regression_residual``), computed once per time with the
regression model and kept in a Zarr store beside the run, read window by window while training."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffscale.data.climate.conditioning import RegressionFn, regression_base

if TYPE_CHECKING:
    from diffscale.data.climate.dataset import ClimateDataset

__all__ = ["batches", "write_base_store"]

logger = logging.getLogger(__name__)


def batches(count: int, size: int) -> list[range]:
    """Consecutive ranges of at most ``size`` of ``range(count)``."""
    return [range(start, min(count, start + size)) for start in range(0, count, size)]


def write_base_store(
    dataset: ClimateDataset,
    fn: RegressionFn,
    store: str | Path,
    *,
    key: str | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    check_only: bool = False,
) -> bool:
    """Write b = R(c) of every time of ``dataset`` into the Zarr store ``store`` (T, C, H, W) float32, one chunk
    per time, in batches of ``batch_size`` consecutive times (the batches of :meth:`ClimateDataset.set_base`, so
    the values are those it would hold in memory). A store whose ``key`` attribute equals ``key`` (and is marked
    complete) is kept as it is (returns False); otherwise it is (re)written (returns True).

    Several processes share the work: ``rank`` of ``world_size`` writes the batches rank, rank + world_size, ...;
    rank 0 creates the store, and ``barrier`` (called by every rank after creating and after writing) keeps them
    in step. ``check_only``: write nothing, only say whether the store would be written.
    """
    import zarr

    path = str(store)
    if _complete_store(path, key):
        return False
    if check_only:
        return True
    count, channels = len(dataset), len(dataset.variables)
    height, width = dataset.latitude.size, dataset.longitude.size
    if rank == 0:
        array = zarr.open_array(
            path, mode="w", shape=(count, channels, height, width), chunks=(1, channels, height, width), dtype="f4"
        )
        array.attrs["complete"] = False
    if barrier is not None:
        barrier()
    array = zarr.open_array(path, mode="r+")
    for number, times in enumerate(batches(count, batch_size)):
        if number % world_size != rank:
            continue
        values = regression_base(fn, dataset.full_conditioning(times), channels, batch_size, device)
        array[times.start : times.stop] = values.numpy()
    if barrier is not None:
        barrier()
    if rank == 0:
        array.attrs.update({"complete": True, "key": key})
    if barrier is not None:
        barrier()
    return True


def _complete_store(path: str, key: str | None) -> bool:
    import zarr

    if not Path(path).exists():
        return False
    try:
        attrs = dict(zarr.open_array(path, mode="r").attrs)
    except Exception:  # not a readable array: rewrite it
        return False
    return bool(attrs.get("complete")) and key is not None and attrs.get("key") == key
