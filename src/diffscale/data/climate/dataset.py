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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from diffscale.data.batch import Batch
from diffscale.data.climate.channels import LATLON_NAMES, latlon_channels, time_channel_names, time_channels
from diffscale.data.climate.grid import (
    GridTrim,
    area_weights,
    block_centres,
    check_factor,
    coarsen,
    fine_coordinates,
    grid_spacing,
    is_global_longitude,
    select_grid,
    trim_to_factor,
    upsample,
)
from diffscale.data.climate.io import harmonise, open_fields
from diffscale.data.climate.regrid import regrid_bilinear
from diffscale.data.climate.transforms import Transforms, fit_stats
from diffscale.data.climate.units import convert_units
from diffscale.loss import ROW_WEIGHTS
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData

__all__ = [
    "ClimateDataset",
    "ClimateFields",
    "Conditioning",
    "ConditioningBuilder",
    "check_finite",
    "fit_climate_stats",
    "latitude_row_weights",
    "load_fine",
    "load_fine_grid",
    "load_statics",
    "model_grid",
    "regression_base",
    "statics_on_grid",
    "target_shape",
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
    for name in variables:
        extra = [f"{dim} ({ds.sizes[dim]})" for dim in ds[name].dims if dim not in ("time", "latitude", "longitude")]
        if extra or "time" not in ds[name].dims:
            what = f"extra dimension(s) {', '.join(extra)}" if extra else "no time dimension"
            raise ConfigError(
                f"{source}: variable {name!r} has {what}; it must be a field over (time, latitude, longitude) "
                "(select one level / step / member first)"
            )


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

    def build(
        self,
        coarse: xr.Dataset,
        regression: RegressionFn | None = None,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> Conditioning:
        """c and b for every time of ``coarse`` (harmonised here; extra variables ignored).

        Args:
            coarse: the coarse fields (physical units) with dims (time, latitude, longitude).
            regression: R for ``target: regression_residual`` (cond_fields (B, K, H, W) -> (B, C, H, W)); without
                it b is None for that target.
            batch_size, device: how R is evaluated (:func:`regression_base`).

        Raises:
            ConfigError: a variable is missing, has NaNs (naming it and the time), is in units that do not convert
                to the recorded ones, or the statics do not cover the grid.
        """
        coarse = harmonise(coarse, source="coarse fields")
        _require_variables(coarse, self.variables, "coarse fields")
        _check_dims(coarse, self.variables, "coarse fields")
        coarse = convert_units(coarse[self.variables], self._expected_units(self.variables), source="coarse fields")
        coarse = coarse.load()
        check_finite(coarse, self.variables, "coarse fields")
        latitude, longitude = fine_coordinates(coarse["latitude"].values, coarse["longitude"].values, self.factor)
        periodic = is_global_longitude(longitude) if self.periodic_longitude is None else self.periodic_longitude
        normalised = self.transforms.forward_channels(_fields_tensor(coarse, self.variables), self.variables)
        upsampled = upsample(normalised, self.factor, mode=self.interpolation, periodic_longitude=periodic)
        times = coarse["time"].values
        count, height, width = len(times), latitude.size, longitude.size
        parts = [upsampled]
        statics = self.static_fields(latitude, longitude)
        if statics is not None:
            fields = torch.stack(
                [self.transforms.forward(torch.as_tensor(statics[name].values), name) for name in self.static_variables]
            ).to(torch.float32)
            parts.append(fields[None].expand(count, -1, -1, -1))
        if self.latlon:
            parts.append(latlon_channels(latitude, longitude)[None].expand(count, -1, -1, -1))
        if self.hour or self.day_of_year:
            parts.append(time_channels(times, height, width, hour=self.hour, day_of_year=self.day_of_year))
        cond_fields = torch.cat(parts, dim=1).to(torch.float32).contiguous()
        if self.target == "fine":
            base: torch.Tensor | None = torch.zeros_like(upsampled)
        elif self.target == "residual":
            base = upsampled.clone()
        else:
            base = (
                None
                if regression is None
                else regression_base(regression, cond_fields, len(self.variables), batch_size, device)
            )
        units = {name: coarse[name].attrs.get("units") for name in self.variables}
        return Conditioning(cond_fields, base, latitude, longitude, times, self.channel_names, units)


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


def _coarse_for(section: ClimateData, fine: xr.Dataset, split: str) -> xr.Dataset:
    """The coarse fields matching ``fine``: its block means, or the matching cells of ``coarse_paths``."""
    factor = section.coarsen_factor
    if section.coarse_paths is None:
        return coarsen(fine, factor)
    period, _ = _time_selection(section, split)
    coarse = open_fields(section.coarse_paths, section.variables, time_slice=period)
    source = ", ".join(section.coarse_paths)
    for axis in ("latitude", "longitude"):
        ratio = grid_spacing(coarse[axis].values, f"{source} {axis}") / grid_spacing(fine[axis].values, axis)
        if abs(abs(ratio) - factor) > 1e-3 * factor:
            raise ConfigError(
                f"{source}: the coarse {axis} step is {abs(ratio):g} x the fine one, not data.coarsen_factor = {factor}"
            )
    times = fine["time"].values
    missing = np.setdiff1d(times, coarse["time"].values)
    if missing.size:
        raise ConfigError(
            f"{source}: no coarse fields at {missing.size} fine time(s), first "
            f"{np.datetime_as_string(missing[0], unit='m')}"
        )
    coarse = coarse.sel(time=times)
    expected_lat = block_centres(fine["latitude"].values, factor)
    expected_lon = block_centres(fine["longitude"].values, factor)
    coarse = select_grid(coarse, expected_lat, expected_lon, f"coarse grid of {source}").load()
    check_factor(coarse, fine, factor)
    return coarse


def target_shape(section: ClimateData) -> tuple[int, int, int]:
    """(C, h, w) of one training target: the patch, or the (cropped, trimmed) fine grid, read from the first
    file's metadata only (no data are loaded)."""
    shape = section.sample_shape()
    if shape is not None:
        return shape
    fine, _ = model_grid(open_fields(section.paths[:1], section.variables), section)
    return (len(section.variables), fine.sizes["latitude"], fine.sizes["longitude"])


def fit_climate_stats(section: ClimateData, fine: xr.Dataset | None = None) -> dict[str, dict[str, Any]]:
    """Statistics of the train split (variables with their transforms, statics standardised over the fine
    domain): a JSON-able dict for :class:`~diffscale.data.climate.transforms.Transforms`. Each entry also
    records the field's ``units`` attribute when it has one (later fields are converted to those units).

    Args:
        fine: the train split's fine fields when already loaded (else read here).
    """
    if fine is None:
        fine = load_fine(section, "train")
    data: dict[str, Any] = {name: fine[name].values for name in section.variables}
    units = {name: fine[name].attrs.get("units") for name in section.variables}
    statics = load_statics(section.static_paths, section.static_variables)
    if statics is not None:
        matched = statics_on_grid(
            statics,
            section.static_variables,
            fine["latitude"].values,
            fine["longitude"].values,
            section.static_interpolation,
        )
        data.update({name: matched[name].values for name in section.static_variables})
        units.update({name: matched[name].attrs.get("units") for name in section.static_variables})
    stats = fit_stats(data, section.transforms)
    for name, entry in stats.items():
        if units.get(name) is not None and str(units[name]).strip():
            entry["units"] = str(units[name])
    return stats


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


class ClimateDataset:
    """One split of a ``data: {kind: climate}`` section, held as float32 CPU tensors.

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
        fine, self.grid_trim = load_fine_grid(section, split)
        if stats is None:
            stats = fit_climate_stats(section, fine if split == "train" else None)
        self.transforms = Transforms(stats)
        expected = {name: self.transforms.stats.get(name, {}).get("units") for name in section.variables}
        fine = convert_units(fine, expected, source=", ".join(section.paths))
        coarse = _coarse_for(section, fine, split)
        self.periodic_longitude = (
            is_global_longitude(fine["longitude"].values)
            if section.periodic_longitude is None
            else section.periodic_longitude
        )
        self.builder = ConditioningBuilder.from_section(section, self.transforms)
        self.builder.periodic_longitude = self.periodic_longitude
        conditioning = self.builder.build(coarse)
        for axis, built in (("latitude", conditioning.latitude), ("longitude", conditioning.longitude)):
            if not np.allclose(built, fine[axis].values, atol=1e-6):
                raise ConfigError(f"the coarse grid's fine {axis} does not reproduce the fine grid's")
        self.variables: list[str] = list(section.variables)
        self.times: np.ndarray = fine["time"].values
        self.latitude: np.ndarray = fine["latitude"].values
        self.longitude: np.ndarray = fine["longitude"].values
        self.cond_channel_names: list[str] = conditioning.channel_names
        self.fine = _fields_tensor(fine, self.variables)  # physical units
        self.normalised = self.transforms.forward_channels(self.fine, self.variables)
        self.cond_fields = conditioning.cond_fields
        self.base: torch.Tensor | None = conditioning.base
        height, width = self.latitude.size, self.longitude.size
        if section.patch is not None and (section.patch[0] > height or section.patch[1] > width):
            raise ConfigError(f"data.patch = {list(section.patch)} is larger than the fine grid {height} x {width}")

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
    def cond_channels(self) -> int:
        """K, the number of conditioning channels."""
        return len(self.cond_channel_names)

    def __len__(self) -> int:
        return len(self.times)

    # -- base fields ------------------------------------------------------------------------------------------
    def set_base(self, fn: RegressionFn, batch_size: int = 16, device: torch.device | str | None = None) -> None:
        """``regression_residual``: precompute and store b = R(c) for every time (see :func:`regression_base`)."""
        if self.section.target != "regression_residual":
            raise ConfigError(f"set_base is for data.target = 'regression_residual' (it is {self.section.target!r})")
        self.base = regression_base(fn, self.cond_fields, len(self.variables), batch_size, device)

    def _base(self) -> torch.Tensor:
        if self.base is None:
            raise ConfigError("data.target = 'regression_residual' needs set_base(regression_model) first")
        return self.base

    # -- access -----------------------------------------------------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Random times and (with ``patch``) random windows, every draw from ``generator`` (on any device: the
        draws are made there and the indices brought back to the CPU tensors).

        Returns:
            ``Batch(target=(B, C, h, w) normalised fine - base, cond={'cond_fields': (B, K, h, w)})``; windows
            wrap in longitude when it is periodic. With ``data.latitude_weighted_loss`` the conditioning also
            holds ``row_weights`` (B, h): cos(latitude) of each sample's rows, normalised to mean 1
            (:func:`latitude_row_weights`), which the objective takes out (the network never sees it).
        """
        base = self._base()
        index = _randint(len(self), batch_size, generator)
        target = self.normalised[index] - base[index]
        cond = self.cond_fields[index]
        rows = None
        if self.section.patch is not None:
            rows, cols = self._windows(batch_size, generator)
            target, cond = _gather(target, rows, cols), _gather(cond, rows, cols)
        fields = {"cond_fields": cond.contiguous()}
        if self.section.latitude_weighted_loss:
            latitude = torch.tensor(self.latitude, dtype=torch.float64)
            rows_latitude = latitude[rows] if rows is not None else latitude.expand(batch_size, -1)
            fields[ROW_WEIGHTS] = latitude_row_weights(rows_latitude).contiguous()
        return Batch(target.contiguous(), fields)

    def _windows(self, count: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.section.patch
        height, width = self.latitude.size, self.longitude.size
        top = _randint(height - h + 1, count, generator)
        left = _randint(width if self.periodic_longitude else width - w + 1, count, generator)
        rows = top[:, None] + torch.arange(h)
        cols = (left[:, None] + torch.arange(w)) % width
        return rows, cols

    def fields(self, indices: int | slice | Sequence[int] | torch.Tensor) -> ClimateFields:
        """Full-domain fields at time ``indices``."""
        if isinstance(indices, int):
            indices = [indices]
        index = indices if isinstance(indices, slice) else torch.as_tensor(indices, dtype=torch.long)
        base = self._base()[index]
        normalised = self.normalised[index]
        times = self.times[index] if isinstance(index, slice) else self.times[index.numpy()]
        return ClimateFields(self.cond_fields[index], base, normalised - base, self.fine[index], times)

    def to_physical(self, normalised_fine: torch.Tensor) -> torch.Tensor:
        """y = T^-1(z) per variable of a normalised fine field (..., C, H, W) (add the base to a generated
        residual first); on the input's device."""
        return self.transforms.inverse_channels(normalised_fine, self.variables)


def _randint(high: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` integers in [0, high) drawn on the generator's device, returned on the CPU."""
    device = generator.device if generator is not None else None
    return torch.randint(high, (count,), generator=generator, device=device).cpu()


def _gather(fields: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """fields (B, C, H, W) at rows (B, h) x cols (B, w) of each sample -> (B, C, h, w)."""
    batch = torch.arange(fields.shape[0])[:, None, None]
    patches = fields.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, h, w, C)
    return patches.permute(0, 3, 1, 2)
