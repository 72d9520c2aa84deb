"""Writing files so that a reader never sees half of one: a temporary file beside the target, flushed, fsynced
and renamed over it (:func:`atomic_write_bytes`; several at once: :func:`write_together`). Every layer that writes a
small file (checkpoint sidecars, configurations, statistics, samples, figures, reports) writes it through here, and
every command checks its output paths here before any work (:func:`check_output`)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "TEMPORARY_FILE",
    "TEMPORARY_OUTPUT",
    "atomic_write_bytes",
    "check_output",
    "fsync_directory",
    "process_alive",
    "remove_orphaned_temporaries",
    "write_together",
]

TEMPORARY_FILE = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{12}\.tmp$")
"""A temporary file of :func:`atomic_write_bytes` (``.<name>.<pid>.<random>.tmp``)."""
TEMPORARY_OUTPUT = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{8,32}\.tmp$")
"""Any temporary file or folder the project writes beside its target: ``.<name>.<pid>.<random hex>.tmp`` (those of
:func:`atomic_write_bytes` and of the ensemble writers)."""


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
    file), a file where a parent folder must be, and a folder that cannot be written into.
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
