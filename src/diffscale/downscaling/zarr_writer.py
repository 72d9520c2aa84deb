"""Zarr ensemble stores: the layout of :class:`~diffscale.downscaling.EnsembleWriter` (CF-1.8 attributes; member,
time, latitude, longitude; float32, compressed) in a Zarr directory (format 2, consolidated metadata, readable by
``xarray.open_zarr``), one chunk per (member, time) slab.

Because every slab is its own chunk, the processes of a ``torchrun`` write their blocks into one store directly:
no part files and no merge. With ``shared=(rank, world_size)`` the store is built under a name that every rank
knows (:func:`shared_temporary_path`): rank 0 creates it before the others open it (the caller separates the two,
e.g. with a collective), each rank writes its own slabs, and once every rank is done rank 0 moves it into place
with :func:`publish_shared` (or removes it with :func:`discard_shared` when any rank failed). A single process
writes under a hidden temporary name that :meth:`ZarrEnsembleWriter.close` renames into place, as the netCDF
writer does; an exception inside its ``with`` block removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffscale.downscaling.writer import FILL_VALUE, EnsembleWriter, _json_value, check_rank_pair
from diffscale.files import fsync_directory
from diffscale.validation import ConfigError

__all__ = [
    "ZarrEnsembleWriter",
    "discard_shared",
    "publish_shared",
    "shared_temporary_path",
    "store_variable_attributes",
]

ZARR_FORMAT = 2
SYNC_THREADS = 16
"""Chunk files fsynced at once by :meth:`ZarrEnsembleWriter.sync`."""


def _fsync_file(path: Path) -> Path | None:
    """fsync ``path``; None when it does not exist (a chunk equal to the fill value everywhere is not stored)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return path


