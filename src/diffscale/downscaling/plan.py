"""The deterministic work plan of a downscaling run: which (time, member-batch) blocks exist, which rank does
which, and the random stream of each block.

A run with T times, M members and member batch size m has the blocks

    (t, [j m, min((j + 1) m, M)))    for t = 0 .. T-1,  j = 0 .. ceil(M / m) - 1,

listed time-major. Rank r of a world of size R does the blocks r, r + R, r + 2R, ... (round robin, so ranks get
near-equal shares whatever T and M). Every block draws its random numbers from its own ``torch.Generator`` seeded
from a SHA-256 hash of (seed, t, member_start, member_stop) (:func:`block_seed`): the numbers of a block do not depend
on the rank that computes it, on the world size or on the order of the blocks, so R processes write the same ensemble
as one. (They do depend on the member batch size m, which is part of the plan and the same on every rank.)
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffscale.validation import ConfigError

__all__ = ["Block", "block_generator", "block_seed", "blocks_for_rank", "work_blocks"]


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


def block_seed(seed: int, block: Block) -> int:
    """A 63-bit seed for ``block``: the first 8 bytes of SHA-256 of the text
    ``seed:time_index:member_start:member_stop``.

    Python's ``hash`` is not used: it may change between processes and versions; SHA-256 does not.
    """
    if not _is_int(seed):
        raise ConfigError(f"seed = {seed!r}: must be an integer")
    seed = int(seed)
    payload = f"diffscale.downscaling.block:{seed}:{block.time_index}:{block.member_start}:{block.member_stop}"
    digest = hashlib.sha256(payload.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def block_generator(seed: int, block: Block, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`block_seed`.

    Draw all of a block's random numbers from it (the initial noise of the sampler and its churn noise,
    ``diffscale.sample(..., generator=block_generator(seed, block, device))``). Streams on CPU and CUDA differ,
    so a run is reproducible per device type.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(block_seed(seed, block))
    return generator
