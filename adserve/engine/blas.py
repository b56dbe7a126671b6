"""BLAS on the calling thread: the engine's matrix products (NumPy's on the interpreter, SciPy's BLAS that
compiled kernels call for a contraction) use one BLAS thread, as every other loop of a kernel does.

OpenBLAS splits a large product over threads of its own, which wait for work by spinning. The engine runs
requests on several threads and batch points on the parallel tier's, and a server shares its cores: with
other work on them, the spinning threads take turns with the one computing. Measured on 2 shared cores (load
average 7): the k-means HVP kernel of GradBench (two 10000x16x100 products) took 300-570 ms with two OpenBLAS
threads and 8.5 ms with one. OPENBLAS_NUM_THREADS, when set, is kept.

`single_threaded()` (an Engine's construction calls it) sets every BLAS loaded in the process through
threadpoolctl, which knows each library's setter (OpenBLAS under NumPy's and SciPy's symbol prefixes, MKL,
BLIS) on Linux, macOS and Windows, and sets the variable, which OpenBLAS reads when it is loaded, for those
loaded later: SciPy's, which a kernel with a contraction brings in at its first call, and those of child
processes (compile and isolation workers).
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

VARIABLE = "OPENBLAS_NUM_THREADS"


def threads() -> int:
    try:
        return max(1, int(os.environ.get(VARIABLE, "1")))
    except ValueError:
        return 1


def single_threaded() -> None:
    """Every BLAS loaded now to `threads()` threads (1 unless OPENBLAS_NUM_THREADS says otherwise), and the
    variable set for those loaded later."""
    os.environ.setdefault(VARIABLE, "1")
    threadpool_limits(limits=threads(), user_api="blas")  # called, not entered: the limit stays
