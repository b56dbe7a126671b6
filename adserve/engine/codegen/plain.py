"""The runtime of generated kernels as plain Python: the python tier calls these, and runtime.py compiles them
for numba's kernels. Nothing here imports numba, so a process that writes and runs kernels without numba (the
python tier, the LLVM back end's kernels) never pays for importing it.

`HELPERS`: each table row's scalar helper, by name. `stop_flag(stop)` / `stopped(stop, p, loop, done)`: the stop
check and where a kernel stopped (runtime.py says what the slots hold). `transposed`, `reshaped`: the array
operations numba compiles once per signature (runtime.py says why). `matmul`, `matvec`, `dot`: NumPy's products,
which runtime.py overloads with BLAS or loops for numba.
"""

import numpy as np

from ..builder import PRIMS
from ..deadline import STOPPED_STATUS

HELPERS = {p.helper.__name__: p.helper for p in PRIMS.values() if p.helper is not None}
STOPPED = STOPPED_STATUS  # a kernel's status when it stopped at its flag (errors are k > 0: ERRORS[k - 1])


def stop_flag(stop):
    """stop[0] (CPython reads memory every time; numba's kernels read it as an atomic load: runtime.py)."""
    return stop[0]


def stopped(stop, p, loop, done):
    # a parallel variant's chunks stop at once, each writing here: a loop's count is not overwritten by a
    # point's (it says more), and which chunk's loop count stays is a race (progress, approximately)
    if loop != 0 or stop[2] == 0:
        stop[1] = p
        stop[2] = loop
        stop[3] = done
    return STOPPED


def transposed(x, perm):
    return np.transpose(x, perm)


def reshaped(x, shape):
    return np.ascontiguousarray(x).reshape(shape)


def matmul(a, b, out):
    """out = a @ b (2-D, out C-contiguous)."""
    np.matmul(a, b, out=out)


def matvec(a, x, out):
    """out = a @ x (a 2-D, x and out 1-D)."""
    np.matmul(a, x, out=out)


def dot(x, y):
    """x . y (1-D)."""
    return float(np.dot(x, y))
