"""One training sample, assembled from the files: a window of the fine fields and its conditioning.

For a time t and a window of fine rows R (contiguous) and columns C (wrapping round a periodic longitude axis),
:class:`SampleAssembler` reads only what the window needs and computes

* the normalised fine window z = T(y)[R, C] and the target z - b[R, C];
* the upsampled coarse fields U(T(x))[R, C]. With bilinear (bicubic) upsampling a fine point takes its value
  from 2 (4) coarse cells along each axis (:func:`~diffscale.data.climate.grid.interpolation_taps`): only those
  coarse cells are formed, i.e. the window's blocks plus a margin of 1 (2) coarse cells, clipped at the grid's
  edges or wrapped round in longitude. The coarse cells are the area-weighted block means of the fine fields
  (read with that margin) or, with ``coarse_paths``, read from the coarse files;
* the static and position channels (computed once on the whole grid, cropped) and the time channels (one row
  per time of a small table).

Block means and interpolation are tap-by-tap sums in a fixed order (:func:`~diffscale.data.climate.grid.block_mean`,
:func:`~diffscale.data.climate.grid.interpolate_taps`), so every value is bitwise the value the whole-field
computation (coarsen everything, upsample everything, crop) gives, including across the date line.

Coarse-block alignment (the hook for training on shifted coarse lattices): :meth:`SampleAssembler.sample`
takes ``alignment = (o_lat, o_lon)``, the fine row and column at which the first coarse block starts. Block k
then covers the fine rows o_lat + k f .. o_lat + k f + f - 1 (columns likewise, wrapping on a periodic axis),
and fine index i sits at the coarse position (i - o + 1/2) / f - 1/2. Training uses (0, 0), the lattice of
the files; a sampler that draws o from 0 .. f - 1 per sample only has to pass it here (with ``coarse_paths``
the lattice is that of the coarse files and only (0, 0) is possible).

A window coarsened on its own (``standalone=True``, what ``data.random_windows`` trains on): the window's rows and
columns are whole f x f blocks of their own, starting at its first row and column wherever it sits on the grid,
and nothing outside it enters its coarse cells; at its borders the upsampling takes the edge values. That is what
downscaling computes for a window a user brings (its coarse cells are the window's own block means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffscale.data.climate.grid import block_mean, interpolate_taps, interpolation_taps
from diffscale.data.climate.series import FieldSeries, format_time
from diffscale.data.climate.transforms import Transforms
from diffscale.validation import ConfigError

__all__ = ["BaseFields", "CoarseFiles", "SampleAssembler", "SampleFields", "index_or_slice"]


def index_or_slice(index: np.ndarray) -> slice | np.ndarray:
    """A slice for consecutive ascending indices (a plain hyperslab read), else the index array itself."""
    index = np.asarray(index, dtype=np.int64)
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


@dataclass(frozen=True)
class SampleFields:
    """One sample on a window (h, w): ``target`` (C, h, w) = z - b, ``cond`` (K, h, w), ``base`` b and ``fine``
    (C, h, w) in physical units (float32)."""

    target: torch.Tensor
    cond: torch.Tensor
    base: torch.Tensor
    fine: torch.Tensor


@dataclass
class CoarseFiles:
    """Coarse fields read from their own files: the series, for each fine time its index in the series, and
    for each coarse row / column of the model's coarse grid the matching row / column of the files' grid."""

    series: FieldSeries
    time_index: np.ndarray
    rows: np.ndarray
    columns: np.ndarray


class BaseFields:
    """The base b of ``regression_residual`` for every time: a tensor (T, C, H, W) in memory, or a Zarr array
    of that shape (one chunk per time) read window by window."""

    def __init__(self, values: torch.Tensor | None = None, store: str | None = None) -> None:
        if (values is None) == (store is None):
            raise ValueError("give the base values or the path of their Zarr store")
        self.values = values
        self.store = store
        self._array: Any = None

    def _zarr(self) -> Any:
        if self._array is None:
            import zarr

            self._array = zarr.open_array(self.store, mode="r")
        return self._array

    def window(self, index: int, rows: np.ndarray, columns: np.ndarray) -> torch.Tensor:
        """b at time ``index`` on rows x columns: (C, h, w) float32."""
        if self.values is not None:
            return self.values[index][:, torch.as_tensor(rows)[:, None], torch.as_tensor(columns)[None, :]]
        array = self._zarr()
        rows_index, columns_index = index_or_slice(rows), index_or_slice(columns)
        if isinstance(rows_index, slice) and isinstance(columns_index, slice):
            values = array[index, :, rows_index, columns_index]
        else:
            values = array.oindex[index, :, rows, columns]
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}


class SampleAssembler:
    """Reads and assembles training samples (module docstring); picklable, opens its files in each process.

    Args:
        variables: the modelled variables, in channel order.
        transforms: their fitted transforms (and the statics').
        factor: f.
        interpolation: ``bilinear`` | ``bicubic``.
        periodic: whether longitude wraps round.
        target: ``fine`` | ``residual`` | ``regression_residual``.
        fine: the fine fields on the model's grid (in the transforms' units).
        coarse: coarse files, or None to coarsen the fine fields.
        latitude: the model grid's latitudes (H,).
        row_weights: the area weights cos(phi) of its rows (H,) float64 (block means).
        fixed_channels: (K_f, H, W) float32 static and position channels.
        time_table: (T, K_t) float32 time channels of every time.
        base: b for ``regression_residual`` (None until it is set).
    """

    def __init__(
        self,
        variables: Sequence[str],
        transforms: Transforms,
        factor: int,
        interpolation: str,
        periodic: bool,
        target: str,
        fine: FieldSeries,
        coarse: CoarseFiles | None,
        latitude: np.ndarray,
        row_weights: np.ndarray,
        fixed_channels: torch.Tensor,
        time_table: torch.Tensor,
        base: BaseFields | None = None,
    ) -> None:
        self.variables = list(variables)
        self.transforms = transforms
        self.factor = factor
        self.interpolation = interpolation
        self.periodic = periodic
        self.target = target
        self.fine = fine
        self.coarse = coarse
        self.latitude = np.asarray(latitude, dtype=np.float64)
        self.row_weights = torch.as_tensor(np.asarray(row_weights, dtype=np.float64))
        self.fixed_channels = fixed_channels
        self.time_table = time_table
        self.base = base

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) of the fine grid."""
        return self.fine.latitude.size, self.fine.longitude.size

    def __len__(self) -> int:
        return len(self.fine)

    # -- windows ------------------------------------------------------------------------------------------------
    def window(self, top: int, left: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The fine rows top .. top + h - 1 and columns left .. left + w - 1 (modulo W on a periodic axis)."""
        grid_height, grid_width = self.grid_shape
        rows = top + np.arange(height)
        columns = left + np.arange(width)
        if self.periodic:
            columns %= grid_width
        if rows[-1] >= grid_height or columns.max() >= grid_width or top < 0 or left < 0:
            raise ValueError(f"window rows {top}+{height}, columns {left}+{width} outside the grid {self.grid_shape}")
        return rows, columns

    # -- one sample ---------------------------------------------------------------------------------------------
    def sample(
        self,
        index: int,
        rows: np.ndarray,
        columns: np.ndarray,
        alignment: tuple[int, int] = (0, 0),
        standalone: bool = False,
    ) -> SampleFields:
        """The sample at time ``index`` on the fine ``rows`` (consecutive) x ``columns``; ``alignment``: the
        coarse lattice's offset (o_lat, o_lon) in fine cells; ``standalone``: the window coarsened on its own
        (module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        columns = np.asarray(columns, dtype=np.int64)
        upsampled, fine, cond = self._parts(index, rows, columns, alignment, standalone)
        if self.target == "fine":
            base = torch.zeros_like(upsampled)
        elif self.target == "residual":
            base = upsampled
        else:
            if self.base is None:
                raise ConfigError("data.target = 'regression_residual' needs set_base(regression_model) first")
            base = self.base.window(index, rows, columns)
        normalised = self.transforms.forward_channels(fine, self.variables)
        return SampleFields(target=normalised - base, cond=cond, base=base, fine=fine)

    def conditioning(
        self,
        index: int,
        rows: np.ndarray,
        columns: np.ndarray,
        alignment: tuple[int, int] = (0, 0),
        standalone: bool = False,
    ) -> torch.Tensor:
        """The conditioning c (K, h, w) alone (what a regression model takes to predict the base)."""
        rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
        return self._parts(index, rows, columns, alignment, standalone)[2]

    def _parts(
        self, index: int, rows: np.ndarray, columns: np.ndarray, alignment: tuple[int, int], standalone: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U(T(x)) (C, h, w), the fine fields y (C, h, w) float32 in physical units, c (K, h, w))."""
        if standalone:
            if alignment != (0, 0):
                raise ValueError("a window coarsened on its own has no lattice offset: give alignment (0, 0)")
            upsampled, fine_physical = self._standalone_upsampled_and_fine(index, rows, columns)
        else:
            upsampled, fine_physical = self._upsampled_and_fine(index, rows, columns, alignment)
        fine = torch.from_numpy(np.stack([np.asarray(values, dtype=np.float32) for values in fine_physical]))
        rows_t, columns_t = torch.as_tensor(rows)[:, None], torch.as_tensor(columns)[None, :]
        parts = [upsampled, self.fixed_channels[:, rows_t, columns_t]]
        if self.time_table.shape[1]:
            parts.append(self.time_table[index][:, None, None].expand(-1, rows.size, columns.size))
        return upsampled, fine, torch.cat(parts, dim=0).to(torch.float32)

    def _upsampled_and_fine(
        self, index: int, rows: np.ndarray, columns: np.ndarray, alignment: tuple[int, int]
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """U(T(x)) on the window (C, h, w) float32, and the fine fields there (physical, decoded dtype)."""
        factor = self.factor
        height, width = self.grid_shape
        row_offset, column_offset = (int(value) for value in alignment)
        if self.coarse is not None and (row_offset or column_offset):
            raise ConfigError("a coarse-block alignment other than (0, 0) needs the coarse fields from the fine ones")
        if not (0 <= row_offset < factor and 0 <= column_offset < factor):
            raise ValueError(f"alignment {alignment}: each offset must lie in 0 .. {factor - 1}")
        coarse_height = (height - row_offset) // factor
        coarse_width = width // factor if self.periodic else (width - column_offset) // factor
        row_taps, row_weights = interpolation_taps(
            rows, coarse_height, factor, self.interpolation, periodic=False, offset=row_offset
        )
        column_taps, column_weights = interpolation_taps(
            columns, coarse_width, factor, self.interpolation, periodic=self.periodic, offset=column_offset
        )
        coarse_rows = np.arange(row_taps.min(), row_taps.max() + 1)
        coarse_columns = np.unique(column_taps)
        if self.coarse is None:
            fine_rows = np.arange(coarse_rows[0] * factor, (coarse_rows[-1] + 1) * factor) + row_offset
            fine_columns = (coarse_columns[:, None] * factor + column_offset + np.arange(factor)).reshape(-1)
            if self.periodic:
                fine_columns %= width
            read = self.fine.read(index, index_or_slice(fine_rows), index_or_slice(fine_columns))
            coarse = self._block_means(read, fine_rows)
            if rows.min() >= fine_rows[0] and rows.max() <= fine_rows[-1] and np.isin(columns, fine_columns).all():
                row_position = rows - fine_rows[0]
                order = np.argsort(fine_columns, kind="stable")
                column_position = order[np.searchsorted(fine_columns, columns, sorter=order)]
                fine = [values[row_position][:, column_position] for values in read]
            else:  # a shifted lattice leaves edge rows / columns of the window outside its whole blocks
                fine = self.fine.read(index, index_or_slice(rows), index_or_slice(columns))
        else:
            coarse = self._coarse_cells(index, coarse_rows, coarse_columns)
            fine = self.fine.read(index, index_or_slice(rows), index_or_slice(columns))
        normalised = self.transforms.forward_channels(coarse, self.variables)
        local_rows = row_taps - coarse_rows[0]
        local_columns = np.searchsorted(coarse_columns, column_taps)
        upsampled = interpolate_taps(normalised, local_rows, row_weights, -2)
        return interpolate_taps(upsampled, local_columns, column_weights, -1), fine

    def _standalone_upsampled_and_fine(
        self, index: int, rows: np.ndarray, columns: np.ndarray
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """U(T(x)) (C, h, w) float32 and the fine fields of a window coarsened on its own: x = its own f x f
        block means, upsampled with edge values at its borders (module docstring)."""
        factor = self.factor
        if self.coarse is not None:
            raise ConfigError("a window coarsened on its own needs the coarse fields from the fine ones")
        if rows.size % factor or columns.size % factor:
            raise ValueError(
                f"a window of {rows.size} x {columns.size} fine cells is not whole {factor} x {factor} blocks"
            )
        fine = self.fine.read(index, index_or_slice(rows), index_or_slice(columns))
        normalised = self.transforms.forward_channels(self._block_means(fine, rows), self.variables)
        row_taps, row_weights = interpolation_taps(
            np.arange(rows.size), rows.size // factor, factor, self.interpolation
        )
        column_taps, column_weights = interpolation_taps(
            np.arange(columns.size), columns.size // factor, factor, self.interpolation
        )
        upsampled = interpolate_taps(normalised, row_taps, row_weights, -2)
        return interpolate_taps(upsampled, column_taps, column_weights, -1), fine

    def _block_means(self, read: list[np.ndarray], fine_rows: np.ndarray) -> torch.Tensor:
        """The coarse cells (C, h_c, w_c) float32 of fine values read on whole blocks: the area-weighted block
        means in float64, then the fields' dtype, then float32 (as coarsening the loaded fields did)."""
        weights = self.row_weights[torch.as_tensor(fine_rows)]
        cells = []
        for values in read:
            mean = block_mean(torch.from_numpy(np.asarray(values, dtype=np.float64)), self.factor, weights)
            if values.dtype.kind == "f":
                mean = torch.from_numpy(mean.numpy().astype(values.dtype))
            cells.append(mean.to(torch.float32))
        return torch.stack(cells)

    def _coarse_cells(self, index: int, coarse_rows: np.ndarray, coarse_columns: np.ndarray) -> torch.Tensor:
        assert self.coarse is not None
        coarse = self.coarse
        values = coarse.series.read(
            int(coarse.time_index[index]),
            index_or_slice(coarse.rows[coarse_rows]),
            index_or_slice(coarse.columns[coarse_columns]),
        )
        return torch.from_numpy(np.stack([np.asarray(v, dtype=np.float32) for v in values]))

    def coarse_cells(self, index: int, shape: tuple[int, int], first: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """The coarse fields x (C, h_c, w_c) float32 in physical units at time ``index`` on the coarse cells of the
        fine ``shape`` (H, W) from fine row and column ``first`` (whole blocks): those of the coarse files, or the
        block means of the fine fields, as the conditioning takes them."""
        coarse_rows, coarse_columns = np.arange(shape[0] // self.factor), np.arange(shape[1] // self.factor)
        if self.coarse is not None:
            if first != (0, 0):
                raise ValueError(f"coarse files hold whole blocks from the first row and column, not from {first}")
            return self._coarse_cells(index, coarse_rows, coarse_columns)
        fine_rows = first[0] + np.arange(coarse_rows.size * self.factor)
        fine_columns = first[1] + np.arange(coarse_columns.size * self.factor)
        read = self.fine.read(index, index_or_slice(fine_rows), index_or_slice(fine_columns))
        return self._block_means(read, fine_rows)

    def describe(self, index: int) -> str:
        """The file and time of sample time ``index`` (for messages)."""
        return f"{self.fine.path_of(index)} at {format_time(self.fine.times[index])}"
