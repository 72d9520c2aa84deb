"""diffscale.data.climate.assembly: a streamed batch (each sample read and assembled on its window) is bitwise the
batch of the in-memory sampler, which built the conditioning of every time on the whole grid and cropped it.

The reference below is that sampler (as the dataset had it before it streamed), fed with whole-grid fields:
the loaded fine fields, their block means over the whole grid, and the conditioning builder's whole-grid
upsampling, statics and channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from diffscale.config.climate import ClimateData
from diffscale.data.batch import Batch
from diffscale.data.climate import ClimateDataset, ConditioningBuilder, area_weights, block_centres
from diffscale.data.climate.conditioning import _fields_tensor
from diffscale.data.climate.dataset import latitude_row_weights
from diffscale.data.climate.grid import block_mean, coarsen, upsample
from diffscale.data.climate.io import open_fields
from diffscale.data.climate.splits import load_fine
from diffscale.loss import ROW_WEIGHTS
from diffscale.validation import ConfigError, validate

TIMES = pd.date_range("2021-01-01", periods=10, freq="3h").values


# -- the in-memory sampler of before (the reference) -------------------------------------------------------------
def _randint(high: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else None
    return torch.randint(high, (count,), generator=generator, device=device).cpu()


def _gather(fields: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    batch = torch.arange(fields.shape[0])[:, None, None]
    patches = fields.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return patches.permute(0, 3, 1, 2)


class InMemorySampler:
    """Every time's fields held as tensors; batches drawn exactly as the dataset drew them before streaming."""

    def __init__(self, section: ClimateData, stats: dict, coarse_file: Path | None = None) -> None:
        fine = load_fine(section, "train")
        self.section = section
        builder = ConditioningBuilder.from_section(section, stats)
        expected = {name: builder.transforms.units(name) for name in section.variables}
        factor = section.coarsen_factor
        latitude, longitude = fine["latitude"].values, fine["longitude"].values
        if coarse_file is None:  # the block means of the whole grid, in float64, then the fields' dtype
            weights = torch.from_numpy(area_weights(latitude))
            coarse = xr.Dataset(
                {
                    name: (
                        ("time", "latitude", "longitude"),
                        block_mean(torch.tensor(fine[name].values, dtype=torch.float64), factor, weights)
                        .numpy()
                        .astype(fine[name].dtype),
                        fine[name].attrs,
                    )
                    for name in section.variables
                },
                coords={
                    "time": fine["time"].values,
                    "latitude": block_centres(latitude, factor),
                    "longitude": block_centres(longitude, factor),
                },
            )
        else:
            coarse = open_fields(coarse_file, section.variables).sel(time=fine["time"].values).load()
        periodic = section.periodic_longitude
        builder.periodic_longitude = periodic
        conditioning = builder.build(coarse)
        self.cond_fields = conditioning.cond_fields
        self.base = conditioning.base
        self.normalised = builder.transforms.forward_channels(
            _fields_tensor(fine, section.variables), section.variables
        )
        self.latitude = latitude
        self.width = longitude.size
        self.periodic = bool(periodic)
        del expected

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        index = _randint(self.normalised.shape[0], batch_size, generator)
        target = self.normalised[index] - self.base[index]
        cond = self.cond_fields[index]
        rows = None
        if self.section.patch is not None:
            h, w = self.section.patch
            height, width = self.latitude.size, self.width
            top = _randint(height - h + 1, batch_size, generator)
            left = _randint(width if self.periodic else width - w + 1, batch_size, generator)
            rows = top[:, None] + torch.arange(h)
            cols = (left[:, None] + torch.arange(w)) % width
            target, cond = _gather(target, rows, cols), _gather(cond, rows, cols)
        fields = {"cond_fields": cond.contiguous()}
        if self.section.latitude_weighted_loss:
            latitude = torch.tensor(self.latitude, dtype=torch.float64)
            rows_latitude = latitude[rows] if rows is not None else latitude.expand(batch_size, -1)
            fields[ROW_WEIGHTS] = latitude_row_weights(rows_latitude).contiguous()
        return Batch(target.contiguous(), fields)


def assert_same_batches(streamed: ClimateDataset, reference: InMemorySampler, steps: int = 4, batch: int = 6) -> None:
    new, old = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(steps):
        a, b = streamed.sample(batch, new), reference.sample(batch, old)
        assert torch.equal(a.target, b.target)
        assert a.cond.keys() == b.cond.keys()
        for key in a.cond:
            assert torch.equal(a.cond[key], b.cond[key]), key
    assert torch.equal(new.get_state(), old.get_state())  # the same draws, in the same order


