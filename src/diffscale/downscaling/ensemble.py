"""Ensemble generation: for every (time, member batch) block, sample residuals r ~ p(r | c) with the diffusion
model and write the fine fields y = T^-1(r + b) as they come.

Given the conditioning c (T, K, H, W) and base b (T, C, H, W) of a coarse input (see
:class:`~diffscale.data.climate.ConditioningBuilder`), a block (t, members m0..m1) draws its initial noise and any
churn noise from its own generator, seeded by (seed, t, m0, m1) only (:func:`~diffscale.downscaling.block_generator`),
so the ensemble does not depend on how blocks are shared between processes or in which order they run. With a
deterministic sampler, consecutive blocks are sampled together (up to ``batch_size`` samples), each from its own
initial noise; memory stays bounded by that batch.

For domains larger than the network's training patches, pass a :class:`~diffscale.downscaling.PatchPlan`: the
denoiser is then applied window by window at every solver step and blended (:class:`PatchedDenoiser`), which
gives one global sample without seams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from diffscale.denoiser import Denoiser
from diffscale.downscaling.blending import PatchedDenoiser, PatchPlan
from diffscale.downscaling.plan import Block, block_generator
from diffscale.downscaling.writer import EnsembleWriter
from diffscale.formulations.base import Formulation
from diffscale.sampling import SamplerSettings, sample

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
    device: torch.device | str = "cpu",
    patch_plan: PatchPlan | None = None,
    patch_batch: int = 16,
    batch_size: int = 64,
    groups: Sequence[Sequence[Block]] | None = None,
    progress: bool = True,
    extra_cond: dict[str, Any] | None = None,
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
        patch_plan: tile the domain with overlapping windows and blend the denoiser's outputs.
        patch_batch: windows evaluated per network call with ``patch_plan``.
        batch_size: with a deterministic sampler (:attr:`SamplerSettings.deterministic`), consecutive blocks are
            sampled together, up to this many samples per call (small grids then use the hardware well);
            stochastic samplers sample block by block.
        groups: sample these groups of blocks as they are (from :func:`sampling_groups`) instead of grouping
            ``blocks``.
        progress: show a bar counting members x times.
        extra_cond: further keyword conditioning given to every denoiser call unchanged (rarely needed).
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
    if groups is None:
        groups = sampling_groups(blocks, batch_size, settings if model is not None else None)
    total = sum(block.size for group in groups for block in group)
    with tqdm(total=total, desc="downscaling", unit="member-time", disable=not progress) as bar:
        for group in groups:
            times = torch.tensor([block.time_index for block in group for _ in block.members])
            group_base = base[times].to(device)
            if model is None:
                normalised = group_base
            else:
                # Each block's initial noise (and, for stochastic samplers, every later draw: those are never
                # grouped) comes from its own generator, so grouping does not change any member.
                generators = [block_generator(seed, block, device) for block in group]
                noise = torch.cat(
                    [
                        torch.randn((block.size, *group_base.shape[1:]), generator=generator, device=device)
                        for block, generator in zip(group, generators, strict=True)
                    ]
                )
                cond = {"cond_fields": cond_fields[times].to(device), **(extra_cond or {})}
                with torch.no_grad():
                    residual = sample(
                        model, noise, formulation, **settings.model_dump(), generator=generators[0], cond=cond
                    )
                normalised = residual + group_base
            physical = to_physical(normalised).cpu()
            start = 0
            for block in group:
                values = physical[start : start + block.size]
                start += block.size
                for channel, name in enumerate(variables):
                    writer.write(name, block.members, block.time_index, values[:, channel])
                bar.update(block.size)


def sampling_groups(blocks: Sequence[Block], batch_size: int, settings: SamplerSettings | None) -> list[list[Block]]:
    """The blocks :func:`generate_ensemble` samples in one call: with a deterministic sampler
    (:attr:`SamplerSettings.deterministic`), consecutive blocks gathered into groups of at most ``batch_size``
    samples (a larger block stands alone); otherwise (a stochastic sampler, or None: no sampling) one block per
    group, as a stochastic sampler's later draws come from its group's first generator. Form them from the whole
    plan and share the groups between processes, so that every member is computed in the same batch whatever
    the number of processes."""
    limit = batch_size if settings is not None and settings.deterministic else 1
    groups: list[list[Block]] = []
    current: list[Block] = []
    size = 0
    for block in blocks:
        if current and size + block.size > limit:
            groups.append(current)
            current, size = [], 0
        current.append(block)
        size += block.size
    if current:
        groups.append(current)
    return groups
