"""Resumable ensemble outputs: an ensemble written to a file is either complete, or resumable, or absent.

Every ensemble that a downscaling job writes to a file (netCDF or Zarr) is first built in a hidden Zarr store beside
it, ``.NAME.partial`` (:func:`~diffscale.downscaling.shared_temporary_path`; one chunk per (member, time) slab, the
layout of :class:`~diffscale.downscaling.ZarrEnsembleWriter`), which also holds the bookkeeping of its progress:

``diffscale-resume.json``
    the *fingerprint* of the run that owns the store (weights hash, input, seed, members, sampler, batch layout,
    variables, output format...) and the number B of (time, member-batch) blocks in its plan
    (:func:`~diffscale.downscaling.work_blocks`). Written before the store takes
    its name: the store is created under a ``.NAME.partial.PID.HEX.tmp`` name and renamed, so a store named
    ``.NAME.partial`` always has its fingerprint.
``diffscale-done-RANK-of-WORLD.json``
    the indices b in [0, B) of the blocks whose slabs are durable (fsynced), one file per rank, replaced atomically
    after each sampling group (the blocks of one network call). The blocks done are the union over these files: a
    resume under another number of processes reads them all.
``diffscale-owner.json``
    the process (PID and host) that last opened the store for writing: a second process finding it alive refuses
    to write there.

A group is one network call's worth of blocks (:func:`~diffscale.downscaling.sampling_groups`, formed from the whole
plan, so a group is done or not as a whole), and every member draws its noise from its own generator seeded by
(seed, timestamp, member) (:func:`~diffscale.downscaling.member_seed`), so skipping the groups done changes no member:
a resumed ensemble is bitwise the one an uninterrupted run writes (same device and threads). A killed process
leaves at worst a group half written and not recorded; it is sampled again.

When every block is done the store is completed (:func:`complete_state`): moved into place as the Zarr output, or
copied slab by slab into the netCDF output (:class:`~diffscale.downscaling.EnsembleWriter`, a temporary file
renamed) and removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffscale.downscaling.zarr_writer import ZARR_FORMAT, ZarrEnsembleWriter, shared_temporary_path
from diffscale.files import atomic_write_bytes, fsync_directory, process_alive
from diffscale.validation import ConfigError

__all__ = [
    "DONE_FILE",
    "OWNER_NAME",
    "STATE_NAME",
    "ResumableState",
    "claim_state",
    "complete_state",
    "completed_leftovers",
    "create_state",
    "discard_state",
    "fingerprint_differences",
    "read_state",
    "record_done",
    "state_path",
    "tidy_leftovers",
]

STATE_NAME = "diffscale-resume.json"
OWNER_NAME = "diffscale-owner.json"
DONE_FILE = re.compile(r"^diffscale-done-(\d{5})-of-(\d{5})\.json$")
STATE_FORMAT = 1


def state_path(out: str | os.PathLike[str]) -> Path:
    """The resumable store of the output ``out``: ``.NAME.partial`` beside it."""
    return shared_temporary_path(out)


@dataclass(frozen=True)
class ResumableState:
    """What an interrupted downscaling left for ``out``: its store, fingerprint, plan size and progress."""

    out: Path
    store: Path
    fingerprint: dict[str, Any]
    total: int
    """B, the blocks of the whole plan."""
    done: frozenset[int]
    """The blocks whose slabs are durable."""
    owner: int | None = None
    """PID of the process that last opened the store (on ``host``)."""
    host: str | None = None

    @property
    def complete(self) -> bool:
        return len(self.done) == self.total

    def live_owner(self) -> int | None:
        """The PID of another process of this host still writing the store, else None."""
        if self.owner is None or self.owner == os.getpid() or self.host != socket.gethostname():
            return None
        return self.owner if process_alive(self.owner) else None

    def describe(self) -> str:
        """``12 of 40 blocks done, in '.e.nc.partial'``."""
        return f"{len(self.done)} of {self.total} blocks done, in '{self.store}'"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} '{path}': cannot be read ({error}); pass --overwrite to start again") from None


def read_state(out: str | os.PathLike[str]) -> ResumableState | None:
    """The resumable state of ``out``, or None when there is none; ConfigError when its bookkeeping is damaged."""
    out = Path(out)
    store = state_path(out)
    if not store.is_dir():
        return None
    if not (store / STATE_NAME).is_file():
        raise ConfigError(
            f"'{store}': a store without its {STATE_NAME} (not written by this version of diffscale); remove it or "
            "pass --overwrite to start again"
        )
    recorded = _read_json(store / STATE_NAME, "the resumable state")
    if not isinstance(recorded, dict) or recorded.get("format") != STATE_FORMAT:
        raise ConfigError(f"'{store / STATE_NAME}': not a resumable state of this format; pass --overwrite")
    total = int(recorded["blocks"])
    done: set[int] = set()
    for path in sorted(store.iterdir()):
        if DONE_FILE.match(path.name):
            blocks = _read_json(path, "the progress record").get("blocks", [])
            if not all(isinstance(b, int) and 0 <= b < total for b in blocks):
                raise ConfigError(f"'{path}': blocks outside 0 .. {total - 1}; pass --overwrite to start again")
            done.update(blocks)
    owner, host = None, None
    if (store / OWNER_NAME).is_file():
        with contextlib.suppress(ConfigError, AttributeError, TypeError, ValueError):
            claimed = _read_json(store / OWNER_NAME, "the owner record")
            owner, host = int(claimed["pid"]), str(claimed["host"])
    return ResumableState(out, store, dict(recorded["fingerprint"]), total, frozenset(done), owner, host)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode("utf-8")


def create_state(
    out: str | os.PathLike[str], layout: Mapping[str, Any], fingerprint: Mapping[str, Any], total: int
) -> ResumableState:
    """Create the empty store of ``out`` with its fingerprint (module docstring): built under a temporary name and
    renamed, so that a store under the state's name always has its fingerprint. An existing state must have been
    removed (:func:`discard_state`)."""
    out = Path(out)
    store = state_path(out)
    staging = store.with_name(f"{store.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        ZarrEnsembleWriter(out, store=staging, create=True, overwrite=True, **layout).close()
        state = {"format": STATE_FORMAT, "blocks": int(total), "fingerprint": dict(fingerprint)}
        atomic_write_bytes(staging / STATE_NAME, _json_bytes(state))
        os.replace(staging, store)
        fsync_directory(store.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ResumableState(out, store, dict(fingerprint), int(total), frozenset())


def claim_state(state: ResumableState) -> None:
    """Record this process as the one writing the store (refused while another live process of this host is)."""
    other = state.live_owner()
    if other is not None:
        raise ConfigError(
            f"'{state.store}': process {other} is writing this output now ({state.describe()}); wait for it or "
            "write elsewhere"
        )
    atomic_write_bytes(state.store / OWNER_NAME, _json_bytes({"pid": os.getpid(), "host": socket.gethostname()}))


def record_done(store: Path, rank: int, world_size: int, blocks: Iterable[int]) -> None:
    """Replace this rank's progress record by ``blocks`` (all the blocks it knows to be durable), atomically."""
    name = f"diffscale-done-{rank:05d}-of-{world_size:05d}.json"
    atomic_write_bytes(store / name, _json_bytes({"blocks": sorted(int(b) for b in blocks)}), sync_directory=False)