# -- data ----------------------------------------------------------------------------------------------------------
def regional_file(root: Path) -> Path:
    rng = np.random.default_rng(3)
    latitude = np.arange(58.0, 49.9, -0.5)  # 17 rows, descending: trimmed to 16 for f = 4
    longitude = np.arange(-10.0, 2.0, 0.5)  # 24 columns
    t2m = 280.0 + np.cumsum(rng.normal(size=(10, 17, 24)), axis=-1)
    tp = rng.exponential(0.002, size=(10, 17, 24))
    xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), t2m.astype(np.float32), {"units": "K"}),
            "tp": (("time", "latitude", "longitude"), tp.astype(np.float32), {"units": "m"}),
        },
        coords={"time": TIMES, "latitude": latitude, "longitude": longitude},
    ).to_netcdf(root / "regional.nc")
    z = rng.uniform(0, 2000, size=(1, 40, 60))
    xr.Dataset(
        {"z": (("time", "latitude", "longitude"), z, {"units": "m**2 s**-2"})},
        coords={"time": TIMES[:1], "latitude": np.arange(45.0, 65.0, 0.5), "longitude": np.arange(-15.0, 15.0, 0.5)},
    ).to_netcdf(root / "statics.nc")
    return root / "regional.nc"


def global_file(root: Path) -> Path:
    rng = np.random.default_rng(4)
    latitude = np.arange(-84.0, 90.0, 12.0)  # 15 rows
    longitude = np.arange(0.0, 360.0, 10.0)  # 36 columns round the globe
    values = 250.0 + 20.0 * rng.normal(size=(10, 15, 36))
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values)},  # float64 on file
        coords={"time": TIMES, "latitude": latitude, "longitude": longitude},
    ).to_netcdf(root / "global.nc")
    return root / "global.nc"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assembly")
    return {"regional": regional_file(root), "global": global_file(root), "root": root}


def regional(files: dict[str, Path], **overrides: Any) -> ClimateData:
    data = {
        "paths": [str(files["regional"])],
        "variables": ["t2m", "tp"],
        "transforms": {"tp": "log1p"},
        "coarsen_factor": 4,
        "static_paths": [str(files["root"] / "statics.nc")],
        "static_variables": ["orography"],
        "channels": {"latlon": True, "hour": True, "day_of_year": True},
        "patch": [8, 12],
        "periodic_longitude": False,
        **overrides,
    }
    return validate(ClimateData, data, prefix="data")


# -- tests ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("target", ["residual", "fine"])
def test_regional_patches_are_bitwise_those_of_the_in_memory_sampler(
    files: dict[str, Path], interpolation: str, target: str
) -> None:
    section = regional(files, interpolation=interpolation, target=target, latitude_weighted_loss=True)
    streamed = ClimateDataset(section, "train")
    assert_same_batches(streamed, InMemorySampler(section, streamed.stats))


def test_whole_domain_batches_are_bitwise_those_of_the_in_memory_sampler(files: dict[str, Path]) -> None:
    section = regional(files, patch=None, latitude_weighted_loss=True)
    streamed = ClimateDataset(section, "train")
    assert_same_batches(streamed, InMemorySampler(section, streamed.stats), steps=2)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_patches_across_the_date_line_are_bitwise_those_of_the_in_memory_sampler(
    files: dict[str, Path], interpolation: str
) -> None:
    section = validate(
        ClimateData,
        {
            "paths": [str(files["global"])],
            "coarsen_factor": 3,
            "patch": [6, 15],
            "interpolation": interpolation,
            "periodic_longitude": True,
            "channels": {"latlon": True},
        },
    )
    streamed = ClimateDataset(section, "train")
    assert streamed.periodic_longitude
    reference = InMemorySampler(section, streamed.stats)
    assert_same_batches(streamed, reference, steps=8)
    # the draws do reach across the seam: some window holds columns 35 and 0
    generator = torch.Generator().manual_seed(11)
    lefts = torch.cat([streamed.draw(6, generator).lefts for _ in range(8)])
    assert bool((lefts > 36 - 15).any())


def test_coarse_files_give_bitwise_the_in_memory_conditioning(files: dict[str, Path], tmp_path: Path) -> None:
    fine = load_fine(regional(files), "train")
    weights = torch.from_numpy(area_weights(fine["latitude"].values))
    coarse = xr.Dataset(
        {
            name: (
                ("time", "latitude", "longitude"),
                block_mean(torch.tensor(fine[name].values, dtype=torch.float64), 4, weights).numpy()[:, ::-1],
                {"units": fine[name].attrs["units"]},
            )
            for name in ("t2m", "tp")
        },
        coords={
            "time": TIMES,
            "latitude": block_centres(fine["latitude"].values, 4)[::-1],
            "longitude": block_centres(fine["longitude"].values, 4),
        },
    )
    coarse.to_netcdf(tmp_path / "coarse.nc")
    section = regional(files, coarse_paths=[str(tmp_path / "coarse.nc")], interpolation="bicubic")
    streamed = ClimateDataset(section, "train")
    assert_same_batches(streamed, InMemorySampler(section, streamed.stats, coarse_file=tmp_path / "coarse.nc"))


