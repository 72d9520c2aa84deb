"""The conditioning the network sees, built from coarse fields: shared by training and downscaling.

For variables v = 1..C on the fine grid (H, W) and the coarse grid (H / f, W / f):

* conditioning channels  c = [U(T(x)), statics, lat/lon, time]  (K channels, (K, H, W)), U the bilinear (or
  bicubic) upsampling of :func:`~diffscale.data.climate.grid.upsample`, T the per-variable transforms;
* base field b: 0 (``target: fine``), U(T(x)) (``residual``), or R(c) for a deterministic regression model R
  (``regression_residual``, CorrDiff: Mardani et al. 2023, arXiv 2309.15214).

:class:`ConditioningBuilder` turns a coarse dataset (the coarsened training fields, or a user's coarse file at
downscaling time) into (c, b, fine grid, times), whole or block by block; static fields are brought onto the fine
grid from their own grid (:func:`statics_on_grid`) and every field is put in the units the statistics record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from diffscale.data.climate.calendars import time_text
from diffscale.data.climate.channels import LATLON_NAMES, latlon_channels, time_channel_names, time_channels
from diffscale.data.climate.grid import (
    fine_coordinates,
    is_global_longitude,
    select_grid,
    upsample,
)
from diffscale.data.climate.io import harmonise, open_fields
from diffscale.data.climate.plausibility import check_plausible
from diffscale.data.climate.regrid import regrid_bilinear
from diffscale.data.climate.series import check_field_dims
from diffscale.data.climate.transforms import Transforms
from diffscale.data.climate.units import convert_units
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.config.climate import ClimateData
    from diffscale.data.climate.blocks import LazyConditioning

__all__ = [
    "Conditioning",
    "ConditioningBuilder",
    "ConditioningLayout",
    "RegressionFn",
    "check_finite",
    "load_statics",
    "regression_base",
    "statics_on_grid",
]

RegressionFn = Callable[[torch.Tensor], torch.Tensor]
"""R: conditioning (B, K, H, W) -> the normalised fine field a regression model predicts (B, C, H, W)."""


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
                when = time_text(ds["time"].values[int(np.argmax(per_time))])
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


# -- conditioning --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conditioning:
    """What a coarse dataset gives the model: ``cond_fields`` (T, K, H, W) float32, ``base`` (T, C, H, W)
    normalised (None for ``regression_residual`` until a regression model is given), the fine grid
    ``latitude`` (H,) and ``longitude`` (W,), ``times`` (T,) datetime64 or cftime dates, ``channel_names`` (K)
    and ``units``: those of each variable after conversion, i.e. of the fields generated from it (None where
    unknown)."""

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
        check_field_dims(coarse, self.variables, "coarse fields")
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
                to the recorded ones, holds a value outside its physical range
                (:mod:`~diffscale.data.climate.plausibility`), or the statics do not cover the grid.
        """
        coarse, layout = self.prepare(coarse)
        coarse = coarse.load()
        check_finite(coarse, self.variables, "coarse fields")
        check_plausible(coarse, self.variables, "coarse fields")
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
        memory stays bounded whatever its length; the values are bitwise those of :meth:`build`. NaNs and values
        outside the variables' physical ranges are looked for now, in one streaming pass.

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
