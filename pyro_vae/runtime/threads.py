"""How many intra-op threads torch uses: what the user fixed, else what the machine has free.

torch starts one intra-op thread per physical core, and its OpenMP threads wait for each other
at the end of every parallel operation. On a busy machine one of them waits for a core another
process holds, and the others spin meanwhile: beside one CPU-bound process on 2 cores a small
model trains 20-30x slower with 2 threads than with 1. Two trainings at once stall each other
the same way.

[`CoreShare`][pyro_vae.runtime.threads.CoreShare] (``threads="auto"``, the default of ``fit``
and of every command) therefore adapts the count while it runs: every
``INTERVAL`` seconds of wall time, at the next
[`poll`][pyro_vae.runtime.threads.poll] (called between training steps and particle chunks),
it reads the busy time of the CPUs this process may use (``/proc/stat``) and its own CPU time;
what the others used is the difference, in cores:

    others = (busy(all allowed CPUs) - cpu_time(this process)) / wall time
    threads = clamp(round_down(cap - others + SLACK), 1, cap)

so a process alone uses every core it may (``cap``), one beside a busy neighbour uses what is
left, and two runs at once use one core each. A thread is given up at once when the others'
work passes the line by ``FIRM`` cores (a CPU-bound neighbour shows as 0.7 to 1 core), else
only when two windows in a row pass it; freed cores are taken back at the next look.

``cap`` is the CPUs in this process's affinity mask, one per physical core, divided among the
ranks of a ``torchrun`` on this host (``LOCAL_WORLD_SIZE``).

A count the user set is kept, never adapted: ``threads=N`` (``--threads N``), the environment
variables ``PYRO_VAE_THREADS``, ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, or a call to
``torch.set_num_threads`` with another count than torch's own default. Under ``torchrun`` with
several processes per host, ``OMP_NUM_THREADS=1`` is torchrun's default when the user set
none, so it is not read as the user's
([`torchrun_default`][pyro_vae.runtime.threads.torchrun_default]). Where ``/proc/stat`` is
missing (macOS, Windows) ``auto`` keeps ``cap`` threads.

Bitwise results depend on the thread count (a matrix product sums in another order with 2
threads than with 1), so with ``auto`` a run on a machine whose load varies, or a resumed run,
matches another in distribution and to float rounding, not bit for bit; fix the count
(``--threads N``) for bitwise repeatable runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

import torch

from pyro_vae.errors import ConfigError

T = TypeVar("T")

#: Seconds of wall time between two looks at the machine's load.
INTERVAL = 0.5
#: Cores' worth of other processes' work tolerated before a thread is given up (noise, a
#: shell, an editor).
SLACK = 0.3
#: How far past that line one reading must be to give a thread up at once; a reading closer to
#: it must be confirmed by the window before.
FIRM = 0.2
#: Environment variables that fix the count, in the order they are read.
THREAD_VARIABLES = ("PYRO_VAE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The most threads accepted from ``threads=N``.
MOST_THREADS = 1024


def check_threads(threads: object, where: str = "threads") -> int | str:
    """``threads`` as ``"auto"`` or a count from 1 to
    ``MOST_THREADS``; refuses anything else with
    [`ConfigError`][pyro_vae.errors.ConfigError] naming ``where``."""
    if isinstance(threads, str) and threads.strip().isdigit():
        threads = int(threads)
    if threads == "auto" or threads is None:
        return "auto"
    number = isinstance(threads, int) and not isinstance(threads, bool)
    if not number or not 1 <= threads <= MOST_THREADS:
        raise ConfigError(
            f"{where} must be 'auto' or a thread count from 1 to {MOST_THREADS}, got {threads!r}"
        )
    return threads


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int]) -> int:
    """How many physical cores ``cpus`` span (hyperthreads of one core count once), read from
    ``/sys/devices/system/cpu``; ``len(cpus)`` where the topology cannot be read."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


def default_threads() -> int:
    """torch's own intra-op default on this machine: one per physical core it may use."""
    return physical_cores(allowed_cpus())


