"""An ensemble held in memory: :class:`~diffscale.downscaling.EnsembleWriter`'s interface and checks, building the
``xarray.Dataset`` that ``xarray.open_dataset`` would read back from the netCDF file (same values, dims,
coordinates and CF attributes), for notebooks that want the ensemble without a file."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from diffscale.downscaling.writer import EnsembleWriter

__all__ = ["MemoryEnsembleWriter"]


class MemoryEnsembleWriter(EnsembleWriter):
    """Writes an ensemble into float32 numpy arrays; :meth:`close` returns nothing on disk, :attr:`dataset` holds
    the result (None until closed, and after an error).

    Args:
        **layout: ``latitude``, ``longitude``, ``times``, ``num_members``, ``variables``,
            ``global_attributes`` and ``time_encoding``, as for :class:`~diffscale.downscaling.EnsembleWriter` (no
            path); the Dataset's times are the dates given (cftime dates of their calendar stay cftime dates) and
            its time ``encoding`` holds the units and calendar the file would have.
    """

    def __init__(self, **layout: Any) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self.dataset: xr.Dataset | None = None
        super().__init__("<memory>", **layout)

    def _check_target(self, overwrite: bool) -> None:
        """Nothing on disk to check."""

    def _temporary_path(self) -> Any:
        return None

    def _create(self, complevel: int) -> None:
        shape = (self.num_members, self.times.size, self.latitude.size, self.longitude.size)
        self._arrays = {name: np.zeros(shape, dtype=np.float32) for name in self.variables}
        self._dataset = self._arrays

    def _store_attributes(self, attributes: Any) -> None:
        """Nothing to do: :meth:`_finish` builds the Dataset from the variables' attributes."""

    def _store(self, variable: str, members: slice, times: slice, block: np.ndarray) -> None:
        self._arrays[variable][members, times] = block

    def _finish(self) -> None:
        self.dataset = self.layout_dataset(self._arrays)
        self._dataset = None
        self._arrays = {}

    def _discard(self) -> None:
        self._dataset = None
        self._arrays = {}
        self.dataset = None
