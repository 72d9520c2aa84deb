"""Training data for downscaling: fine fields y, coarse fields x, and the conditioning the network sees.

For variables v = 1..C on the fine grid (H, W) and the coarse grid (H / f, W / f):

* normalised fine field  z = T(y)  (:class:`~diffscale.data.climate.transforms.Transforms`, per variable);
* conditioning channels  c = [U(T(x)), statics, lat/lon, time]  (K channels, (K, H, W)), U the bilinear (or
  bicubic) upsampling of :func:`~diffscale.data.climate.grid.upsample`;
* base field b: 0 (``target: fine``), U(T(x)) (``residual``), or R(c) for a deterministic regression model R
  (``regression_residual``, CorrDiff: Mardani et al. 2023, arXiv 2309.15214);
* training target  r = z - b; a generated r is turned back into physical units by y = T^-1(r + b).

The fine grid is the files' grid, cropped (``data.crop``) and trimmed to a multiple of f (``data.remainder``,
:func:`~diffscale.data.climate.grid.trim_to_factor`): that is the model's grid. Static fields are brought onto
it from their own grid (:func:`~diffscale.data.climate.regrid.regrid_bilinear`), and every field is put in the
units the statistics record (:func:`~diffscale.data.climate.units.convert_units`).

:class:`ClimateDataset` is one split, read lazily: its samples are assembled window by window from the files
(:class:`~diffscale.data.climate.assembly.SampleAssembler`) with the conditioning of the same
:class:`~diffscale.data.climate.conditioning.ConditioningBuilder` that downscaling uses, so training and
downscaling cannot diverge; :meth:`ClimateDataset.draw` makes a batch's random draws and
:class:`ClimateBatchReader` (what data loading workers hold) reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffscale.data.batch import Batch
from diffscale.data.climate.assembly import BaseFields, SampleAssembler
from diffscale.data.climate.base_store import batches, write_base_store
from diffscale.data.climate.channels import time_channels
from diffscale.data.climate.conditioning import ConditioningBuilder, RegressionFn, regression_base
from diffscale.data.climate.grid import (
    area_weights,
    block_centres,
    check_divisible,
    fine_coordinates,
    is_global_longitude,
)
from diffscale.data.climate.splits import (
    coarse_files,
    open_fine_series,
)
from diffscale.data.climate.statistics import StatisticsPass, fit_climate_stats
from diffscale.data.climate.transforms import Transforms
from diffscale.loss import ROW_WEIGHTS
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData

__all__ = ["ClimateBatchReader", "ClimateDataset", "ClimateFields", "SampleIndices", "latitude_row_weights"]


def latitude_row_weights(latitude: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Loss weights of rows at latitudes phi (..., h) in degrees: w_i = cos(phi_i) / mean_k cos(phi_k) over
    the last axis (mean 1 per sample; a pole row weighs 0; a sample whose rows all sit at a pole gets 1s)."""
    cosine = area_weights(torch.as_tensor(latitude, dtype=torch.float64))
    mean = cosine.mean(dim=-1, keepdim=True)
    weights = torch.where(mean > 0, cosine / mean.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    return weights.to(torch.float32)


# -- the dataset ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClimateFields:
    """Full-domain fields of some times: ``cond_fields`` (B, K, H, W), ``base`` and ``target`` (B, C, H, W)
    normalised (target = normalised fine - base), ``fine`` (B, C, H, W) in physical units, ``times`` (B,)."""

    cond_fields: torch.Tensor
    base: torch.Tensor
    target: torch.Tensor
    fine: torch.Tensor
    times: np.ndarray


@dataclass(frozen=True)
class SampleIndices:
    """The draws of one global batch: time indices (B,), with patches the windows' top rows and left columns
    (B,), and with ``data.random_alignment`` each sample's coarse-block alignment (B, 2): the fine row and column
    where the coarse lattice starts (0 .. f-1; drawn after the windows, so the other draws do not change); what a
    data loading worker turns into samples."""

    times: torch.Tensor
    tops: torch.Tensor | None = None
    lefts: torch.Tensor | None = None
    alignments: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.times.numel())


