"""The scalar helpers generated kernels call, compiled by numba: one per table row that declares one.

A row's `helper` is a plain-Python scalar function (primitives.py), called by its name from the row's
template where `math` has no NumPy twin (stable sigmoid, NaN-propagating maximum). Kernels are compiled
with `error_model="numpy"`, so `math.log(-1.0)` is NaN and `1.0 / 0.0` infinity, as in the NumPy
interpreter. Each helper is a name of this module, as generated kernels import it.
"""

from numba import njit

from ..builder import PRIMS

_jit = njit(inline="always", cache=True, error_model="numpy")

HELPERS = {p.helper.__name__: _jit(p.helper) for p in PRIMS.values() if p.helper is not None}
globals().update(HELPERS)