def test_a_window_upsamples_bitwise_as_the_whole_field_and_reads_only_its_margin(files: dict[str, Path]) -> None:
    section = regional(files, static_variables=[], static_paths=[], channels={}, interpolation="bicubic")
    dataset = ClimateDataset(section, "train")
    assembler = dataset.assembler
    reads: list[tuple[Any, Any]] = []
    original = assembler.fine.read

    def counting_read(index: int, rows: Any = None, columns: Any = None, **options: Any) -> Any:
        reads.append((rows, columns))
        return original(index, rows, columns, **options)

    assembler.fine.read = counting_read  # type: ignore[method-assign]
    rows, columns = assembler.window(4, 8, 4, 4)  # fine rows 4..7 (coarse row 1), columns 8..11 (coarse column 2)
    window = assembler.sample(3, rows, columns)
    # bicubic: coarse rows 0..3 of 4 (clipped below) and columns 0..4 of 6: their fine blocks only
    assert reads == [(slice(0, 16), slice(0, 20))]
    whole = assembler.sample(3, np.arange(16), np.arange(24))
    assert torch.equal(window.cond, whole.cond[:, 4:8, 8:12])
    assert torch.equal(window.target, whole.target[:, 4:8, 8:12])
    stats = dataset.stats["t2m"]
    fine = torch.tensor(load_fine(section, "train")["t2m"].values[3], dtype=torch.float64)
    coarse = block_mean(fine, 4, torch.from_numpy(area_weights(dataset.latitude)))
    expected = upsample((coarse - stats["mean"]) / stats["std"], 4, "bicubic")
    torch.testing.assert_close(whole.cond[0].double(), expected, rtol=0, atol=1e-5)


def test_a_shifted_block_alignment_coarsens_the_shifted_blocks(files: dict[str, Path]) -> None:
    """The hook for random coarse-lattice alignments: with offset (o_lat, o_lon) the coarse cells are the block
    means of the blocks starting at that fine row and column, i.e. those of the grid cropped there."""
    section = regional(files, static_variables=[], static_paths=[], channels={}, target="fine")
    assembler = ClimateDataset(section, "train").assembler
    shifted = assembler.sample(2, np.arange(2, 14), np.arange(1, 21), alignment=(2, 1)).cond[0]
    fine = torch.tensor(load_fine(section, "train")["t2m"].values[2], dtype=torch.float64)
    weights = torch.from_numpy(area_weights(assembler.latitude))
    coarse = block_mean(fine[2:14, 1:21], 4, weights[2:14])
    stats = assembler.transforms.stats["t2m"]
    expected = upsample(((coarse.float().double() - stats["mean"]) / stats["std"]).float(), 4)
    assert torch.equal(shifted, expected)


def test_random_alignments_are_drawn_after_the_windows_and_applied(files: dict[str, Path]) -> None:
    """``data.random_alignment``: every sample gets an offset in 0 .. f-1 per axis, drawn after the times and
    windows (which stay as without it), and the reader builds the sample on that shifted lattice."""
    plain = ClimateDataset(regional(files, patch=[8, 12], channels={}), "train")
    shifted = ClimateDataset(regional(files, patch=[8, 12], channels={}, random_alignment=True), "train")
    drawn = shifted.draw(400, torch.Generator().manual_seed(5))
    reference = plain.draw(400, torch.Generator().manual_seed(5))
    assert torch.equal(drawn.times, reference.times) and torch.equal(drawn.tops, reference.tops)
    assert drawn.alignments.shape == (400, 2) and set(drawn.alignments.unique().tolist()) == {0, 1, 2, 3}
    counts = torch.bincount(drawn.alignments[:, 0] * 4 + drawn.alignments[:, 1], minlength=16)
    assert counts.min() > 5  # all 16 lattices are seen
    batch = shifted.read(drawn, 0, 3)
    for b in range(3):
        rows, columns = shifted.assembler.window(int(drawn.tops[b]), int(drawn.lefts[b]), 8, 12)
        alignment = tuple(int(value) for value in drawn.alignments[b])
        expected = shifted.assembler.sample(int(drawn.times[b]), rows, columns, alignment)
        assert torch.equal(batch.target[b], expected.target) and torch.equal(
            batch.cond["cond_fields"][b], expected.cond
        )
    if any(tuple(a) != (0, 0) for a in drawn.alignments[:3].tolist()):
        assert not torch.equal(batch.cond["cond_fields"], plain.read(reference, 0, 3).cond["cond_fields"])


