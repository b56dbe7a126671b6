"""Threads: numba's threading layer for parallel batch kernels, and how many cores this process may use.

A parallel kernel needs a thread-safe layer (OpenMP or TBB: request threads may run kernels at once);
without one, parallel variants are disabled (logged once) and plans stay serial. Compiles leave one usable
core to requests.
"""

from __future__ import annotations

import logging
import math
import os
import threading

log = logging.getLogger("adserve.engine")

_layer_lock = threading.Lock()
_layer: list = []  # [(name of the launched thread-safe layer, or None; the reason when None)], once launched


def parallel_layer():
    """The thread-safe threading layer numba runs parallel kernels on in this process ("omp" or "tbb"), launched
    on first use; None (logged once) when none can be loaded, or when another layer was launched already
    (the workqueue layer is not safe for kernels called from several threads at once)."""
    with _layer_lock:
        if not _layer:
            _layer.append(_launch_layer())
        return _layer[0][0]


def layer_reason() -> str:
    """Why `parallel_layer` is None ("" before it was asked for, or when a layer runs)."""
    with _layer_lock:
        return _layer[0][1] if _layer else ""


def _launch_layer():
    if usable_cores() < 2:
        why = "one usable core: no thread to spread a batch over"
        log.info("parallel batch kernels off: %s", why)
        return None, why
    try:
        import numba
        from numba.np.ufunc import parallel

        from ..codegen.worker import threadsafe_layer
        threadsafe_layer()  # numba reads it when it launches its threads, just below
        if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
            # OpenMP threads sleep between parallel kernels instead of spinning for a while: a spinning thread
            # takes a core from request threads (measured here: JAX beside it 0.8 -> 1.6 ms), and on a busy
            # machine the next parallel region waits for it (5x the serial time); sleeping costs ~10% (read by
            # libgomp when it loads, just below)
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        parallel._launch_threads()
        name = numba.threading_layer()
    except Exception as e:
        why = f"no thread-safe numba threading layer could be loaded ({type(e).__name__}: {str(e).strip()[:300]})"
        log.warning("parallel batch kernels disabled: %s", why)
        return None, why
    if name not in ("omp", "tbb"):
        why = f"numba's threading layer is {name!r}, not thread-safe (configured: {numba.config.THREADING_LAYER!r})"
        log.warning("parallel batch kernels disabled: %s", why)
        return None, why
    log.info("parallel batch kernels run on numba's %r threading layer, %d threads", name, numba.get_num_threads())
    return name, ""


def usable_cores(cgroup="/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None),  # cgroup v2: "<quota> <period>", or "max <period>"
                                    ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):  # cgroup v1
        try:
            with open(os.path.join(cgroup, quota_file)) as f:
                quota, *rest = f.read().split()
            if period_file is not None:
                with open(os.path.join(cgroup, period_file)) as f:
                    rest = f.read().split()
            if quota not in ("max", "-1"):
                cores = min(cores, max(1, math.ceil(int(quota) / int(rest[0]))))
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
        break
    return max(1, cores)


def default_workers() -> int:
    """Concurrent compiles: one usable core is left to requests (a compile is CPU-bound)."""
    return max(1, usable_cores() - 1)