class ClimateBatchReader:
    """Turns :class:`SampleIndices` into a :class:`~diffscale.data.batch.Batch`, reading only those samples
    (picklable: a data loading worker holds one and opens the files itself)."""

    def __init__(
        self,
        assembler: SampleAssembler,
        patch: tuple[int, int] | None,
        latitude_weighted_loss: bool,
        random_windows: bool = False,
    ) -> None:
        self.assembler = assembler
        self.patch = patch
        self.latitude_weighted_loss = latitude_weighted_loss
        self.random_windows = random_windows

    def read(self, drawn: SampleIndices, start: int = 0, stop: int | None = None) -> Batch:
        """Samples ``start:stop`` of the drawn batch (one rank's rows): ``Batch(target, cond)`` as
        :meth:`ClimateDataset.sample` describes."""
        stop = len(drawn) if stop is None else stop
        height, width = self.assembler.grid_shape
        targets, conds = [], []
        for b in range(start, stop):
            if self.patch is not None:
                assert drawn.tops is not None and drawn.lefts is not None
                rows, columns = self.assembler.window(int(drawn.tops[b]), int(drawn.lefts[b]), *self.patch)
            else:
                rows, columns = np.arange(height), np.arange(width)
            alignment = (0, 0) if drawn.alignments is None else tuple(int(v) for v in drawn.alignments[b])
            fields = self.assembler.sample(int(drawn.times[b]), rows, columns, alignment, self.random_windows)
            targets.append(fields.target)
            conds.append(fields.cond)
        cond = {"cond_fields": torch.stack(conds).contiguous()}
        if self.latitude_weighted_loss:
            latitude = torch.tensor(self.assembler.latitude, dtype=torch.float64)
            if self.patch is not None:
                assert drawn.tops is not None
                rows_latitude = latitude[drawn.tops[start:stop][:, None] + torch.arange(self.patch[0])]
            else:
                rows_latitude = latitude.expand(stop - start, -1)
            cond[ROW_WEIGHTS] = latitude_row_weights(rows_latitude).contiguous()
        return Batch(torch.stack(targets).contiguous(), cond)


