"""Ensemble members that are coherent time series: each member's noise is correlated in time.

With a correlation length L (hours), anchors lie every L hours on the time axis of the input's own calendar, at
a_k = k L hours after 1970-01-01 00:00 of that calendar (k any integer), whatever times the input holds. Member m
has at every anchor a standard normal noise stream z_k, drawn from a CPU generator seeded from (seed, a_k, m)
(:func:`anchor_seed`). At a time t with a_k <= t < a_{k+1} and fraction u = (t - a_k) / L in [0, 1) its noise is

    z(t) = cos(pi u / 2) z_k + sin(pi u / 2) z_{k+1},

draw by draw (the initial noise, then any churn or SDE noise: :class:`~diffscale.devices.BlendedGenerator`).
Since cos^2 + sin^2 = 1 every z(t) is standard normal; z(a_k) = z_k; z is continuous in t; and two times t1, t2
of one anchor interval have corr(z(t1), z(t2)) = cos(pi (u1 - u2) / 2), two times in consecutive intervals
sin(pi u1 / 2) cos(pi u2 / 2), times further apart 0. A deterministic (ODE) sampler then maps nearby times of a
member to nearby fields: the member is a time series, not a new draw every hour.

A member's noise at a time depends on (seed, the time's position on its calendar, L, member) only: not on the
other times of the input (``--start``/``--end``), the member batch, the blocks or the process that samples it.
The anchors are counted on the calendar itself (a 360_day year has 8640 hours), from the date's components
(:func:`~diffscale.data.climate.calendars.date_fields`), so noleap, 360_day and the other cftime calendars work
as the standard one does, and daily data simply take L >= 24 (48 h: neighbouring days correlated by cos(pi/4)).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any

import cftime
import numpy as np
import torch

from diffscale.data.climate.calendars import calendar_of, date_fields
from diffscale.devices import BlendedGenerator
from diffscale.downscaling.plan import Block
from diffscale.validation import ConfigError

__all__ = [
    "AnchorPositions",
    "anchor_positions",
    "anchor_seed",
    "anchor_weights",
    "check_time_correlation",
    "coherent_generators",
    "microseconds_since_epoch",
]

EPOCH = (1970, 1, 1)
"""The first anchor: 1970-01-01 00:00 of the times' own calendar."""
_MICROSECONDS_PER_HOUR = 3_600_000_000


def check_time_correlation(value: Any, key: str = "time_correlation") -> float:
    """L in hours as a float: 0 (independent times) or a positive finite number of whole microseconds;
    ConfigError naming ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{key} = {value!r}: must be a number of hours >= 0 (0: every time sampled independently)")
    hours = float(value)
    if hours < 0:
        raise ConfigError(f"{key} = {value!r}: must be a number of hours >= 0 (0: every time sampled independently)")
    if hours > 0 and round(hours * _MICROSECONDS_PER_HOUR) < 1:
        raise ConfigError(f"{key} = {value!r}: shorter than a microsecond; give hours, e.g. 6")
    return hours


def microseconds_since_epoch(times: Any) -> list[int]:
    """For every date of ``times`` (datetime64 or cftime of any calendar), the exact microseconds since
    1970-01-01 00:00 *of its calendar*, from its components (y, m, d, h, mi, s, us): a 360_day date counts 360-day
    years. A standard-calendar date after 1582 gives the same number as cftime or as datetime64."""
    calendar = calendar_of(times)
    fields = date_fields(times)
    epoch = cftime.datetime(*EPOCH, calendar=calendar)
    offsets = []
    for parts in zip(
        fields.year.tolist(),
        fields.month.tolist(),
        fields.day.tolist(),
        fields.hour.tolist(),
        fields.minute.tolist(),
        fields.second.tolist(),
        fields.microsecond.tolist(),
        strict=True,
    ):
        delta = cftime.datetime(*parts, calendar=calendar) - epoch
        offsets.append(delta // datetime.timedelta(microseconds=1))
    return offsets


@dataclass(frozen=True)
class AnchorPositions:
    """Where T times fall between the anchors of period L: t = a_k + u L, a_k = k L after the epoch."""

    period: int
    """L in microseconds."""
    anchor: list[int]
    """k of every time (the anchor at or before it)."""
    fraction: np.ndarray
    """u of every time, in [0, 1) (float64, (T,))."""


def anchor_positions(times: Any, hours: float) -> AnchorPositions:
    """(k, u) of every time of ``times`` for anchors every ``hours`` hours of its calendar (exact integer
    arithmetic on microseconds: a time on an anchor has u = 0 exactly)."""
    hours = check_time_correlation(hours)
    if hours == 0:
        raise ConfigError("time_correlation = 0: there are no anchors; the times are sampled independently")
    period = round(hours * _MICROSECONDS_PER_HOUR)
    offsets = microseconds_since_epoch(times)
    anchors = [offset // period for offset in offsets]
    fraction = np.array([(offset - k * period) / period for offset, k in zip(offsets, anchors, strict=True)])
    return AnchorPositions(period=period, anchor=anchors, fraction=fraction.reshape(-1))


def anchor_weights(fraction: float) -> tuple[float, float]:
    """(cos(pi u / 2), sin(pi u / 2)): the weights of z_k and z_{k+1} at fraction u (squares summing to 1)."""
    angle = math.pi * float(fraction) / 2
    return math.cos(angle), math.sin(angle)


def anchor_seed(seed: int, anchor_microseconds: int, member: int) -> int:
    """A 63-bit seed of member ``member``'s noise at the anchor ``anchor_microseconds`` after the epoch: the first
    8 bytes of SHA-256 of ``diffscale.downscaling.anchor:seed:microseconds:member`` (an anchor shared by two
    periods, e.g. 12 h for L = 6 and 12, has one noise)."""
    payload = f"diffscale.downscaling.anchor:{int(seed)}:{int(anchor_microseconds)}:{int(member)}"
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def coherent_generators(
    seed: int, positions: AnchorPositions, time_index: int, block: Block
) -> list[torch.Generator | BlendedGenerator]:
    """The random source of every member of ``block`` at the time ``time_index`` of ``positions``: the anchor's
    generator itself at an anchor (u = 0), else the blend cos(pi u / 2) g_k + sin(pi u / 2) g_{k+1}."""
    k = positions.anchor[time_index]
    fraction = float(positions.fraction[time_index])
    before, after = k * positions.period, (k + 1) * positions.period
    sources: list[torch.Generator | BlendedGenerator] = []
    for member in block.members:
        first = torch.Generator().manual_seed(anchor_seed(seed, before, member))
        if fraction == 0.0:
            sources.append(first)
            continue
        second = torch.Generator().manual_seed(anchor_seed(seed, after, member))
        sources.append(BlendedGenerator([first, second], anchor_weights(fraction)))
    return sources
