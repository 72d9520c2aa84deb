"""Writing files so that a reader never sees half of one: a temporary file beside the target, flushed, fsynced
and renamed over it (:func:`atomic_write_bytes`). Every layer that writes a small file (checkpoint sidecars,
configurations, statistics, samples, figures, reports) writes it through here."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

__all__ = ["TEMPORARY_FILE", "atomic_write_bytes", "fsync_directory"]

TEMPORARY_FILE = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{12}\.tmp$")
"""A temporary file of :func:`atomic_write_bytes` (``.<name>.<pid>.<random>.tmp``)."""


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