def local_ranks() -> int:
    """Processes of this job on this host (``torchrun``'s ``LOCAL_WORLD_SIZE``; 1 outside)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def fixed_threads(threads: int | str = "auto") -> int | None:
    """The count the user fixed, or ``None`` for the library to choose: ``threads`` when a
    number, else the first of ``THREAD_VARIABLES`` that
    is set, else torch's current count when it differs from its default (``torch.set_num_threads``
    was called)."""
    threads = check_threads(threads)
    if threads != "auto":
        return int(threads)
    torchrun = torchrun_default()
    for name in THREAD_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and not (torchrun and name == "OMP_NUM_THREADS"):
            return int(check_threads(value.split(",")[0], f"the environment variable {name}"))
    current = torch.get_num_threads()
    return current if current != default_threads() and not torchrun else None


def torchrun_default() -> bool:
    """Whether ``OMP_NUM_THREADS=1`` is torchrun's own default rather than the user's: torchrun
    sets it for each of several processes per host when the user has not (its workers carry
    ``TORCHELASTIC_RUN_ID``). The ranks then share the host's cores instead (``cap``)."""
    return (
        local_ranks() > 1
        and "TORCHELASTIC_RUN_ID" in os.environ
        and os.environ.get("OMP_NUM_THREADS", "").strip() == "1"
    )


def _busy_jiffies(cpus: list[int]) -> int | None:
    """Busy clock ticks of ``cpus`` since boot (all but idle and iowait; steal counts as busy:
    a core the hypervisor lends elsewhere is not ours), or ``None`` without ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(f) for f in fields[1:9]]
            busy += sum(ticks) - ticks[3] - ticks[4]  # idle, iowait
    return busy


class CoreShare:
    """Keeps torch's intra-op thread count fitted to the cores other processes leave free.

    ``CoreShare(threads)`` with ``threads`` ``"auto"`` or a count;
    [`start`][pyro_vae.runtime.threads.CoreShare.start] sets the first count,
    [`poll`][pyro_vae.runtime.threads.CoreShare.poll] (cheap: one clock read unless
    ``INTERVAL`` has passed) adapts it,
    [`stop`][pyro_vae.runtime.threads.CoreShare.stop] restores the count found at
    [`start`][pyro_vae.runtime.threads.CoreShare.start]. A fixed count
    ([`fixed_threads`][pyro_vae.runtime.threads.fixed_threads]) is set once and never changed.
    Counts are set from the thread that calls [`poll`][pyro_vae.runtime.threads.CoreShare.poll]:
    OpenMP's count belongs to the calling thread.

    Attributes:
        cap: the most threads used (see the module's docstring).
        fixed: the user's count, or ``None`` when adapting.
        threads: the count in use now.
    """

    def __init__(self, threads: int | str = "auto"):
        self.fixed = fixed_threads(threads)
        cpus = allowed_cpus()
        self._cpus = cpus
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cap = max(1, physical_cores(cpus) // local_ranks())
        self.threads = self.fixed or self.cap
        self._previous: int | None = None
        self._last: tuple[float, int, float] | None = None
        self._others: float | None = None

    def start(self) -> CoreShare:
        """Remember torch's count and set the first one (a fixed count, else ``cap``)."""
        self._previous = torch.get_num_threads()
        self.threads = self.fixed or self.cap
        self._set(self.threads)
        self._last = self._sample()
        return self

    def stop(self) -> None:
        """Restore the count torch had at [`start`][pyro_vae.runtime.threads.CoreShare.start]."""
        if self._previous is not None:
            self._set(self._previous)
            self._previous = None

    def others(self) -> float | None:
        """Cores' worth of work other processes did on this process's CPUs since the last
        look (and start a new window), or ``None`` where it cannot be read."""
        now = self._sample()
        before, self._last = self._last, now
        if before is None or now[1] < 0 or before[1] < 0:
            return None
        wall = now[0] - before[0]
        if wall <= 0:
            return None
        busy = (now[1] - before[1]) / self._tick
        own = now[2] - before[2]
        return max(0.0, (busy - own) / wall)

    def poll(self) -> int:
        """Adapt the count when ``INTERVAL`` has passed since the
        last look; returns the count in use."""
        if self.fixed is not None or self._last is None:
            return self.threads
        if time.monotonic() - self._last[0] < INTERVAL:
            return self.threads
        others = self.others()
        if others is not None:
            before, self._others = self._others, others
            wanted = self._wanted(others)
            if wanted < self.threads and others < self.cap - self.threads + SLACK + FIRM:
                # a reading just past the line gives a thread up only when the window before
                # agrees (a page flush or a shell's start is not a neighbour)
                wanted = self.threads if before is None else max(wanted, self._wanted(before))
            if wanted != self.threads:
                self.threads = wanted
                self._set(wanted)
        return self.threads

    def _wanted(self, others: float) -> int:
        return min(self.cap, max(1, math.floor(self.cap - others + SLACK)))

    def _sample(self) -> tuple[float, int, float]:
        busy = _busy_jiffies(self._cpus)
        return time.monotonic(), -1 if busy is None else busy, time.process_time()

    @staticmethod
    def _set(count: int) -> None:
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)


