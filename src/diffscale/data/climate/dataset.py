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

:class:`ConditioningBuilder` turns a coarse dataset (the coarsened training fields, or a user's coarse file at
downscaling time) into (c, b, fine grid, times); :class:`ClimateDataset` uses that same builder for its own
coarse fields, so training and downscaling cannot diverge.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from diffscale.data.batch import Batch
from diffscale.data.climate.assembly import BaseFields, CoarseFiles, SampleAssembler
from diffscale.data.climate.channels import LATLON_NAMES, latlon_channels, time_channel_names, time_channels
from diffscale.data.climate.grid import (
    GridTrim,
    area_weights,
    block_centres,
    check_divisible,
    check_factor,
    fine_coordinates,
    grid_indices,
    grid_spacing,
    is_global_longitude,
    select_grid,
    trim_to_factor,
    upsample,
)
from diffscale.data.climate.io import expand_paths, harmonise, open_dataset, open_fields, select_fields
from diffscale.data.climate.regrid import regrid_bilinear
from diffscale.data.climate.series import FieldSeries, GridWindow, check_field_dims, format_time
from diffscale.data.climate.transforms import TRANSFORMS, Transforms, fit_stats, lazy_moments, stats_entry
from diffscale.data.climate.units import convert_units
from diffscale.loss import ROW_WEIGHTS
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData
    from diffscale.data.climate.blocks import LazyConditioning

__all__ = [
    "ClimateBatchReader",
    "ClimateDataset",
    "ClimateFields",
    "Conditioning",
    "ConditioningBuilder",
    "ConditioningLayout",
    "SampleIndices",
    "check_finite",
    "fit_climate_stats",
    "latitude_row_weights",
    "load_fine",
    "load_fine_grid",
    "load_statics",
    "model_grid",
    "open_fine_series",
    "regression_base",
    "statics_on_grid",
    "stats_time_indices",
    "streaming_variable_stats",
    "target_shape",
    "write_base_store",
]

RegressionFn = Callable[[torch.Tensor], torch.Tensor]
logger = logging.getLogger(__name__)


# -- helpers shared by training and downscaling --------------------------------------------------------------
def check_finite(ds: xr.Dataset, variables: Sequence[str], source: str) -> None:
    """ConfigError naming the variable and the first time with a NaN or infinite value (``ds`` loaded)."""
    for name in variables:
        values = np.asarray(ds[name].values)
        bad = ~np.isfinite(values)
        if bad.any():
            if "time" in ds[name].dims:
                axis = ds[name].dims.index("time")
                per_time = bad.any(axis=tuple(i for i in range(bad.ndim) if i != axis))
                when = np.datetime_as_string(ds["time"].values[int(np.argmax(per_time))], unit="m")
                raise ConfigError(
                    f"{source}: variable {name!r} has NaN/inf values at time {when} "
                    f"({int(per_time.sum())} of {per_time.size} times affected)"
                )
            raise ConfigError(f"{source}: variable {name!r} has NaN/inf values ({int(bad.sum())} points)")


def _require_variables(ds: xr.Dataset, variables: Sequence[str], source: str) -> None:
    missing = [name for name in variables if name not in ds.data_vars]
    if missing:
        raise ConfigError(
            f"{source}: variable {', '.join(map(repr, missing))} missing; it has: "
            f"{', '.join(map(str, ds.data_vars)) or 'no data variables'}"
        )


def _check_dims(ds: xr.Dataset, variables: Sequence[str], source: str) -> None:
    """Each variable must be a field over (time, latitude, longitude) alone."""
    check_field_dims(ds, variables, source)


def _fields_tensor(ds: xr.Dataset, variables: Sequence[str]) -> torch.Tensor:
    """(T, C, H, W) float32 of the (loaded) variables."""
    return torch.stack([torch.as_tensor(np.asarray(ds[name].values, dtype=np.float32)) for name in variables], dim=1)


