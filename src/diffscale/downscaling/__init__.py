"""Downscaling: ensemble generation block by block, the CF-netCDF ensemble writer (and the merge of per-rank parts),
the Zarr one (all ranks write one store) and the in-memory one (an xarray Dataset), the deterministic (time,
member-batch) work plan, members whose noise is correlated in time (calendar anchors), the resumable store an
ensemble is built in (and continued from after an interruption), and seamless blending of overlapping patches."""

from diffscale.downscaling.blending import PatchedDenoiser, PatchPlan, blend_patches, raised_cosine_ramp
from diffscale.downscaling.coherence import anchor_positions, coherent_generators
from diffscale.downscaling.ensemble import generate_ensemble, sampling_groups
from diffscale.downscaling.memory_writer import MemoryEnsembleWriter
from diffscale.downscaling.plan import Block, blocks_for_rank, member_generators, member_seed, time_key, work_blocks
from diffscale.downscaling.resumable import ResumableState, read_state, state_path
from diffscale.downscaling.writer import EnsembleWriter, merge_parts, part_path
from diffscale.downscaling.zarr_writer import ZarrEnsembleWriter, discard_shared, publish_shared, shared_temporary_path

__all__ = [
    "Block",
    "EnsembleWriter",
    "MemoryEnsembleWriter",
    "PatchPlan",
    "PatchedDenoiser",
    "ResumableState",
    "ZarrEnsembleWriter",
    "anchor_positions",
    "blend_patches",
    "blocks_for_rank",
    "coherent_generators",
    "discard_shared",
    "generate_ensemble",
    "member_generators",
    "member_seed",
    "merge_parts",
    "part_path",
    "publish_shared",
    "raised_cosine_ramp",
    "read_state",
    "sampling_groups",
    "shared_temporary_path",
    "state_path",
    "time_key",
    "work_blocks",
]