#: The share in charge, if any (shares opened inside it leave it in charge).
_active: CoreShare | None = None


@contextlib.contextmanager
def share_cores(threads: int | str = "auto") -> Iterator[CoreShare]:
    """Run the block under a [`CoreShare`][pyro_vae.runtime.threads.CoreShare]: torch's thread count
    fitted to the free cores (or fixed at the user's), adapted at each
    [`poll`][pyro_vae.runtime.threads.poll] inside, restored after. Nested shares leave the outer
    one in charge."""
    global _active
    if _active is not None:
        yield _active
        return
    _active = CoreShare(threads).start()
    try:
        yield _active
    finally:
        share, _active = _active, None
        share.stop()


def poll() -> None:
    """Let the active [`share_cores`][pyro_vae.runtime.threads.share_cores] adapt the thread count
    (a no-op outside one)."""
    if _active is not None:
        _active.poll()


#: Worker threads of [`one_thread_each`][pyro_vae.runtime.threads.one_thread_each], started at
#: its first call (again in a forked child, which has none of its parent's threads); a
#: worker's tasks see ``_worker.active`` set.
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_pool_lock = threading.Lock()
_worker = threading.local()


@functools.cache
def _per_thread_counts() -> bool:
    """Whether torch's intra-op count is per thread (its OpenMP backend), which
    [`one_thread_each`][pyro_vae.runtime.threads.one_thread_each] needs."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def parallel_threads() -> int:
    """How many tasks [`one_thread_each`][pyro_vae.runtime.threads.one_thread_each] runs at once:
    torch's intra-op count on this thread (what the active share allows), or 1 inside a task of
    one, or where torch's counts are not per thread."""
    if getattr(_worker, "active", False) or not _per_thread_counts():
        return 1
    return torch.get_num_threads()


def blocks(size: int, parts: int) -> list[slice]:
    """``range(size)`` in at most ``parts`` contiguous slices of one length (the last may be
    shorter): the pieces to hand [`one_thread_each`][pyro_vae.runtime.threads.one_thread_each]."""
    step = max(1, -(-size // max(1, min(parts, size))))
    return [slice(i, i + step) for i in range(0, size, step)]


def one_thread_each(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` at once, each on a worker thread with one torch intra-op thread, under the
    caller's grad mode; their results in order (the first exception is raised after all end).

    For work made of independent pieces that each fit one core's cache, such as a decoder's row
    tiles: each core runs pieces of its own, instead of every small step of one piece being
    split among the cores, whose threads meet at each step's end (measured 1.36x faster on 2
    cores, benchmarks/RESULTS.md). Run no more tasks than
    [`parallel_threads`][pyro_vae.runtime.threads.parallel_threads] at once.
    ``torch.set_num_threads`` also sets the count that threads started later begin with, so the
    caller's count is set again when the tasks have ended.
    """
    global _pool, _pool_size, _pool_pid
    if len(tasks) <= 1:
        return [task() for task in tasks]
    count = torch.get_num_threads()
    grad = torch.is_grad_enabled()

    def run(task: Callable[[], T]) -> T:
        _worker.active = True
        torch.set_num_threads(1)
        with torch.set_grad_enabled(grad):
            return task()

    with _pool_lock:
        if _pool is None or _pool_size < len(tasks) or _pool_pid != os.getpid():
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)  # its threads end once idle
            _pool_size, _pool_pid = max(len(tasks), count), os.getpid()
            _pool = ThreadPoolExecutor(_pool_size, "pyro_vae-tiles")
        pool = _pool
    try:
        futures = [pool.submit(run, task) for task in tasks]
        wait(futures)
        return [future.result() for future in futures]
    finally:
        torch.set_num_threads(count)