def regression_base(
    fn: RegressionFn,
    cond_fields: torch.Tensor,
    channels: int,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """b = R(c) for every time, evaluated in batches (no gradients) on ``device`` and stored as float32 on CPU.

    Args:
        fn: the regression model R: cond_fields (B, K, H, W) -> normalised fine-field prediction (B, C, H, W).
        cond_fields: (T, K, H, W).
        channels: C, checked against what ``fn`` returns.
    """
    outputs = []
    with torch.no_grad():
        for start in range(0, cond_fields.shape[0], batch_size):
            chunk = cond_fields[start : start + batch_size]
            if device is not None:
                chunk = chunk.to(device)
            out = fn(chunk)
            expected = (chunk.shape[0], channels, *chunk.shape[-2:])
            if tuple(out.shape) != expected:
                raise ValueError(f"the regression model returned shape {tuple(out.shape)}; expected {expected}")
            outputs.append(out.detach().to("cpu", torch.float32))
    if not outputs:
        return torch.zeros(0, channels, *cond_fields.shape[-2:])
    return torch.cat(outputs)


def load_statics(paths: Sequence[str], variables: Sequence[str]) -> xr.Dataset | None:
    """The static fields (harmonised, first time if they have one) or None when none are asked for."""
    if not variables:
        return None
    statics = open_fields(paths, variables)
    if "time" in statics.dims:
        statics = statics.isel(time=0, drop=True)
    return statics


def statics_on_grid(
    statics: xr.Dataset,
    variables: Sequence[str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    interpolation: str = "bilinear",
) -> xr.Dataset:
    """The static ``variables`` on the fine grid (loaded, checked for NaNs), from any grid that covers it.

    ``interpolation``: ``bilinear`` (:func:`~diffscale.data.climate.regrid.regrid_bilinear`: copied where the
    points coincide, bilinear in latitude/longitude elsewhere) or ``none`` (the points must coincide; matched
    by coordinates within 1 % of a step). ``attrs["regridding"]`` says what was done: ``exact`` or ``bilinear``.

    Raises:
        ConfigError: the statics do not cover the grid (naming the uncovered range), do not line up
            (``none``), or have NaNs there.
    """
    if interpolation == "bilinear":
        matched = regrid_bilinear(statics[list(variables)], latitude, longitude, "static fields")
    elif interpolation == "none":
        matched = select_grid(statics[list(variables)], latitude, longitude, "static fields").load()
        matched.attrs["regridding"] = "exact"
    else:
        raise ConfigError(f"data.static_interpolation = {interpolation!r}: allowed: bilinear, none")
    check_finite(matched, variables, "static fields")
    return matched


def latitude_row_weights(latitude: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Loss weights of rows at latitudes phi (..., h) in degrees: w_i = cos(phi_i) / mean_k cos(phi_k) over
    the last axis (mean 1 per sample; a pole row weighs 0; a sample whose rows all sit at a pole gets 1s)."""
    cosine = area_weights(torch.as_tensor(latitude, dtype=torch.float64))
    mean = cosine.mean(dim=-1, keepdim=True)
    weights = torch.where(mean > 0, cosine / mean.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    return weights.to(torch.float32)


# -- conditioning --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conditioning:
    """What a coarse dataset gives the model: ``cond_fields`` (T, K, H, W) float32, ``base`` (T, C, H, W)
    normalised (None for ``regression_residual`` until a regression model is given), the fine grid
    ``latitude`` (H,) and ``longitude`` (W,), ``times`` (T,) datetime64, ``channel_names`` (K) and ``units``:
    those of each variable after conversion, i.e. of the fields generated from it (None where unknown)."""

    cond_fields: torch.Tensor
    base: torch.Tensor | None
    latitude: np.ndarray
    longitude: np.ndarray
    times: np.ndarray
    channel_names: list[str]
    units: dict[str, str | None] = field(default_factory=dict)


class ConditioningBuilder:
    """Coarse fields x (an xarray Dataset) -> conditioning c and base b on the fine grid (module docstring).

    Args:
        variables: the modelled variables (canonical names), in channel order.
        transforms: the fitted per-variable transforms (statistics of the variables and of the statics).
        factor: f, fine cells per coarse cell along each axis.
        statics: static fields (harmonised Dataset, any grid that contains the fine grid) or None.
        static_variables: which of them to use, in channel order.
        latlon, hour, day_of_year: add those channels.
        target: ``fine`` | ``residual`` | ``regression_residual``: which base b to build.
        interpolation: ``bilinear`` | ``bicubic``.
        periodic_longitude: wrap in longitude; None: when the fine grid is global.
        static_interpolation: ``bilinear`` | ``none``: how the statics reach the fine grid (:func:`statics_on_grid`).

    Fields are converted to the units the transforms record (:func:`~diffscale.data.climate.units.convert_units`;
    nothing is checked for statistics without units).
    """

    def __init__(
        self,
        variables: Sequence[str],
        transforms: Transforms,
        factor: int,
        statics: xr.Dataset | None = None,
        static_variables: Sequence[str] = (),
        latlon: bool = False,
        hour: bool = False,
        day_of_year: bool = False,
        target: str = "residual",
        interpolation: str = "bilinear",
        periodic_longitude: bool | None = None,
        static_interpolation: str = "bilinear",
    ) -> None:
        if target not in ("fine", "residual", "regression_residual"):
            raise ConfigError(f"data.target = {target!r}: allowed: fine, residual, regression_residual")
        if static_variables and statics is None:
            raise ConfigError(f"static variables {list(static_variables)} asked for without static fields")
        if statics is not None:
            _require_variables(statics, static_variables, "static fields")
        self.variables = list(variables)
        self.transforms = transforms
        self.factor = factor
        self.statics = statics
        self.static_variables = list(static_variables)
        self.latlon, self.hour, self.day_of_year = latlon, hour, day_of_year
        self.target = target
        self.interpolation = interpolation
        self.periodic_longitude = periodic_longitude
        self.static_interpolation = static_interpolation
        self.static_regridding: str | None = None
        """What :meth:`static_fields` last did: ``exact`` or ``bilinear`` (None before, or without statics)."""

    @classmethod
    def from_section(cls, section: ClimateData, stats: Mapping[str, Any] | Transforms) -> ConditioningBuilder:
        """The builder of a ``data: {kind: climate}`` section with a run's statistics (reads the static files)."""
        transforms = stats if isinstance(stats, Transforms) else Transforms(stats)
        return cls(
            variables=section.variables,
            transforms=transforms,
            factor=section.coarsen_factor,
            statics=load_statics(section.static_paths, section.static_variables),
            static_variables=section.static_variables,
            latlon=section.channels.latlon,
            hour=section.channels.hour,
            day_of_year=section.channels.day_of_year,
            target=section.target,
            interpolation=section.interpolation,
            periodic_longitude=section.periodic_longitude,
            static_interpolation=section.static_interpolation,
        )

    def to_physical(self, normalised_fine: torch.Tensor) -> torch.Tensor:
        """y = T^-1(z) per variable of a normalised fine field (..., C, H, W) (a generated residual plus the
        base b of :meth:`build`); on the input's device."""
        return self.transforms.inverse_channels(normalised_fine, self.variables)

    @property
    def channel_names(self) -> list[str]:
        """Names of the K conditioning channels, in order."""
        names = [f"{name}_coarse" for name in self.variables] + self.static_variables
        if self.latlon:
            names += LATLON_NAMES
        return names + time_channel_names(self.hour, self.day_of_year)

    def _expected_units(self, variables: Sequence[str]) -> dict[str, str | None]:
        return {name: self.transforms.stats.get(name, {}).get("units") for name in variables}

    def static_fields(self, latitude: np.ndarray, longitude: np.ndarray) -> xr.Dataset | None:
        """The statics on the fine grid (loaded; :func:`statics_on_grid`, then in the recorded units); the
        method used is kept in :attr:`static_regridding`. ConfigError when they do not cover the grid."""
        if not self.static_variables:
            return None
        matched = statics_on_grid(self.statics, self.static_variables, latitude, longitude, self.static_interpolation)
        self.static_regridding = matched.attrs["regridding"]
        return convert_units(matched, self._expected_units(self.static_variables), source="static fields")

    def fixed_channels(self, latitude: np.ndarray, longitude: np.ndarray) -> torch.Tensor:
        """The channels that do not change with time, (K_f, H, W) float32 on the fine grid: the standardised
        statics (:meth:`static_fields`), then latitude / longitude (with ``latlon``)."""
        parts = []
        statics = self.static_fields(latitude, longitude)
        if statics is not None:
            parts.append(
                torch.stack(
                    [
                        self.transforms.forward(torch.as_tensor(statics[name].values), name)
                        for name in self.static_variables
                    ]
                ).to(torch.float32)
            )
        if self.latlon:
            parts.append(latlon_channels(latitude, longitude))
        if not parts:
            return torch.zeros(0, np.asarray(latitude).size, np.asarray(longitude).size)
        return torch.cat(parts).to(torch.float32)

    def prepare(self, coarse: xr.Dataset) -> tuple[xr.Dataset, ConditioningLayout]:
        """The coarse fields checked and put in the recorded units (lazy arrays stay lazy), and what their
        conditioning has that does not depend on their values (:class:`ConditioningLayout`).

        Raises:
            ConfigError: a variable is missing, is in units that do not convert to the recorded ones, or the
                statics do not cover the grid.
        """
        coarse = harmonise(coarse, source="coarse fields")
        _require_variables(coarse, self.variables, "coarse fields")
        _check_dims(coarse, self.variables, "coarse fields")
        coarse = convert_units(coarse[self.variables], self._expected_units(self.variables), source="coarse fields")
        latitude, longitude = fine_coordinates(coarse["latitude"].values, coarse["longitude"].values, self.factor)
        periodic = is_global_longitude(longitude) if self.periodic_longitude is None else self.periodic_longitude
        times = coarse["time"].values
        table = time_channels(times, 1, 1, hour=self.hour, day_of_year=self.day_of_year)[:, :, 0, 0].contiguous()
        layout = ConditioningLayout(
            latitude=latitude,
            longitude=longitude,
            times=times,
            periodic=bool(periodic),
            fixed_channels=self.fixed_channels(latitude, longitude),
            time_table=table,
            channel_names=self.channel_names,
            units={name: coarse[name].attrs.get("units") for name in self.variables},
        )
        return coarse, layout

    def conditioning(
        self, layout: ConditioningLayout, values: torch.Tensor, indices: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c (B, K, H, W), U(T(x)) (B, C, H, W)) of coarse ``values`` (B, C, h, w) in physical units at the time
        indices ``indices`` of ``layout`` (every value computed on its own: any grouping of times gives the same)."""
        normalised = self.transforms.forward_channels(values, self.variables)
        upsampled = upsample(normalised, self.factor, mode=self.interpolation, periodic_longitude=layout.periodic)
        count = upsampled.shape[0]
        height, width = upsampled.shape[-2:]
        parts = [upsampled, layout.fixed_channels[None].expand(count, -1, -1, -1)]
        if layout.time_table.shape[1]:
            rows = layout.time_table[torch.as_tensor(list(indices), dtype=torch.long)]
            parts.append(rows[:, :, None, None].expand(-1, -1, height, width))
        return torch.cat(parts, dim=1).to(torch.float32).contiguous(), upsampled

    def plain_base(self, upsampled: torch.Tensor) -> torch.Tensor | None:
        """b of ``fine`` (0) and ``residual`` (U(T(x))) targets; None for ``regression_residual``."""
        if self.target == "fine":
            return torch.zeros_like(upsampled)
        if self.target == "residual":
            return upsampled.clone()
        return None

    def build(
        self,
        coarse: xr.Dataset,
        regression: RegressionFn | None = None,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> Conditioning:
        """c and b for every time of ``coarse`` (harmonised here; extra variables ignored), all in memory
        (:meth:`blocks` gives them a group of times at a time).

        Args:
            coarse: the coarse fields (physical units) with dims (time, latitude, longitude).
            regression: R for ``target: regression_residual`` (cond_fields (B, K, H, W) -> (B, C, H, W)); without
                it b is None for that target.
            batch_size, device: how R is evaluated (:func:`regression_base`).

        Raises:
            ConfigError: a variable is missing, has NaNs (naming it and the time), is in units that do not convert
                to the recorded ones, or the statics do not cover the grid.
        """
        coarse, layout = self.prepare(coarse)
        coarse = coarse.load()
        check_finite(coarse, self.variables, "coarse fields")
        values = _fields_tensor(coarse, self.variables)
        cond_fields, upsampled = self.conditioning(layout, values, range(values.shape[0]))
        base = self.plain_base(upsampled)
        if self.target == "regression_residual" and regression is not None:
            base = regression_base(regression, cond_fields, len(self.variables), batch_size, device)
        return Conditioning(
            cond_fields, base, layout.latitude, layout.longitude, layout.times, layout.channel_names, layout.units
        )

    def blocks(
        self,
        coarse: xr.Dataset,
        regression: RegressionFn | None = None,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> LazyConditioning:
        """c and b of ``coarse`` computed ``batch_size`` consecutive times at a time, when they are asked for
        (:class:`~diffscale.data.climate.blocks.LazyConditioning`): the coarse input is read block by block and
        memory stays bounded whatever its length; the values are bitwise those of :meth:`build`. NaNs are looked
        for now, in one streaming pass.

        Raises:
            ConfigError: as :meth:`build`.
        """
        from diffscale.data.climate.blocks import LazyConditioning, check_finite_lazily

        coarse, layout = self.prepare(coarse)
        check_finite_lazily(coarse, self.variables, "coarse fields")
        return LazyConditioning(self, coarse, layout, regression, batch_size, device)


@dataclass(frozen=True)
class ConditioningLayout:
    """What a coarse input's conditioning has whatever its values: the fine grid, the times, whether longitude
    wraps, the static and position channels (K_f, H, W), the time channels of every time (T, K_t), the channel
    names and the units of the (converted) variables."""

    latitude: np.ndarray
    longitude: np.ndarray
    times: np.ndarray
    periodic: bool
    fixed_channels: torch.Tensor
    time_table: torch.Tensor
    channel_names: list[str]
    units: dict[str, str | None]


# -- reading a split -----------------------------------------------------------------------------------------
def _time_selection(section: ClimateData, split: str) -> tuple[slice | None, list[tuple[Any, Any]]]:
    try:
        period = section.period(split)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return (None if period is None else slice(*period)), section.excluded_periods(split)


def _crop(ds: xr.Dataset, section: ClimateData) -> xr.Dataset:
    crop = section.crop
    if crop is None:
        return ds
    selection = {}
    for key, axis in (("lat", "latitude"), ("lon", "longitude")):
        window = getattr(crop, key)
        if window is None:
            continue
        if window[1] > ds.sizes[axis]:
            raise ConfigError(
                f"data.crop.{key} = {list(window)} exceeds the fine grid's {ds.sizes[axis]} {axis} points"
            )
        selection[axis] = slice(*window)
    return ds.isel(selection)


def model_grid(ds: xr.Dataset, section: ClimateData) -> tuple[xr.Dataset, GridTrim]:
    """The files' grid cropped (``data.crop``) and trimmed to a multiple of the factor (``data.remainder``)."""
    return trim_to_factor(
        _crop(ds, section),
        section.coarsen_factor,
        section.remainder,
        section.periodic_longitude,
        what="fine grid" if section.crop is None else "cropped fine grid",
    )


def load_fine(section: ClimateData, split: str) -> xr.Dataset:
    """The fine fields of ``split`` on the model's grid (:func:`load_fine_grid`)."""
    return load_fine_grid(section, split)[0]


def load_fine_grid(section: ClimateData, split: str) -> tuple[xr.Dataset, GridTrim]:
    """The fine fields of ``split`` (harmonised, cropped, trimmed to the factor, loaded, checked for NaNs) and
    what the trimming dropped (logged when it dropped anything)."""
    period, excluded = _time_selection(section, split)
    fine = open_fields(section.paths, section.variables, time_slice=period)
    _check_dims(fine, section.variables, ", ".join(section.paths))
    for start, end in excluded:
        times = fine["time"].values
        fine = fine.isel(time=np.flatnonzero((times < start) | (times > end)))
    if fine.sizes["time"] == 0:
        everything = open_fields(section.paths, section.variables)["time"].values
        span = (
            f"the files cover {np.datetime_as_string(everything.min(), unit='h')} .. "
            f"{np.datetime_as_string(everything.max(), unit='h')}"
            if everything.size
            else "the files have no times"
        )
        raise ConfigError(f"no fields in the {split} split (data.{split}_period); {span}")
    fine, trim = model_grid(fine, section)
    if trim.dropped:
        logger.warning("data (%s split): %s (data.remainder: trim)", split, trim.describe())
    fine = fine.load()
    check_finite(fine, section.variables, ", ".join(section.paths))
    return fine, trim


def fit_climate_stats(
    section: ClimateData, fine: xr.Dataset | None = None, *, series: FieldSeries | None = None
) -> dict[str, dict[str, Any]]:
    """Statistics of the train split (variables with their transforms, statics standardised over the fine
    domain): a JSON-able dict for :class:`~diffscale.data.climate.transforms.Transforms`. Each entry also
    records the field's ``units`` attribute when it has one (later fields are converted to those units).

    The variables' statistics are one streaming pass over the files (:func:`streaming_variable_stats`: dask
    reductions chunk by chunk, on ``data.stats_times`` evenly spaced times when that is set) unless ``fine``, the
    loaded fine fields, is given (then computed from them in memory).

    Args:
        fine: the train split's fine fields when already loaded.
        series: the train split's lazily read fine fields (:func:`open_fine_series`; opened here when None).
    """
    if fine is not None:
        data: dict[str, Any] = {name: fine[name].values for name in section.variables}
        stats = fit_stats(data, section.transforms)
        units = {name: fine[name].attrs.get("units") for name in section.variables}
        latitude, longitude = fine["latitude"].values, fine["longitude"].values
    else:
        if series is None:
            series = open_fine_series(section, "train")[0]
        stats = streaming_variable_stats(series, section.transforms, section.stats_times)
        units = series.units
        latitude, longitude = series.latitude, series.longitude
    statics = load_statics(section.static_paths, section.static_variables)
    if statics is not None:
        matched = statics_on_grid(statics, section.static_variables, latitude, longitude, section.static_interpolation)
        stats.update(fit_stats({name: matched[name].values for name in section.static_variables}))
        units.update({name: matched[name].attrs.get("units") for name in section.static_variables})
    for name, entry in stats.items():
        if units.get(name) is not None and str(units[name]).strip():
            entry["units"] = str(units[name])
    return stats


def stats_time_indices(count: int, limit: int | None) -> np.ndarray:
    """The times the statistics are fitted on: all ``count``, or ``limit`` of them evenly spaced from the first
    to the last (index round(k (count - 1) / (limit - 1)), k = 0 .. limit - 1)."""
    if limit is None or limit >= count:
        return np.arange(count)
    if limit == 1:
        return np.array([0])
    return np.unique(np.round(np.arange(limit) * (count - 1) / (limit - 1)).astype(np.int64))


def streaming_variable_stats(
    series: FieldSeries, transforms: Mapping[str, str] | None = None, limit: int | None = None
) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation of g_v(x) for each variable of ``series``, in one streaming pass.

    Every file's selected times (or ``limit`` of them evenly spaced, :func:`stats_time_indices`) are read as dask
    chunks of a few tens of MB and reduced (:func:`~diffscale.data.climate.transforms.lazy_moments`) together
    with a per-time check for non-finite values, so each chunk is read once and memory stays bounded whatever
    the number of times.

    Raises:
        ConfigError: an unknown transform, or a non-finite value (naming the file, the variable and the first
            time with one).
    """
    import dask
    import dask.array as da

    transforms = dict(transforms or {})
    for name in series.variables:
        transform = transforms.get(name, "standardize")
        if transform not in TRANSFORMS:
            raise ConfigError(f"transform for {name!r} = {transform!r}: allowed: {', '.join(TRANSFORMS)}")
    parts = series.lazy_parts(stats_time_indices(len(series), limit))
    moments, flags = [], []
    for name in series.variables:
        arrays = [ds[name].data for _, ds, _ in parts]
        joined = arrays[0] if len(arrays) == 1 else da.concatenate(arrays, axis=0)
        moments.append(lazy_moments(joined, transforms.get(name, "standardize")))
        flags.append([(~da.isfinite(array)).any(axis=tuple(range(1, array.ndim))) for array in arrays])
    # a pool of our own: dask's shared default pool does not survive a fork (its threads stay in the parent)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        computed_moments, computed_flags = dask.compute(moments, flags, scheduler="threads", pool=pool)
    for name, per_file in zip(series.variables, computed_flags, strict=True):
        for (path, _, indices), bad in zip(parts, per_file, strict=True):
            if np.any(bad):
                when = format_time(series.times[indices[int(np.argmax(bad))]])
                raise ConfigError(
                    f"{path}: variable {name!r} has NaN/inf values at time {when} "
                    f"({int(np.sum(bad))} of {bad.size} times affected)"
                )
    count = sum(int(indices.size) for _, _, indices in parts)
    return {
        name: stats_entry(name, transforms.get(name, "standardize"), float(mean), float(variance), count)
        for name, (mean, variance) in zip(series.variables, computed_moments, strict=True)
    }


def open_fine_series(section: ClimateData, split: str) -> tuple[FieldSeries, GridTrim]:
    """The fine fields of ``split`` read lazily (:class:`~diffscale.data.climate.series.FieldSeries`) on the model's
    grid (cropped, trimmed to the factor: what the trimming dropped is logged), and the trimming.

    Raises:
        ConfigError: the files' problems (:class:`FieldSeries`), a crop outside the grid, no time in the split.
    """
    period, excluded = _period_bounds(section, split)
    paths = expand_paths(section.paths)
    first = select_fields(open_dataset(paths[0], chunks=None), section.variables, source=str(paths[0]))
    _, trim = model_grid(first, section)
    window = _grid_window(section, trim)
    series = FieldSeries(
        section.paths,
        section.variables,
        period=period,
        excluded=excluded,
        window=window,
        dims_source=", ".join(section.paths),
    )
    if len(series) == 0:
        span = (
            f"the files cover {np.datetime_as_string(series.all_times_range[0], unit='h')} .. "
            f"{np.datetime_as_string(series.all_times_range[1], unit='h')}"
            if series.all_times_range is not None
            else "the files have no times"
        )
        raise ConfigError(f"no fields in the {split} split (data.{split}_period); {span}")
    if trim.dropped:
        logger.warning("data (%s split): %s (data.remainder: trim)", split, trim.describe())
    return series, trim


def _period_bounds(section: ClimateData, split: str) -> tuple[tuple[Any, Any] | None, list[tuple[Any, Any]]]:
    try:
        period = section.period(split)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return period, section.excluded_periods(split)


def _grid_window(section: ClimateData, trim: GridTrim) -> GridWindow:
    """The index window of the harmonised file grid that the crop and the trimming keep."""
    height, width = trim.shape
    windows = []
    for key, dropped in (("lat", trim.latitude_start), ("lon", trim.longitude_start)):
        crop = getattr(section.crop, key) if section.crop is not None else None
        start = (crop[0] if crop is not None else 0) + len(dropped)
        windows.append(start)
    return GridWindow(latitude=(windows[0], windows[0] + height), longitude=(windows[1], windows[1] + width))


def _coarse_files(
    section: ClimateData, fine: FieldSeries, split: str, expected_units: Mapping[str, str | None]
) -> CoarseFiles:
    """The coarse files matching ``fine``: for every fine time its coarse time, for every coarse cell of the
    model grid its row and column in the files (the cells whose centres are the fine blocks' centres)."""
    assert section.coarse_paths is not None
    factor = section.coarsen_factor
    source = ", ".join(section.coarse_paths)
    period, _ = _period_bounds(section, split)
    coarse = FieldSeries(section.coarse_paths, section.variables, period=period, dims_source="coarse fields")
    coarse_lat, coarse_lon = coarse.file_grid
    for axis, values, fine_values in (
        ("latitude", coarse_lat, fine.latitude),
        ("longitude", coarse_lon, fine.longitude),
    ):
        ratio = grid_spacing(values, f"{source} {axis}") / grid_spacing(fine_values, axis)
        if abs(abs(ratio) - factor) > 1e-3 * factor:
            raise ConfigError(
                f"{source}: the coarse {axis} step is {abs(ratio):g} x the fine one, not data.coarsen_factor = {factor}"
            )
    position = np.searchsorted(coarse.times, fine.times)
    found = (position < len(coarse)) & (coarse.times[np.minimum(position, len(coarse) - 1)] == fine.times)
    if not found.all():
        missing = fine.times[~found]
        raise ConfigError(f"{source}: no coarse fields at {missing.size} fine time(s), first {format_time(missing[0])}")
    expected_lat = block_centres(fine.latitude, factor)
    expected_lon = block_centres(fine.longitude, factor)
    grid = xr.Dataset(coords={"latitude": coarse_lat, "longitude": coarse_lon})
    rows, columns = grid_indices(grid, expected_lat, expected_lon, f"coarse grid of {source}")
    check_factor(
        xr.Dataset(coords={"latitude": expected_lat, "longitude": expected_lon}),
        xr.Dataset(coords={"latitude": fine.latitude, "longitude": fine.longitude}),
        factor,
    )
    coarse.convert_to(expected_units, source="coarse fields")
    return CoarseFiles(coarse, position.astype(np.int64), rows.astype(np.int64), columns.astype(np.int64))


def target_shape(section: ClimateData) -> tuple[int, int, int]:
    """(C, h, w) of one training target: the patch, or the (cropped, trimmed) fine grid, read from the first
    file's metadata only (no data are loaded)."""
    shape = section.sample_shape()
    if shape is not None:
        return shape
    fine, _ = model_grid(open_fields(section.paths[:1], section.variables), section)
    return (len(section.variables), fine.sizes["latitude"], fine.sizes["longitude"])


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

    def __init__(self, assembler: SampleAssembler, patch: tuple[int, int] | None, latitude_weighted_loss: bool) -> None:
        self.assembler = assembler
        self.patch = patch
        self.latitude_weighted_loss = latitude_weighted_loss

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
            fields = self.assembler.sample(int(drawn.times[b]), rows, columns, alignment)
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
        if stats is None:
            train_series = self.series if split == "train" else open_fine_series(section, "train")[0]
            stats = fit_climate_stats(section, series=train_series)
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
        check_divisible(height, width, factor, what="fine grid")
        coarse = _coarse_files(section, self.series, split, expected) if section.coarse_paths is not None else None
        self.builder = ConditioningBuilder.from_section(section, self.transforms)
        self.builder.periodic_longitude = self.periodic_longitude
        # the fine grid as the conditioning builder reconstructs it from the coarse cells' centres
        built = fine_coordinates(block_centres(self.latitude, factor), block_centres(self.longitude, factor), factor)
        for axis, values, own in (("latitude", built[0], self.latitude), ("longitude", built[1], self.longitude)):
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
            fixed_channels=self.builder.fixed_channels(*built),
            time_table=time_channels(self.times, 1, 1, hour=self.builder.hour, day_of_year=self.builder.day_of_year)[
                :, :, 0, 0
            ].contiguous(),
        )
        if section.patch is not None and (section.patch[0] > height or section.patch[1] > width):
            raise ConfigError(f"data.patch = {list(section.patch)} is larger than the fine grid {height} x {width}")
        self._reader = ClimateBatchReader(self.assembler, section.patch, section.latitude_weighted_loss)
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
            for times in _batches(len(self), batch_size)
        ]
        self.assembler.base = BaseFields(values=torch.cat(outputs))

    def attach_base_store(self, store: str | Path) -> None:
        """Read b from a complete Zarr store written by :meth:`set_base`."""
        self.assembler.base = BaseFields(store=str(store))

    def full_conditioning(self, times: Sequence[int]) -> torch.Tensor:
        """c (B, K, H, W) on the whole grid at the time indices ``times``."""
        rows, columns = np.arange(self.latitude.size), np.arange(self.longitude.size)
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


def _batches(count: int, size: int) -> list[range]:
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
    for number, times in enumerate(_batches(count, batch_size)):
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


def _randint(high: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` integers in [0, high) drawn on the generator's device, returned on the CPU."""
    device = generator.device if generator is not None else None
    return torch.randint(high, (count,), generator=generator, device=device).cpu()
