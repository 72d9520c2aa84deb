"""Run small-tensor work on one intra-op thread.

Evaluation and toy training handle tensors of a few thousand numbers, where torch's intra-op threads
cost more than they gain; on a CPU shared with other processes their spin-waiting made such work 25 to 50
times slower than on one thread (measured: a toy training step 1 s instead of 40 ms, a reference ODE
solve 8 s instead of 0.2 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["single_thread"]


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
