"""Per-variable transforms between physical units and the normalised space the model works in.

Each variable v has a pointwise map g_v and a standardisation fitted on the training period:

    z = (g_v(x) - mu_v) / s_v,        x = g_v^-1(s_v z + mu_v),

with mu_v, s_v the mean and (population) standard deviation of g_v(x) over every time and grid point of the
training data, c_v > 0 the transform's scale (default 1, in the variable's units), and

* ``standardize``: g(x) = x (the scale plays no part);
* ``log1p``: g(x) = log(1 + max(x, 0) / c) (precipitation: the heavy tail compressed; tiny negative values of
  accumulated fields, e.g. ERA5's tp, are taken as 0), inverse c max(exp(y) - 1, 0);
* ``sqrt``: g(x) = sqrt(max(x, 0) / c), inverse c max(y, 0)^2.

The scale sets where log1p turns from linear (x << c) to logarithmic (x >> c): for ERA5's tp in metres,
log(1 + x) is x to within 1e-4 for any hourly amount, so the transform does nothing; c = 0.001 m makes it the
log1p of millimetres.

The inverses clip to the physical range (x >= 0) so that a generated field is a valid precipitation field;
for data in that range the round trip is exact to floating-point precision (computed in float64). A constant
field (s_v = 0, e.g. a land-sea mask over the sea only) gets s_v = 1.

The statistics are a JSON-able dict ``{variable: {"transform": name, "mean": mu, "std": s}}`` (with
``"scale": c`` when c != 1), saved with a run and passed back in for validation, testing and downscaling. An
entry may also hold ``"units"``: the units the training data were in (then fields in other units are converted
or refused: :mod:`~diffscale.data.climate.units`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from diffscale.validation import ConfigError

__all__ = ["TRANSFORMS", "Moments", "TransformName", "Transforms", "fit_stats", "stats_entry", "transform_spec"]

TransformName = Literal["standardize", "log1p", "sqrt"]
TRANSFORMS: tuple[str, ...] = ("standardize", "log1p", "sqrt")


def _as_float64(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(dtype=torch.float64)
    return torch.as_tensor(np.asarray(values), dtype=torch.float64)


def _g(x: torch.Tensor, transform: str, scale: float = 1.0) -> torch.Tensor:
    if transform == "log1p":
        return torch.log1p(x.clamp_min(0) / scale)
    if transform == "sqrt":
        return torch.sqrt(x.clamp_min(0) / scale)
    return x


def _g_inverse(y: torch.Tensor, transform: str, scale: float = 1.0) -> torch.Tensor:
    if transform == "log1p":
        return scale * torch.expm1(y).clamp_min(0)
    if transform == "sqrt":
        return scale * y.clamp_min(0) ** 2
    return y


def transform_spec(value: Any, variable: str = "") -> tuple[str, float]:
    """(name, scale c) of a transform given as a name (``"log1p"``, scale 1), a mapping ``{"name": ..., "scale":
    ...}`` or an object with ``name`` and ``scale`` attributes (the configuration's); ConfigError otherwise."""
    if isinstance(value, str):
        name, scale = value, 1.0
    elif isinstance(value, Mapping):
        name, scale = value.get("name"), value.get("scale", 1.0)
    else:
        name, scale = getattr(value, "name", None), getattr(value, "scale", 1.0)
    if name not in TRANSFORMS:
        raise ConfigError(f"transform for {variable!r} = {value!r}: allowed: {', '.join(TRANSFORMS)}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"transform for {variable!r} = {value!r}: the scale must be a finite number > 0")
    return str(name), scale


def fit_stats(data: Mapping[str, Any], transforms: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Statistics of g_v(x) for each variable of ``data`` (training data, any shape; tensor or array).

    Args:
        data: variable -> values (physical units).
        transforms: variable -> transform: a name, or name and scale (:func:`transform_spec`); default
            ``standardize`` for variables not listed.

    Raises:
        ConfigError: an unknown transform, or non-finite values (naming the variable).
    """
    transforms = dict(transforms or {})
    stats: dict[str, dict[str, Any]] = {}
    for variable, values in data.items():
        transform, scale = transform_spec(transforms.get(variable, "standardize"), variable)
        x = _as_float64(values)
        if x.numel() == 0:
            raise ConfigError(f"no data to fit the statistics of {variable!r} (an empty training period?)")
        if not torch.isfinite(x).all():
            raise ConfigError(f"{variable!r} has NaN or infinite values; cannot fit its statistics")
        y = _g(x, transform, scale)
        mean = float(y.mean())
        std = float(y.std(correction=0))
        stats[variable] = {"transform": transform, "mean": mean, "std": std if std > 0 else 1.0}
        if scale != 1.0:
            stats[variable]["scale"] = scale
    return stats


def _g_numpy(x: Any, transform: str, scale: float = 1.0) -> Any:
    """g of the module docstring on numpy or dask arrays (float64)."""
    if transform == "log1p":
        return np.log1p(np.maximum(x, 0.0) / scale)
    if transform == "sqrt":
        return np.sqrt(np.maximum(x, 0.0) / scale)
    return x


@dataclass(frozen=True)
class Moments:
    """Count n, mean m and sum of squared deviations from the mean M2 = sum_i (y_i - m)^2 of some values, in
    float64 (variance M2 / n); zero values: n = 0."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: Any, transform: Any = "standardize") -> Moments:
        """The moments of g(x) over every element of a numpy array ``values`` (two passes over the block in
        float64); ``transform`` as :func:`transform_spec` reads it (a name, or a name and a scale c)."""
        name, scale = transform_spec(transform)
        y = _g_numpy(np.asarray(values).astype(np.float64), name, scale)
        if y.size == 0:
            return cls()
        mean = float(y.mean())
        y -= mean
        return cls(int(y.size), mean, float(np.dot(y.ravel(), y.ravel())))

    @property
    def variance(self) -> float:
        """M2 / n (population variance; nan for no values)."""
        return self.m2 / self.count if self.count else math.nan

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of values (Chan, Golub & LeVeque 1983): with delta = m_b - m_a and
        n = n_a + n_b, m = m_a + delta n_b / n and M2 = M2_a + M2_b + delta^2 n_a n_b / n; exact in exact
        arithmetic, and as accurate as the two-pass formula in floating point."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / count)
        return Moments(count, mean, m2)


def stats_entry(variable: str, transform: Any, mean: float, variance: float, count: int) -> dict[str, Any]:
    """One variable's statistics from its moments (as :func:`fit_stats` writes them; s = 1 for a constant field);
    ``transform`` as :func:`transform_spec` reads it.

    Raises:
        ConfigError: no values, or moments that are not finite (non-finite data).
    """
    if count == 0:
        raise ConfigError(f"no data to fit the statistics of {variable!r} (an empty training period?)")
    if not (math.isfinite(mean) and math.isfinite(variance)):
        raise ConfigError(f"{variable!r} has NaN or infinite values; cannot fit its statistics")
    name, scale = transform_spec(transform, variable)
    std = math.sqrt(max(variance, 0.0))
    entry: dict[str, Any] = {"transform": name, "mean": float(mean), "std": std if std > 0 else 1.0}
    if scale != 1.0:
        entry["scale"] = scale
    return entry


class Transforms:
    """The per-variable maps of the module docstring, from fitted statistics (:func:`fit_stats`)."""

    def __init__(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        self.stats: dict[str, dict[str, Any]] = {}
        for variable, entry in stats.items():
            try:
                transform, mean, std = entry["transform"], float(entry["mean"]), float(entry["std"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"statistics of {variable!r} = {entry!r}: need transform, mean and std") from None
            if transform not in TRANSFORMS or not math.isfinite(mean) or not (math.isfinite(std) and std > 0):
                raise ConfigError(
                    f"statistics of {variable!r} = {dict(entry)!r}: transform must be one of {', '.join(TRANSFORMS)}, "
                    "mean finite and std finite and > 0"
                )
            self.stats[str(variable)] = {"transform": transform, "mean": mean, "std": std}
            if entry.get("scale", 1.0) != 1.0:
                self.stats[str(variable)]["scale"] = transform_spec(dict(entry, name=transform), str(variable))[1]
            if entry.get("units") is not None:
                self.stats[str(variable)]["units"] = str(entry["units"])

    @classmethod
    def fit(cls, data: Mapping[str, Any], transforms: Mapping[str, str] | None = None) -> Transforms:
        """Fit on training ``data`` (variable -> values); see :func:`fit_stats`."""
        return cls(fit_stats(data, transforms))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The statistics as plain JSON-able values (a copy)."""
        return {variable: dict(entry) for variable, entry in self.stats.items()}

    def units(self, variable: str) -> str | None:
        """The units ``variable`` was trained in, or None when they were not recorded."""
        return self._entry(variable).get("units")

    def _entry(self, variable: str) -> dict[str, Any]:
        try:
            return self.stats[variable]
        except KeyError:
            raise ConfigError(
                f"no statistics for {variable!r}; the statistics cover: {', '.join(self.stats) or 'nothing'}"
            ) from None

    def forward(self, x: torch.Tensor, variable: str) -> torch.Tensor:
        """Physical x -> normalised z = (g(x) - mu) / s, in x's floating dtype (float32 for other dtypes)."""
        entry = self._entry(variable)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        z = (_g(x.to(torch.float64), entry["transform"], entry.get("scale", 1.0)) - entry["mean"]) / entry["std"]
        return z.to(dtype)

    def inverse(self, z: torch.Tensor, variable: str) -> torch.Tensor:
        """Normalised z -> physical x = g^-1(s z + mu), in z's floating dtype."""
        entry = self._entry(variable)
        dtype = z.dtype if z.is_floating_point() else torch.float32
        x = _g_inverse(z.to(torch.float64) * entry["std"] + entry["mean"], entry["transform"], entry.get("scale", 1.0))
        return x.to(dtype)

    def forward_channels(self, x: torch.Tensor, variables: Sequence[str], dim: int = -3) -> torch.Tensor:
        """:meth:`forward` of each channel of x along ``dim`` (default: the C of (..., C, H, W))."""
        return self._channels(x, variables, dim, self.forward)

    def inverse_channels(self, z: torch.Tensor, variables: Sequence[str], dim: int = -3) -> torch.Tensor:
        """:meth:`inverse` of each channel of z along ``dim``."""
        return self._channels(z, variables, dim, self.inverse)

    @staticmethod
    def _channels(x: torch.Tensor, variables: Sequence[str], dim: int, fn: Any) -> torch.Tensor:
        if x.shape[dim] != len(variables):
            raise ValueError(f"{x.shape[dim]} channels along dim {dim}, {len(variables)} variables {list(variables)}")
        return torch.stack([fn(part, name) for part, name in zip(x.unbind(dim), variables, strict=True)], dim=dim)
