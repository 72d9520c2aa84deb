"""diffscale.files: atomic writes, several files written together (all or none), and the one rule every command
applies to its output paths before any work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from diffscale.files import (
    atomic_write_bytes,
    check_output,
    file_system_of,
    process_alive,
    remove_orphaned_temporaries,
    write_together,
)
from diffscale.validation import ConfigError


def test_check_output_accepts_new_paths_and_missing_folders(tmp_path: Path) -> None:
    assert check_output(tmp_path / "a" / "b" / "file.nc", "--out") == tmp_path / "a" / "b" / "file.nc"
    assert check_output(tmp_path / "report", "--out", directory=True) == tmp_path / "report"
    (tmp_path / "existing.nc").write_bytes(b"old")
    assert check_output(tmp_path / "existing.nc", "--out") == tmp_path / "existing.nc"  # overwriting is the caller's
    assert not (tmp_path / "a").exists()  # checking creates nothing


@pytest.mark.parametrize(
    ("make", "directory", "message"),
    [
        (lambda root: root / "afile" / "x.nc", False, "is a file, so the folder"),
        (lambda root: root / "afile" / "deeper" / "x.nc", False, "is a file, so the folder"),
        (lambda root: root / "afile", True, "exists and is a file, not a directory"),
        (lambda root: root / "folder", False, "is a directory; give a file name"),
    ],
)
def test_check_output_refuses_in_one_line(make, directory: bool, message: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=message) as caught:
        check_output(make(tmp_path), "--out", directory=directory)
    assert str(caught.value).startswith("--out = '") and "\n" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_output_refuses_a_folder_it_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="permission denied"):
        check_output(locked / "x.nc", "--out")


def test_check_output_refuses_a_read_only_mount(read_only_folder: Path) -> None:
    with pytest.raises(OSError):  # the mount really is read-only, for root too
        (read_only_folder / "probe").write_bytes(b"x")
    for target, directory in ((read_only_folder / "x.nc", False), (read_only_folder / "a" / "report", True)):
        with pytest.raises(ConfigError, match="is on a read-only file system") as caught:
            check_output(target, "--out", directory=directory)
        assert f"'{read_only_folder}'" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(not Path("/proc/self/mounts").is_file(), reason="no Linux mount table")
@pytest.mark.parametrize(
    ("target", "kind"),
    [("/proc/x.nc", "proc"), ("/proc/self/run/x.nc", "proc"), ("/sys/x.nc", "sysfs"), ("/sys/a/b/report", "sysfs")],
)
def test_check_output_refuses_the_kernels_pseudo_file_systems(target: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"is on the kernel's {kind} file system") as caught:
        check_output(target, "--out", directory=not target.endswith(".nc"))
    assert str(caught.value).startswith(f"--out = '{target}'") and "\n" not in str(caught.value)


def test_file_system_of_takes_the_longest_last_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "proc /proc proc rw 0 0\n"
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "sysfs /sys sysfs rw 0 0\n"
        "/dev/vdb /mnt/my\\040disk ext4 rw 0 0\n"
        "tmpfs /mnt/my\\040disk tmpfs rw 0 0\n"
    )
    assert file_system_of("/proc/cpuinfo", mounts) == (Path("/proc"), "proc")
    assert file_system_of("/sys/fs/cgroup/x", mounts) == (Path("/sys/fs/cgroup"), "tmpfs")  # longest wins
    assert file_system_of("/sys/fs", mounts) == (Path("/sys"), "sysfs")
    assert file_system_of("/mnt/my disk/data", mounts) == (Path("/mnt/my disk"), "tmpfs")  # last mounted wins
    assert file_system_of("/processes", mounts) == (Path("/"), "ext4")  # a prefix of the name is not a parent
    assert file_system_of("/x", tmp_path / "absent") is None


def test_write_together_writes_all_or_none(tmp_path: Path) -> None:
    files = {tmp_path / "new" / "a.bin": b"a", tmp_path / "b.json": b"{}"}
    assert write_together(files) == list(files)
    assert (tmp_path / "new" / "a.bin").read_bytes() == b"a" and (tmp_path / "b.json").read_bytes() == b"{}"
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(OSError):
        write_together({tmp_path / "c.bin": b"c", tmp_path / "blocker" / "d.bin": b"d"})
    assert not (tmp_path / "c.bin").exists()  # the first file was never moved into place
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b.json", "blocker", "new"]  # no temporary left


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents" and [path.name for path in tmp_path.iterdir()] == ["x.txt"]


def test_temporaries_of_dead_processes_are_removed_and_those_of_live_ones_kept(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: its PID names no process now
    assert not process_alive(finished.pid) and process_alive(os.getpid()) and process_alive(1)
    dead_file = tmp_path / f".e.nc.{finished.pid}.0123abcd.tmp"  # an ensemble writer's (8 hex digits)
    dead_file.write_bytes(b"partial")
    dead_store = tmp_path / f".e.zarr.partial.{finished.pid}.89abcdef.tmp"  # a store being created
    (dead_store / "t2m").mkdir(parents=True)
    (dead_store / "t2m" / "0.0.0.0").write_bytes(b"chunk")
    dead_atomic = tmp_path / f".config.yaml.{finished.pid}.0123456789ab.tmp"  # atomic_write_bytes' (12)
    dead_atomic.write_bytes(b"half")
    live = tmp_path / f".other.nc.{os.getpid()}.0123abcd.tmp"
    live.write_bytes(b"being written")
    init = tmp_path / ".init.nc.1.0123abcd.tmp"  # PID 1 always runs
    init.write_bytes(b"x")
    kept = [tmp_path / "e.nc", tmp_path / ".e.nc.partial", tmp_path / f".e.nc.{finished.pid}.tmp", tmp_path / "x.tmp"]
    for path in kept:
        path.write_bytes(b"not a temporary of ours")
    assert remove_orphaned_temporaries(tmp_path) == sorted([dead_file, dead_store, dead_atomic])
    assert sorted(tmp_path.iterdir()) == sorted([live, init, *kept])
    assert remove_orphaned_temporaries(tmp_path / "missing") == []
