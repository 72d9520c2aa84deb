"""How far a coarse input lies outside what a run was trained on: the range of the training inputs and a per-time
extrapolation measure.

A diffusion model (or a regression) trained on some weather regimes extrapolates on others, and its ensemble is then
over-confident without saying so. The measure here is computed from what the network is given: the normalised,
upsampled coarse fields U(T(x)), the first C conditioning channels
(:class:`~diffscale.data.climate.ConditioningBuilder`), so it is the same whatever the data pipeline and whether the
coarse fields were given or built by coarsening. Each
channel is reduced to the coarse grid by the plain mean of every f x f block (a fixed, smooth function of the coarse
field: close to it, and the same at training and downscaling time), giving v_{t,i} for time t, cell i.

Training range, per variable and coarse cell i: [lo_i, hi_i] = [min_t v_{t,i}, max_t v_{t,i}] over the training
times. For an input at time t, with area weights w_i = cos(latitude_i) of the cells:

* outside fraction   F_t = sum_i w_i [v_{t,i} < lo_i - tau or v_{t,i} > hi_i + tau] / sum_i w_i (0: every cell in
  range; 0 at every training time by construction; tau = 1e-4 training standard deviations absorbs float32
  rounding of an input written to a file);
* range excess       E_t = sum_i w_i d(v_{t,i}, [lo_i, hi_i]) / sum_i w_i, d the distance to the interval, in
  units of the variable's training standard deviation (after its transform): how far outside, on average over the
  area (a uniform shift of the input by delta beyond every cell's range gives E_t = delta / std).

An input on another grid than the training grid (a patch-trained run downscaling a larger domain, or another
region) is compared with the domain-wide range [min_i lo_i, max_i hi_i] instead; the variables' attributes say
which comparison was made. Both are screening figures: a time can be in range cell by cell and still be an unseen
combination (a pattern, not a value), which they do not detect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffscale.data.climate.calendars import time_text
from diffscale.validation import ConfigError

__all__ = [
    "EXTRAPOLATION_SUFFIXES",
    "RANGE_CHUNK_BYTES",
    "WARN_OUTSIDE_FRACTION",
    "ExtrapolationWarning",
    "InputRange",
    "block_view",
    "extrapolation_variables",
    "extrapolation_warning",
    "fit_input_range",
]


class ExtrapolationWarning(UserWarning):
    """A downscaling input lies far outside the range of the run's training inputs (one line; the command prints it
    as ``warning: ...``)."""


WARN_OUTSIDE_FRACTION = 0.25
"""A downscaling warns when at some time more than this share of the area lies outside the training range."""
TOLERANCE = 1e-4
"""Values within this distance (training standard deviations) of the range count as inside it: the same field
written to a file and read back in float32 must not be flagged."""
RANGE_CHUNK_BYTES = 16 * 2**20
"""Conditioning values (float32, the C coarse channels) read at once by :func:`fit_input_range`, about."""
EXTRAPOLATION_SUFFIXES = ("_outside_training_range", "_training_range_excess")
"""Names of the per-time variables of an ensemble: ``<variable><suffix>``."""


def block_view(upsampled: torch.Tensor, factor: int) -> torch.Tensor:
    """The plain mean of every ``factor`` x ``factor`` block of fields (T, C, H, W) -> (T, C, H / f, W / f), in
    float64 (H and W must be multiples of f)."""
    count, channels, height, width = upsampled.shape
    if height % factor or width % factor:
        raise ValueError(f"a {height} x {width} grid is not a multiple of the factor {factor}")
    blocks = upsampled.to(torch.float64).reshape(count, channels, height // factor, factor, width // factor, factor)
    return blocks.mean(dim=(3, 5))


def _cell_weights(latitude: np.ndarray, factor: int) -> np.ndarray:
    """cos(latitude) of the coarse rows (the mean latitude of each block of f fine rows), >= 0."""
    rows = np.asarray(latitude, dtype=np.float64).reshape(-1, factor).mean(axis=1)
    return np.clip(np.cos(np.deg2rad(rows)), 0.0, None)


@dataclass(frozen=True)
class InputRange:
    """The per-cell range of a run's training inputs (module docstring), as saved with the run.

    Attributes:
        variables: the C variables, in channel order.
        factor: f, fine cells per coarse cell.
        latitude, longitude: the fine grid of the training inputs (H,) and (W,).
        minimum, maximum: lo and hi, (C, H / f, W / f), in normalised units.
        times: the number of training times they were taken over.
    """

    variables: tuple[str, ...]
    factor: int
    latitude: np.ndarray
    longitude: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    times: int

    # -- saving ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: lists of floats (the float64 values round-trip exactly through JSON)."""
        return {
            "variables": list(self.variables),
            "factor": self.factor,
            "latitude": self.latitude.tolist(),
            "longitude": self.longitude.tolist(),
            "minimum": self.minimum.tolist(),
            "maximum": self.maximum.tolist(),
            "times": self.times,
        }

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> InputRange:
        """The inverse of :meth:`to_dict`; ConfigError naming what is wrong with a damaged record."""
        try:
            variables = tuple(str(name) for name in content["variables"])
            factor = int(content["factor"])
            latitude = np.asarray(content["latitude"], dtype=np.float64)
            longitude = np.asarray(content["longitude"], dtype=np.float64)
            minimum = np.asarray(content["minimum"], dtype=np.float64)
            maximum = np.asarray(content["maximum"], dtype=np.float64)
            times = int(content["times"])
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"input_range of the run's statistics: unreadable ({error})") from None
        expected = (len(variables), latitude.size // max(factor, 1), longitude.size // max(factor, 1))
        if factor < 1 or minimum.shape != expected or maximum.shape != expected:
            raise ConfigError(
                f"input_range of the run's statistics: minimum {minimum.shape} and maximum {maximum.shape} do not "
                f"fit {len(variables)} variable(s) on a {latitude.size} x {longitude.size} grid at factor {factor}"
            )
        return cls(variables, factor, latitude, longitude, minimum, maximum, times)

    # -- measuring -------------------------------------------------------------------------------------------
    def same_grid(self, latitude: np.ndarray, longitude: np.ndarray) -> bool:
        """Whether a fine grid is the training grid (then every cell has its own range)."""
        return (
            latitude.shape == self.latitude.shape
            and longitude.shape == self.longitude.shape
            and bool(np.allclose(latitude, self.latitude, atol=1e-4))
            and bool(np.allclose(longitude, self.longitude, atol=1e-4))
        )

    def measure(
        self, upsampled: torch.Tensor, latitude: np.ndarray, longitude: np.ndarray
    ) -> dict[str, dict[str, Any]]:
        """F_t and E_t (module docstring) of normalised upsampled coarse fields (T, C, H, W) on the fine grid
        (``latitude`` (H,), ``longitude`` (W,)).

        Returns:
            ``{variable: {"outside_fraction": (T,) float64, "excess": (T,) float64, "comparison": "per cell" or
            "domain-wide"}}``.
        """
        if upsampled.shape[1] != len(self.variables):
            raise ValueError(f"{upsampled.shape[1]} channels for {len(self.variables)} variables")
        values = block_view(upsampled, self.factor).numpy()
        if self.same_grid(latitude, longitude):
            low, high, comparison = self.minimum, self.maximum, "per cell"
        else:
            low = self.minimum.min(axis=(1, 2), keepdims=True)
            high = self.maximum.max(axis=(1, 2), keepdims=True)
            comparison = "domain-wide"
        weights = np.broadcast_to(_cell_weights(latitude, self.factor)[:, None], values.shape[-2:])
        total = weights.sum()
        result = {}
        for channel, name in enumerate(self.variables):
            field = values[:, channel]
            below = np.clip(low[channel] - field, 0.0, None)
            above = np.clip(field - high[channel], 0.0, None)
            outside = (below > TOLERANCE) | (above > TOLERANCE)
            result[name] = {
                "outside_fraction": (outside * weights).sum(axis=(1, 2)) / total,
                "excess": ((below + above) * weights).sum(axis=(1, 2)) / total,
                "comparison": comparison,
            }
        return result


ConditioningReader = Callable[[Sequence[int]], torch.Tensor]
"""c (B, K, H, W) of the training times with the given indices."""


def fit_input_range(
    read: ConditioningReader,
    count: int,
    variables: Sequence[str],
    factor: int,
    latitude: np.ndarray,
    longitude: np.ndarray,
    chunk: int | None = None,
) -> InputRange:
    """The per-cell range of the first C channels (the upsampled coarse variables) of ``count`` training times,
    read ``chunk`` times at a time by ``read`` (default: the times whose C channels take about
    :data:`RANGE_CHUNK_BYTES` in float32, at least one), so that memory is bounded by one chunk whatever the
    record's length; only the running minimum and maximum (C, H / f, W / f) are kept between chunks."""
    if count < 1:
        raise ValueError("fit_input_range: no training times")
    channels = len(variables)
    if chunk is None:
        chunk = max(1, RANGE_CHUNK_BYTES // (4 * channels * np.size(latitude) * np.size(longitude)))
    minimum = maximum = None
    for start in range(0, count, chunk):
        cond = read(list(range(start, min(start + chunk, count))))
        view = block_view(cond[:, :channels], factor)
        low, high = view.amin(dim=0).numpy(), view.amax(dim=0).numpy()
        minimum = low if minimum is None else np.minimum(minimum, low)
        maximum = high if maximum is None else np.maximum(maximum, high)
    assert minimum is not None and maximum is not None
    return InputRange(
        tuple(variables),
        int(factor),
        np.asarray(latitude, dtype=np.float64),
        np.asarray(longitude, dtype=np.float64),
        minimum,
        maximum,
        int(count),
    )


def extrapolation_variables(
    measured: Mapping[str, Mapping[str, Any]],
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """The per-time variables of an ensemble for :meth:`InputRange.measure`'s result: ``{name: (values (T,)
    float32, CF attributes)}``, two per variable (:data:`EXTRAPOLATION_SUFFIXES`)."""
    out: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for name, entry in measured.items():
        comparison = entry["comparison"]
        out[f"{name}{EXTRAPOLATION_SUFFIXES[0]}"] = (
            np.asarray(entry["outside_fraction"], dtype=np.float32),
            {
                "long_name": f"fraction of the area where the coarse {name} lies outside the training range",
                "units": "1",
                "valid_range": np.array([0.0, 1.0], dtype=np.float32),
                "coverage_content_type": "qualityInformation",
                "comment": (
                    f"area-weighted share of coarse cells whose input {name} is below the minimum or above the maximum "
                    f"of the training inputs ({comparison} range); 0 within the training range"
                ),
            },
        )
        out[f"{name}{EXTRAPOLATION_SUFFIXES[1]}"] = (
            np.asarray(entry["excess"], dtype=np.float32),
            {
                "long_name": f"mean distance of the coarse {name} beyond the training range",
                "units": "1",
                "coverage_content_type": "qualityInformation",
                "comment": (
                    f"area-weighted mean over coarse cells of the distance of the input {name} to its training range "
                    f"({comparison}), in training standard deviations of {name}; 0 within the range"
                ),
            },
        )
    return out


def extrapolation_warning(
    measured: Mapping[str, Mapping[str, Any]], times: np.ndarray, threshold: float = WARN_OUTSIDE_FRACTION
) -> str | None:
    """One line when, at some time, more than ``threshold`` of the area lies outside the training range of a
    variable (naming the variable, how many times, the worst time in its own calendar and how far); None
    otherwise. ``times``: datetime64 or cftime dates of any calendar."""
    parts = []
    for name, entry in measured.items():
        fraction = np.asarray(entry["outside_fraction"], dtype=np.float64)
        flagged = fraction > threshold
        if not flagged.any():
            continue
        worst = int(np.argmax(fraction))
        when = time_text(np.asarray(times)[worst]) if len(times) else str(worst)
        parts.append(
            f"{name} at {int(flagged.sum())} of {fraction.size} times (at worst {fraction[worst]:.0%} of the area, "
            f"{float(np.asarray(entry['excess'])[worst]):.2f} training std beyond on average, {when})"
        )
    if not parts:
        return None
    return (
        f"the coarse input lies outside the training range over more than {threshold:.0%} of the area: "
        f"{'; '.join(parts)}; the model extrapolates there and its ensemble spread is likely too small"
    )
