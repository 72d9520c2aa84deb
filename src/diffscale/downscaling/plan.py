"""The deterministic work plan of a downscaling run: which (time, member-batch) blocks exist, which rank does
which, and the random stream of each member.

A run with T times, M members and member batch size m has the blocks

    (t, [j m, min((j + 1) m, M)))    for t = 0 .. T-1,  j = 0 .. ceil(M / m) - 1,

listed time-major. Rank r of a world of size R does the blocks r, r + R, r + 2R, ... (round robin, so ranks get
near-equal shares whatever T and M). Every member draws its random numbers (the sampler's initial noise and any
churn or SDE noise) from its own CPU ``torch.Generator`` seeded from a SHA-256 hash of (seed, time, member)
(:func:`member_seed`), the time being the field's timestamp, not its position in the input. So member k of a date
is the same whatever else the input holds (``--start``/``--end``), whatever the member batch, the batching of
blocks, the rank that computes it, the number of ranks and the device (to floating-point rounding on a GPU).
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import cftime
import numpy as np
import torch

from diffscale.data.climate.calendars import time_text
from diffscale.validation import ConfigError

__all__ = ["Block", "blocks_for_rank", "member_generators", "member_seed", "time_key", "work_blocks"]


@dataclass(frozen=True, order=True)
class Block:
    """One unit of work: members [member_start, member_stop) at time index ``time_index``."""

    time_index: int
    member_start: int
    member_stop: int

    @property
    def members(self) -> range:
        """The member indices of the block."""
        return range(self.member_start, self.member_stop)

    @property
    def size(self) -> int:
        """The number of members in the block."""
        return self.member_stop - self.member_start


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> int:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ConfigError(f"{name} = {value!r}: must be a positive integer")
    return int(value)  # type: ignore[call-overload]


def work_blocks(num_times: int, num_members: int, member_batch: int) -> list[Block]:
    """Every (time, member-batch) block of a run, time-major; the last batch of each time may be shorter."""
    num_times = _positive_int("num_times", num_times)
    num_members = _positive_int("num_members", num_members)
    member_batch = _positive_int("member_batch", member_batch)
    num_batches = math.ceil(num_members / member_batch)
    return [
        Block(t, j * member_batch, min((j + 1) * member_batch, num_members))
        for t in range(num_times)
        for j in range(num_batches)
    ]


def blocks_for_rank(blocks: Sequence[Block], rank: int, world_size: int) -> list[Block]:
    """The blocks that rank ``rank`` of ``world_size`` processes does: ``blocks[rank::world_size]``.

    Ranks beyond the number of blocks get none (they still write an empty part file).
    """
    world_size = _positive_int("world_size", world_size)
    if not _is_int(rank) or not 0 <= rank < world_size:
        raise ConfigError(f"rank = {rank!r}: must be an integer in [0, {world_size - 1}] (world_size = {world_size})")
    return list(blocks[int(rank) :: world_size])


def member_seed(seed: int, key: str, member: int) -> int:
    """A 63-bit seed for member ``member`` at the time named ``key``: the first 8 bytes of SHA-256 of the text
    ``diffscale.downscaling.member:seed:key:member``.

    ``key`` names the time itself (:func:`time_key`), so the seed does not depend on which times an input
    holds. Python's ``hash`` is not used: it may change between processes and versions; SHA-256 does not.
    """
    if not _is_int(seed):
        raise ConfigError(f"seed = {seed!r}: must be an integer")
    if not _is_int(member) or member < 0:
        raise ConfigError(f"member = {member!r}: must be a non-negative integer")
    payload = f"diffscale.downscaling.member:{int(seed)}:{key}:{int(member)}"
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def time_key(value: object) -> str:
    """The text that names a time in :func:`member_seed`: ISO 8601 to the nanosecond,
    ``YYYY-MM-DDTHH:MM:SS.fffffffff``, of the date's calendar-independent components (y, m, d, h, mi, s, us) for
    a cftime date of any calendar, and numpy's text of a datetime64 (or anything numpy reads as one) otherwise,
    which is the same text for the same date: a standard-calendar date seeds its members alike whether it comes
    as cftime or datetime64, and a noleap or 360_day date (2019-02-30) has its own key. Anything else: ``str``."""
    if isinstance(value, cftime.datetime):
        return time_text(value, unit="ns")
    try:
        return str(np.datetime64(value, "ns"))
    except (TypeError, ValueError):
        return str(value)


def member_generators(seed: int, key: str, block: Block) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per member of ``block``, seeded with :func:`member_seed` at time ``key``.

    Pass them to ``diffscale.sample(..., generator=...)`` (one per sample) after drawing each member's initial
    noise from its own generator with :func:`diffscale.devices.standard_normal`. CPU generators give the same
    numbers whatever device samples.
    """
    return [torch.Generator().manual_seed(member_seed(seed, key, member)) for member in block.members]
