"""The CPU thread policy: choices from injected CPU counts, quotas and loads; torch's count set and restored."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import diffscale.threads as threads
from diffscale.threads import (
    LoadProbe,
    ThreadChoice,
    ThreadGovernor,
    cgroup_cpu_quota,
    check_threads,
    choose_threads,
    configure_threads,
    cpus_allowed,
    single_thread,
    thread_policy,
)
from diffscale.validation import ConfigError


@pytest.fixture(autouse=True)
def _fresh_policy_state() -> Iterator[None]:
    """Each test starts as a fresh process would (nothing set by the policy) and leaves torch's count as found."""
    saved = (threads._ours, threads._theirs, threads._last_load, torch.get_num_threads())
    threads._ours = threads._theirs = threads._last_load = None
    yield
    threads._ours, threads._theirs, threads._last_load = saved[:3]
    torch.set_num_threads(saved[3])


class _FakeProbe:
    """A LoadProbe whose readings are scripted: each call returns the next value of ``loads``."""

    loads: ClassVar[list[float | None]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def busy_elsewhere(self) -> float | None:
        return _FakeProbe.loads.pop(0)


@pytest.fixture
def two_cpus_with_load(monkeypatch: pytest.MonkeyPatch) -> type[_FakeProbe]:
    """A machine of 2 CPUs whose other processes' load the test scripts (torch starting at 2 threads)."""
    monkeypatch.setattr(threads, "affinity_count", lambda: 2)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(threads, "LoadProbe", _FakeProbe)
    monkeypatch.setattr(threads, "_recent_load", functools.partial(threads._recent_load, max_age=-1.0))  # no reuse
    torch.set_num_threads(2)
    return _FakeProbe


@pytest.mark.parametrize(
    ("cpus", "busy", "ceiling", "expected"),
    [
        (2, 0.0, 2, 2),  # idle: every CPU
        (2, 1.0, 2, 1),  # one busy process on 2 CPUs: the one CPU left
        (2, 0.4, 2, 2),  # light background load keeps both
        (2, 0.6, 2, 1),
        (2, 5.0, 2, 1),  # never below 1
        (2, None, 2, 2),  # load unknown (not Linux): the CPUs
        (8, 2.2, 8, 6),
        (8, 0.0, 4, 4),  # OMP_NUM_THREADS=4 or torch.set_num_threads(4) is a ceiling
        (2, 0.0, 16, 2),  # never more than the CPUs
    ],
)
def test_auto_takes_the_cpus_other_processes_leave(cpus: int, busy: float | None, ceiling: int, expected: int) -> None:
    assert choose_threads("auto", cpus=cpus, busy_elsewhere=busy, ceiling=ceiling) == expected


@pytest.mark.parametrize(("busy", "expected"), [(40.0, 2), (61.6, 2), (62.6, 1), (70.0, 1)])
def test_a_quota_counts_idle_cpus_of_the_whole_affinity_mask(busy: float, expected: int) -> None:
    """A container limited to 2 CPUs on a 64-CPU host: 2 threads while at least 2 of the 64 are idle."""
    assert choose_threads("auto", cpus=2, busy_elsewhere=busy, ceiling=8, affinity=64) == expected


def test_a_count_is_taken_as_it_is() -> None:
    assert choose_threads(3, cpus=2, busy_elsewhere=1.0, ceiling=1) == 3


@pytest.mark.parametrize(("affinity", "quota", "expected"), [(8, None, 8), (8, 2.5, 3), (8, 0.5, 1), (2, 4.0, 2)])
def test_a_cgroup_quota_limits_the_affinity_mask(affinity: int, quota: float | None, expected: int) -> None:
    assert cpus_allowed(affinity, quota) == expected


def test_cgroup_quotas_of_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    (unlimited / "cpu.max").write_text("max 100000\n")
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    v1_unlimited = tmp_path / "v1_unlimited"
    (v1_unlimited / "cpu").mkdir(parents=True)
    (v1_unlimited / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1_unlimited / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    assert cgroup_cpu_quota(unlimited) is None
    assert cgroup_cpu_quota(v1) == 2.0
    assert cgroup_cpu_quota(v1_unlimited) is None
    assert cgroup_cpu_quota(tmp_path / "none") is None


def _stat(path: Path, per_cpu: dict[int, tuple[int, int]]) -> None:
    """A /proc/stat with (busy, idle) jiffies per CPU (busy as user time)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{cpu} {busy} 0 0 {idle} 0 0 0 0 0 0" for cpu, (busy, idle) in per_cpu.items()]
    path.write_text("\n".join([*lines, "intr 0", "procs_running 3"]) + "\n")


def test_load_probe_is_busy_time_of_our_cpus_minus_our_own(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    own = iter([10.0, 10.5])
    _stat(stat, {0: (0, 0), 1: (0, 0), 2: (0, 0)})
    probe = LoadProbe({0, 1}, stat=stat, own_seconds=lambda: next(own))
    # one second of wall time: CPU 0 fully busy, CPU 1 half busy; we used 0.5 CPU s; CPU 2 is not ours
    _stat(stat, {0: (tick, 0), 1: (tick // 2, tick - tick // 2), 2: (tick, 0)})
    assert probe.busy_elsewhere() == pytest.approx(1.0, abs=0.02)


def test_load_probe_off_linux_knows_nothing(tmp_path: Path) -> None:
    probe = LoadProbe({0}, stat=tmp_path / "missing")
    assert probe.busy_elsewhere() is None


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "two", None])
def test_bad_thread_counts_are_refused_in_one_line(bad: object) -> None:
    with pytest.raises(ConfigError) as error:
        check_threads(bad, "training.threads")
    assert str(error.value) == f"training.threads = {bad!r}: allowed: an integer >= 1 or 'auto'"
    with pytest.raises(ConfigError):
        configure_threads(bad)  # type: ignore[arg-type]


def test_configure_under_load_then_idle_goes_back_up(two_cpus_with_load: type[_FakeProbe]) -> None:
    two_cpus_with_load.loads = [1.0, 0.0]
    loaded = configure_threads("auto")
    assert loaded.threads == torch.get_num_threads() == 1
    assert loaded.describe() == "CPU threads: 1 (auto: 2 CPUs available, 1.0 busy with other processes)"
    assert configure_threads("auto").threads == torch.get_num_threads() == 2  # the 1 was ours, not a ceiling


def test_a_count_the_user_set_is_a_ceiling(two_cpus_with_load: type[_FakeProbe]) -> None:
    two_cpus_with_load.loads = [0.0]
    assert configure_threads("auto").threads == 2
    torch.set_num_threads(1)  # e.g. in a notebook
    choice = configure_threads("auto")  # ceiling 1: no probe (none scripted)
    assert choice.threads == torch.get_num_threads() == 1 and choice.busy_elsewhere is None


def test_single_thread_holds_against_auto(two_cpus_with_load: type[_FakeProbe]) -> None:
    two_cpus_with_load.loads = [1.0]
    configure_threads("auto")  # ours: 1, with 2 before it
    with single_thread():
        assert configure_threads("auto").threads == 1  # no probe: the block's 1 is a ceiling
    assert torch.get_num_threads() == 1


def test_an_explicit_count_is_set_and_described() -> None:
    choice = configure_threads(2)
    assert torch.get_num_threads() == 2
    assert choice.describe().startswith("CPU threads: 2 (as set; ")


def test_governor_follows_the_load_and_a_fixed_count_is_left_alone(two_cpus_with_load: type[_FakeProbe]) -> None:
    governor = ThreadGovernor("auto", interval=0.0)
    two_cpus_with_load.loads = [1.0, 1.0, 0.0, None]
    assert governor.tick() == 1 and torch.get_num_threads() == 1
    assert governor.tick() is None  # unchanged
    assert governor.tick() == 2
    assert governor.tick() is None and torch.get_num_threads() == 2  # unknown load: keep
    assert ThreadGovernor(1, interval=0.0).tick() is None
    slow = ThreadGovernor("auto", interval=3600.0)
    assert slow.tick() is None  # not yet time (no reading scripted)


def test_thread_policy_restores_the_previous_count(two_cpus_with_load: type[_FakeProbe]) -> None:
    two_cpus_with_load.loads = [1.0]
    with thread_policy("auto") as governor:
        assert torch.get_num_threads() == 1 and isinstance(governor, ThreadGovernor)
    assert torch.get_num_threads() == 2


def test_describe_names_a_ceiling_below_the_cpus() -> None:
    choice = ThreadChoice(threads=1, requested="auto", cpus=4, busy_elsewhere=0.0, ceiling=1)
    assert choice.describe() == (
        "CPU threads: 1 (auto: 4 CPUs available, 0.0 busy with other processes, at most 1 as torch was set)"
    )


def test_a_recent_load_reading_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "LoadProbe", _FakeProbe)
    _FakeProbe.loads = [1.0]  # one reading only: a second probe would fail
    assert threads._recent_load(0.0) == 1.0
    assert threads._recent_load(0.0) == 1.0
    _FakeProbe.loads = [0.0]
    assert threads._recent_load(0.0, max_age=-1.0) == 0.0
