"""Downscaling: ensemble generation block by block, the CF-netCDF ensemble writer (and the merge of per-rank parts), the
deterministic (time, member-batch) work plan, and seamless blending of overlapping patches."""

from diffscale.downscaling.blending import PatchedDenoiser, PatchPlan, blend_patches, raised_cosine_ramp
from diffscale.downscaling.ensemble import generate_ensemble, sampling_groups
from diffscale.downscaling.plan import Block, blocks_for_rank, member_generators, member_seed, time_key, work_blocks
from diffscale.downscaling.writer import EnsembleWriter, merge_parts, part_path

__all__ = [
    "Block",
    "EnsembleWriter",
    "PatchPlan",
    "PatchedDenoiser",
    "blend_patches",
    "blocks_for_rank",
    "generate_ensemble",
    "member_generators",
    "member_seed",
    "merge_parts",
    "part_path",
    "raised_cosine_ramp",
    "sampling_groups",
    "time_key",
    "work_blocks",
]