def test_random_alignment_needs_coarse_fields_from_the_fine_ones() -> None:
    from diffscale.config import config_from_dict

    data = {"kind": "climate", "paths": ["x.nc"], "random_alignment": True, "coarse_paths": ["c.nc"]}
    with pytest.raises(ConfigError, match="random_alignment shifts the coarse lattice"):
        config_from_dict({"data": data, "model": {"arch": "ddpmpp"}})


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("corner", [(0, 0), (1, 3), (2, 1), (3, 2), (8, 12)])
def test_a_window_coarsened_on_its_own_is_what_downscaling_that_window_gets(
    files: dict[str, Path], corner: tuple[int, int], interpolation: str
) -> None:
    """``data.random_windows``: a training window at any fine row and column, coarsened on its own, shows the
    network exactly the conditioning (and base) that the downscaling builder makes of that window's own block
    means: every alignment of a user's window on the lattice is a training case."""
    section = regional(files, random_windows=True, interpolation=interpolation)
    dataset = ClimateDataset(section, "train")
    rows, columns = dataset.assembler.window(*corner, 8, 12)
    trained = dataset.assembler.sample(3, rows, columns, standalone=True)
    fine = load_fine(section, "train").isel(time=[3], latitude=rows, longitude=columns)
    built = dataset.builder.build(coarsen(fine, 4))
    torch.testing.assert_close(trained.cond, built.cond_fields[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(trained.base, built.base[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(trained.fine, torch.tensor(np.stack([fine[v].values[0] for v in ("t2m", "tp")])))
    if corner[0] % 4 or corner[1] % 4:  # off the grid's lattice: not the grid's coarse cells cropped
        on_grid = dataset.assembler.sample(3, rows, columns)
        assert not torch.allclose(on_grid.cond[0], trained.cond[0], atol=1e-3)


def test_random_windows_train_every_alignment_on_windows_coarsened_on_their_own(files: dict[str, Path]) -> None:
    """The reader builds each drawn window on its own; the windows' corners cover every alignment modulo f."""
    dataset = ClimateDataset(regional(files, random_windows=True), "train")
    drawn = dataset.draw(400, torch.Generator().manual_seed(2))
    alignments = (drawn.tops % 4) * 4 + drawn.lefts % 4
    assert torch.bincount(alignments, minlength=16).min() > 5
    batch = dataset.read(drawn, 0, 3)
    for b in range(3):
        rows, columns = dataset.assembler.window(int(drawn.tops[b]), int(drawn.lefts[b]), 8, 12)
        expected = dataset.assembler.sample(int(drawn.times[b]), rows, columns, standalone=True)
        assert torch.equal(batch.target[b], expected.target)
        assert torch.equal(batch.cond["cond_fields"][b], expected.cond)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"patch": None}, "random_windows needs patch"),
        ({"patch": [8, 10]}, r"patch \[8, 10\] must be whole coarse blocks"),
        ({"target": "regression_residual", "regression_run": "r"}, "random_windows coarsens each window"),
        ({"random_alignment": True}, "exclude each other"),
    ],
)
def test_random_windows_refuses_what_it_cannot_build(
    files: dict[str, Path], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        regional(files, random_windows=True, **overrides)
    assembler = ClimateDataset(regional(files), "train").assembler
    with pytest.raises(ValueError, match="not whole 4 x 4 blocks"):
        assembler.sample(0, np.arange(6), np.arange(8), standalone=True)


@pytest.mark.parametrize("alignment", [(1, 0), (2, 3), (3, 1)])
def test_a_shifted_lattice_in_training_is_what_a_shifted_window_gets_when_downscaled(
    files: dict[str, Path], alignment: tuple[int, int]
) -> None:
    """Training on a lattice shifted by (o_lat, o_lon) shows the network exactly the conditioning that a coarse
    input on that lattice (a window of the grid that starts there) gets from the downscaling builder: so random
    alignments in training cover every window of the grid."""
    o_lat, o_lon = alignment
    section = regional(files, patch=None, random_alignment=True)
    dataset = ClimateDataset(section, "train")
    factor, (height, width) = 4, dataset.assembler.grid_shape
    rows = np.arange(o_lat, o_lat + (height - o_lat) // factor * factor)
    columns = np.arange(o_lon, o_lon + (width - o_lon) // factor * factor)
    trained = dataset.assembler.sample(3, rows, columns, alignment)
    fine = load_fine(section, "train").isel(time=[3], latitude=rows, longitude=columns)
    built = dataset.builder.build(coarsen(fine, factor))
    torch.testing.assert_close(trained.cond, built.cond_fields[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(trained.base, built.base[0], rtol=0, atol=2e-6)
