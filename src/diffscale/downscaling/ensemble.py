"""Ensemble generation: for every (time, member batch) block, sample residuals r ~ p(r | c) with the diffusion
model and write the fine fields y = T^-1(r + b) as they come.

Given the conditioning c (T, K, H, W) and base b (T, C, H, W) of a coarse input (see
:class:`~diffscale.data.climate.ConditioningBuilder`), member k at time t draws its initial noise and any churn or
SDE noise from its own CPU generator, seeded by (seed, the timestamp of t, k) only
(:func:`~diffscale.downscaling.member_generators`), so a member does not depend on the other times of the input,
on the member batch, on how blocks are grouped or shared between processes, or on the device. With
``time_correlation`` L > 0 hours a member's noise is instead blended from its seeded noises at calendar anchors
every L hours (:mod:`~diffscale.downscaling.coherence`): the same independence of the input's other times and of
the batching, and a member that is a time series. Consecutive blocks are sampled together, up to ``batch_size``
samples per call; memory stays bounded by that batch.

For domains larger than the network's training patches, pass a :class:`~diffscale.downscaling.PatchPlan`: the
denoiser is then applied window by window at every solver step and blended (:class:`PatchedDenoiser`), which
gives one global sample without seams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from diffscale.denoiser import Denoiser
from diffscale.devices import standard_normal
from diffscale.downscaling.blending import PatchedDenoiser, PatchPlan
from diffscale.downscaling.coherence import anchor_positions, check_time_correlation, coherent_generators
from diffscale.downscaling.plan import Block, member_generators, time_key
from diffscale.downscaling.writer import EnsembleWriter
from diffscale.formulations.base import Formulation
from diffscale.sampling import SamplerSettings, sample
from diffscale.threads import Threads, thread_policy

__all__ = ["ToPhysical", "generate_ensemble", "sampling_groups"]

ToPhysical = Callable[[torch.Tensor], torch.Tensor]
"""T^-1: normalised fine fields (B, C, H, W) -> physical units (B, C, H, W)."""


def generate_ensemble(
    denoiser: Denoiser | None,
    formulation: Formulation | None,
    cond_fields: torch.Tensor,
    base: torch.Tensor,
    blocks: Sequence[Block],
    writer: EnsembleWriter,
    variables: Sequence[str],
    to_physical: ToPhysical,
    *,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    times: Sequence[object] | None = None,
    device: torch.device | str = "cpu",
    patch_plan: PatchPlan | None = None,
    patch_batch: int = 16,
    batch_size: int = 64,
    groups: Sequence[Sequence[Block]] | None = None,
    progress: bool = True,
    extra_cond: dict[str, Any] | None = None,
    threads: Threads | None = None,
    block_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_group: Callable[[int], None] | None = None,
    time_correlation: float = 0.0,
) -> None:
    """Sample every block and write it.

    Args:
        denoiser: D(x; sigma, cond_fields=...) of the residual r; None for a deterministic model (every member is
            then b itself, e.g. a regression run whose prediction is the base).
        formulation: the denoiser's formulation (None with ``denoiser`` None).
        cond_fields: c, (T, K, H, W) (CPU is fine: a block is moved to ``device`` when it is sampled).
        base: b, (T, C, H, W), normalised.
        blocks: the blocks this process generates (:func:`~diffscale.downscaling.work_blocks`,
            :func:`~diffscale.downscaling.blocks_for_rank`).
        writer: an open :class:`EnsembleWriter` (or rank part writer) with the variables in ``variables`` order.
        variables: names of the C channels.
        to_physical: T^-1.
        settings: sampler settings (required with a denoiser).
        seed: the ensemble's seed.
        times: the timestamps of the T times (datetime64, cftime dates of any calendar, or anything
            :func:`~diffscale.downscaling.time_key` names); they seed the members. Default: the time indices
            0 .. T-1 (members then depend on where a time sits in the input).
        patch_plan: tile the domain with overlapping windows and blend the denoiser's outputs.
        patch_batch: windows evaluated per network call with ``patch_plan``.
        batch_size: consecutive blocks are sampled together, up to this many samples per call (small grids then
            use the hardware well).
        groups: sample these groups of blocks as they are (from :func:`sampling_groups`) instead of grouping
            ``blocks``.
        progress: show a bar counting members x times.
        extra_cond: further keyword conditioning given to every denoiser call unchanged (rarely needed).
        threads: torch's CPU threads while sampling (:func:`~diffscale.threads.thread_policy`; ``auto``
            re-chooses between groups from the load of other processes); None leaves them as they are.
        block_transform: applied to each block's physical values (members, C, H, W) before they are written (e.g.
            a spread recalibration, which needs blocks of all the members of a time).
        on_group: called with a group's position in ``groups`` once all its blocks are written (e.g. to make them
            durable and record the group as done, for a resume).
        time_correlation: L in hours; 0 (the default) draws every (time, member) independently, L > 0 blends each
            member's initial and churn noise from its noises at anchors every L hours of the times' calendar
            (:mod:`~diffscale.downscaling.coherence`; needs ``times``).
    """
    if denoiser is not None and (formulation is None or settings is None):
        raise ValueError("a denoiser needs its formulation and sampler settings")
    if cond_fields.shape[0] != base.shape[0]:
        raise ValueError(f"cond_fields has {cond_fields.shape[0]} times, base {base.shape[0]}")
    if base.shape[1] != len(variables):
        raise ValueError(f"base has {base.shape[1]} channels for {len(variables)} variables")
    device = torch.device(device)
    model = denoiser
    if denoiser is not None and patch_plan is not None:
        model = PatchedDenoiser(denoiser, patch_plan, batch_size=patch_batch)
    if times is not None and len(times) != base.shape[0]:
        raise ValueError(f"times has {len(times)} entries for {base.shape[0]} times")
    keys = [time_key(value) for value in times] if times is not None else [str(index) for index in range(len(base))]
    time_correlation = check_time_correlation(time_correlation)
    positions = None
    if time_correlation > 0 and model is not None:
        if times is None:
            raise ValueError("time_correlation needs the timestamps of the times (times=...)")
        positions = anchor_positions(times, time_correlation)
    if groups is None:
        groups = sampling_groups(blocks, batch_size)
    total = sum(block.size for group in groups for block in group)
    policy = thread_policy(threads) if threads is not None else contextlib.nullcontext()
    with policy as governor, tqdm(total=total, desc="downscaling", unit="member-time", disable=not progress) as bar:
        for position, group in enumerate(groups):
            if governor is not None:
                governor.tick()
            indices = torch.tensor([block.time_index for block in group for _ in block.members])
            group_base = base[indices].to(device)
            if model is None:
                normalised = group_base
            else:
                # Every member draws all its noise from its own generator: grouping changes no member.
                generators = [
                    g
                    for block in group
                    for g in (
                        member_generators(seed, keys[block.time_index], block)
                        if positions is None
                        else coherent_generators(seed, positions, block.time_index, block)
                    )
                ]
                noise = standard_normal(group_base.shape, generators, dtype=group_base.dtype, device=device)
                cond = {"cond_fields": cond_fields[indices].to(device), **(extra_cond or {})}
                with torch.no_grad():
                    residual = sample(
                        model, noise, formulation, **settings.model_dump(), generator=generators, cond=cond
                    )
                normalised = residual + group_base
            physical = to_physical(normalised).cpu()
            start = 0
            for block in group:
                values = physical[start : start + block.size]
                start += block.size
                if block_transform is not None:
                    values = block_transform(values)
                for channel, name in enumerate(variables):
                    writer.write(name, block.members, block.time_index, values[:, channel])
                bar.update(block.size)
            if on_group is not None:
                on_group(position)


def sampling_groups(blocks: Sequence[Block], batch_size: int) -> list[list[Block]]:
    """The blocks :func:`generate_ensemble` samples in one call: consecutive blocks gathered into groups of at
    most ``batch_size`` samples (a larger block stands alone). Form them from the whole plan and share the groups
    between processes, so that every member is computed in the same batch whatever the number of processes (a
    network's output can differ in the last bits with the batch it is computed in)."""
    groups: list[list[Block]] = []
    current: list[Block] = []
    size = 0
    for block in blocks:
        if current and size + block.size > batch_size:
            groups.append(current)
            current, size = [], 0
        current.append(block)
        size += block.size
    if current:
        groups.append(current)
    return groups
