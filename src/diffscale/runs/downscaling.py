"""Downscaling with a trained climate run: coarse fields in, a CF ensemble of fine fields out (an
``xarray.Dataset`` in memory, a netCDF file or a Zarr store).

>>> run = diffscale.load_run("runs/era5_uk")
>>> ensemble = run.downscale("coarse.nc", members=32, seed=0)               # xarray.Dataset (member, time, lat, lon)
>>> ensemble = run.downscale(coarse_ds, members=8, out="ensemble.zarr")     # written block by block, opened lazily

For a coarse input (an ``xarray.Dataset`` or files: netCDF, zarr or GRIB, any of the quirks
:func:`~diffscale.data.climate.harmonise` handles) the conditioning c and base b are built exactly as in training
(:class:`~diffscale.data.climate.ConditioningBuilder` with the run's statistics); every (time, member batch) block
is sampled and written as it comes (:func:`~diffscale.downscaling.generate_ensemble`), and the coarse input itself is
read block by block (:class:`~diffscale.data.climate.blocks.LazyConditioning`), so memory stays bounded when the
ensemble goes to a file, however long the input. Each member draws from its own generator seeded by (seed,
timestamp, member): the same seed gives the same member for a date whatever the other times of the input, the batch
sizes, the number of processes and the device (to rounding). An ensemble written to a file is built in a hidden
resumable Zarr store beside it (:mod:`diffscale.downscaling.resumable`: one chunk per member and time, and a record
of the groups of blocks already durable) and completed into the output at the end; under ``torchrun`` the groups
are shared round-robin between ranks, which all write into that store. An interrupted run keeps it, and
``resume=True`` continues it into the ensemble an uninterrupted run writes, bitwise.

A coarse input on another rectilinear grid is first regridded onto the run's coarse cells (first-order
conservative by default: :mod:`~diffscale.runs.coarse_grid`); one on the run's coarse lattice is used as it is.
:meth:`DownscalingJob.prepare` checks everything that can be checked before the first block is sampled (input
variables, NaNs, the grid against the training grid or its coverage of the run's cells, sampler settings,
sizes); bad input raises :class:`~diffscale.validation.ConfigError` with one line. The output is complete, or
resumable (a failure after some blocks were written: the message says how to resume), or absent.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from diffscale.data.climate import Conditioning, open_fields
from diffscale.data.climate.blocks import LazyConditioning, LazyRows
from diffscale.data.climate.calendars import (
    TimeEncoding,
    calendar_of,
    date_keys,
    is_time_bound,
    time_encoding,
    time_text,
)
from diffscale.data.climate.cf import cf_attributes
from diffscale.data.climate.coarse_regrid import Regridding
from diffscale.data.climate.extrapolation import (
    ExtrapolationWarning,
    InputRange,
    extrapolation_variables,
    extrapolation_warning,
)
from diffscale.data.climate.grid import fine_coordinates, grid_spacing, is_global_longitude
from diffscale.data.climate.io import select_fields
from diffscale.data.climate.plausibility import RANGE_ATTRIBUTE, output_range, warn_outside
from diffscale.data.climate.relations import ORDERED_PAIRS, ordered_pairs
from diffscale.data.climate.relations import sort_ordered_pairs as sort_pairs
from diffscale.data.climate.series import DASK_CHUNK_BYTES
from diffscale.downscaling import (
    EnsembleWriter,
    MemoryEnsembleWriter,
    PatchPlan,
    ZarrEnsembleWriter,
    generate_ensemble,
    sampling_groups,
    work_blocks,
)
from diffscale.downscaling.ensemble import ToPhysical
from diffscale.downscaling.recalibration import inflate_channels
from diffscale.downscaling.resumable import (
    ResumableState,
    claim_state,
    complete_state,
    completed_leftovers,
    create_state,
    discard_state,
    fingerprint_differences,
    read_state,
    record_done,
    tidy_leftovers,
)
from diffscale.files import check_output, remove_orphaned_temporaries
from diffscale.runs.coarse_grid import check_regrid, onto_coarse_lattice
from diffscale.runs.unreadable_input import expand_input_paths, locate_unreadable
from diffscale.sampling import SamplerSettings, number_of_evaluations
from diffscale.threads import Threads, check_threads
from diffscale.training.distributed import DistributedContext
from diffscale.validation import ConfigError, option_name, option_setting

if TYPE_CHECKING:
    from diffscale.runs.run import ClimateRun

__all__ = [
    "DEFAULT_MEMBERS",
    "ENSEMBLE_SUFFIXES",
    "CoarseInput",
    "DownscalingJob",
    "check_coarse_grid",
    "check_ensemble_output",
    "coarse_fields",
    "default_batch_size",
]

CoarseInput = xr.Dataset | str | os.PathLike | Sequence[str | os.PathLike]
"""A coarse input: an ``xarray.Dataset``, a file, or a list of files / glob patterns (combined along time)."""
DEFAULT_MEMBERS = 16
"""Ensemble members of a diffusion run when none are asked for (a regression run writes one)."""
DEFAULT_MEMBER_BATCH = 16
DEFAULT_BATCH_SIZE = 64
BATCH_POINTS = 2**20
"""Grid points per network call at most when the batch size is left to its default: 64 fields of a regional grid
(up to 128 x 128), fewer of a large one (16 of the global 1 deg grid), so that memory stays at a few GB."""
ENSEMBLE_SUFFIXES = (".nc", ".zarr")
logger = logging.getLogger(__name__)
MEMORY_FRACTION = 0.5
"""An in-memory ensemble may take at most this fraction of the memory available when it is asked for."""


# -- inputs and outputs ------------------------------------------------------------------------------------------
def coarse_fields(
    coarse: CoarseInput, variables: Sequence[str], start: Any = None, end: Any = None, what: str = "coarse"
) -> tuple[xr.Dataset, str]:
    """(the harmonised fields of ``variables`` between ``start`` and ``end`` (inclusive; ISO dates of the input's
    calendar, ``2019-02-30`` for a 360_day input), a description of the source for the ensemble's attributes);
    ConfigError (naming the argument ``what``) when there is no time left."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and not is_time_bound(value):
            raise ConfigError(
                f"{option_name(name)} = {value!r}: not an ISO date or time (e.g. 2019-03-25 or 2019-03-25T06:00)"
            )
    time_slice = (start, end) if start is not None or end is not None else None
    if isinstance(coarse, xr.Dataset | xr.DataArray):
        source = str(coarse.encoding.get("source", "an in-memory xarray.Dataset"))
        names = (option_name("start"), option_name("end"))
        fields = select_fields(
            coarse, variables, time_slice, source=f"{option_name(what)} ({source})", bound_names=names
        )
    else:
        paths = [coarse] if isinstance(coarse, str | os.PathLike) else list(coarse)
        source = ", ".join(str(path) for path in paths)
        try:
            fields = open_fields(
                paths,
                variables=variables,
                time_slice=time_slice,
                chunk_bytes=DASK_CHUNK_BYTES,
                bound_names=(option_name("start"), option_name("end")),
            )
        except ConfigError as error:
            raise ConfigError(f"{option_name(what)}: {error}") from None
    if fields.sizes.get("time", 0) == 0:
        bounds = " and ".join(
            f"{option_name(name)} {value}" for name, value in (("start", start), ("end", end)) if value
        )
        raise ConfigError(f"{option_name(what)}: no times within {bounds}")
    return fields, source


def check_ensemble_output(out: str | os.PathLike, overwrite: bool, resume: bool = False) -> Path:
    """``out`` if an ensemble can be written there (``.nc`` or ``.zarr``; missing folders are created; it does not
    exist unless ``overwrite``; an interrupted run's resumable state for it is continued only with ``resume`` and
    replaced only with ``overwrite``); ConfigError otherwise."""
    path = Path(out)
    name = option_name("out")
    if path.suffix not in ENSEMBLE_SUFFIXES:
        raise ConfigError(f"{name} = '{path}': the ensemble is written as netCDF (.nc) or a Zarr store (.zarr)")
    check_output(path, name, directory=path.suffix == ".zarr")
    if resume and not overwrite and completed_leftovers(path):
        return path  # completed by the interrupted run: the resume only tidies up
    if path.exists() and not overwrite:
        raise ConfigError(f"{name} = '{path}': exists; pass {option_setting('overwrite', True)} to replace it")
    if not resume and not overwrite:
        state = read_state(path)
        if state is not None and state.live_owner() is not None:
            raise ConfigError(
                f"{name} = '{path}': process {state.live_owner()} is writing it now ({state.describe()}); wait for it "
                "or write elsewhere"
            )
        if state is not None:
            raise ConfigError(
                f"{name} = '{path}': an interrupted run left a resumable state ({state.describe()}); pass "
                f"{option_setting('resume', True)} to continue it or {option_setting('overwrite', True)} to start again"
            )
    return path


def check_coarse_grid(
    latitude: np.ndarray, longitude: np.ndarray, grid: dict, factor: int, *, aligned: bool = False
) -> None:
    """The coarse input's spacing must be ``factor`` times the training grid's (ConfigError naming both). With
    ``aligned`` (a run with static fields, which are matched by coordinates) the fine cells it implies must also
    lie on the training grid's lattice (origin + k x spacing): a shifted coarse grid is named as such."""
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


def _regridding_attributes(regridding: Regridding, source: str) -> dict[str, Any]:
    """The ensemble's record of the coarse input's regridding: ``coarse_regridding`` (the method),
    ``coarse_source_grid`` (the input's grid) and a ``history`` line naming both (with the writer's own line)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    height, width = regridding.latitude.size, regridding.longitude.size
    return {
        "coarse_regridding": regridding.method,
        "coarse_source_grid": regridding.source.describe(),
        "history": (
            f"{now}: coarse input {source} {regridding.describe()} onto the run's {height} x {width} coarse cells; "
            f"ensemble written by diffscale {_version()}"
        ),
    }


def _attributes_in_units(
    fields: xr.Dataset, conditioning: Conditioning, name: str, trained: str | None = None
) -> dict[str, Any]:
    """The coarse input's attributes of ``name``, with the units its values were converted to: the run's
    (``trained``, spelled as in training, also where the input's spelling of the same units left the values as
    they were: kg m-2 d-1 for mm d-1), else those of the input."""
    attributes = dict(fields[name].attrs) if name in fields else {}
    units = trained or conditioning.units.get(name)
    if units:
        attributes["units"] = units
    return attributes


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{option_name(name)} = {value!r}: must be an integer >= {minimum}")
    return int(value)


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _patch_plan(
    patch: Sequence[int] | None,
    overlap: int | None,
    trained_patch: tuple[int, int] | None,
    height: int,
    width: int,
    periodic_longitude: bool,
) -> PatchPlan | None:
    """The window plan: ``patch``, else the run's training patch when the domain is larger, else None (the whole
    domain in one network call)."""
    if patch is not None:
        if len(patch) != 2:
            raise ConfigError(f"{option_name('patch')} = {list(patch)}: give (height, width)")
        patch = (min(_check_count("patch", patch[0], 1), height), min(_check_count("patch", patch[1], 1), width))
    elif trained_patch is not None and (trained_patch[0] < height or trained_patch[1] < width):
        patch = (min(trained_patch[0], height), min(trained_patch[1], width))
    else:
        return None
    overlap = _check_count("overlap", overlap, 0) if overlap is not None else max(1, min(patch) // 4)
    if overlap >= min(patch):
        raise ConfigError(
            f"{option_name('overlap')} = {overlap}: must be smaller than the patch {patch[0]} x {patch[1]}"
        )
    return PatchPlan(height, width, tuple(patch), overlap=overlap, periodic_longitude=periodic_longitude)


# -- the job -----------------------------------------------------------------------------------------------------
@dataclass
class DownscalingJob:
    """A checked downscaling of one coarse input by one run: the conditioning is built, nothing sampled yet.

    Build it with :meth:`prepare` (or ``ClimateRun.prepare_downscaling``), then :meth:`run` it.
    """

    climate: ClimateRun
    conditioning: Conditioning | LazyConditioning
    base: torch.Tensor | LazyRows
    members: int
    settings: SamplerSettings | None
    seed: int
    member_batch: int
    batch_size: int
    patch_plan: PatchPlan | None
    variables: dict[str, dict[str, str]]
    attributes: dict[str, Any]
    to_physical: ToPhysical
    threads: Threads = "auto"
    spread_inflation: dict[str, float] | None = None
    """Per variable, the factor k by which every time's members are inflated about their mean (the run's
    recalibration for this ensemble size); None: the members as sampled."""
    extrapolation: dict[str, dict[str, Any]] | None = None
    """Per variable, how far the coarse input lies outside the training range at each time (``outside_fraction``,
    ``excess``: :meth:`~diffscale.data.climate.extrapolation.InputRange.measure`); None for a run saved without its
    training range. Written into the ensemble as per-time variables."""
    time_encoding: TimeEncoding | None = None
    """The units and calendar of the coarse input's time axis, which the ensemble keeps; None for an input that
    carries none (a Dataset built in memory): then hours since 1970-01-01 in the times' own calendar."""
    input_paths: tuple[str, ...] = ()
    """The coarse input's files as given (globs allowed; empty for an in-memory Dataset): where a reading error
    is traced to its file."""

    @classmethod
    def prepare(
        cls,
        run: ClimateRun,
        coarse: CoarseInput,
        *,
        members: int | None = None,
        settings: SamplerSettings | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        s_churn: float | None = None,
        s_min: float | None = None,
        s_max: float | None = None,
        s_noise: float | None = None,
        schedule: str | None = None,
        seed: int = 0,
        start: Any = None,
        end: Any = None,
        patch: Sequence[int] | None = None,
        overlap: int | None = None,
        member_batch: int = DEFAULT_MEMBER_BATCH,
        batch_size: int | None = None,
        threads: Threads = "auto",
        sort_ordered_pairs: bool = False,
        recalibrate: bool = True,
        regrid: str = "conservative",
        bias_adjust: str | None = None,
        bias_reference: Sequence[Any] | None = None,
    ) -> DownscalingJob:
        """Check the options and the coarse input and build its conditioning (the regression base of a CorrDiff or
        regression run too). See :meth:`ClimateRun.downscale` for the arguments.

        ``sort_ordered_pairs``: sort each ordered pair of the run's variables (tasmin <= tasmax,
        :data:`~diffscale.data.climate.relations.ORDERED_PAIRS`) at every point of every member, in physical
        units: low, high <- min, max (:func:`~diffscale.data.climate.relations.sort_ordered_pairs`). Members that
        already respect the order are unchanged; where one breaks it the two values swap, which keeps the pair's
        mean and range |high - low| but moves the upper tail of low down and the lower tail of high up there.
        Refused for a run without an ordered pair.

        ``regrid``: how a coarse input that is not on the run's coarse lattice reaches it
        (:mod:`~diffscale.runs.coarse_grid`): ``conservative`` (first-order conservative, the default) or
        ``bilinear`` regridding onto the run's coarse cells over its training domain, which the input must cover;
        ``none`` refuses it. An input on the lattice is used as it is, over its own extent.
        ``bias_adjust`` (``qm`` or ``qdm``) with ``bias_reference`` (START, END): the coarse input is first mapped
        onto the run's training coarse climatology (:func:`diffscale.runs.bias_adjustment.bias_adjust`, with the
        input's reference period START .. END); the ensemble's attributes record it.

        Raises:
            ConfigError: a bad option, a missing variable, NaNs (naming variable and time), a grid whose spacing is
                not the run's factor times the training grid's (``regrid="none"``), an input that does not cover the
                run's coarse cells (when regridded), or no times between ``start`` and ``end``.
        """
        device = run.device
        if device.type == "cpu":
            # channels_last convolution weights: the same outputs (to rounding), 1.2-1.3x faster on CPU (oneDNN);
            # on a GPU (cuDNN, H200) it was slower: 0.83x the evaluations per second of the default layout
            run.model.to(memory_format=torch.channels_last)
        section = run.section
        if members is not None:
            _check_count("members", members, 1)
        if run.deterministic and members not in (None, 1):
            raise ConfigError(
                f"{option_name('members')} = {members}: '{run.run_dir}' is a regression run (deterministic); "
                f"use {option_setting('members', 1)}"
            )
        members = members if members is not None else (1 if run.deterministic else DEFAULT_MEMBERS)
        seed = _check_count("seed", seed, 0)
        threads = check_threads(threads, option_name("threads"))
        member_batch = _check_count("member_batch", member_batch, 1)
        if not isinstance(recalibrate, bool):
            raise ConfigError(f"{option_name('recalibrate')} = {recalibrate!r}: must be True or False")
        inflation = None
        if recalibrate and run.recalibration is not None and not run.deterministic and members > 1:
            factors = run.recalibration.factors(members)
            missing = [name for name in section.variables if name not in factors]
            if missing:
                raise ConfigError(
                    f"'{run.run_dir}': its recalibration has no dispersion for {', '.join(missing)}; fit it again"
                )
            inflation = {name: factors[name] for name in section.variables}
            member_batch = members  # the inflation needs all the members of a time in one block
        if batch_size is not None:
            batch_size = _check_count("batch_size", batch_size, 1)
        chosen = None
        if not run.deterministic:
            chosen = run.sampler_settings(
                settings,
                steps=steps,
                sampler=sampler,
                s_churn=s_churn,
                s_min=s_min,
                s_max=s_max,
                s_noise=s_noise,
                schedule=schedule,
            )
        if not isinstance(sort_ordered_pairs, bool):
            raise ConfigError(f"{option_name('sort_ordered_pairs')} = {sort_ordered_pairs!r}: must be true or false")
        pairs = ordered_pairs(section.variables)
        if sort_ordered_pairs and not pairs:
            known = ", ".join(f"{low} <= {high}" for low, high in ORDERED_PAIRS)
            raise ConfigError(
                f"{option_name('sort_ordered_pairs')}: the run's variables ({', '.join(section.variables)}) hold no "
                f"ordered pair (known: {known})"
            )
        regrid = check_regrid(regrid)
        adjusting = bias_adjust is not None or bias_reference is not None
        # bias adjustment reads the input's reference period too: it takes the whole input, on the run's lattice
        fields, source = coarse_fields(
            coarse, section.variables, None if adjusting else start, None if adjusting else end
        )
        builder = run.builder()
        fields, regridding = onto_coarse_lattice(
            fields,
            coarse,
            run.grid,
            section.coarsen_factor,
            aligned=bool(builder.static_variables),
            regrid=regrid,
            any_window=bool(section.random_windows),
        )
        if adjusting:
            fields = _bias_adjusted(run, fields, bias_adjust, bias_reference, start, end)
            fields.attrs["bias_adjusted_input"] = source
            source = f"{source}, bias-adjusted ({bias_adjust})"
        check_coarse_grid(
            fields["latitude"].values,
            fields["longitude"].values,
            run.grid,
            section.coarsen_factor,
            aligned=bool(builder.static_variables),
        )
        base_run = run.base_run()
        regression = base_run.regression_predictor() if base_run is not None else None
        # read block by block when sampled (bounded memory for any length of input); NaNs are looked for now
        conditioning = builder.blocks(fields, regression=regression, device=device)
        if run.deterministic:
            conditioning = conditioning.with_base_model(run.regression_predictor())
        base = conditioning.base
        periodic = builder.periodic_longitude
        if periodic is None:
            periodic = is_global_longitude(conditioning.longitude)
        height, width = conditioning.latitude.size, conditioning.longitude.size
        if batch_size is None:
            batch_size = default_batch_size(height, width)
        plan = _patch_plan(patch, overlap, section.patch, height, width, periodic)
        variables = {
            name: cf_attributes(
                name, _attributes_in_units(fields, conditioning, name, builder.transforms.stats[name].get("units"))
            )
            for name in section.variables
        }
        for name, attributes in variables.items():  # the writer counts the member values outside this range
            bounds = output_range(name, attributes)
            if bounds is not None:
                attributes[RANGE_ATTRIBUTE] = list(bounds)
        attributes: dict[str, Any] = {
            "title": "diffscale downscaled ensemble",
            "source": f"diffscale {_version()}",
            "run_dir": str(Path(run.run_dir).resolve()),
            "checkpoint_step": run.step,
            "checkpoint_weights": run.weights,
            "checkpoint_sha256": run.weights_sha256,
            "coarse_input": source,
            "coarsening_factor": section.coarsen_factor,
            "seed": seed,
            "member_batch": member_batch,
            "model": "regression" if run.deterministic else run.config.diffusion.type,
            "data_target": section.target,
        }
        if regridding is not None:
            attributes.update(_regridding_attributes(regridding, source))
        attributes.update({key: value for key, value in fields.attrs.items() if key.startswith("bias_")})
        if chosen is not None:
            attributes["sampler"] = chosen.model_dump(mode="json")
            attributes["nfe_per_member"] = number_of_evaluations(chosen.steps, chosen.solver)
        if plan is not None:
            attributes["patch"] = f"{plan!r}"
        to_physical: ToPhysical = builder.to_physical
        if sort_ordered_pairs:
            attributes["ordered_pairs"] = "; ".join(f"{low} <= {high} sorted pointwise" for low, high in pairs)
            to_physical = _sorting(builder.to_physical, list(section.variables))
        if inflation is not None:
            attributes["spread_inflation"] = inflation  # flattened: spread_inflation_<variable> = k
        extrapolation = None
        if run.input_range is not None:
            channels = len(section.variables)
            extrapolation = _measure_extrapolation(run.input_range, conditioning, channels)
            warning = extrapolation_warning(extrapolation, conditioning.times)
            if warning is not None and _is_main_process():
                warnings.warn(warning, ExtrapolationWarning, stacklevel=3)
        return cls(
            climate=run,
            conditioning=conditioning,
            base=base,
            members=members,
            settings=chosen,
            seed=seed,
            member_batch=member_batch,
            batch_size=batch_size,
            patch_plan=plan,
            variables=variables,
            attributes=attributes,
            to_physical=to_physical,
            threads=threads,
            extrapolation=extrapolation,
            spread_inflation=inflation,
            time_encoding=time_encoding(fields["time"]) if "time" in fields.coords else None,
            input_paths=_input_paths(coarse),
        )

    # -- what it will do --------------------------------------------------------------------------------------------
    @property
    def times(self) -> np.ndarray:
        """The times to downscale: datetime64, or cftime dates of the input's calendar (as xarray decoded them)."""
        return self.conditioning.times

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) of the fine grid."""
        return self.conditioning.latitude.size, self.conditioning.longitude.size

    def describe(self, processes: int = 1) -> str:
        """One line: times x members, the grid, the variables, the sampler and the number of processes."""
        height, width = self.grid_shape
        what = (
            "deterministic prediction"
            if self.settings is None
            else (
                f"{self.settings.solver}, {self.settings.steps} steps, NFE {self.attributes['nfe_per_member']} "
                "per member"
            )
        )
        regridded = self.attributes.get("coarse_regridding")
        regridding = f"; coarse input regridded ({regridded}) onto the run's coarse cells" if regridded else ""
        return (
            f"downscaling {len(self.times)} times x {self.members} members to {height} x {width} "
            f"({', '.join(self.climate.section.variables)}; {what}; {processes} process(es){regridding})"
        )

    def layout(self) -> dict[str, Any]:
        """The ensemble's coordinates and attributes, as the writers take them."""
        return {
            "latitude": self.conditioning.latitude,
            "longitude": self.conditioning.longitude,
            "times": self.conditioning.times,
            "num_members": self.members,
            "variables": self.variables,
            "global_attributes": self.attributes,
            "time_variables": extrapolation_variables(self.extrapolation) if self.extrapolation is not None else {},
            "time_encoding": self.time_encoding,
        }

    def nbytes(self) -> int:
        """Bytes of the ensemble in float32."""
        height, width = self.grid_shape
        return 4 * self.members * len(self.times) * len(self.variables) * height * width

    # -- doing it ---------------------------------------------------------------------------------------------------
    def run(
        self,
        out: str | os.PathLike | None = None,
        *,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = False,
        distributed: DistributedContext | None = None,
    ) -> xr.Dataset:
        """Sample the ensemble: into memory (``out`` None; the Dataset that ``xarray.open_dataset`` reads back from
        the netCDF file), or into ``out`` (netCDF ``.nc`` or Zarr ``.zarr``), then opened lazily (dask-backed).
        ``resume``: continue an interrupted run into ``out`` (:meth:`write`). ``distributed``: this process's place
        under torchrun (the blocks are shared; ``out`` required)."""
        if out is None:
            if distributed is not None and distributed.enabled:
                raise ConfigError(f"downscaling under torchrun writes a file: give {option_name('out')}")
            if resume:
                raise ConfigError(
                    f"{option_name('resume')}: only an ensemble written to a file ({option_name('out')}) resumes"
                )
            return self._in_memory(progress)
        path = self.write(out, overwrite=overwrite, resume=resume, progress=progress, distributed=distributed)
        if path.suffix == ".zarr":
            return xr.open_zarr(path)
        return xr.open_dataset(path, chunks={})

    def _in_memory(self, progress: bool) -> xr.Dataset:
        available = _available_memory()
        if available is not None and self.nbytes() > MEMORY_FRACTION * available:
            raise ConfigError(
                f"the ensemble would take {self.nbytes() / 2**30:.1f} GiB in memory ({available / 2**30:.1f} GiB "
                f"available): write it to a file instead ({option_name('out')}='ensemble.zarr')"
            )
        with MemoryEnsembleWriter(**self.layout()) as writer:
            self._generate(writer, self._groups(), progress)
        assert writer.dataset is not None
        warn_outside(writer.dataset)
        return writer.dataset

    # -- resumable writing ------------------------------------------------------------------------------------------
    def fingerprint(self, out: str | os.PathLike) -> dict[str, Any]:
        """What an interrupted run into ``out`` must share with this job for :meth:`write` to resume it: the weights
        (their SHA-256), the input (its description, times, grid and a SHA-256 of its conditioning at the first and
        last times), the seed, the members, the sampler, the batch layout (member batch, batch size, patches), the
        variables, the post-processing and the output format. JSON values."""
        attributes = self.attributes
        times = np.asarray(self.times)
        height, width = self.grid_shape
        grid = hashlib.sha256(
            np.ascontiguousarray(self.conditioning.latitude, dtype=np.float64).tobytes()
            + np.ascontiguousarray(self.conditioning.longitude, dtype=np.float64).tobytes()
        ).hexdigest()
        return {
            "weights_sha256": attributes["checkpoint_sha256"],
            "model": f"{attributes['model']} ({attributes['data_target']})",
            "input": (
                ", ".join(str(path.resolve()) for path in expand_input_paths(self.input_paths))
                if self.input_paths
                else attributes["coarse_input"]
            ),
            "input_times": (
                f"{times.size} times {time_text(times[0])} .. {time_text(times[-1])} ({calendar_of(times)}), sha256 "
                f"{hashlib.sha256(' '.join(map(str, date_keys(times))).encode()).hexdigest()[:16]}"
            ),
            "input_values": self._input_digest(),
            "grid": f"{height} x {width}, sha256 {grid[:16]}",
            "variables": list(self.variables),
            "seed": self.seed,
            "members": self.members,
            "member_batch": self.member_batch,
            "batch_size": self.batch_size,
            "sampler": attributes.get("sampler"),
            "patch": attributes.get("patch"),
            "recalibrate": self.spread_inflation,
            "sort_ordered_pairs": attributes.get("ordered_pairs"),
            "output_format": Path(out).suffix,
        }

    def _input_digest(self) -> str:
        """SHA-256 (16 hex digits) of the conditioning c at the first and last times (float32 bytes)."""
        last = len(self.times) - 1
        try:
            if isinstance(self.conditioning, LazyConditioning):
                rows = [self.conditioning.conditioning_rows(index, index + 1)[0] for index in (0, last)]
            else:
                rows = [self.conditioning.cond_fields[index : index + 1] for index in (0, last)]
        except (ConfigError, MemoryError):
            raise
        except Exception as error:
            raise self.reading_failure([0, last], error) from error
        digest = hashlib.sha256()
        for row in rows:
            digest.update(row.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def reading_failure(self, indices: Sequence[int], error: Exception) -> ConfigError:
        """One line for a coarse input that could not be read at the time indices ``indices`` after the checks (a
        file damaged since): the file (for a Zarr store, the chunk file) and the time, found by reading the input's
        files again at those times and the others read with them (a lazy input reads blocks of m times)."""
        from diffscale.data.climate.series import format_time

        times = self.times
        block = getattr(self.conditioning, "batch_size", 1)
        candidates = sorted({t for i in indices for t in range(i - i % block, min(i - i % block + block, len(times)))})
        paths = expand_input_paths(self.input_paths)
        found = locate_unreadable(paths, [times[i] for i in candidates])
        if found is None and paths:  # read with others (a dask chunk spans many times): look at every time
            found = locate_unreadable(paths, [time for i, time in enumerate(times) if i not in set(candidates)])
        if found is None:
            return ConfigError(
                f"{option_name('coarse')}: reading times {format_time(times[candidates[0]])} .. "
                f"{format_time(times[candidates[-1]])} failed ({type(error).__name__}: {error})"
            )
        where, time, message = found
        return ConfigError(f"{option_name('coarse')}: '{where}' cannot be read at time {format_time(time)} ({message})")

    def resumable_state(self, out: str | os.PathLike) -> ResumableState | None:
        """What an interrupted run left for ``out`` (None: nothing), e.g. to say how far it got."""
        return read_state(out)

    def write(
        self,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = False,
        distributed: DistributedContext | None = None,
        report: Callable[[str], None] | None = None,
    ) -> Path:
        """Sample the ensemble into ``out`` (netCDF or Zarr) and return its path.

        The ensemble is built in a hidden resumable store beside ``out`` (:mod:`diffscale.downscaling.resumable`)
        and completed into ``out`` at the end, so ``out`` is complete or absent. If the run is interrupted (killed,
        Ctrl-C, a full disk, an unreadable input) after some blocks were written, the store stays: ``resume=True``
        continues it, sampling only the blocks not yet durable, and gives the ensemble bitwise equal to an
        uninterrupted run's (same device and threads). A resume is refused with one line (ConfigError) when the
        run, input, seed or settings differ from the interrupted run's (:meth:`fingerprint`); without ``resume``
        an existing state is refused unless ``overwrite`` (which starts again). ``resume`` with no state starts
        from the beginning. Temporary files of processes that no longer run are removed first (one log line).
        ``report`` receives one line when an interrupted run is resumed (``resuming: N of G blocks done, in ...``).
        """
        context = distributed if distributed is not None else DistributedContext()
        path = check_ensemble_output(out, overwrite, resume) if context.is_main else Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)  # the one rule of every command: missing folders are made
        # Groups of blocks sampled in one call are formed from the whole plan, then shared between processes,
        # so every member is computed in the same batch whatever the number of processes.
        blocks = work_blocks(len(self.times), self.members, self.member_batch)
        groups = sampling_groups(blocks, self.batch_size)
        spans, first = [], 0  # the indices (into ``blocks``) of each group's blocks
        for group in groups:
            spans.append(range(first, first + len(group)))
            first += len(group)
        layout = self.layout()
        if _agree(context, context.is_main and resume and not overwrite and completed_leftovers(path)):
            if context.is_main:
                tidy_leftovers(path)
            return path
        try:
            state = _open_state_together(
                path, context, lambda: self._open_state(path, len(blocks), overwrite, resume, report)
            )
        except OSError as error:  # e.g. no room for the store: one line, and no empty store left
            raise (_interrupted(path, error) if context.is_main else error) from None
        known = set(state.done)
        remaining = [index for index, span in enumerate(spans) if not state.done.issuperset(span)]
        mine = remaining[context.rank :: context.world_size]
        failure: BaseException | None = None
        writer: EnsembleWriter | None = None
        try:
            writer = ZarrEnsembleWriter(path, store=state.store, create=False, overwrite=True, **layout)
            with writer:

                def group_done(position: int) -> None:
                    writer.sync()  # the slabs are durable before the record counts them
                    known.update(spans[mine[position]])
                    record_done(state.store, context.rank, context.world_size, known)

                self._generate(writer, [groups[index] for index in mine], progress and context.is_main, group_done)
        except BaseException as error:  # the store stays for a resume; the other ranks must hear of it
            failure = error
        _finish_together(path, layout, context, failure, overwrite)  # raises on every rank if any rank failed
        if context.is_main:  # the output records its values outside the plausible ranges (every block, resumed too)
            opened = xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path, chunks={})
            with opened:
                warn_outside(opened)
        return path

    def _open_state(
        self, path: Path, blocks: int, overwrite: bool, resume: bool, report: Callable[[str], None] | None
    ) -> ResumableState:
        """(The main process.) Remove what dead processes left, then check and open the state to write into: the
        interrupted run's when resuming (refused when it differs), else a new one."""
        removed = remove_orphaned_temporaries(path.parent)
        try:
            state = read_state(path)
        except ConfigError:
            if not overwrite:
                raise
            discard_state(path)  # damaged bookkeeping (or a store of an older version): replaced
            state = None
        if state is not None:
            removed += remove_orphaned_temporaries(state.store)
        if removed:
            names = ", ".join(str(item) for item in removed)
            logger.warning("removed %d temporary file(s) of processes that no longer run: %s", len(removed), names)
        fingerprint = self.fingerprint(path)
        if state is not None and resume:
            differences = fingerprint_differences(state.fingerprint, fingerprint)
            if state.total != blocks:
                differences.append(f"blocks: was {state.total}, now {blocks}")
            if differences:
                shown = "; ".join(_option_difference(item) for item in differences)
                raise ConfigError(
                    f"{option_name('resume')}: the interrupted run in '{state.store}' differs: {shown}; rerun without "
                    f"{option_setting('resume', True)}, with {option_setting('overwrite', True)}, to start again"
                )
            claim_state(state)
            if report is not None:
                report(f"resuming: {state.describe()}")
            return state
        if state is not None:  # overwrite: start again (check_ensemble_output refused it otherwise)
            if state.live_owner() is not None:
                claim_state(state)  # refused: another process writes it now
            discard_state(path)
        state = create_state(path, self.layout(), fingerprint, blocks)
        claim_state(state)
        return state

    def _groups(self) -> list[list[Any]]:
        blocks = work_blocks(len(self.times), self.members, self.member_batch)
        return sampling_groups(blocks, self.batch_size)

    def _generate(
        self,
        writer: EnsembleWriter,
        groups: list[list[Any]],
        progress: bool,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        run = self.climate
        generate_ensemble(
            None if run.deterministic else run.model,
            None if run.deterministic else run.model.formulation,
            _ReadingErrors(self.conditioning.cond_fields, self),
            _ReadingErrors(self.base, self),
            [],
            writer,
            run.section.variables,
            self.to_physical,
            settings=self.settings,
            seed=self.seed,
            times=self.conditioning.times,
            device=run.device,
            patch_plan=self.patch_plan,
            groups=groups,
            progress=progress,
            threads=self.threads,
            block_transform=self._inflate if self.spread_inflation is not None else None,
            on_group=on_group,
        )

    def _inflate(self, members: torch.Tensor) -> torch.Tensor:
        """A block of all the members of one time, inflated about its mean by the run's recalibration."""
        assert self.spread_inflation is not None
        if members.shape[0] != self.members:
            raise AssertionError(f"a recalibrated block holds {members.shape[0]} of the {self.members} members")
        return inflate_channels(members, [self.spread_inflation[name] for name in self.climate.section.variables])


def default_batch_size(height: int, width: int) -> int:
    """Fields per network call by default: :data:`DEFAULT_BATCH_SIZE`, or fewer so that a call holds at most
    :data:`BATCH_POINTS` grid points (at least 1; a block of members of one time is never split)."""
    return max(1, min(DEFAULT_BATCH_SIZE, BATCH_POINTS // max(1, height * width)))


def _measure_extrapolation(
    input_range: InputRange, conditioning: Conditioning | LazyConditioning, channels: int, block: int = 16
) -> dict[str, dict[str, Any]]:
    """:meth:`InputRange.measure` of the upsampled coarse channels (the first ``channels`` of c), ``block`` times
    at a time, so that a long lazily read input is measured with bounded memory (and without forming its base: a
    CorrDiff run's regression model runs once, when the members are sampled)."""
    count = len(conditioning.times)

    def coarse_channels(start: int, stop: int) -> torch.Tensor:
        if isinstance(conditioning, LazyConditioning):
            return conditioning.conditioning_rows(start, stop)[0][:, :channels]
        return conditioning.cond_fields[start:stop, :channels]

    parts = [
        input_range.measure(
            coarse_channels(start, min(start + block, count)), conditioning.latitude, conditioning.longitude
        )
        for start in range(0, count, block)
    ]
    return {
        name: {
            "outside_fraction": np.concatenate([part[name]["outside_fraction"] for part in parts]),
            "excess": np.concatenate([part[name]["excess"] for part in parts]),
            "comparison": parts[0][name]["comparison"],
        }
        for name in parts[0]
    }


def _bias_adjusted(
    run: ClimateRun, fields: xr.Dataset, method: str | None, reference: Sequence[Any] | None, start: Any, end: Any
) -> xr.Dataset:
    """The coarse ``fields`` (all of the input's times, on the run's coarse lattice) between ``start`` and ``end``,
    bias-adjusted by ``method`` over the ``reference`` period (both must be given)."""
    from diffscale.runs.bias_adjustment import bias_adjust

    if method is None or reference is None:
        given, needed = ("bias_adjust", "bias_reference") if method is not None else ("bias_reference", "bias_adjust")
        raise ConfigError(f"{option_name(given)} needs {option_name(needed)} too")
    return bias_adjust(run, fields, reference, method, start=start, end=end)


def _is_main_process() -> bool:
    """Rank 0 under torchrun (and a process on its own): the one that speaks."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _sorting(to_physical: ToPhysical, variables: list[str]) -> ToPhysical:
    """``to_physical`` followed by sorting the ordered pairs of ``variables`` (channels of (B, C, H, W))."""

    def physical_and_sorted(normalised: torch.Tensor) -> torch.Tensor:
        return sort_pairs(to_physical(normalised), variables, dim=-3)

    return physical_and_sorted


def _version() -> str:
    import diffscale

    return diffscale.__version__


def _input_paths(coarse: CoarseInput) -> tuple[str, ...]:
    if isinstance(coarse, xr.Dataset | xr.DataArray):
        return ()
    paths = [coarse] if isinstance(coarse, str | os.PathLike) else list(coarse)
    return tuple(str(path) for path in paths)


class _ReadingErrors:
    """Rows of c or b (:class:`LazyRows` or a tensor) whose reading failures (a damaged input file met after the
    checks) become one ConfigError naming the file and the time."""

    def __init__(self, rows: Any, job: DownscalingJob) -> None:
        self.rows = rows
        self.job = job
        self.shape = rows.shape

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices: Any) -> torch.Tensor:
        try:
            return self.rows[indices]
        except (ConfigError, MemoryError):
            raise
        except Exception as error:
            raise self._diagnosis(indices, error) from error

    def _diagnosis(self, indices: Any, error: Exception) -> ConfigError:
        asked = sorted({int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()})
        return self.job.reading_failure(asked, error)


def _option_difference(difference: str) -> str:
    """A fingerprint difference with its key as the user spells the option (``--seed: was 1, now 2``)."""
    key, _, rest = difference.partition(":")
    options = {"seed", "members", "member_batch", "batch_size", "patch", "recalibrate", "sort_ordered_pairs"}
    return f"{option_name(key) if key in options else key.replace('_', ' ')}:{rest}"


def _agree(context: DistributedContext, decision: bool) -> bool:
    """The main process's ``decision``, on every process."""
    if not context.enabled:
        return decision
    import torch.distributed as dist

    flag = torch.tensor([1 if decision else 0])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _open_state_together(
    out: Path, context: DistributedContext, open_state: Callable[[], ResumableState]
) -> ResumableState:
    """The state every process writes into: the main process checks and opens (or creates) it, then the others
    read it; a refusal on the main process is raised there and named on the others."""
    if not context.enabled:
        return open_state()
    import torch.distributed as dist

    state, failure = None, None
    if context.is_main:
        try:
            state = open_state()
        except BaseException as error:
            failure = error
    opened = torch.tensor([0 if failure is not None else 1])
    dist.broadcast(opened, src=0)
    if failure is not None:
        raise failure
    if not opened.item():
        raise ConfigError(f"{option_name('out')} = '{out}': rank 0 could not open the output (its message is above)")
    if state is None:
        state = read_state(out)
        if state is None:
            raise ConfigError(f"{option_name('out')} = '{out}': the resumable store made by rank 0 is not visible here")
    return state


def _interrupted(out: Path, failure: BaseException) -> BaseException:
    """After ``failure`` on some process: the state is removed when no block is durable (nothing is left behind),
    kept otherwise. Returns the exception to raise: a ConfigError (one line: what failed, what was kept, how to
    resume) for bad input and a failing disk, ``failure`` itself otherwise (with a note when the state was kept)."""
    state = read_state(out) if failure is not None else None
    if state is not None and not state.done:
        discard_state(out)
        state = None
    kept = (
        f"{state.describe()}: rerun with {option_setting('resume', True)} to continue"
        if state is not None
        else "no output was written"
    )
    if isinstance(failure, ConfigError):
        return ConfigError(f"{failure}; {kept}")
    if isinstance(failure, OSError):
        what = failure.strerror or str(failure)
        where = f" ({failure.filename})" if failure.filename else ""
        return ConfigError(f"{option_name('out')} = '{out}': writing failed: {what}{where}; {kept}")
    if state is not None and not isinstance(failure, KeyboardInterrupt):
        failure.add_note(kept)
    return failure


def _finish_together(
    out: Path, layout: dict[str, Any], context: DistributedContext, failure: BaseException | None, overwrite: bool
) -> None:
    """All processes agree whether every one wrote its share; the main process then completes ``out`` from the
    store (:func:`~diffscale.downscaling.resumable.complete_state`). On a failure anywhere the store is kept for a
    resume (or removed when no block is durable) and every process raises."""
    if context.enabled:
        import torch.distributed as dist

        succeeded = torch.tensor([0 if failure is not None else 1])
        dist.all_reduce(succeeded, op=dist.ReduceOp.MIN)
        everyone = bool(succeeded.item())
    else:
        everyone = failure is None
    if not everyone:
        if context.is_main:
            failure = _interrupted(out, failure or ConfigError("another downscaling process failed"))
        if failure is not None:
            raise failure
        raise ConfigError("another downscaling process failed (its message is above)")
    completed = torch.tensor([1])
    error: BaseException | None = None
    if context.is_main:
        try:
            state = read_state(out)
            assert state is not None, f"the resumable store of {out} vanished"
            complete_state(state, layout, overwrite=overwrite)
        except BaseException as caught:  # the complete store stays: a resume completes it
            error = _interrupted(out, caught)
            completed[0] = 0
    if context.enabled:
        import torch.distributed as dist

        dist.broadcast(completed, src=0)
    if error is not None:
        raise error
    if not completed.item():
        raise ConfigError("completing the output failed (rank 0's message is above)")
