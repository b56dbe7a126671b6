"""Scalar helpers that generated kernels call where `math` has no NumPy twin.

Kernels are compiled with `error_model="numpy"`, so `math.log(-1.0)` is NaN and
`1.0 / 0.0` is infinity, as in the NumPy interpreter; these few helpers add
the numerically stable forms and NaN propagation NumPy has.
"""

import math

from numba import njit

_jit = njit(inline="always", cache=True, error_model="numpy")


@_jit
def sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@_jit
def softplus(x):
    if x > 0.0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@_jit
def sign(x):
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x  # 0.0, -0.0 or NaN, as numpy.sign


@_jit
def maximum(a, b):
    if a != a or b != b:
        return math.nan
    return a if a >= b else b


@_jit
def minimum(a, b):
    if a != a or b != b:
        return math.nan
    return a if a <= b else b