class ClimateDataset:
    """One split of a ``data: {kind: climate}`` section, read lazily from its files.

    Only the time index (timestamps, and where each one is) and fields of the grid's size (statics, position
    channels) are held; a sample reads its time slice, and with ``patch`` only its window plus the margin the
    coarse conditioning needs (:mod:`~diffscale.data.climate.assembly`). The statistics are fitted in one
    streaming pass (:func:`fit_climate_stats`). Batches are drawn in two steps, so that data loading workers can
    read them: :meth:`draw` (indices, from the training generator) and :meth:`read` (the values); :meth:`sample`
    does both.

    Args:
        section: the validated section (:class:`~diffscale.config.climate.ClimateData`).
        split: ``train`` | ``validation`` | ``test``.
        stats: statistics from a run (:meth:`stats`); None fits them on the train split.
    """

    def __init__(self, section: ClimateData, split: str = "train", stats: Mapping[str, Any] | None = None) -> None:
        if split not in ("train", "validation", "test"):
            raise ConfigError(f"split = {split!r}: allowed: train, validation, test")
        self.section = section
        self.split = split
        self.series, self.grid_trim = open_fine_series(section, split)
        self.statistics_pass: StatisticsPass | None = None
        """The streaming statistics pass that fitted the statistics (its rate), when this dataset fitted them."""
        if stats is None:
            train_series = self.series if split == "train" else open_fine_series(section, "train")[0]
            passes: list[StatisticsPass] = []
            stats = fit_climate_stats(section, series=train_series, report=passes)
            self.statistics_pass = passes[0] if passes else None
        self.transforms = Transforms(stats)
        expected = {name: self.transforms.stats.get(name, {}).get("units") for name in section.variables}
        self.series.convert_to(expected, source=", ".join(section.paths))
        self.variables: list[str] = list(section.variables)
        self.times: np.ndarray = self.series.times
        self.latitude: np.ndarray = self.series.latitude
        self.longitude: np.ndarray = self.series.longitude
        self.periodic_longitude = (
            is_global_longitude(self.longitude) if section.periodic_longitude is None else section.periodic_longitude
        )
        factor = section.coarsen_factor
        height, width = self.latitude.size, self.longitude.size
        if section.remainder == "keep":  # windows of whole blocks anywhere (random_windows): any grid size
            height, width = height - height % factor, width - width % factor
        else:
            check_divisible(height, width, factor, what="fine grid")
        self.blocks_shape = (height, width)  # the whole blocks from the first row and column
        coarse = coarse_files(section, self.series, split, expected) if section.coarse_paths is not None else None
        self.builder = ConditioningBuilder.from_section(section, self.transforms)
        self.builder.periodic_longitude = self.periodic_longitude
        # the fine grid as the conditioning builder reconstructs it from the coarse cells' centres (on the whole
        # blocks from the first row and column)
        latitude, longitude = self.latitude[:height], self.longitude[:width]
        built = fine_coordinates(block_centres(latitude, factor), block_centres(longitude, factor), factor)
        for axis, values, own in (("latitude", built[0], latitude), ("longitude", built[1], longitude)):
            if not np.allclose(values, own, atol=1e-6):
                raise ConfigError(f"the coarse grid's fine {axis} does not reproduce the fine grid's")
        self.cond_channel_names: list[str] = self.builder.channel_names
        self.assembler = SampleAssembler(
            variables=self.variables,
            transforms=self.transforms,
            factor=factor,
            interpolation=section.interpolation,
            periodic=self.periodic_longitude,
            target=section.target,
            fine=self.series,
            coarse=coarse,
            latitude=self.latitude,
            row_weights=area_weights(self.latitude),
            fixed_channels=self.builder.fixed_channels(
                np.concatenate([built[0], self.latitude[height:]]), np.concatenate([built[1], self.longitude[width:]])
            ),
            time_table=time_channels(self.times, 1, 1, hour=self.builder.hour, day_of_year=self.builder.day_of_year)[
                :, :, 0, 0
            ].contiguous(),
        )
        if section.patch is not None and (section.patch[0] > height or section.patch[1] > width):
            raise ConfigError(f"data.patch = {list(section.patch)} is larger than the fine grid {height} x {width}")
        self._reader = ClimateBatchReader(
            self.assembler, section.patch, section.latitude_weighted_loss, section.random_windows
        )
        self.pending_base: Any = None
        """A CorrDiff base to be written into a store before training (:mod:`diffscale.runs.climate`)."""

    # -- description ------------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """The statistics (JSON-able), to save with the run and pass back as ``stats``."""
        return self.transforms.to_dict()

    @property
    def units(self) -> dict[str, str | None]:
        """Units of each variable and static field as trained (None where the files gave none)."""
        return {name: entry.get("units") for name, entry in self.transforms.stats.items()}

    @property
    def static_regridding(self) -> str | None:
        """How the statics reached the fine grid: ``exact`` (a copy of coinciding points) or ``bilinear``; None
        without statics."""
        return self.builder.static_regridding

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one target: the patch, or the whole fine grid."""
        if self.section.patch is not None:
            return (len(self.variables), *self.section.patch)
        return (len(self.variables), self.latitude.size, self.longitude.size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one training target (the shape a data loader announces before reading)."""
        return self.shape

    @property
    def cond_channels(self) -> int:
        """K, the number of conditioning channels."""
        return len(self.cond_channel_names)

    def __len__(self) -> int:
        return len(self.times)

    # -- base fields ------------------------------------------------------------------------------------------
    def set_base(
        self,
        fn: RegressionFn,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        store: str | Path | None = None,
        key: str | None = None,
    ) -> None:
        """``regression_residual``: compute b = R(c) for every time (full-domain conditioning, ``batch_size``
        consecutive times per call, :func:`regression_base`) and keep it in memory, or with ``store`` in a Zarr
        store (T, C, H, W), one chunk per time, from which samples read their windows. A store whose ``key``
        attribute equals ``key`` is complete and reused as it is."""
        if self.section.target != "regression_residual":
            raise ConfigError(f"set_base is for data.target = 'regression_residual' (it is {self.section.target!r})")
        if store is not None:
            write_base_store(self, fn, store, key=key, batch_size=batch_size, device=device)
            self.attach_base_store(store)
            return
        outputs = [
            regression_base(fn, self.full_conditioning(times), len(self.variables), batch_size, device)
            for times in batches(len(self), batch_size)
        ]
        self.use_base(torch.cat(outputs))

    def use_base(self, base: torch.Tensor) -> None:
        """``regression_residual``: take b (T, C, H, W) of every time as given, in memory (e.g. the out-of-fold
        base of :func:`diffscale.runs.climate.cross_fitted_base`)."""
        expected = (len(self), len(self.variables), self.latitude.size, self.longitude.size)
        if self.section.target != "regression_residual":
            raise ConfigError(f"use_base is for data.target = 'regression_residual' (it is {self.section.target!r})")
        if tuple(base.shape) != expected:
            raise ValueError(f"base of shape {tuple(base.shape)}; expected {expected}")
        self.assembler.base = BaseFields(values=base.detach().to("cpu", torch.float32))

    def attach_base_store(self, store: str | Path) -> None:
        """Read b from a complete Zarr store written by :meth:`set_base`."""
        self.assembler.base = BaseFields(store=str(store))

    def full_conditioning(self, times: Sequence[int]) -> torch.Tensor:
        """c (B, K, H, W) on the whole grid at the time indices ``times`` (with ``data.remainder: keep``, on its
        whole blocks from the first row and column)."""
        rows, columns = np.arange(self.blocks_shape[0]), np.arange(self.blocks_shape[1])
        return torch.stack([self.assembler.conditioning(int(t), rows, columns) for t in times])

    # -- access -----------------------------------------------------------------------------------------------
    def draw(self, batch_size: int, generator: torch.Generator | None = None) -> SampleIndices:
        """The indices of a batch: ``batch_size`` random times, then (with ``patch``) the windows' top rows and
        left columns, then (with ``random_alignment``) the coarse-block alignments, every draw from ``generator``
        (on any device; the indices are brought to the CPU)."""
        index = _randint(len(self), batch_size, generator)
        top = left = alignments = None
        if self.section.patch is not None:
            h, w = self.section.patch
            height, width = self.latitude.size, self.longitude.size
            top = _randint(height - h + 1, batch_size, generator)
            left = _randint(width if self.periodic_longitude else width - w + 1, batch_size, generator)
        if self.section.random_alignment:
            factor = self.section.coarsen_factor
            alignments = torch.stack([_randint(factor, batch_size, generator) for _ in range(2)], dim=1)
        return SampleIndices(index, top, left, alignments)

    def batch_reader(self) -> ClimateBatchReader:
        """What data loading workers run: :meth:`ClimateBatchReader.read` of drawn indices."""
        return self._reader

    def read(self, drawn: SampleIndices, start: int = 0, stop: int | None = None) -> Batch:
        """The samples ``start:stop`` of drawn indices (:meth:`draw`), read from the files."""
        return self._reader.read(drawn, start, stop)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Random times and (with ``patch``) random windows, every draw from ``generator`` (on any device: the
        draws are made there and the indices brought back to the CPU).

        Returns:
            ``Batch(target=(B, C, h, w) normalised fine - base, cond={'cond_fields': (B, K, h, w)})``; windows
            wrap in longitude when it is periodic. With ``data.latitude_weighted_loss`` the conditioning also
            holds ``row_weights`` (B, h): cos(latitude) of each sample's rows, normalised to mean 1
            (:func:`latitude_row_weights`), which the objective takes out (the network never sees it).
        """
        self._check_base()
        return self.read(self.draw(batch_size, generator))

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return self.sample(batch_size, generator)

    def _check_base(self) -> None:
        if self.section.target == "regression_residual" and self.assembler.base is None:
            raise ConfigError("data.target = 'regression_residual' needs set_base(regression_model) first")

    def fields(self, indices: int | slice | Sequence[int] | torch.Tensor) -> ClimateFields:
        """Full-domain fields at time ``indices`` (read now)."""
        self._check_base()
        if isinstance(indices, int):
            indices = [indices]
        if isinstance(indices, slice):
            times = list(range(len(self)))[indices]
        else:
            times = [int(t) for t in torch.as_tensor(indices, dtype=torch.long).reshape(-1)]
        rows, columns = np.arange(self.latitude.size), np.arange(self.longitude.size)
        samples = [self.assembler.sample(t, rows, columns) for t in times]
        if not samples:
            empty = torch.zeros(0, len(self.variables), self.latitude.size, self.longitude.size)
            return ClimateFields(
                torch.zeros(0, self.cond_channels, *empty.shape[-2:]), empty, empty, empty, self.times[:0]
            )
        return ClimateFields(
            torch.stack([s.cond for s in samples]),
            torch.stack([s.base for s in samples]),
            torch.stack([s.target for s in samples]),
            torch.stack([s.fine for s in samples]),
            self.times[np.asarray(times, dtype=np.int64)],
        )

    # -- every time at once (small data: each reads the whole split) -------------------------------------------
    @property
    def cond_fields(self) -> torch.Tensor:
        """c (T, K, H, W) of every time, read now (for small data and tests; training reads samples)."""
        return self.full_conditioning(range(len(self)))

    @property
    def base(self) -> torch.Tensor | None:
        """b (T, C, H, W) of every time, read now; None for ``regression_residual`` before :meth:`set_base`."""
        if self.section.target == "regression_residual" and self.assembler.base is None:
            return None
        return self.fields(slice(None)).base

    @property
    def fine(self) -> torch.Tensor:
        """y (T, C, H, W) in physical units of every time, read now."""
        return torch.stack(
            [
                torch.from_numpy(np.stack([np.asarray(v, dtype=np.float32) for v in self.series.read(t)]))
                for t in range(len(self))
            ]
        )

    def to_physical(self, normalised_fine: torch.Tensor) -> torch.Tensor:
        """y = T^-1(z) per variable of a normalised fine field (..., C, H, W) (add the base to a generated
        residual first); on the input's device."""
        return self.transforms.inverse_channels(normalised_fine, self.variables)


def _randint(high: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` integers in [0, high) drawn on the generator's device, returned on the CPU."""
    device = generator.device if generator is not None else None
    return torch.randint(high, (count,), generator=generator, device=device).cpu()