def shared_temporary_path(path: str | os.PathLike[str]) -> Path:
    """Where the ranks of a shared store write it until it is published: ``.NAME.partial`` beside ``path``."""
    out = Path(path)
    return out.with_name(f".{out.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _move_into_place(source: Path, target: Path) -> None:
    """Rename the finished store ``source`` to ``target``, replacing an existing one (the caller allowed it)."""
    if target.exists() or target.is_symlink():
        _remove(target)
    os.replace(source, target)


def publish_shared(path: str | os.PathLike[str]) -> Path:
    """Rank 0, after every rank has written its slabs: move the shared store into place at ``path``."""
    _move_into_place(shared_temporary_path(path), Path(path))
    return Path(path)


def discard_shared(path: str | os.PathLike[str]) -> None:
    """Remove the shared store of ``path`` (after a failure on any rank); nothing is left behind."""
    with contextlib.suppress(FileNotFoundError):
        _remove(shared_temporary_path(path))


def store_variable_attributes(path: str | os.PathLike[str], attributes: Mapping[str, Mapping[str, Any]]) -> None:
    """Add ``attributes`` ({variable: {name: value}}) to the variables of the Zarr store ``path`` and consolidate
    its metadata again (what ``xarray.open_zarr`` reads)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+", zarr_format=ZARR_FORMAT)
    for name, extra in attributes.items():
        group[name].attrs.update({key: _json_value(value) for key, value in extra.items()})
    zarr.consolidate_metadata(str(path), zarr_format=ZARR_FORMAT)


class ZarrEnsembleWriter(EnsembleWriter):
    """:class:`~diffscale.downscaling.EnsembleWriter`'s interface and checks, writing a Zarr store (``.zarr``).

    Args:
        path: the output store (a directory ending in ``.zarr``); with ``store``, the output the store is for (any
            name: a netCDF file made from it, too).
        shared: ``(rank, world_size)`` when several processes write the one store (module docstring); rank 0
            creates it, the other ranks open it. A shared writer does not check on :meth:`close` that every slab
            was written (each rank holds only its own); the caller's plan covers them.
        store: write into this store directory (created now when ``create``, else opened: it must exist) and
            leave it there on close or abort: the caller completes it, resumes it or removes it
            (:mod:`~diffscale.downscaling.resumable`). No slab check on close.
        create: with ``store``, create it (False: open the existing one).
        **layout: ``latitude``, ``longitude``, ``times``, ``num_members``, ``variables``, ``global_attributes``,
            ``time_encoding``, ``complevel`` (zstd level, 1-9) and ``overwrite``, as for the netCDF writer (the
            times keep their calendar and encoding).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shared: tuple[int, int] | None = None,
        store: str | os.PathLike[str] | None = None,
        create: bool = True,
        **layout: Any,
    ) -> None:
        if store is None and Path(path).suffix != ".zarr":
            raise ConfigError(f"output {path}: a Zarr store's name must end in .zarr")
        if "part" in layout:
            raise ConfigError("a Zarr store is written by all ranks directly: use shared=(rank, world_size)")
        if store is not None and shared is not None:
            raise ConfigError("give either shared=(rank, world_size) or store=DIRECTORY, not both")
        self.shared = check_rank_pair("shared", shared)
        self.store = Path(store) if store is not None else None
        self._create_store = create
        self._arrays: dict[str, Any] = {}
        self._unsynced: set[tuple[str, int, int]] = set()
        super().__init__(path, **layout)

    @property
    def _creates(self) -> bool:
        if self.store is not None:
            return self._create_store
        return self.shared is None or self.shared[0] == 0

    @property
    def _keeps_store(self) -> bool:
        """Whether the store outlives this writer (shared, or a store the caller named): close and abort then only
        stop writing."""
        return self.shared is not None or self.store is not None

    def _check_target(self, overwrite: bool) -> None:
        if self.store is None:  # the caller of a named store decides what happens to ``path``
            super()._check_target(overwrite)

    def _temporary_path(self) -> Path:
        if self.store is not None:
            return self.store
        return shared_temporary_path(self.path) if self.shared is not None else super()._temporary_path()

    def _create(self, complevel: int) -> None:
        if not self._creates:
            if not (self._temporary / ".zmetadata").is_file():
                maker = "by rank 0" if self.shared is not None else "(no .zmetadata)"
                raise ConfigError(f"output {self.path}: the store {self._temporary} was not created {maker}")
            self._dataset = self._temporary
            return
        if self.shared is not None:
            discard_shared(self.path)  # a store left by an earlier run that failed
        self._skeleton().to_zarr(
            self._temporary,
            mode="w-",
            compute=False,
            encoding=self._encoding(complevel),
            zarr_format=ZARR_FORMAT,
            consolidated=True,
        )
        self._dataset = self._temporary

    def _skeleton(self) -> xr.Dataset:
        """Coordinates, attributes and lazy (never computed) data variables: what ``to_zarr`` defines. Each is one
        dask chunk (the store's chunks, one per member and time, come from the encoding), so that the graph
        ``to_zarr(compute=False)`` builds holds one task a variable, not one per member and time (about 7 kB each:
        11 MiB for 1,536 times of one member)."""
        import dask.array as da

        shape = (self.num_members, self.times.size, self.latitude.size, self.longitude.size)
        return self.layout_dataset({name: da.zeros(shape, chunks=shape, dtype=np.float32) for name in self.variables})

    def _encoding(self, complevel: int) -> dict[str, dict[str, Any]]:
        from numcodecs import Blosc

        chunks = (1, 1, self.latitude.size, self.longitude.size)
        compressor = Blosc(cname="zstd", clevel=complevel, shuffle=Blosc.SHUFFLE)
        encoding: dict[str, dict[str, Any]] = {
            name: {"chunks": chunks, "compressors": (compressor,), "_FillValue": FILL_VALUE} for name in self.variables
        }
        encoding["time"] = {"units": self.time_units, "calendar": self.calendar, "dtype": self.time_values.dtype}
        for name in self.time_variables:
            encoding[name] = {"_FillValue": None}  # written as given, nothing masked
        return encoding

    def _store(self, variable: str, members: slice, times: slice, block: np.ndarray) -> None:
        import zarr

        if variable not in self._arrays:
            self._arrays[variable] = zarr.open_array(self._temporary / variable, mode="r+", zarr_format=ZARR_FORMAT)
        self._arrays[variable][members, times] = block
        self._unsynced.update(
            (variable, member, time)
            for member in range(members.start, members.stop)
            for time in range(times.start, times.stop)
        )

    def sync(self) -> None:
        """Make the slabs written since the last call durable: fsync their chunk files (one per (member, time) slab,
        ``VARIABLE/MEMBER.TIME.0.0``) and their folders. What a progress record may then count as done. The files
        are synced by up to :data:`SYNC_THREADS` threads at once (the journal then commits them together: 64 small
        chunks took 10-50 ms so against 0.3 s one after another on ext4)."""
        chunks = [self._temporary / variable / f"{member}.{time}.0.0" for variable, member, time in self._unsynced]
        if chunks:
            with ThreadPoolExecutor(max_workers=min(SYNC_THREADS, len(chunks))) as pool:
                synced = [chunk for chunk in pool.map(_fsync_file, chunks) if chunk is not None]
            for folder in sorted({chunk.parent for chunk in synced}):
                fsync_directory(folder)
        self._unsynced.clear()

    def _store_attributes(self, attributes: Mapping[str, Mapping[str, Any]]) -> None:
        self._arrays.clear()
        store_variable_attributes(self._temporary, attributes)

    def close(self) -> Path:
        """Single process: check that every slab was written and rename the store into place (its path). Shared or
        a named store: only stop writing (returns the store's path; the caller completes it)."""
        if not self._keeps_store:
            return super().close()
        self._require_open()
        self._dataset = None
        self._arrays.clear()
        return self._temporary

    def _finish(self) -> None:
        self._dataset = None
        self._arrays.clear()
        _move_into_place(self._temporary, self.path)

    def _discard(self) -> None:
        self._dataset = None
        self._arrays.clear()
        if not self._keeps_store:  # a shared or named store is the caller's to remove (or to resume)
            with contextlib.suppress(FileNotFoundError):
                _remove(self._temporary)