def fingerprint_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: was A, now B`` for every entry of the fingerprints that differs (missing entries included)."""

    def shown(value: Any) -> str:
        text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
        return text if len(text) <= 80 else text[:77] + "..."

    return [
        f"{key}: was {shown(recorded.get(key, '(none)'))}, now {shown(current.get(key, '(none)'))}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


def _strip_bookkeeping(store: Path) -> None:
    for path in store.iterdir():
        if path.name in (STATE_NAME, OWNER_NAME) or DONE_FILE.match(path.name):
            path.unlink(missing_ok=True)


def complete_state(state: ResumableState, layout: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Turn a complete store into the output ``state.out`` and return its path: a Zarr output is the store itself,
    moved into place (its bookkeeping removed); a netCDF output is written from it slab by slab (memory: one
    (members, H, W) slab; a temporary file renamed into place) and the store removed."""
    if not state.complete:
        missing = sorted(set(range(state.total)) - state.done)
        raise AssertionError(f"'{state.store}': {len(missing)} of {state.total} blocks not written, first {missing[0]}")
    out = state.out
    if out.suffix == ".zarr":
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise ConfigError(f"output {out}: exists (pass --overwrite to replace it)")
            shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
        record_outside_ranges(state.store)
        os.replace(state.store, out)
        fsync_directory(out.parent)
        _strip_bookkeeping(out)
        return out
    import zarr

    from diffscale.downscaling.writer import EnsembleWriter

    try:
        with EnsembleWriter(out, overwrite=overwrite, **layout) as writer:
            for name in writer.variables:
                array = zarr.open_array(state.store / name, mode="r", zarr_format=ZARR_FORMAT)
                for time in range(writer.times.size):
                    block = np.asarray(array[:, time], dtype=np.float32)
                    writer.write(name, range(writer.num_members), time, block)
    except RuntimeError as error:  # netCDF-C reports a full disk as "NetCDF: HDF error"
        free, needed = shutil.disk_usage(out.parent).free, _size(state.store)
        if free < needed:
            raise OSError(
                errno.ENOSPC, f"No space left on device ({free} bytes free, about {needed} needed; {error})", str(out)
            ) from error
        raise
    shutil.rmtree(state.store)
    return out


