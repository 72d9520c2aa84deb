"""The coarse climatology of a run: per coarse cell and calendar month, the quantiles of the coarse fields the run
was trained on, which bias adjustment maps another source's coarse fields onto
(:mod:`~diffscale.data.climate.quantile_mapping`).

For variable v, coarse cell i and calendar month m the quantiles Q_{v,m,i}(p_k) at K evenly spaced levels p_k =
k / (K - 1) (default K = 51, float32) are the type 7 sample quantiles of x_{v,t,i} over the training times t of
month m: exact (no sketch), because a month's coarse fields are small and are read on their own, one month after
another, so memory holds one pool of coarse fields (its times x variables x cells x 8 bytes: a month's, at most a
season's) whatever the length of the record. A month with fewer than ``min_times`` training times (default 50:
fewer cannot place 51 levels) takes the times of its season (DJF, MAM, JJA, SON), whatever their number (then
labelled as fewer); a month whose season has no training time has no quantiles (NaN, pool ``none``), and bias
adjustment refuses it. :attr:`pools` says which, month by month (``month``, ``season MAM``, ``season MAM (fewer
than 50 times)``, ``none``).

It is saved with the run as ``coarse_climatology.safetensors`` (the arrays) and ``coarse_climatology.json`` (what
they are: variables, units, levels, pools, the training period, the sha256 of the arrays).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffscale.data.climate.calendars import date_fields, time_text
from diffscale.data.climate.quantile_mapping import empirical_quantiles, quantile_levels
from diffscale.files import write_together
from diffscale.validation import ConfigError

__all__ = [
    "CLIMATOLOGY_ARRAYS",
    "CLIMATOLOGY_SIDECAR",
    "DEFAULT_LEVELS",
    "DEFAULT_MIN_TIMES",
    "SEASONS",
    "CoarseClimatology",
    "calendar_months",
    "fit_coarse_climatology",
    "month_pools",
    "season_of",
]

CLIMATOLOGY_ARRAYS = "coarse_climatology.safetensors"
CLIMATOLOGY_SIDECAR = "coarse_climatology.json"
DEFAULT_LEVELS = 51
DEFAULT_MIN_TIMES = 50
SEASONS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}
FORMAT = 1


def calendar_months(times: Sequence[Any] | np.ndarray) -> np.ndarray:
    """The calendar month (1 .. 12) of each time: datetime64 values or cftime dates of any calendar."""
    return date_fields(times).month


def season_of(month: int) -> str:
    """The season (``DJF``, ``MAM``, ``JJA``, ``SON``) of a calendar month 1 .. 12."""
    return next(name for name, months in SEASONS.items() if month in months)


def month_pools(months: np.ndarray, min_times: int) -> list[tuple[np.ndarray, str]]:
    """For each calendar month 1 .. 12 (list index 0 .. 11): (the indices of the times its distribution is taken
    over, the pool's name): the month's own times when there are ``min_times`` of them, else its season's
    (``season DJF``...; ``season DJF (fewer than 50 times)`` when it has fewer), else none (``none``: no time of
    its season)."""
    months = np.asarray(months, dtype=np.int64)
    pools = []
    for month in range(1, 13):
        own = np.flatnonzero(months == month)
        if own.size >= min_times:
            pools.append((own, "month"))
            continue
        season = season_of(month)
        members = np.flatnonzero(np.isin(months, SEASONS[season]))
        if members.size >= min_times:
            pools.append((members, f"season {season}"))
        elif members.size:
            pools.append((members, f"season {season} (fewer than {min_times} times)"))
        else:
            pools.append((members, "none"))
    return pools


@dataclass(frozen=True)
class CoarseClimatology:
    """Quantiles of a run's training coarse fields per variable, calendar month and coarse cell (module docstring).

    Attributes:
        variables: the variables, in the run's order.
        latitude, longitude: the coarse cells' centres (h,) and (w,), ascending latitude.
        levels: p_k (K,) from 0 to 1.
        quantiles: ``{variable: (12, K, h, w) float32}``, month m at index m - 1, in ``units``.
        units: the variables' units (None where the training files gave none).
        pools: per calendar month the pool its quantiles were taken over (``month``, ``season DJF``, ``all
            months``).
        counts: per calendar month the number of training times in its pool.
        month_counts: per calendar month the number of training times in that month itself.
        period: the first and the last training time, as text.
        min_times: the smallest pool a month keeps to itself.
    """

    variables: tuple[str, ...]
    latitude: np.ndarray
    longitude: np.ndarray
    levels: np.ndarray
    quantiles: dict[str, np.ndarray]
    units: dict[str, str | None]
    pools: tuple[str, ...]
    counts: tuple[int, ...]
    month_counts: tuple[int, ...]
    period: tuple[str, str]
    min_times: int = DEFAULT_MIN_TIMES
    source: str = field(default="", compare=False)
    """Where it was read from (the run directory), for attributes and messages; empty when built in memory."""

    # -- saving -------------------------------------------------------------------------------------------------
    def sidecar(self, arrays_sha256: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "what": "empirical quantiles (type 7) of the training coarse fields per variable, calendar month, cell",
            "variables": list(self.variables),
            "units": dict(self.units),
            "levels": len(self.levels),
            "pools": list(self.pools),
            "counts": list(self.counts),
            "month_counts": list(self.month_counts),
            "period": list(self.period),
            "min_times": self.min_times,
            "arrays": {"file": CLIMATOLOGY_ARRAYS, "sha256": arrays_sha256},
        }

    def save(self, directory: str | Path) -> Path:
        """Write the arrays and the sidecar into ``directory`` together (neither is left new if one fails); the
        sidecar's path."""
        import safetensors.numpy

        tensors = {
            "latitude": np.asarray(self.latitude, dtype=np.float64),
            "longitude": np.asarray(self.longitude, dtype=np.float64),
            "levels": np.asarray(self.levels, dtype=np.float64),
        }
        for name in self.variables:
            tensors[f"quantiles.{name}"] = np.ascontiguousarray(self.quantiles[name], dtype=np.float32)
        arrays = safetensors.numpy.save(tensors)
        sidecar = self.sidecar(hashlib.sha256(arrays).hexdigest())
        directory = Path(directory)
        text = (json.dumps(sidecar, indent=1, sort_keys=True) + "\n").encode("utf-8")
        write_together({directory / CLIMATOLOGY_ARRAYS: arrays, directory / CLIMATOLOGY_SIDECAR: text})
        return directory / CLIMATOLOGY_SIDECAR

    @classmethod
    def load(cls, directory: str | Path) -> CoarseClimatology | None:
        """The climatology saved in ``directory``, or None when it has none; ConfigError (one line) for a damaged
        one (missing arrays, a sha256 that does not match, arrays that do not fit the sidecar)."""
        import safetensors.numpy

        directory = Path(directory)
        sidecar_path = directory / CLIMATOLOGY_SIDECAR
        if not sidecar_path.is_file():
            return None
        where = f"'{sidecar_path}'"
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
            arrays = (directory / CLIMATOLOGY_ARRAYS).read_bytes()
        except (OSError, ValueError) as error:
            raise ConfigError(f"{where}: unreadable coarse climatology ({error}); compute it again") from None
        try:
            if hashlib.sha256(arrays).hexdigest() != sidecar["arrays"]["sha256"]:
                raise ConfigError(
                    f"{where}: {CLIMATOLOGY_ARRAYS} does not match its recorded sha256; compute the climatology again"
                )
            tensors = safetensors.numpy.load(arrays)
            variables = tuple(str(name) for name in sidecar["variables"])
            quantiles = {name: tensors[f"quantiles.{name}"] for name in variables}
            climatology = cls(
                variables=variables,
                latitude=tensors["latitude"],
                longitude=tensors["longitude"],
                levels=tensors["levels"],
                quantiles=quantiles,
                units={str(k): (None if v is None else str(v)) for k, v in sidecar["units"].items()},
                pools=tuple(str(pool) for pool in sidecar["pools"]),
                counts=tuple(int(count) for count in sidecar["counts"]),
                month_counts=tuple(int(count) for count in sidecar["month_counts"]),
                period=(str(sidecar["period"][0]), str(sidecar["period"][1])),
                min_times=int(sidecar["min_times"]),
                source=str(directory),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ConfigError(f"{where}: unreadable coarse climatology ({error!r}); compute it again") from None
        expected = (12, climatology.levels.size, climatology.latitude.size, climatology.longitude.size)
        for name, values in climatology.quantiles.items():
            if values.shape != expected:
                raise ConfigError(f"{where}: the quantiles of {name} have shape {values.shape}, not {expected}")
        return climatology


CoarseReader = Callable[[Sequence[int]], np.ndarray]
"""The coarse fields (B, C, h, w) in physical units of the training times with the given indices."""


def fit_coarse_climatology(
    read: CoarseReader,
    times: np.ndarray,
    variables: Sequence[str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    units: Mapping[str, str | None],
    *,
    levels: int = DEFAULT_LEVELS,
    min_times: int = DEFAULT_MIN_TIMES,
    chunk: int = 64,
) -> CoarseClimatology:
    """The climatology of the coarse fields at ``times`` (T,), read by ``read`` ``chunk`` times at a time, one
    calendar month (or its season, module docstring) after another: memory holds one pool's coarse fields.

    A pool shared by several months (a season) is read once; a month without a pool gets NaN quantiles."""
    if len(times) < 2:
        raise ConfigError(f"a coarse climatology needs at least 2 training times ({len(times)} given)")
    probabilities = quantile_levels(levels)
    months = calendar_months(times)
    pools = month_pools(months, min_times)
    per_month: list[np.ndarray] = []
    computed: dict[bytes, np.ndarray] = {}
    empty = np.full((probabilities.size, len(variables), np.size(latitude), np.size(longitude)), np.nan, np.float32)
    for indices, _ in pools:
        key = indices.tobytes()
        if not indices.size:
            per_month.append(empty)
            continue
        if key not in computed:
            parts = [
                np.asarray(read(indices[start : start + chunk].tolist()), dtype=np.float64)
                for start in range(0, indices.size, chunk)
            ]
            values = np.concatenate(parts, axis=0)
            if not np.isfinite(values).all():
                raise ConfigError("the training coarse fields hold NaN/inf values: no climatology can be fitted")
            computed[key] = empirical_quantiles(values, probabilities).astype(np.float32)  # (K, C, h, w)
        per_month.append(computed[key])
    stacked = np.stack(per_month)  # (12, K, C, h, w)
    quantiles = {name: np.ascontiguousarray(stacked[:, :, channel]) for channel, name in enumerate(variables)}
    return CoarseClimatology(
        variables=tuple(variables),
        latitude=np.asarray(latitude, dtype=np.float64),
        longitude=np.asarray(longitude, dtype=np.float64),
        levels=probabilities,
        quantiles=quantiles,
        units={name: units.get(name) for name in variables},
        pools=tuple(label for _, label in pools),
        counts=tuple(int(indices.size) for indices, _ in pools),
        month_counts=tuple(int(np.sum(months == month)) for month in range(1, 13)),
        period=(time_text(times[0]), time_text(times[-1])),
        min_times=min_times,
    )
