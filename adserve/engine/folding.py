"""Constant folding: an equation whose inputs are all literals is computed when it is built (builder.emit).

Its NumPy implementation runs on the literals, as the interpreter would run it, and the result is a literal:
filled with one value when every element is that value (bit for bit: signed zeros and NaN payloads too), else its
values while there are at most FOLD_MAX of them (a larger result stays an equation). Two short cuts give the same
literal: a literal filled with one value is folded by one element when the op is element-wise, and keeps its fill
when the op only moves elements (powers.MOVES).
"""

from __future__ import annotations

import math

import numpy as np

from . import powers
from .ir import Lit

FOLD_WORK = 1 << 20  # equations of literals with more output elements than this are not computed when built
FOLD_MAX = 64  # non-uniform folded constants stay this small; bigger ones remain equations


def fold(p, atoms, params, out_shape):
    """The literal `p(*atoms)` is, computed when the equation is built, or None (left to evaluation)."""
    if p.multiple_results or p.name in ("loop", "cond") or math.prod(out_shape) > FOLD_WORK:
        return None
    if math.prod(out_shape) and all(len(a.data) == 1 for a in atoms):
        if p.name in powers.MOVES:  # its elements are its input's: the same fill
            return Lit(tuple(out_shape), atoms[0].data)
        if p.template is not None:
            return _fold_uniform(p, atoms, params, out_shape)
    return _fold_arrays(p, atoms, params, out_shape)


def _fold_uniform(p, atoms, params, out_shape):
    """An element-wise op of literals each filled with one value: one element computed says every element. The
    derivative rules fold thousands of these and of moved fills (random-10000's gradient: 2,348 and 3,166), each at
    a fraction of `_fold_arrays`' NumPy calls."""
    out = _computed(p, [np.full((1,), a.data[0]) for a in atoms], params)
    return None if out is None else Lit(tuple(out_shape), (float(out.reshape(-1)[0]),))


def _fold_arrays(p, atoms, params, out_shape):
    from .interpreter import lit_array

    out = _computed(p, [lit_array(a) for a in atoms], params)
    if out is None:
        return None
    flat = np.broadcast_to(out, (1, *out_shape)).reshape(-1)
    if flat.size == 0:
        return Lit(tuple(out_shape), (0.0,))
    first = flat[0]
    if (np.isnan(first) and np.isnan(flat).all()
            or np.all(flat == first) and np.all(np.signbit(flat) == np.signbit(first))):
        return Lit(tuple(out_shape), (float(first),))
    if flat.size > FOLD_MAX:
        return None
    return Lit(tuple(out_shape), tuple(float(x) for x in flat))


def _computed(p, arrays, params):
    """p's NumPy implementation on `arrays`, as float64; None where it fails (left to evaluation time, where
    errors carry context)."""
    try:
        with np.errstate(all="ignore"):
            return np.asarray(p.impl(*arrays, **params), dtype=np.float64)
    except Exception:
        return None
