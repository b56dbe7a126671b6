"""BLAS on the calling thread: the engine's matrix products (NumPy's on the interpreter, SciPy's BLAS that
numba kernels call for a contraction) use one OpenBLAS thread, as every other loop of a kernel does.

OpenBLAS splits a large product over threads of its own, which wait for work by spinning. The engine runs
requests on several threads and batch points on the parallel tier's, and a server shares its cores: with
other work on them, the spinning threads take turns with the one computing. Measured on 2 shared cores (load
average 7): the k-means HVP kernel of GradBench (two 10000x16x100 products) took 300-570 ms with two OpenBLAS
threads and 8.5 ms with one. OPENBLAS_NUM_THREADS, when set, is kept.

`single_threaded()` (an Engine's construction calls it) applies that to every OpenBLAS loaded in the process,
and sets the variable, which OpenBLAS reads when it is loaded, for those loaded later: SciPy's, which a numba
kernel with a contraction brings in at its first call, and those of child processes (compile and isolation
workers). NumPy's and SciPy's are separate libraries.
"""

from __future__ import annotations

import ctypes
import os

VARIABLE = "OPENBLAS_NUM_THREADS"
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "scipy_openblas_set_num_threads64_")
_done: set = set()  # libraries already set


def threads() -> int:
    try:
        return max(1, int(os.environ.get(VARIABLE, "1")))
    except ValueError:
        return 1


def single_threaded() -> None:
    """Every OpenBLAS loaded now to `threads()` threads (1 unless OPENBLAS_NUM_THREADS says otherwise)."""
    os.environ.setdefault(VARIABLE, "1")
    for path in _openblas_loaded():
        if path in _done:
            continue
        _done.add(path)
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(threads())


def _openblas_loaded() -> list:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:  # not Linux: the environment variable is all there is
        return []
    return sorted(p for p in paths if p.startswith("/"))
