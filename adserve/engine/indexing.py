"""The primitive table, indexing part: static slices, run-time indices, gathers and integer results.

Rows as in primitives.py and arrays.py. Static indices are checked when the function is built; run-time
indices (a loop counter, an int64 input, argmax) are checked when it runs, and one out of range is a 422,
never a read outside the array.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np

from .arrays import norm_axes
from .builder import Linear, Prim, op, register, zeros
from .errors import EvaluationError, ShapeError


# -- indexing ------------------------------------------------------------------
# A static index is a tuple with one entry per axis: an int k (the axis is
# dropped) or (start, length, step) for a slice; all normalised and in range.
def _np_index(index):
    out = []
    for e in index:
        if isinstance(e, int):
            out.append(e)
        else:
            start, length, step = e
            stop = start + length * step
            out.append(slice(start, None if stop < 0 else stop, step))
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _batched_index(index):
    """`_np_index` behind the batch axis, made once per index (a loop body slices the same way every run)."""
    return (slice(None), *_np_index(index))


def _bind_slice(index):
    """The slice's implementation for one `index`, as the interpreter's Program keeps it: `x[index]` in C."""
    return operator.itemgetter(_batched_index(index))


def _check_index(s, index):
    if len(index) != len(s):
        raise ShapeError(f"index has {len(index)} entries for shape {list(s)}")
    for e, d in zip(index, s):
        if isinstance(e, int):
            if not 0 <= e < d:
                raise ShapeError(f"index {e} is out of range for an axis of length {d}")
        else:
            start, length, step = e
            if length and not (0 <= start < d and 0 <= start + (length - 1) * step < d) or step == 0 or length < 0:
                raise ShapeError(f"slice (start {start}, length {length}, step {step}) is out of range for an axis of length {d}")


def _slice_shape(s, index):
    _check_index(s, index)
    return tuple(e[1] for e in index if not isinstance(e, int))


def _slice_norm(shapes, params):
    return {"index": tuple(e if isinstance(e, int) else tuple(e) for e in params["index"])}


def _update_slice_impl(x, v, index):
    b = max(x.shape[0], v.shape[0])
    out = np.array(np.broadcast_to(x, (b, *x.shape[1:])))
    out[_batched_index(index)] = v
    return out


def _update_slice_shape(sx, sv, index):
    want = _slice_shape(sx, index)
    if tuple(sv) != want:
        raise ShapeError(f"cannot assign shape {list(sv)} into a slice of shape {list(want)}")
    return sx


_INDEX = (("index", "index"),)
register(Prim("slice", _slice_shape, lambda x, index: x[_batched_index(index)], extra={"bind": _bind_slice},
              linear=Linear(lambda g, xs, index: [op.update_slice(zeros(xs[0].shape), g, index=index)]),
              normalize=_slice_norm, arity=1, params=_INDEX, signature="x[i, a:b:s, ...]",
              doc="static basic indexing: ints and slices"))
register(Prim("update_slice", _update_slice_shape, _update_slice_impl,
              linear=Linear(lambda g, xs, index: [op.update_slice(g, zeros(xs[1].shape), index=index),
                                                  op.slice(g, index=index)]),
              normalize=_slice_norm, arity=2, params=_INDEX, signature="x[index] = v",
              doc="x with x[index] replaced by v (a functional update; linear in x and v jointly)"))


# Dynamic indexing along one axis with a run-time index (a loop counter, say).
# size None: pick one entry (the axis is dropped); size k: a window of length k.
def _dyn_norm(shapes, params):
    axis = norm_axes(shapes[0], params.get("axis", 0))[0]
    size = params.get("size")
    return {"axis": axis, "size": None if size is None else int(size)}


def _dyn_shape(sx, si, axis, size):
    if si != ():
        raise ShapeError(f"an index must be a scalar, got shape {list(si)}")
    if size is None and sx[axis] == 0:
        raise ShapeError("cannot index into an empty axis")
    if size is not None and not 0 <= size <= sx[axis]:
        raise ShapeError(f"window of {size} does not fit an axis of length {sx[axis]}")
    return sx[:axis] + sx[axis + 1:] if size is None else sx[:axis] + (size,) + sx[axis + 1:]


def _int_index(i, length, size):
    f = np.asarray(i, dtype=np.float64).reshape(-1)
    k = np.rint(f)
    hi = length - (1 if size is None else size)
    bad = ~((k == f) & (k >= 0) & (k <= hi))
    if bad.any():
        raise EvaluationError(f"index {f[bad][0]:g} is out of range 0..{hi} (or not an integer)", code="index_out_of_range",
                              cite_line=True)
    return k.astype(np.int64)


def _dyn_slice_impl(x, i, axis, size):
    ax = axis + 1
    if size is None and i.size == 1:  # one index for every point (a reverse sweep's tape read): no index arrays
        f = float(i.reshape(-1)[0])
        if f.is_integer() and 0 <= f < x.shape[ax]:
            return np.take(x, int(f), axis=ax)
    k = _int_index(i, x.shape[ax], size)
    window = k[:, None] + np.arange(1 if size is None else size)
    if k.shape[0] == 1:
        out = np.take(x, window[0], axis=ax)
    else:
        xm = np.moveaxis(np.broadcast_to(x, (k.shape[0], *x.shape[1:])), ax, 1)
        out = np.moveaxis(xm[np.arange(k.shape[0])[:, None], window], 1, ax)
    return np.squeeze(out, axis=ax) if size is None else out


def _dyn_update_shape(sx, sv, si, axis, size):
    want = _dyn_shape(sx, si, axis, size)
    if tuple(sv) != want:
        raise ShapeError(f"cannot assign shape {list(sv)} into an element of shape {list(want)}")
    return sx


def _dyn_update_impl(x, v, i, axis, size):
    ax = axis + 1
    k = _int_index(i, x.shape[ax], size)
    b = max(x.shape[0], v.shape[0], k.shape[0])
    out = np.array(np.broadcast_to(x, (b, *x.shape[1:])))
    v = np.broadcast_to(v, (b, *v.shape[1:]))
    if size is None:
        v = np.expand_dims(v, ax)
    window = np.broadcast_to(k[:, None] + np.arange(v.shape[ax]), (b, v.shape[ax]))
    om, vm = np.moveaxis(out, ax, 1), np.moveaxis(v, ax, 1)
    om[np.arange(b)[:, None], window] = vm
    return out


_DYN = (("axis", "axis"), ("size", "size"))
register(Prim("dyn_slice", _dyn_shape, _dyn_slice_impl,
              linear=Linear(lambda g, xs, axis, size: [op.dyn_update(zeros(xs[0].shape), g, xs[1], axis=axis,
                                                                     size=size), None], args=(0,)),
              normalize=_dyn_norm, arity=2, params=_DYN, signature="x[i], x[i:i + size] (i known at run time)",
              doc="x[i] (size None) or x[i:i+size] along `axis`, i at run time; linear in x"))
register(Prim("dyn_update", _dyn_update_shape, _dyn_update_impl,
              linear=Linear(lambda g, xs, axis, size: [op.dyn_update(g, zeros(xs[1].shape), xs[2], axis=axis, size=size),
                                                       op.dyn_slice(g, xs[2], axis=axis, size=size), None],
                            args=(0, 1)),
              normalize=_dyn_norm, arity=3, params=_DYN, signature="x[i] = v (i known at run time)",
              doc="x with x[i] (or the window at i) replaced by v; linear in x and v jointly"))



# Gathers with run-time integer arrays (int64 inputs, arange, argmax...): `x[idx]`, `take(x, idx, axis)`.
# Indices arrive as float64 values holding integers; one that is not an integer in 0..n-1 is refused at run time.
def _gather_shape(sx, si, axis):
    if sx[axis] == 0 and math.prod(si):
        raise ShapeError("cannot gather from an empty axis")
    return sx[:axis] + tuple(si) + sx[axis + 1:]


def _gather_indices(idx, n):
    """Batched index array (B, ...) as int64 (B, m), refusing non-integers and entries outside 0..n-1."""
    f = idx.reshape(idx.shape[0], -1)
    k = np.rint(f)
    bad = ~((k == f) & (k >= 0) & (k <= n - 1))
    if bad.any():
        raise EvaluationError(f"index {f[bad][0]:g} is out of range 0..{n - 1} (or not an integer)",
                              code="index_out_of_range", cite_line=True)
    return k.astype(np.int64)


def _gather_impl(x, idx, axis):
    ax, si = axis + 1, idx.shape[1:]
    k = _gather_indices(idx, x.shape[ax])
    if k.shape[0] == 1:
        return np.take(x, k[0].reshape(si), axis=ax)
    b = max(x.shape[0], k.shape[0])
    xm = np.moveaxis(np.broadcast_to(x, (b, *x.shape[1:])), ax, 1)  # (B, n, rest...)
    out = xm[np.arange(b)[:, None], np.broadcast_to(k, (b, k.shape[1]))]  # (B, m, rest...)
    out = out.reshape((b, *si, *out.shape[2:]))
    return np.moveaxis(out, tuple(range(1, 1 + len(si))), tuple(range(ax, ax + len(si))))


def _scatter_add_shape(sx, sv, si, axis):
    want = _gather_shape(sx, si, axis)
    if tuple(sv) != want:
        raise ShapeError(f"scatter_add: values of shape {list(sv)} do not match the gathered shape {list(want)}")
    return sx


def _scatter_add_impl(x, v, idx, axis):
    ax, ni = axis + 1, len(idx.shape) - 1
    k = _gather_indices(idx, x.shape[ax])
    b = max(x.shape[0], v.shape[0], k.shape[0])
    out = np.array(np.broadcast_to(x, (b, *x.shape[1:])))
    vm = np.moveaxis(np.broadcast_to(v, (b, *v.shape[1:])), tuple(range(ax, ax + ni)), tuple(range(1, 1 + ni)))
    vm = vm.reshape((b, k.shape[1], *vm.shape[1 + ni:]))
    np.add.at(np.moveaxis(out, ax, 1), (np.arange(b)[:, None], np.broadcast_to(k, (b, k.shape[1]))), vm)
    return out


_AXIS = (("axis", "axis"),)
register(Prim("gather", _gather_shape, _gather_impl,
              linear=Linear(lambda g, xs, axis: [op.scatter_add(zeros(xs[0].shape), g, xs[1], axis=axis), None],
                            args=(0,)),
              normalize=lambda shapes, p: {"axis": norm_axes(shapes[0], p.get("axis", 0))[0]}, arity=2,
              params=_AXIS, signature="x[idx], take(x, idx, axis=0)",
              doc="entries of x at the integers of idx along `axis` (the result has idx's axes there); "
                  "linear in x, no derivative for idx; an index outside 0..n-1 is refused when it runs"))
register(Prim("scatter_add", _scatter_add_shape, _scatter_add_impl,
              linear=Linear(lambda g, xs, axis: [g, op.gather(g, xs[2], axis=axis), None], args=(0, 1)),
              normalize=lambda shapes, p: {"axis": norm_axes(shapes[0], p.get("axis", 0))[0]}, arity=3,
              params=_AXIS, signature="scatter_add(x, v, idx, axis=0)",
              doc="x with v added at the integers of idx along `axis` (repeats add up): the transpose of gather"))


# Integer results: positions, as float64 values holding integers (usable as indices); derivative 0.
def _arg_shape(s, axis):
    if not math.prod(s):
        raise ShapeError(f"argmin/argmax of an empty array (shape {list(s)})")
    return () if axis is None else s[:axis] + s[axis + 1:]


def _arg_norm(shapes, params):
    axis = params.get("axis")
    return {"axis": None if axis is None else norm_axes(shapes[0], axis)[0]}


def _arg_impl(np_fn):
    def impl(x, axis):
        if axis is None:
            return np_fn(x.reshape(x.shape[0], -1), axis=1).astype(np.float64)
        return np_fn(x, axis=axis + 1).astype(np.float64)
    return impl


for _name, _fn, _word in (("argmax", np.argmax, "largest"), ("argmin", np.argmin, "smallest")):
    register(Prim(_name, _arg_shape, _arg_impl(_fn), nondiff=True, normalize=_arg_norm, arity=1,
                  params=(("axis", "axis_or_none"),), lang=(_name,), signature=f"{_name}(x, axis=None)",
                  doc=f"the position of the {_word} entry (the first one at a tie or NaN), of x flattened or along "
                      "`axis`: an integer, usable as an index; derivative 0"))


def _arange_norm(shapes, params):
    n = params["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ShapeError(f"arange needs a non-negative integer length, got {n!r}")
    return {"n": n}


register(Prim("arange", lambda n: (n,), lambda n: np.arange(n, dtype=np.float64)[None], nondiff=True,
              normalize=_arange_norm, arity=0, params=(("n", "count"),), lang=("arange",),
              signature="arange(n), arange(start, stop, step=1)",
              doc="the integers 0, 1, ..., n-1 (n a static integer), as numpy.arange; usable as indices"))
