"""The downscaling work plan (diffscale.downscaling.plan): blocks, their split over ranks and per-block random
streams that do not depend on the rank, the world size or the order of work."""

from __future__ import annotations

import hashlib

import pytest
import torch

from diffscale.downscaling import Block, block_generator, block_seed, blocks_for_rank, work_blocks
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


def test_block_seed_is_sha256_of_seed_time_and_members() -> None:
    block = Block(3, 8, 12)
    digest = hashlib.sha256(b"diffscale.downscaling.block:42:3:8:12").digest()
    assert block_seed(42, block) == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    seeds = {block_seed(s, Block(t, m, m + 4)) for s in (0, 1, -1) for t in range(4) for m in (0, 4)}
    assert len(seeds) == 3 * 4 * 2  # distinct streams


def test_block_streams_do_not_depend_on_rank_or_order() -> None:
    """Drawing every block's noise on 1 rank in plan order, or on 2 and 3 ranks in reverse order, gives the same
    noise per block."""
    blocks = work_blocks(num_times=4, num_members=5, member_batch=2)

    def noise(block: Block) -> torch.Tensor:
        return torch.randn(block.size, 3, 3, generator=block_generator(7, block))

    single = {block: noise(block) for block in blocks}
    for world_size in (2, 3):
        for rank in range(world_size):
            for block in reversed(blocks_for_rank(blocks, rank, world_size)):
                torch.randn(5)  # unrelated draws from the global generator in between change nothing
                assert torch.equal(noise(block), single[block])
    assert not torch.equal(single[blocks[0]], single[blocks[2]])  # the same members at another time differ
    other_seed = torch.randn(2, 3, 3, generator=block_generator(8, blocks[0]))
    assert not torch.equal(other_seed, single[blocks[0]])


def test_bad_plan_inputs_fail_fast() -> None:
    with pytest.raises(ConfigError, match="member_batch = 0: must be a positive integer"):
        work_blocks(2, 3, 0)
    with pytest.raises(ConfigError, match="num_times"):
        work_blocks(0, 3, 1)
    with pytest.raises(ConfigError, match=r"rank = 2: must be an integer in \[0, 1\]"):
        blocks_for_rank(work_blocks(1, 1, 1), 2, 2)
    with pytest.raises(ConfigError, match="seed"):
        block_seed(1.5, Block(0, 0, 1))  # type: ignore[arg-type]
