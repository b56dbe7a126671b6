"""The `python` tier: a plan's generated kernel run by CPython, while numba compiles it (or after numba failed).

Scalar-heavy plans gain most: a new 1,000-op function's value and gradient took 0.06 ms this way against
2.5 ms on the NumPy interpreter, which dispatches each equation separately. Array-heavy plans lose (a Python
loop per element), so the backend uses this tier only where its cost model says it pays (see
`backend.Tiered._python_pays`).

The module text is what `kernel_module(..., python=True)` generates from the IR (numbers printed with
`repr`, names generated): it is compiled here with `compile`, never text a client sent. It imports the
names below instead of numba's: `njit` leaves functions as they are, `types` stands in for the signature,
and the scalar helpers are the plain-Python originals of `runtime`'s. Python's `math` raises where numba's
NumPy error model returns NaN or infinity (`log(-1)`, `1 / 0`, overflow), and a negative number to a
fractional power is complex: `run` turns those into `Unsupported`, and the caller answers with the
interpreter instead.
"""

from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import math as _math
from types import SimpleNamespace

import numpy as np

from . import plain

# the plain-Python originals of the numba runtime (plain.py: no numba imported; a numba dispatcher called from
# Python would cost microseconds)
globals().update(plain.HELPERS)
stop_flag, stopped = plain.stop_flag, plain.stopped
matmul, matvec, dot = plain.matmul, plain.matvec, plain.dot  # NumPy's products (numba's are overloads)
transposed, reshaped = plain.transposed, plain.reshaped


def _libm_hypot():
    """The C library's hypot, which numba's kernels call; None where ctypes cannot find it."""
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    f = ctypes.CDLL(name).hypot
    f.restype, f.argtypes = ctypes.c_double, [ctypes.c_double, ctypes.c_double]
    return f


# the generated code's `math`: Python's own, but for hypot. CPython's math.hypot is an algorithm of its own, not
# the C library's that numba calls: they differed in the last bit for 0.6% of random inputs (1,125 of 200,000),
# and the python tier must agree with numba's kernels bit for bit
math = SimpleNamespace(**{k: getattr(_math, k) for k in dir(_math) if not k.startswith("_")})
math.hypot = _libm_hypot() or _math.hypot


def abs(x):  # noqa: A001  (the generated code's `abs`)
    if type(x) is complex:  # everything else a complex value reaches raises, or agrees with NumPy's NaN
        raise TypeError("complex intermediate")
    return builtins.abs(x)


def njit(*args, **kwargs):
    return lambda f: f


class _Signature:
    """`types.int64(types.Array(types.float64, 2, "C"), ...)` evaluates to this and means nothing."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self


types = _Signature()


class Unsupported(Exception):
    """The Python run met what only the NumPy error model defines (a domain error, a complex value)."""


class PythonKernel:
    def __init__(self, text: str, title: str):
        namespace: dict = {"__name__": "adserve_python_tier"}
        exec(compile(text, f"<adserve python tier: {title}>", "exec"), namespace)  # generated from the IR
        self.kernel = namespace["kernel"]
        self.ERRORS = namespace["ERRORS"]
        self.LOOPS = namespace["LOOPS"]
        self.failures = 0

    def run(self, B, *arrays) -> int:
        try:
            with np.errstate(all="ignore"):
                return self.kernel(B, *arrays)
        except (ArithmeticError, ValueError, TypeError) as e:
            raise Unsupported(f"{type(e).__name__}: {e}") from None
