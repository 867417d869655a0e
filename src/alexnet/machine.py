"""What this process may use of the machine, and the process-wide settings a command makes once at
its entry (never inside a library function): OpenMP's wait policy and thread count, glibc's allocator.

Why the project decides thread placement instead of leaving torch's default (one OpenMP thread per
core, spinning at every barrier): on a 2-core machine with one other busy process, the README demo
took 15 min 22 s with the defaults and 1 min 16 s with OMP_NUM_THREADS=1. A thread that spins while
its partner waits for a core burns the core the partner needs. So: OpenMP threads sleep instead of
spinning when they wait (OMP_WAIT_POLICY=PASSIVE), one thread per core this process may use
(affinity, cgroup quota) less those other processes keep busy, unless they keep the whole machine busy
(`threads_for`), decided once at the command's entry (`plan_threads`). ALEXNET_THREADS=N, `--threads N` or OMP_NUM_THREADS=N fix the count.
This module must not import torch: the OpenMP settings only take effect if made before torch loads.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alexnet.errors import UserError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    glibc serves every block over 32 MB with its own mmap and unmaps it on free, so each large
    activation of a CPU training step is page-faulted in again on the next step: a fresh 148 MB
    tensor (conv1's maps at batch 128) cost 65 ms to fill against 9 ms for a reused one, and a paper
    net training step ran at 16.8 images/s with it against 31.3 without (bench/docs/lrn.md). Set
    ALEXNET_KEEP_FREED_MEMORY=0 to leave the allocator alone. Process-wide: call it at a command's
    entry, not from library code."""
    if os.environ.get("ALEXNET_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


# ---------------------------------------------------------------------------------------------------
# How many cores this process may use, and how many others keep busy
# ---------------------------------------------------------------------------------------------------


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """Cores allowed by the cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None if unlimited."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-6)))
    return max(1, cores)


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: all cores busy (from /proc/stat) and this process's own;
    `cpus`: the machine's CPUs (the per-CPU lines of /proc/stat; 0 where unknown)."""

    wall: float
    machine_busy: float
    own: float
    cpus: int = 0


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _niced() -> bool:
    try:
        return os.nice(0) > 0
    except (AttributeError, OSError):
        return False


def read_cpu_sample(proc_stat: str | os.PathLike = "/proc/stat", niced: bool | None = None) -> CpuSample | None:
    """None where /proc/stat is missing or unreadable (not Linux). Time of niced processes counts as
    busy only when this process is niced too (`niced`, default: ask the OS): the scheduler gives a
    nice-10 process about a tenth of a core that a nice-0 one wants, so it takes no thread from us."""
    niced = _niced() if niced is None else niced
    try:
        with open(proc_stat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = lines[0].split() if lines else []
    if not fields or fields[0] != "cpu":
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    if not niced:
        busy -= ticks[1]  # processes at a lower priority (nice > 0) yield their cores to us
    t = os.times()
    return CpuSample(time.monotonic(), busy / _clock_ticks(), t.user + t.system, cpus)


def busy_elsewhere(before: CpuSample, after: CpuSample) -> float:
    """Cores kept busy by other processes between two samples (the machine's busy time minus ours), at
    most the machine's CPUs: on a loaded machine the probing process can wait for a core between
    reading /proc/stat and the clock, so over a 0.1 s probe 2 fully busy cores read as more than 2
    (1.88-2.13 in 40 probes at load 13). Uncapped, beside a CPU hog at load 12-14, auto chose 1 thread
    in some runs and the demo's training ran at 0.72x the speed of 2 threads (bench/threads.py)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    others = max(0.0, ((after.machine_busy - before.machine_busy) - (after.own - before.own)) / wall)
    return min(others, after.cpus) if after.cpus else others


# Fewer cores than this left free by others counts as none free: the machine is saturated.
SATURATED = 0.25


def threads_for(usable: int, busy_others: float, cpus: int = 0) -> int:
    """Threads for the cores that others leave free, every usable core on an idle machine, and every
    usable core again where others keep all of the machine busy. Measured on 2 cores with waiting
    threads asleep: beside one busy process, 1 thread trained `small` 12-15% faster than 2 (8 epochs:
    12.1-12.9 s against 14.4-15.1 s, 3 rounds; bench/threads.py's train beside a hog: 4.14 s against
    4.63 s, 5 rounds): the thread that shares a core with the busy process falls behind and its
    partner waits for it at every barrier. Where others keep every core busy, the scheduler shares
    the machine per runnable thread, and more threads win a larger share: with 12-14 runnable tasks
    on the 2 cores the demo's training took 48 s with 2 threads and 75 s with 1; beside two busy
    processes they tied. `cpus`: the machine's CPUs (0: unknown, taken as `usable`)."""
    free = (cpus or usable) - busy_others
    if free <= SATURATED:
        return usable
    return max(1, min(usable, math.ceil(free - SATURATED)))


def fixed_thread_count(environ: dict | None = None) -> int | None:
    """The count the user fixed: ALEXNET_THREADS, else OMP_NUM_THREADS; None when neither is set."""
    environ = os.environ if environ is None else environ
    for name in ("ALEXNET_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])
            except ValueError:
                continue
            if n >= 1:
                return n
    return None


def plan_threads(fixed: int | None = None, usable: int | None = None, probe_s: float = 0.08,
                 proc_stat: str | os.PathLike = "/proc/stat", started: CpuSample | None = None) -> int:
    """The thread count for this process: `fixed` if given, else `threads_for` the usable cores and
    the load other processes put on the machine over a short probe. `started`: a sample the command
    took as it began (`alexnet.__main__`), so that the probe overlaps its imports and only the rest
    of `probe_s` is waited here (0.08 s: 8 ticks of /proc/stat a CPU, enough to tell a busy core from
    an idle one). Decided once, at a command's entry: a count that changed during a run would change
    the order of torch's sums, and with it the bits that bit-exact resume promises (resume with the
    same count: same machine, or --threads N)."""
    if fixed is not None:
        return fixed
    usable = usable or usable_cores()
    before = started or read_cpu_sample(proc_stat)
    if before is None:
        return usable
    wait = probe_s - (time.monotonic() - before.wall)
    if wait > 0:
        time.sleep(wait)
    after = read_cpu_sample(proc_stat)
    return usable if after is None else threads_for(usable, busy_elsewhere(before, after), after.cpus)


def configure_process(threads: int | None = None, environ: dict | None = None,
                      started: CpuSample | None = None) -> int:
    """At a command's entry, before torch is imported: OpenMP threads sleep when they wait, the thread
    count is the one fixed by the user or planned from the machine's load, and glibc keeps freed
    memory. Returns the thread count. Settings the user made are kept."""
    environ = os.environ if environ is None else environ
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # libgomp: sleep at once instead of spinning
    environ.setdefault("KMP_BLOCKTIME", "0")  # the same for Intel's OpenMP, where torch links it
    n = plan_threads(threads if threads is not None else fixed_thread_count(environ), started=started)
    environ["OMP_NUM_THREADS"] = str(n)
    # torch starts with MKL's count when it is set (an inherited MKL_NUM_THREADS=2 beat --threads 1):
    # ours wins unless only OMP_NUM_THREADS was given and the user also set MKL's
    if threads is not None or "ALEXNET_THREADS" in environ or "MKL_NUM_THREADS" not in environ:
        environ["MKL_NUM_THREADS"] = str(n)
    keep_freed_memory()
    return n


def configure(threads: int | None = None) -> dict:
    """`alexnet.configure()`: the settings every `alexnet` command makes at its entry, for a notebook or
    a script, so that it runs at the README's speed: OpenMP threads sleep when they wait, the thread
    count is `threads` (else ALEXNET_THREADS / OMP_NUM_THREADS, else planned from the machine's load,
    `plan_threads`), and glibc keeps freed memory (`keep_freed_memory`). Call it before torch is
    imported for OpenMP's wait policy to take; the thread count (torch.set_num_threads) and the
    allocator take whenever it is called. Process-wide, as the CLI's. Returns what it set."""
    if threads is not None and threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    torch = sys.modules.get("torch")  # not imported here: OpenMP reads its settings when torch loads
    n = configure_process(threads)
    if torch is not None:
        torch.set_num_threads(n)
    return {"threads": n, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "keep_freed_memory": keep_freed_memory(), "torch_was_loaded": torch is not None}
