"""diffscale.data.climate.blocks: the conditioning of a long coarse input formed block by block is bitwise what
the whole input gives, reads only a block at a time, and finds NaNs before anything is sampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from diffscale.config.climate import ClimateData
from diffscale.data.climate import ConditioningBuilder
from diffscale.data.climate.blocks import KEPT_BLOCKS
from diffscale.data.climate.transforms import fit_stats
from diffscale.validation import ConfigError, validate

TIMES = pd.date_range("2022-01-01", periods=37, freq="h").values  # 2 blocks of 16 and one of 5


def coarse_input(path: Path) -> xr.Dataset:
    rng = np.random.default_rng(2)
    values = 270.0 + 10.0 * rng.random((TIMES.size, 4, 6))
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values.astype(np.float32), {"units": "K"})},
        coords={"time": TIMES, "latitude": np.arange(46.0, 50.0), "longitude": np.arange(0.0, 6.0)},
    ).to_zarr(path, encoding={"t2m": {"chunks": (1, 4, 6)}}, consolidated=False)
    return xr.open_zarr(path, consolidated=False)  # dask-backed, one chunk per time


def builder(target: str, tmp_path: Path) -> ConditioningBuilder:
    section = validate(
        ClimateData,
        {
            "paths": [str(tmp_path / "unused.nc")],
            "coarsen_factor": 4,
            "interpolation": "bicubic",
            "target": target,
            "regression_run": "unused" if target == "regression_residual" else None,
            "channels": {"latlon": True, "hour": True, "day_of_year": True},
        },
    )
    stats = fit_stats({"t2m": np.array([265.0, 285.0])})
    stats["t2m"]["units"] = "K"
    return ConditioningBuilder.from_section(section, stats)


def regression(cond: torch.Tensor) -> torch.Tensor:
    """A stand-in regression model: depends on the whole batch (as a network's rounding may)."""
    return cond[:, :1] * (1.0 + cond[:, 3:4].mean())


@pytest.mark.parametrize("target", ["residual", "regression_residual"])
def test_blocks_are_bitwise_the_whole_input_and_only_a_few_are_kept(tmp_path: Path, target: str) -> None:
    coarse = coarse_input(tmp_path / "coarse.zarr")
    build = builder(target, tmp_path)
    whole = build.build(coarse.load(), regression=regression)
    lazy = build.blocks(coarse, regression=regression)
    assert lazy.cond_fields.shape == whole.cond_fields.shape and len(lazy.base) == TIMES.size
    order = torch.tensor([36, 3, 17, 16, 0, 35, 20, 4])  # any order, across blocks
    assert torch.equal(lazy.cond_fields[order], whole.cond_fields[order])
    assert torch.equal(lazy.base[order], whole.base[order])
    assert len(lazy._blocks) <= KEPT_BLOCKS
    np.testing.assert_array_equal(lazy.times, whole.times)
    assert lazy.channel_names == whole.channel_names and lazy.units == whole.units == {"t2m": "K"}


def test_a_block_reads_only_its_times(tmp_path: Path) -> None:
    coarse = coarse_input(tmp_path / "coarse.zarr")
    lazy = builder("residual", tmp_path).blocks(coarse)
    read: list[np.ndarray] = []

    class Recording:
        """The coarse fields, recording which times are selected from them."""

        def __init__(self, ds: xr.Dataset) -> None:
            self.ds = ds

        def isel(self, **selection: slice) -> xr.Dataset:
            part = self.ds.isel(**selection)
            read.append(part["time"].values)
            return part

    lazy.coarse = Recording(lazy.coarse)  # type: ignore[assignment]
    lazy.cond_fields[torch.tensor([20, 21])]
    lazy.base[torch.tensor([33])]
    assert [times.size for times in read] == [16, 5]
    np.testing.assert_array_equal(read[0], TIMES[16:32])


def test_nan_in_a_long_input_is_found_before_sampling(tmp_path: Path) -> None:
    coarse = coarse_input(tmp_path / "coarse.zarr").load()
    coarse["t2m"][30, 1, 2] = np.nan
    with pytest.raises(ConfigError, match=r"variable 't2m' has NaN/inf values at time 2022-01-02T06:00 \(1 of 37"):
        builder("residual", tmp_path).blocks(coarse.chunk({"time": 1}))
