"""Training on several regions at once: statistics pooled over the regions and a batch source that draws from all.

A model trained on one region and one season sees few weather regimes; the same network trained on several regions
(e.g. the UK in March and Italy in May-June) sees more, and the conditioning tells them apart (latitude/longitude,
statics, the coarse field itself). For that every region must be normalised alike: :func:`pooled_stats` combines the
per-region statistics into those of all the regions' values together, and the regions' datasets are then built with
them. :class:`RegionMixture` draws a batch as if all the regions' training times were one record: each sample picks
a time uniformly among all of them, so a region contributes in proportion to its number of times (and samples of
its grid's size: give the regions one patch shape, e.g. ``data.patch``, so that batches stack).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from diffscale.data.batch import Batch
from diffscale.validation import ConfigError

__all__ = ["RegionMixture", "pooled_stats"]


class _Sampled(Protocol):
    def __len__(self) -> int: ...

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch: ...


def pooled_stats(
    stats: Sequence[Mapping[str, Mapping[str, Any]]], counts: Sequence[Mapping[str, int]]
) -> dict[str, dict[str, Any]]:
    """The statistics of several regions' values taken together, from each region's (``stats[i][name]``: the
    ``mean`` and ``std`` of the transformed values, as fitted) and the number of values behind them
    (``counts[i][name]``: times x grid points for a variable, grid points for a static field):

        mean = sum_i n_i m_i / n,    var = sum_i n_i (s_i^2 + (m_i - mean)^2) / n,    n = sum_i n_i

    (the population variance of the union). Every region must give every field with the same transform and units.

    Raises:
        ConfigError: regions that disagree on the fields, a field's transform or its units.
    """
    if not stats or len(stats) != len(counts):
        raise ConfigError(
            f"pooled_stats: {len(stats)} statistics for {len(counts)} counts (give one of each per region)"
        )
    names = list(stats[0])
    for index, entry in enumerate(stats[1:], start=1):
        if list(entry) != names:
            raise ConfigError(f"pooled_stats: region {index} has the fields {list(entry)}, region 0 {names}")
    pooled: dict[str, dict[str, Any]] = {}
    for name in names:
        entries = [region[name] for region in stats]
        for key in ("transform", "units"):
            values = {str(entry.get(key)) for entry in entries}
            if len(values) > 1:
                raise ConfigError(f"pooled_stats: {name}: the regions differ in {key} ({', '.join(sorted(values))})")
        weights = [float(count[name]) for count in counts]
        total = sum(weights)
        mean = sum(w * float(entry["mean"]) for w, entry in zip(weights, entries, strict=True)) / total
        variance = (
            sum(
                w * (float(entry["std"]) ** 2 + (float(entry["mean"]) - mean) ** 2)
                for w, entry in zip(weights, entries, strict=True)
            )
            / total
        )
        pooled[name] = {**entries[0], "mean": mean, "std": math.sqrt(variance)}
    return pooled


class RegionMixture:
    """Batches drawn from several regions' training datasets as from one record.

    Args:
        datasets: the regions' datasets (anything with ``len`` and ``sample(batch_size, generator)`` returning a
            :class:`~diffscale.data.batch.Batch`), built with the same statistics (:func:`pooled_stats`) and giving
            samples of one shape.

    ``mixture(batch_size, generator)`` draws, for each of the B samples, a time uniformly among all the regions'
    times (so region i is picked with probability n_i / n), then asks each region for its share of the batch in
    one call; the samples come region by region. Every draw uses ``generator``: the same generator state gives the
    same batch.
    """

    def __init__(self, datasets: Sequence[_Sampled]) -> None:
        if not datasets:
            raise ConfigError("RegionMixture: no datasets given")
        self.datasets = list(datasets)
        self.sizes = torch.tensor([len(dataset) for dataset in self.datasets], dtype=torch.long)
        if torch.any(self.sizes < 1):
            raise ConfigError(f"RegionMixture: every region needs training times; sizes {self.sizes.tolist()}")
        self.bounds = torch.cumsum(self.sizes, dim=0)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def shares(self, batch_size: int, generator: torch.Generator | None = None) -> list[int]:
        """How many of ``batch_size`` samples each region gives (a multinomial draw of region i with n_i / n)."""
        device = generator.device if generator is not None else None
        drawn = torch.randint(len(self), (batch_size,), generator=generator, device=device).cpu()
        region = torch.searchsorted(self.bounds, drawn, right=True)
        return torch.bincount(region, minlength=len(self.datasets)).tolist()

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        parts = [
            dataset.sample(count, generator)
            for dataset, count in zip(self.datasets, self.shares(batch_size, generator), strict=True)
            if count > 0
        ]
        shapes = {tuple(part.target.shape[1:]) for part in parts}
        if len(shapes) > 1:
            raise ConfigError(
                f"RegionMixture: the regions give samples of shapes {sorted(shapes)}; give them one patch"
            )
        names = set(parts[0].cond)
        return Batch(
            torch.cat([part.target for part in parts]),
            {name: torch.cat([part.cond[name] for part in parts]) for name in names},
        )

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return self.sample(batch_size, generator)
