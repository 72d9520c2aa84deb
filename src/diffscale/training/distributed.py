"""Data-parallel training across processes started by ``torchrun`` (DistributedDataParallel).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them and joins
the process group (NCCL on GPUs, gloo on CPUs). Every rank draws the same global batch of B samples (data,
noise levels and noise) from one shared generator and trains on its own rows
``[r B / W, (r + 1) B / W)``; DDP averages the W gradients, so the update equals that of one process on the
whole batch (up to the order of floating-point sums). Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffscale.validation import ConfigError

__all__ = ["DistributedContext", "all_gather_rows", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among ``world_size`` training processes (rank 0 is the one that writes)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0

    def rows(self, batch_size: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of a global batch of ``batch_size`` samples that this rank trains on."""
        share = batch_size // self.world_size
        return self.rank * share, (self.rank + 1) * share


def _environment_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} = {text!r}: not an integer") from None


def environment_context() -> DistributedContext:
    """The context torchrun describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (single process without them)."""
    world_size = _environment_int("WORLD_SIZE", 1)
    rank = _environment_int("RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"RANK = {rank}, WORLD_SIZE = {world_size}: need 0 <= RANK < WORLD_SIZE")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=_environment_int("LOCAL_RANK", rank))


def init_distributed(device_name: str) -> tuple[DistributedContext, str]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; return the context and the device to train on.

    ``device_name`` is ``training.device``: with several processes 'auto' and 'cuda' become ``cuda:LOCAL_RANK``
    (NCCL backend); 'cpu' (or no GPU under 'auto') uses gloo.
    """
    context = environment_context()
    if not context.enabled:
        return context, device_name
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"training.device = {device_name!r}: CUDA is not available on this machine")
        if context.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK = {context.local_rank}: this node has {torch.cuda.device_count()} CUDA device(s)"
            )
        device_name = f"cuda:{context.local_rank}"
        torch.cuda.set_device(context.local_rank)
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return context, device_name


def shutdown_distributed(*, synchronise: bool = False) -> None:
    """Leave the process group (if one was joined).

    ``synchronise`` (for a command that ended well on this rank): first wait until every rank gets here, so that no
    rank tears its connections down while another still uses them (gloo can abort a process that exits with
    communication in flight). Without it (after an error) nothing waits for ranks that may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()


def all_gather_rows(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on each) concatenated along dim 0 in rank order."""
    if not context.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
