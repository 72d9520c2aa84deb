"""The downscaling work plan (diffscale.downscaling.plan): blocks, their split over ranks and per-member random
streams that depend on (seed, timestamp, member) only: not on the block, the rank, the world size or the order of
work."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from diffscale.downscaling import Block, blocks_for_rank, member_generators, member_seed, time_key, work_blocks
from diffscale.validation import ConfigError


def test_work_blocks_tile_every_time_and_member_once() -> None:
    blocks = work_blocks(num_times=3, num_members=10, member_batch=4)
    assert blocks[:3] == [Block(0, 0, 4), Block(0, 4, 8), Block(0, 8, 10)]
    assert len(blocks) == 3 * 3
    cells = [(b.time_index, m) for b in blocks for m in b.members]
    assert sorted(cells) == [(t, m) for t in range(3) for m in range(10)]
    assert all(1 <= b.size <= 4 for b in blocks)
    assert work_blocks(2, 3, 8) == [Block(0, 0, 3), Block(1, 0, 3)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 20])
def test_ranks_partition_the_blocks(world_size: int) -> None:
    blocks = work_blocks(num_times=5, num_members=6, member_batch=4)
    shares = [blocks_for_rank(blocks, rank, world_size) for rank in range(world_size)]
    assert sorted(b for share in shares for b in share) == sorted(blocks)  # every block exactly once
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_member_seed_is_sha256_of_seed_time_and_member() -> None:
    digest = hashlib.sha256(b"diffscale.downscaling.member:42:2019-03-25T06:00:00.000000000:9").digest()
    assert member_seed(42, "2019-03-25T06:00:00.000000000", 9) == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    keys = [time_key(np.datetime64("2019-03-25T00") + np.timedelta64(hour, "h")) for hour in range(4)]
    seeds = {member_seed(s, key, m) for s in (0, 1, -1) for key in keys for m in (0, 1, 4)}
    assert len(seeds) == 3 * 4 * 3  # distinct streams


def test_time_key_names_the_time_whatever_its_unit() -> None:
    expected = "2019-03-25T06:00:00.000000000"
    assert time_key(np.datetime64("2019-03-25T06", "h")) == expected
    assert time_key(np.datetime64("2019-03-25T06:00:00.000000000")) == expected
    assert time_key(np.array(["2019-03-25T06"], dtype="datetime64[s]")[0]) == expected

    class NoLeapDate:  # a calendar date numpy cannot read (cftime's, say): its own text names it
        def __str__(self) -> str:
            return "2019-03-25 06:00:00 (noleap)"

    assert time_key(NoLeapDate()) == "2019-03-25 06:00:00 (noleap)"


def test_member_streams_do_not_depend_on_the_block_rank_or_order() -> None:
    """A member's noise is the same in any block that holds it, on any rank, in any order."""
    key = time_key(np.datetime64("2019-03-25T06"))

    def noise(block: Block) -> dict[int, torch.Tensor]:
        generators = member_generators(7, key, block)
        return {m: torch.randn(3, 3, generator=g) for m, g in zip(block.members, generators, strict=True)}

    single = {m: v for block in work_blocks(1, 5, 2) for m, v in noise(block).items()}
    for member_batch in (1, 3, 5):
        blocks = work_blocks(1, 5, member_batch)
        for world_size in (1, 2, 3):
            for rank in range(world_size):
                for block in reversed(blocks_for_rank(blocks, rank, world_size)):
                    torch.randn(5)  # unrelated draws from the global generator in between change nothing
                    for m, value in noise(block).items():
                        assert torch.equal(value, single[m])
    assert not torch.equal(single[0], single[1])
    other_time = member_generators(7, time_key(np.datetime64("2019-03-25T07")), Block(0, 0, 1))[0]
    other_seed = member_generators(8, key, Block(0, 0, 1))[0]
    for generator in (other_time, other_seed):
        assert not torch.equal(torch.randn(3, 3, generator=generator), single[0])


def test_bad_plan_inputs_fail_fast() -> None:
    with pytest.raises(ConfigError, match="member_batch = 0: must be a positive integer"):
        work_blocks(2, 3, 0)
    with pytest.raises(ConfigError, match="num_times"):
        work_blocks(0, 3, 1)
    with pytest.raises(ConfigError, match=r"rank = 2: must be an integer in \[0, 1\]"):
        blocks_for_rank(work_blocks(1, 1, 1), 2, 2)
    with pytest.raises(ConfigError, match="seed"):
        member_seed(1.5, "2019-03-25", 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="member = -1"):
        member_seed(1, "2019-03-25", -1)