def record_outside_ranges(store: Path) -> None:
    """Count, in the complete store, the member values outside each variable's ``plausible_range`` attribute and
    record the count and its share of the variable's values as attributes (as the netCDF writer does while it
    writes): read time slab by time slab, so that blocks written by earlier, interrupted runs or by other ranks are
    counted too."""
    import zarr

    from diffscale.data.climate.plausibility import (
        OUTSIDE_COUNT_ATTRIBUTE,
        OUTSIDE_FRACTION_ATTRIBUTE,
        RANGE_ATTRIBUTE,
    )
    from diffscale.downscaling.zarr_writer import store_variable_attributes

    group = zarr.open_group(str(store), mode="r", zarr_format=ZARR_FORMAT)
    counts: dict[str, dict[str, Any]] = {}
    for name, array in group.arrays():
        bounds = array.attrs.get(RANGE_ATTRIBUTE)
        if bounds is None or array.ndim != 4:
            continue
        low, high = (float(value) for value in bounds)
        outside = sum(
            int(np.count_nonzero((slab < low) | (slab > high)))
            for slab in (np.asarray(array[:, time]) for time in range(array.shape[1]))
        )
        counts[name] = {
            OUTSIDE_COUNT_ATTRIBUTE: np.int64(outside),
            OUTSIDE_FRACTION_ATTRIBUTE: np.float64(outside / max(array.size, 1)),
        }
    if counts:
        store_variable_attributes(store, counts)


def completed_leftovers(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` exists because an interrupted run completed it and was stopped before it could tidy up: a
    Zarr output still holding the store's bookkeeping, or a netCDF output beside its complete store."""
    out = Path(out)
    if not out.exists():
        return False
    if out.is_dir() and (out / STATE_NAME).is_file():
        return True
    try:
        state = read_state(out)
    except ConfigError:
        return False
    return state is not None and state.complete


def tidy_leftovers(out: str | os.PathLike[str]) -> None:
    """Finish what :func:`completed_leftovers` found: remove the bookkeeping from the output, or its store."""
    out = Path(out)
    if out.is_dir() and (out / STATE_NAME).is_file():
        _strip_bookkeeping(out)
    state = read_state(out)
    if state is not None and state.complete:
        discard_state(out)


def _size(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def discard_state(out: str | os.PathLike[str]) -> None:
    """Remove the resumable store of ``out`` (none: nothing to do)."""
    store = state_path(out)
    if store.is_dir() and not store.is_symlink():
        shutil.rmtree(store, ignore_errors=True)
    elif store.exists() or store.is_symlink():
        store.unlink()
