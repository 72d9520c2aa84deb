"""CPU threads of torch, chosen so that work stays fast when other processes share the CPU.

Why. torch splits an operation over a team of OpenMP threads (one per core by default) and waits at a barrier
until every thread has done its share; a waiting thread first spins (libgomp's default). With one other busy
process on a 2-core machine, one of the two threads is often descheduled, and every operation then waits for a
scheduler time slice (milliseconds) instead of microseconds. Measured on 2 cores (medians of repeated runs, one
``python -c "while True: pass"`` as the other process; see ``benchmarks/contention.py``):

=========================================  ==========  ==========  ==========  ==========
work, throughput (idle / loaded)           2 threads   1 thread    2 threads,  2 threads,
                                           (default)               passive     spin 10^4
=========================================  ==========  ==========  ==========  ==========
mixture MLP training, steps/s              137 / 8.7   114 / 110   57 / 86     131 / 26
ERA5 U-Net training (batch 16), steps/s    3.8 / 0.7   2.3 / 2.2   2.9 / 1.2   3.9 / 1.3
=========================================  ==========  ==========  ==========  ==========

Passive waiting (``OMP_WAIT_POLICY=PASSIVE``, which libgomp reads only when torch loads it, so only before
``import torch``) and a short spin (``GOMP_SPINCOUNT``) soften the collapse but cost up to half the speed of an
idle machine; one thread per core that this process actually gets avoids it and costs nothing. So the policy is
the thread count: ``auto`` takes the CPUs this process may use (its affinity mask, a cgroup quota) minus those
that other processes keep busy (measured from /proc/stat), at least 1 and at most torch's own count (which
``OMP_NUM_THREADS`` or :func:`torch.set_num_threads` may have lowered). A :class:`ThreadGovernor` repeats the
choice every few seconds while work runs, because the load of a laptop or a shared node changes. Setting the
count works at any time, also where torch was imported before diffscale (a notebook). Results computed with
different thread counts may differ in the last bits; a fixed count (``training.threads: 2``) makes runs
bitwise reproducible again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from diffscale.validation import ConfigError

__all__ = [
    "LoadProbe",
    "ThreadChoice",
    "ThreadGovernor",
    "Threads",
    "affinity_count",
    "available_cpus",
    "cgroup_cpu_quota",
    "check_threads",
    "choose_threads",
    "configure_threads",
    "cpus_allowed",
    "single_thread",
    "thread_policy",
]

logger = logging.getLogger(__name__)

Threads = int | Literal["auto"]
"""A thread count (>= 1), or ``auto`` (see :func:`choose_threads`)."""

PROBE_SECONDS = 0.1
"""How long :func:`configure_threads` watches the other processes' load before choosing."""

_ours: int | None = None  # the count that configure_threads() or a governor last gave torch
_theirs: int | None = None  # torch's count before that (the user's or torch's own)
_last_load: tuple[float, float | None] | None = None  # (time.monotonic(), CPUs busy elsewhere) of the last probe


# -- what the machine offers -----------------------------------------------------------------------------------
def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's control group in CPUs (cgroup v2 ``cpu.max``, or v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), None without one (a container run with ``--cpus``
    has one; its affinity mask still lists every CPU of the host)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cpus_allowed(affinity: int, quota: float | None) -> int:
    """CPUs usable with an affinity mask of ``affinity`` CPUs and a cgroup quota of ``quota`` CPUs (None: no
    quota; a fraction is rounded up)."""
    if quota is not None:
        affinity = min(affinity, math.ceil(quota - 1e-9))
    return max(1, affinity)


def affinity_count() -> int:
    """The number of CPUs in this process's affinity mask (all CPUs where there is none)."""
    cpus = _affinity()
    return len(cpus) if cpus is not None else os.cpu_count() or 1


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, limited by its cgroup's quota."""
    return cpus_allowed(affinity_count(), cgroup_cpu_quota())


