"""Writing files so that a reader never sees half of one: a temporary file beside the target, flushed, fsynced
and renamed over it (:func:`atomic_write_bytes`; several at once: :func:`write_together`). Every layer that writes a
small file (checkpoint sidecars, configurations, statistics, samples, figures, reports) writes it through here, and
every command checks its output paths here before any work (:func:`check_output`)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET_SUFFIXES",
    "PSEUDO_FILE_SYSTEMS",
    "TEMPORARY_FILE",
    "TEMPORARY_OUTPUT",
    "atomic_write_bytes",
    "check_output",
    "file_system_of",
    "fsync_directory",
    "process_alive",
    "remove_orphaned_temporaries",
    "write_dataset",
    "write_together",
]

TEMPORARY_FILE = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{12}\.tmp$")
"""A temporary file of :func:`atomic_write_bytes` (``.<name>.<pid>.<random>.tmp``)."""
TEMPORARY_OUTPUT = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{8,32}\.tmp$")
"""Any temporary file or folder the project writes beside its target: ``.<name>.<pid>.<random hex>.tmp`` (those of
:func:`atomic_write_bytes` and of the ensemble writers)."""

PSEUDO_FILE_SYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "sysfs",
        "tracefs",
    }
)
"""Linux file systems whose files are the kernel's views and controls (/proc, /sys, /dev, cgroups), not data: an
output there fails only when it is written, with an error about the kernel object rather than the path."""

MOUNTS = Path("/proc/self/mounts")


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_directory: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same directory, which is flushed, fsynced and renamed over
    ``path`` with :func:`os.replace`; the directory is then fsynced so the rename survives a crash (unless
    ``sync_directory`` is False: the caller then fsyncs it once after several files).
    """
    path = Path(path)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open with mode 0o666 honours the umask (tempfile.mkstemp would leave the file private, 0o600).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


# -- output paths ----------------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _unescape_mount_field(field: str) -> str:
    """A field of /proc/self/mounts with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def file_system_of(path: str | os.PathLike[str], mounts: Path = MOUNTS) -> tuple[Path, str] | None:
    """(mount point, file system type) of the mount that holds the existing ``path``: the last-mounted of the
    longest mount points that are ``path`` or one of its ancestors (symbolic links resolved); None where the mount
    table cannot be read (not Linux)."""
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    resolved = Path(path).resolve()
    best: tuple[Path, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape_mount_field(fields[1]))
        if (point == resolved or point in resolved.parents) and (
            best is None or len(point.parts) >= len(best[0].parts)
        ):
            best = (point, fields[2])
    return best


def _read_only(directory: Path) -> bool:
    """Whether ``directory`` lies on a file system mounted read-only (statvfs's ST_RDONLY flag)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # no statvfs (Windows), or the folder vanished
        return False


def check_output(
    path: str | os.PathLike[str],
    option: str,
    *,
    directory: bool = False,
    suffixes: Sequence[str] | None = None,
    kind: str = "file",
) -> Path:
    """``path`` as a :class:`Path` if a command can write it; ConfigError (one line, naming ``option``) otherwise.

    Every command checks its outputs with this before any work, under one rule: missing parent folders are created
    when the output is written. Refused: an extension not in ``suffixes`` (when given; ``kind`` names what the file
    is in the message), a file target that is an existing directory (or a directory target that is an existing
    file), a file where a parent folder must be, a folder on a pseudo file system of the kernel
    (:data:`PSEUDO_FILE_SYSTEMS`: /proc, /sys, /dev, cgroups) or on a read-only mount, and a folder that cannot be
    written into.
    """
    from diffscale.validation import ConfigError

    target = Path(path)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise ConfigError(
            f"{option} = '{target}': unknown {kind} type {target.suffix or '(none)'!r}; allowed: {', '.join(suffixes)}"
        )
    if directory and target.exists() and not target.is_dir():
        raise ConfigError(f"{option} = '{target}': exists and is a file, not a directory")
    if not directory and target.is_dir():
        raise ConfigError(f"{option} = '{target}': is a directory; give a file name")
    parent = target if directory and target.exists() else target.parent
    existing = _nearest_existing(parent.absolute())
    if not existing.is_dir():
        raise ConfigError(f"{option} = '{target}': '{existing}' is a file, so the folder '{parent}' cannot be created")
    mount = file_system_of(existing)
    if mount is not None and mount[1] in PSEUDO_FILE_SYSTEMS:
        raise ConfigError(
            f"{option} = '{target}': '{existing}' is on the kernel's {mount[1]} file system (mounted at "
            f"'{mount[0]}'), which holds no data files; choose a folder on a disk"
        )
    if _read_only(existing):
        where = f" (mounted at '{mount[0]}')" if mount is not None else ""
        raise ConfigError(
            f"{option} = '{target}': '{existing}' is on a read-only file system{where}; choose a writable folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} = '{target}': cannot write into '{existing}' (permission denied)")
    return target


def write_together(files: dict[Path, bytes]) -> list[Path]:
    """Write several files so that a failure leaves none of them new: every file goes to a temporary name first
    (creating missing parent folders), and only once all are written are they renamed into place."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            staged.append((temporary, path))
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, path in staged:
        os.replace(temporary, path)
    for directory in {path.parent for _, path in staged}:
        fsync_directory(directory)
    return [path for _, path in staged]


DATASET_SUFFIXES = (".nc", ".zarr")
"""The formats :func:`write_dataset` writes, by the output's suffix: a netCDF file or a Zarr store (a folder)."""

_STORAGE_ENCODING = ("units", "calendar", "dtype", "_FillValue", "missing_value", "scale_factor", "add_offset")
"""The encoding a Zarr store keeps from a dataset read from files (chunking and compression belong to the source)."""


def write_dataset(dataset: Any, path: str | os.PathLike[str]) -> Path:
    """Write the xarray Dataset ``dataset`` to ``path`` as netCDF (``.nc``) or a Zarr store (``.zarr``, format 2,
    consolidated metadata), so that a reader sees either the old output or the whole new one: it is written under
    ``.NAME.partial`` beside ``path`` and then renamed into place, replacing an existing output (whether that is
    allowed is the caller's check, as is the suffix: :func:`check_output` with ``suffixes=DATASET_SUFFIXES``).
    Values are loaded first (a coarse or derived dataset fits in memory); for Zarr only the variables' units,
    calendar, dtype, fill and packing encoding are kept from the source files."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    _remove(temporary)  # left by a write that was killed
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.suffix.lower() == ".zarr":
            dataset = dataset.load().copy()
            for variable in dataset.variables.values():
                variable.encoding = {key: value for key, value in variable.encoding.items() if key in _STORAGE_ENCODING}
            dataset.to_zarr(temporary, mode="w-", zarr_format=2, consolidated=True)
        else:
            dataset.to_netcdf(temporary)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        _remove(temporary)
    fsync_directory(path.parent)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# -- temporaries of processes that are gone -------------------------------------------------------------------
def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 probes it without touching it)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return True  # cannot tell (e.g. no signals on this platform): leave its files alone
    return True


def remove_orphaned_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders in ``directory`` (:data:`TEMPORARY_OUTPUT` names) whose writing
    process, the PID in the name, no longer runs on this host (it was killed before it could rename or remove
    them); those of live processes are left alone. Returns what was removed."""
    import shutil

    folder = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = TEMPORARY_OUTPUT.match(path.name)
        if match is None or process_alive(int(match.group(2))):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(path)
    return sorted(removed)
