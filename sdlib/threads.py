"""How many CPUs the thread pools (torch, OpenMP, BLAS) may use, and sizing them to it.

``os.cpu_count()`` reports the host's CPUs inside a container; a pool that size under a 2-CPU quota spends its time
spinning and being throttled, which slows small-tensor work by an order of magnitude. This module imports nothing
heavy, so :mod:`sdlib` can size the pools before numpy or torch start them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, else v1 ``cfs_quota_us``), or None when unlimited."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        return quota / int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text()) if quota > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota when one is set."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


def size_thread_pools() -> int:
    """Default the pool variables to :func:`usable_cpus` (explicit settings win); returns the count.

    Only pools started afterwards see it; kernels and subprocesses inherit it through the environment.
    """
    n = usable_cpus()
    for var in POOL_VARIABLES:
        os.environ.setdefault(var, str(n))
    return n
