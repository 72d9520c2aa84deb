"""``diffscale downscale``: coarse fields in, a CF ensemble of fine fields out (netCDF, or a Zarr store).

For a trained climate run and a coarse input (netCDF, zarr or GRIB, any of the quirks
:func:`~diffscale.data.climate.harmonise` handles), the conditioning c and base b are built exactly as in
training (:class:`~diffscale.data.climate.ConditioningBuilder` with the run's statistics), every (time,
member batch) block is sampled and written as it comes (:func:`~diffscale.downscaling.generate_ensemble`), so
memory stays bounded. Each member draws from its own generator seeded by (seed, timestamp, member): the same
seed gives the same member for a date whatever the other times of the input, the batch sizes, the number of
processes and the device (to rounding). Under ``torchrun`` the blocks are shared round-robin between ranks; for
netCDF each writes a part file and rank 0 merges them, a Zarr store (one chunk per member and time) is written by
every rank directly.

Everything that can be checked is checked before the first block is sampled (run, input variables, NaNs, grid
spacing against the training grid, output path); bad input ends the command with one line (exit 2) and no
output file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffscale.cli.arguments import add_sampler_options, count, sampler_settings
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.downscaling import EnsembleWriter, PatchPlan
    from diffscale.training.distributed import DistributedContext

__all__ = ["add_parser", "run"]

DEFAULT_MEMBERS = 16
"""Ensemble members of a diffusion run when --members is not given (a regression run writes one)."""

_DESCRIPTION = """\
Downscale coarse fields with a trained climate run: write an ensemble of fine fields (netCDF, dims member,
time, latitude, longitude, physical units, CF attributes). The coarse input must be on a grid whose
spacing is the run's coarsening factor times the training grid's; any extent works (the U-Net is
convolutional; with --patch the domain is tiled with overlapping windows blended at every solver step).

A regression run (training.objective: regression) is deterministic: it writes one member.

