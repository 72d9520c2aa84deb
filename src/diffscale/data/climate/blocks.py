"""The conditioning of a long coarse input, block by block: what downscaling a decade of coarse fields into a
Zarr store needs, with memory bounded by one block.

:class:`LazyConditioning` holds the coarse fields lazily (xarray over dask: only the times of a block are
read) and the layout of their conditioning (grid, statics, time channels: computed once). c and b of the times
[k m, (k + 1) m) (m = ``batch_size``, the batches in which the regression model R computes b) are formed when a
time among them is asked for, and the last few blocks are kept. Every value is computed as
:meth:`~diffscale.data.climate.ConditioningBuilder.build` computes it for the whole input (the same arithmetic
per time, R on the same batches of m times), so the two are bitwise equal.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from diffscale.data.climate.series import format_time
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.data.climate.conditioning import ConditioningBuilder, ConditioningLayout, RegressionFn

__all__ = ["LazyConditioning", "LazyRows", "check_finite_lazily"]

KEPT_BLOCKS = 2
"""Blocks of m times a LazyConditioning keeps (consecutive sampling groups often share one)."""


def check_finite_lazily(ds: xr.Dataset, variables: Sequence[str], source: str, *, plausible: bool = True) -> None:
    """ConfigError naming the variable and the first time with a NaN or infinite value, found in one pass over
    the (possibly dask-backed) fields: a flag per time is all that is kept. With ``plausible`` the same pass takes
    each time's minimum and maximum, and a value outside the variable's physical range is refused too
    (:func:`~diffscale.data.climate.plausibility.check_extremes`)."""
    import dask
    import dask.array as da

    from diffscale.data.climate.plausibility import check_extremes, time_extremes

    flags, extremes = [], []
    for name in variables:
        data = ds[name].data
        axes = tuple(axis for axis, dim in enumerate(ds[name].dims) if dim != "time")
        if isinstance(data, da.Array):
            flags.append((~da.isfinite(data)).any(axis=axes))
        else:
            flags.append((~np.isfinite(np.asarray(data))).any(axis=axes))
        extremes.append(time_extremes(data, ds[name].dims) if plausible else None)
    with ThreadPoolExecutor(max_workers=2) as pool, warnings.catch_warnings():
        # a pool of our own (dask's shared one does not survive a fork); an all-NaN time is reported as NaN above
        warnings.simplefilter("ignore", RuntimeWarning)
        computed, computed_extremes = dask.compute(flags, extremes, scheduler="threads", pool=pool)
    times = ds["time"].values
    for name, bad in zip(variables, computed, strict=True):
        bad = np.asarray(bad)
        if bad.any():
            raise ConfigError(
                f"{source}: variable {name!r} has NaN/inf values at time {format_time(times[int(np.argmax(bad))])} "
                f"({int(bad.sum())} of {bad.size} times affected)"
            )
    for name, pair in zip(variables, computed_extremes, strict=True):
        if pair is not None:
            check_extremes(name, ds[name].attrs, times, pair[0], pair[1], source)


class LazyRows:
    """Rows of a (T, ...) tensor formed on demand: ``rows[indices]`` (a 1-D index tensor), ``shape``, ``len``."""

    def __init__(self, owner: LazyConditioning, part: str, shape: tuple[int, ...]) -> None:
        self.owner = owner
        self.part = part
        self.shape = torch.Size(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices: Any) -> torch.Tensor:
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if not index.numel():
            return torch.zeros(0, *self.shape[1:])
        return torch.stack([self.owner.rows(self.part, int(i)) for i in index])


class LazyConditioning:
    """c and b of a coarse input, formed block by block (module docstring). Has the attributes of a
    :class:`~diffscale.data.climate.Conditioning` (``cond_fields`` and ``base`` as :class:`LazyRows`).

    Args:
        builder: the conditioning builder.
        coarse: the coarse fields, checked and in the recorded units (:meth:`ConditioningBuilder.prepare`).
        layout: their layout.
        regression: R for ``regression_residual`` (else unused).
        batch_size: m, the times of one block (and of one call of R).
        device: where R runs.
        base_model: a deterministic model whose prediction is the base itself (a regression run downscaling),
            replacing the builder's base.
    """

    def __init__(
        self,
        builder: ConditioningBuilder,
        coarse: xr.Dataset,
        layout: ConditioningLayout,
        regression: RegressionFn | None = None,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        base_model: RegressionFn | None = None,
    ) -> None:
        self.builder = builder
        self.coarse = coarse
        self.layout = layout
        self.regression = regression
        self.batch_size = batch_size
        self.device = device
        self.base_model = base_model
        self._blocks: OrderedDict[int, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        count, channels = len(layout.times), len(builder.variables)
        grid = (layout.latitude.size, layout.longitude.size)
        self.cond_fields = LazyRows(self, "cond", (count, len(layout.channel_names), *grid))
        self.base = LazyRows(self, "base", (count, channels, *grid))

    # -- the attributes of a Conditioning ----------------------------------------------------------------------
    @property
    def latitude(self) -> np.ndarray:
        return self.layout.latitude

    @property
    def longitude(self) -> np.ndarray:
        return self.layout.longitude

    @property
    def times(self) -> np.ndarray:
        return self.layout.times

    @property
    def channel_names(self) -> list[str]:
        return self.layout.channel_names

    @property
    def units(self) -> dict[str, str | None]:
        return self.layout.units

    def with_base_model(self, model: RegressionFn) -> LazyConditioning:
        """The same input with b = ``model``(c) (a regression run's own prediction)."""
        return LazyConditioning(
            self.builder, self.coarse, self.layout, self.regression, self.batch_size, self.device, base_model=model
        )

    # -- blocks -------------------------------------------------------------------------------------------------
    def rows(self, part: str, index: int) -> torch.Tensor:
        """Time ``index``'s c (``cond``) or b (``base``)."""
        number = index // self.batch_size
        block = self._blocks.get(number)
        if block is None:
            block = self._block(number)
            self._blocks[number] = block
            while len(self._blocks) > KEPT_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(number)
        cond, base = block
        row = index - number * self.batch_size
        if part == "cond":
            return cond[row]
        if base is None:
            raise ConfigError("data.target = 'regression_residual' needs the regression model of its base")
        return base[row]

    def conditioning_rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """c of the times ``start`` .. ``stop`` - 1 and their upsampled coarse fields, formed now and not kept (no
        base: the regression model is not run)."""
        from diffscale.data.climate.conditioning import _fields_tensor

        values = _fields_tensor(self.coarse.isel(time=slice(start, stop)).load(), self.builder.variables)
        return self.builder.conditioning(self.layout, values, range(start, stop))

    def _block(self, number: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        from diffscale.data.climate.conditioning import regression_base

        start = number * self.batch_size
        stop = min(start + self.batch_size, len(self.layout.times))
        cond, upsampled = self.conditioning_rows(start, stop)
        channels = len(self.builder.variables)
        if self.base_model is not None:
            base = regression_base(self.base_model, cond, channels, self.batch_size, self.device)
        elif self.builder.target == "regression_residual":
            base = (
                None
                if self.regression is None
                else regression_base(self.regression, cond, channels, self.batch_size, self.device)
            )
        else:
            base = self.builder.plain_base(upsampled)
        return cond, base