def _busy_and_total_seconds(cpus: set[int] | None, stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """CPU seconds since boot of the CPUs ``cpus`` (all when None): (busy, total), from /proc/stat; None off Linux."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(values) - values[3] - values[4]
        total += sum(values)
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, total / tick


class LoadProbe:
    """CPUs kept busy by other processes, on average since the previous reading: the busy time of the CPUs this
    process may use minus this process's own CPU time, per second (Linux; None elsewhere).

    ``cpus`` (default: the affinity mask), ``stat`` (the kernel's counters) and ``own_seconds`` (this process's
    CPU time) can be replaced for tests.
    """

    def __init__(
        self,
        cpus: set[int] | None = None,
        *,
        stat: Path = Path("/proc/stat"),
        own_seconds: Callable[[], float] = time.process_time,
    ) -> None:
        self._cpus = _affinity() if cpus is None else cpus
        self._stat = stat
        self._own_seconds = own_seconds
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        seconds = _busy_and_total_seconds(self._cpus, self._stat)
        return None if seconds is None else (*seconds, self._own_seconds())

    def busy_elsewhere(self) -> float | None:
        """Average CPUs used by other processes since the previous call (or the construction)."""
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None:
            return None
        busy, total, own = (a - b for a, b in zip(now, last, strict=True))
        cpus = len(self._cpus) if self._cpus is not None else os.cpu_count() or 1
        wall = total / cpus
        return max(0.0, (busy - own) / wall) if wall > 0 else None


# -- the choice --------------------------------------------------------------------------------------------------
def choose_threads(
    requested: Threads, *, cpus: int, busy_elsewhere: float | None, ceiling: int, affinity: int | None = None
) -> int:
    """The thread count for ``requested``: a count as it is; for ``auto`` the CPUs this process may use
    (``cpus``) that other processes leave idle (the ``affinity`` CPUs it may run on, default ``cpus``, minus
    ``busy_elsewhere``, the CPUs other processes keep busy there; None: unknown, taken as 0), rounded to the
    nearest count, at least 1 and at most ``ceiling`` (torch's count as the user left it). A cgroup quota makes
    ``cpus`` smaller than ``affinity``: a container limited to 2 CPUs of a busy 64-CPU host still gets 2."""
    if requested != "auto":
        return int(requested)
    idle = (cpus if affinity is None else affinity) - (busy_elsewhere or 0.0)
    return max(1, min(ceiling, cpus, math.floor(min(cpus, idle) + 0.5)))


def check_threads(threads: object, key: str = "threads") -> Threads:
    """``threads`` if it is an integer >= 1 or ``auto``; else a one-line ConfigError naming ``key``."""
    if threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        return threads  # type: ignore[return-value]
    raise ConfigError(f"{key} = {threads!r}: allowed: an integer >= 1 or 'auto'")


def _ceiling() -> int:
    """torch's count as the user (OMP_NUM_THREADS, torch.set_num_threads) or torch itself left it: the current
    count, unless it is the one we set, in which case the count before we set it."""
    current = torch.get_num_threads()
    if current == _ours and _theirs is not None:
        return _theirs
    return current


def _set(threads: int) -> None:
    """torch.set_num_threads, remembering the count it replaces when that was not ours."""
    global _ours, _theirs
    current = torch.get_num_threads()
    if threads == current:
        return
    if current != _ours:
        _theirs = current
    torch.set_num_threads(threads)
    _ours = threads


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_threads` chose (``threads``) for ``requested``, and from what."""

    threads: int
    requested: Threads
    cpus: int
    busy_elsewhere: float | None
    ceiling: int

    def describe(self) -> str:
        """One line for a command's output, e.g. ``CPU threads: 1 (auto: 2 CPUs available, 1.0 busy with other
        processes)``."""
        if self.requested != "auto":
            return f"CPU threads: {self.threads} (as set; {self.cpus} CPUs available)"
        parts = [f"{self.cpus} CPUs available"]
        if self.busy_elsewhere is not None:
            parts.append(f"{self.busy_elsewhere:.1f} busy with other processes")
        if self.ceiling < self.cpus:
            parts.append(f"at most {self.ceiling} as torch was set")
        return f"CPU threads: {self.threads} (auto: {', '.join(parts)})"


def _recent_load(probe_seconds: float, max_age: float = 5.0) -> float | None:
    """The other processes' load: watched for ``probe_seconds``, or the reading of a probe at most ``max_age``
    seconds old (so that many short calls, e.g. sampling in a notebook loop, do not each wait for a probe)."""
    global _last_load
    if _last_load is not None and time.monotonic() - _last_load[0] <= max_age:
        return _last_load[1]
    probe = LoadProbe()
    time.sleep(probe_seconds)
    busy = probe.busy_elsewhere()
    _last_load = (time.monotonic(), busy)
    return busy


def configure_threads(threads: Threads = "auto", *, probe_seconds: float = PROBE_SECONDS) -> ThreadChoice:
    """Set torch's intra-op thread count for ``threads`` and return the choice (also logged at INFO).

    ``auto`` watches the other processes' load for ``probe_seconds`` (skipped when torch's count is already 1;
    a reading of the last 5 seconds is reused) and chooses with :func:`choose_threads`. Call it once when a
    command starts; long loops should also tick a :class:`ThreadGovernor` (:func:`thread_policy` does both).
    Raises ConfigError for a bad ``threads``.
    """
    check_threads(threads)
    affinity = affinity_count()
    cpus = cpus_allowed(affinity, cgroup_cpu_quota())
    ceiling = _ceiling()
    busy = _recent_load(probe_seconds) if threads == "auto" and min(ceiling, cpus) > 1 else None
    chosen = choose_threads(threads, cpus=cpus, busy_elsewhere=busy, ceiling=ceiling, affinity=affinity)
    _set(chosen)
    choice = ThreadChoice(threads=chosen, requested=threads, cpus=cpus, busy_elsewhere=busy, ceiling=ceiling)
    logger.info(choice.describe())
    return choice


class ThreadGovernor:
    """Repeats the ``auto`` choice while work runs: :meth:`tick` (call it once per step or batch) measures the
    load of other processes since its previous check, at most every ``interval`` seconds, and changes torch's
    count when the choice changes. A fixed count, or a ceiling of 1, is left alone."""

    def __init__(self, threads: Threads = "auto", *, interval: float = 5.0) -> None:
        self.threads = check_threads(threads)
        self.interval = interval
        self._probe = LoadProbe() if threads == "auto" else None
        self._checked = time.monotonic()

    def tick(self) -> int | None:
        """Re-check when ``interval`` seconds have passed; the new count when it changed, else None."""
        if self._probe is None or time.monotonic() - self._checked < self.interval:
            return None
        self._checked = time.monotonic()
        busy = self._probe.busy_elsewhere()
        ceiling = _ceiling()
        if ceiling == 1 or busy is None:
            return None
        affinity = affinity_count()
        cpus = cpus_allowed(affinity, cgroup_cpu_quota())
        chosen = choose_threads("auto", cpus=cpus, busy_elsewhere=busy, ceiling=ceiling, affinity=affinity)
        if chosen == torch.get_num_threads():
            return None
        _set(chosen)
        logger.info("CPU threads: %d (auto: %.1f CPUs busy with other processes)", chosen, busy)
        return chosen


@contextmanager
def thread_policy(threads: Threads = "auto", *, interval: float = 5.0) -> Iterator[ThreadGovernor]:
    """:func:`configure_threads` for the block, with a :class:`ThreadGovernor` to tick inside it; torch's
    previous count is restored afterwards."""
    previous = torch.get_num_threads()
    configure_threads(threads)
    try:
        yield ThreadGovernor(threads, interval=interval)
    finally:
        _set(previous)


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (for small tensors: a few thousand numbers, where threads
    cost more than they gain; ``auto`` inside the block stays at 1); the previous setting is restored afterwards."""
    global _ours, _theirs
    previous, remembered = torch.get_num_threads(), (_ours, _theirs)
    torch.set_num_threads(1)
    _ours = None  # the 1 is the caller's ceiling, not a choice of ours
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        _ours, _theirs = remembered