examples:
  diffscale downscale runs/era5_uk --input coarse.nc --members 32 --out ensemble.nc
  diffscale downscale runs/era5_uk --input coarse.grib --members 8 --steps 32 --s-churn 0 --seed 1 --out e.nc
  torchrun --nproc-per-node 4 -m diffscale downscale runs/era5_uk --input coarse.nc --members 64 --out e.nc
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``downscale`` subcommand to ``subparsers`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "downscale",
        help="downscale coarse fields into a netCDF ensemble of fine fields",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="climate run directory written by 'diffscale train'")
    parser.add_argument(
        "--input", action="append", required=True, metavar="FILE", help="coarse fields (repeatable; globs allowed)"
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="output: a netCDF file (.nc) or a Zarr store (.zarr)"
    )
    parser.add_argument(
        "--members", type=count(1), metavar="M", help="ensemble members (default: 16; 1 for a regression run)"
    )
    parser.add_argument(
        "--member-batch",
        type=count(1),
        default=16,
        metavar="B",
        help="members per block of work (shared between processes)",
    )
    parser.add_argument(
        "--batch-size",
        type=count(1),
        default=64,
        metavar="N",
        help="samples per network call: consecutive blocks (times) are sampled together",
    )
    parser.add_argument("--start", metavar="TIME", help="first time to downscale (ISO date or time; default: all)")
    parser.add_argument("--end", metavar="TIME", help="last time to downscale, inclusive")
    parser.add_argument(
        "--patch",
        type=count(1),
        nargs=2,
        metavar=("H", "W"),
        help="tile the domain with H x W windows (default: the run's data.patch when the domain is larger)",
    )
    parser.add_argument("--overlap", type=count(0), metavar="N", help="window overlap in grid points (default H/4)")
    add_sampler_options(parser)
    parser.add_argument("--seed", type=count(0), default=0, metavar="S", help="seed of the ensemble")
    parser.add_argument("--device", default="auto", metavar="D", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="EMA-averaged weights or the raw trained weights"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(handler=run)


def _check_output(path: str, overwrite: bool) -> Path:
    out = Path(path)
    if out.suffix not in (".nc", ".zarr"):
        raise ConfigError(f"--out '{out}': the ensemble is written as netCDF (.nc) or a Zarr store (.zarr)")
    if not out.parent.is_dir():
        raise ConfigError(f"--out '{out}': directory '{out.parent}' does not exist")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out '{out}' exists; pass --overwrite to replace it")
    return out


def check_coarse_grid(
    latitude: np.ndarray, longitude: np.ndarray, grid: dict, factor: int, *, aligned: bool = False
) -> None:
    """The coarse input's spacing must be ``factor`` times the training grid's (ConfigError naming both). With
    ``aligned`` (a run with static fields, which are matched by coordinates) the fine cells it implies must also
    lie on the training grid's lattice (origin + k x spacing): a shifted coarse grid is named as such."""
    from diffscale.data.climate.grid import fine_coordinates, grid_spacing

    for axis, values in (("latitude", latitude), ("longitude", longitude)):
        spacing = grid_spacing(values, f"coarse input {axis}")
        expected = factor * grid[f"{axis}_spacing"]
        if not np.isclose(abs(spacing), abs(expected), rtol=1e-4):
            raise ConfigError(
                f"coarse input {axis} spacing {abs(spacing):g} deg is not the coarsening factor {factor} times the "
                f"training grid's {abs(grid[f'{axis}_spacing']):g} deg (expected {abs(expected):g} deg)"
            )
    if not aligned:
        return
    for axis, fine in zip(("latitude", "longitude"), fine_coordinates(latitude, longitude, factor), strict=True):
        step, origin = abs(grid[f"{axis}_spacing"]), grid[f"{axis}_range"][0]
        cells = (fine[0] - origin) / step
        offset = abs(cells - round(cells)) * step
        if offset > 1e-3 * step:
            raise ConfigError(
                f"coarse input {axis}: its fine cells fall {offset:g} deg off the training grid ({origin:g} + k x "
                f"{step:g} deg), where the static fields are matched; a coarse cell must be the block of {factor} x "
                f"{factor} training cells"
            )


def run(args: argparse.Namespace) -> int:
    """Handler of ``diffscale downscale``."""
    from diffscale import __version__
    from diffscale.cli.climate_runs import load_climate_run, regression_predictor
    from diffscale.data.climate import open_fields
    from diffscale.data.climate.cf import cf_attributes
    from diffscale.data.climate.dataset import regression_base
    from diffscale.data.climate.grid import is_global_longitude
    from diffscale.devices import check_device
    from diffscale.downscaling import generate_ensemble, sampling_groups, work_blocks
    from diffscale.sampling import number_of_evaluations
    from diffscale.training.distributed import init_distributed, shutdown_distributed

    out = _check_output(args.out, args.overwrite)
    context, device_name = init_distributed(args.device)
    try:
        device = check_device(device_name, "--device")
        climate = load_climate_run(args.run_dir, weights=args.weights, device=str(device))
        if device.type == "cpu":
            # channels_last convolution weights: the same outputs (to rounding), 1.2-1.3x faster on CPU (oneDNN);
            # on a GPU (cuDNN, H200) it was slower: 0.83x the evaluations per second of the default layout
            climate.model.to(memory_format=torch.channels_last)
        section = climate.section
        if climate.deterministic and args.members not in (None, 1):
            raise ConfigError(
                f"--members {args.members}: '{args.run_dir}' is a regression run (deterministic); use --members 1"
            )
        members = args.members if args.members is not None else (1 if climate.deterministic else DEFAULT_MEMBERS)
        settings = None if climate.deterministic else sampler_settings(climate.config.sampling, args)
        time_slice = (args.start, args.end) if args.start or args.end else None
        coarse = open_fields(args.input, variables=section.variables, time_slice=time_slice)
        if coarse.sizes.get("time", 0) == 0:
            bounds = " and ".join(
                f"{flag} {value}" for flag, value in (("--start", args.start), ("--end", args.end)) if value
            )
            raise ConfigError(f"--input: no times within {bounds}")
        builder = climate.builder()
        check_coarse_grid(
            coarse["latitude"].values,
            coarse["longitude"].values,
            climate.grid,
            section.coarsen_factor,
            aligned=bool(builder.static_variables),
        )
        regression = None
        if section.target == "regression_residual":
            regression = regression_predictor(
                load_climate_run(section.regression_run, device=str(device), key="data.regression_run")
            )
        conditioning = builder.build(coarse, regression=regression, device=device)
        base = conditioning.base
        if climate.deterministic:
            base = regression_base(regression_predictor(climate), conditioning.cond_fields, len(section.variables))
        height, width = conditioning.latitude.size, conditioning.longitude.size
        periodic = builder.periodic_longitude
        if periodic is None:
            periodic = is_global_longitude(conditioning.longitude)
        plan = _patch_plan(args, section.patch, height, width, periodic)
        variables = {
            name: cf_attributes(name, coarse[name].attrs if name in coarse else None) for name in section.variables
        }
        attributes = {
            "title": "diffscale downscaled ensemble",
            "source": f"diffscale {__version__}",
            "run_dir": str(Path(args.run_dir).resolve()),
            "checkpoint_step": climate.step,
            "checkpoint_weights": args.weights,
            "checkpoint_sha256": climate.weights_sha256,
            "coarse_input": ", ".join(str(path) for path in args.input),
            "coarsening_factor": section.coarsen_factor,
            "seed": args.seed,
            "member_batch": args.member_batch,
            "model": "regression" if climate.deterministic else climate.config.diffusion.type,
            "data_target": section.target,
        }
        if settings is not None:
            attributes["sampler"] = settings.model_dump(mode="json")
            attributes["nfe_per_member"] = number_of_evaluations(settings.steps, settings.solver)
        if plan is not None:
            attributes["patch"] = f"{plan!r}"
        # Groups of blocks sampled in one call are formed from the whole plan, then shared between processes,
        # so every member is computed in the same batch whatever the number of processes.
        blocks = work_blocks(len(conditioning.times), members, args.member_batch)
        groups = sampling_groups(blocks, args.batch_size)
        mine = groups[context.rank :: context.world_size]
        layout = {
            "latitude": conditioning.latitude,
            "longitude": conditioning.longitude,
            "times": conditioning.times,
            "num_members": members,
            "variables": variables,
            "global_attributes": attributes,
        }
        if context.is_main:
            what = (
                "deterministic prediction"
                if settings is None
                else (f"{settings.solver}, {settings.steps} steps, NFE {attributes['nfe_per_member']} per member")
            )
            print(
                f"downscaling {len(conditioning.times)} times x {members} members to {height} x {width} "
                f"({', '.join(section.variables)}; {what}; {context.world_size} process(es))"
            )
        failure: BaseException | None = None
        try:
            with _open_writer(out, layout, context, args.overwrite) as writer:
                generate_ensemble(
                    None if climate.deterministic else climate.model,
                    None if climate.deterministic else climate.model.formulation,
                    conditioning.cond_fields,
                    base,
                    [],
                    writer,
                    section.variables,
                    builder.to_physical,
                    settings=settings,
                    seed=args.seed,
                    times=conditioning.times,
                    device=device,
                    patch_plan=plan,
                    groups=mine,
                    progress=context.is_main and not args.no_progress,
                )
        except BaseException as error:  # the writer removed its temporary output; the other ranks must hear of it
            if not context.enabled:
                raise
            failure = error
        if context.enabled:
            _finish_together(out, context, failure, args.overwrite)  # raises on every rank if any rank failed
            shutdown_distributed(synchronise=True)
    finally:
        shutdown_distributed()  # after an error (a no-op once shut down)
    if context.is_main:
        print(f"wrote {out}")
    return 0


def _open_writer(out: Path, layout: dict[str, Any], context: DistributedContext, overwrite: bool) -> EnsembleWriter:
    """The writer of this process: a netCDF file (under torchrun, this rank's part file for the merge) or a Zarr
    store (under torchrun, the one store every rank writes into: rank 0 creates it, then the others open it)."""
    import torch.distributed as dist

    from diffscale.downscaling import EnsembleWriter, ZarrEnsembleWriter, part_path

    if out.suffix != ".zarr":
        if not context.enabled:
            return EnsembleWriter(out, overwrite=overwrite, **layout)
        part = (context.rank, context.world_size)
        # a part file left by a failed run is ours to replace
        return EnsembleWriter(part_path(out, *part), overwrite=True, part=part, **layout)
    if not context.enabled:
        return ZarrEnsembleWriter(out, overwrite=overwrite, **layout)
    shared = (context.rank, context.world_size)
    writer, failure = None, None
    if context.is_main:
        try:
            writer = ZarrEnsembleWriter(out, shared=shared, overwrite=overwrite, **layout)
        except BaseException as error:
            failure = error
    created = torch.tensor([0 if failure is not None else 1])
    dist.broadcast(created, src=0)
    if failure is not None:
        raise failure
    if not created.item():
        raise ConfigError(f"--out '{out}': rank 0 could not create the store (its message is above)")
    return writer if writer is not None else ZarrEnsembleWriter(out, shared=shared, overwrite=overwrite, **layout)


def _finish_together(out: Path, context: DistributedContext, failure: BaseException | None, overwrite: bool) -> None:
    """All ranks agree whether every rank wrote its share; rank 0 then completes ``out`` (merges the netCDF parts,
    or moves the shared Zarr store into place). On any failure the partial output is removed (nothing is left
    behind) and the failure is raised on every rank."""
    import torch.distributed as dist

    from diffscale.downscaling import discard_shared, merge_parts, part_path, publish_shared

    zarr_out = out.suffix == ".zarr"
    parts = [] if zarr_out else [part_path(out, rank, context.world_size) for rank in range(context.world_size)]

    def clean(everything: bool) -> None:
        """Remove this rank's partial output (or, on rank 0 after its own failure, all of it)."""
        if zarr_out:
            if everything or context.is_main:  # the shared store belongs to rank 0
                discard_shared(out)
            return
        for part in parts if everything else [parts[context.rank]]:
            part.unlink(missing_ok=True)

    succeeded = torch.tensor([0 if failure is not None else 1])
    dist.all_reduce(succeeded, op=dist.ReduceOp.MIN)
    if not succeeded.item():
        clean(everything=False)
        if failure is not None:
            raise failure
        raise ConfigError("another downscaling process failed (its message is above); no output was written")
    completed = torch.tensor([1])
    if context.is_main:
        try:
            if zarr_out:
                publish_shared(out)
            else:
                merge_parts(parts, out, overwrite=overwrite)
        except BaseException:
            clean(everything=True)
            completed[0] = 0
            dist.broadcast(completed, src=0)
            raise
    dist.broadcast(completed, src=0)
    if not completed.item():
        raise ConfigError("completing the output failed (rank 0's message is above); no output was written")


def _patch_plan(
    args: argparse.Namespace,
    trained_patch: tuple[int, int] | None,
    height: int,
    width: int,
    periodic_longitude: bool,
) -> PatchPlan | None:
    """The window plan: --patch, else the run's training patch when the domain is larger, else None (the whole
    domain in one network call)."""
    from diffscale.downscaling import PatchPlan

    if args.patch:
        patch = (min(args.patch[0], height), min(args.patch[1], width))
    elif trained_patch is not None and (trained_patch[0] < height or trained_patch[1] < width):
        patch = (min(trained_patch[0], height), min(trained_patch[1], width))
    else:
        return None
    overlap = args.overlap if args.overlap is not None else max(1, min(patch) // 4)
    return PatchPlan(height, width, patch, overlap=overlap, periodic_longitude=periodic_longitude)
