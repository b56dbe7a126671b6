"""The primitive table, array part: reductions, shape manipulation, contraction and indexing.

Rows as in primitives.py: shape rule, batched NumPy implementation, derivative rules in IR ops, graph-JSON
parameters, language names and a doc line. The linear ones declare `linear` (their transpose rule, as JAX's
`deflinear`) and get both derivative rules from it; their kernel code is in codegen/templates.py.
"""

from __future__ import annotations

import math

import numpy as np

from .builder import Linear, Prim, V, op, register, zeros
from .errors import DefinitionError, EvaluationError, ShapeError
from .primitives import align, broadcast_shape


def _norm_axes(shape, axis):
    r = len(shape)
    if axis is None:
        return tuple(range(r))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool) or not -r <= a < r:
            raise ShapeError(f"axis {a} is out of range for shape {list(shape)}")
        out.append(a % r)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {list(axes)}")
    return tuple(sorted(out))


def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def expand_reduced(g: V, shape, axes) -> V:
    """Broadcast a reduction's output back over the reduced axes of `shape`."""
    return op.broadcast_to(op.reshape(g, shape=_keepdims_shape(shape, axes)), shape=tuple(shape))



# -- reductions ----------------------------------------------------------------
def _reduce_norm(shapes, params):
    return {"axes": _norm_axes(shapes[0], params.get("axes"))}


def _reduced_shape(s, axes):
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _batched_axes(axes):
    return tuple(a + 1 for a in axes)


def _chooser(name, word, np_fn, identity):
    def jvp(ts, xs, ans, axes):
        x = xs[0]
        loc = op.eq(x, expand_reduced(ans, x.shape, axes))
        return op.reduce_sum(ts[0] * loc, axes=axes) / op.reduce_sum(loc, axes=axes)

    def vjp(g, xs, ans, axes):
        x = xs[0]
        loc = op.eq(x, expand_reduced(ans, x.shape, axes))
        return [expand_reduced(g / op.reduce_sum(loc, axes=axes), x.shape, axes) * loc]

    register(Prim(name, lambda s, axes: _reduced_shape(s, axes),
                  lambda x, axes: np_fn(x, axis=_batched_axes(axes), initial=identity),
                  jvp, vjp, normalize=_reduce_norm, arity=1, params=_AXES, lang=(word,),
                  signature=f"{word}(x, axis=None)",
                  doc=f"the {'largest' if word == 'max' else 'smallest'} entry, over all axes or the given "
                      "ones (refused for an empty array); tied entries share the derivative evenly"))


def _lse_impl(x, axes):
    ax = _batched_axes(axes)
    if x.size == 0:
        return np.full(np.sum(x, axis=ax).shape, -np.inf)
    m = np.max(x, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.sum(np.exp(x - m), axis=ax)) + np.squeeze(m, axis=ax)


def _lse_jvp(ts, xs, ans, axes):
    x = xs[0]
    return op.reduce_sum(ts[0] * op.exp(x - expand_reduced(ans, x.shape, axes)), axes=axes)


def _lse_vjp(g, xs, ans, axes):
    x = xs[0]
    return [expand_reduced(g, x.shape, axes) * op.exp(x - expand_reduced(ans, x.shape, axes))]


_AXES = (("axes", "axes"),)
register(Prim("reduce_sum", lambda s, axes: _reduced_shape(s, axes), lambda x, axes: np.sum(x, axis=_batched_axes(axes)),
              linear=Linear(lambda g, xs, axes: [expand_reduced(g, xs[0].shape, axes)]), normalize=_reduce_norm,
              arity=1, params=_AXES, lang=("sum",), signature="sum(x, axis=None)",
              doc="sum over all axes, or over the given axis or axes"))
_chooser("reduce_max", "max", np.max, -np.inf)  # an empty axis gives the identity, as in JAX
_chooser("reduce_min", "min", np.min, np.inf)
register(Prim("logsumexp", lambda s, axes: _reduced_shape(s, axes), _lse_impl, _lse_jvp, _lse_vjp,
              normalize=_reduce_norm, arity=1, params=_AXES, lang=("logsumexp",), signature="logsumexp(x, axis=None)",
              doc="log(sum(exp(x))), shifted by the max so it does not overflow"))


# -- shape manipulation --------------------------------------------------------
def _reshape_norm(shapes, params):
    shape = tuple(params["shape"])
    size = math.prod(shapes[0])
    if sum(1 for d in shape if d == -1) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"bad target shape {list(shape)}")
    if -1 in shape:
        rest = math.prod(d for d in shape if d != -1)
        if rest == 0 or size % rest:
            raise ShapeError(f"cannot reshape {list(shapes[0])} into {list(shape)}")
        shape = tuple(size // rest if d == -1 else d for d in shape)
    if math.prod(shape) != size:
        raise ShapeError(f"cannot reshape {list(shapes[0])} ({size} elements) into {list(shape)}")
    return {"shape": shape}


register(Prim("reshape", lambda s, shape: shape, lambda x, shape: x.reshape((x.shape[0], *shape)),
              linear=Linear(lambda g, xs, shape: [op.reshape(g, shape=xs[0].shape)]), normalize=_reshape_norm,
              arity=1, params=(("shape", "shape"),), lang=("reshape",), signature="reshape(x, shape)",
              doc="the same entries in row-major order, in a new shape (one size may be -1)"))


def _transpose_norm(shapes, params):
    r = len(shapes[0])
    perm = params.get("perm")
    perm = tuple(reversed(range(r))) if perm is None else tuple(int(p) % r if r else int(p) for p in perm)
    if sorted(perm) != list(range(r)):
        raise ShapeError(f"axes {list(params.get('perm'))} are not a permutation of the {r} axes of {list(shapes[0])}")
    return {"perm": perm}


register(Prim("transpose", lambda s, perm: tuple(s[p] for p in perm),
              lambda x, perm: np.transpose(x, (0, *(p + 1 for p in perm))),
              linear=Linear(lambda g, xs, perm: [op.transpose(g, perm=tuple(np.argsort(perm).tolist()))]),
              normalize=_transpose_norm, arity=1, params=(("perm", "perm"),), lang=("transpose",),
              signature="transpose(x, axes=None), x.T", doc="axes permuted (reversed by default)"))


def _bcast_shape(s, shape):
    shape = tuple(shape)
    if broadcast_shape(s, shape) != shape:
        raise ShapeError(f"cannot broadcast {list(s)} to {list(shape)}")
    return shape


def _bcast_impl(x, shape):
    (x,) = align(x, ndim=len(shape) + 1)
    return np.broadcast_to(x, (x.shape[0], *shape))


def _sum_to_shape(s, shape):
    _bcast_shape(tuple(shape), tuple(s))
    return tuple(shape)


def _sum_to_impl(x, shape):
    lead = x.ndim - 1 - len(shape)
    axes = tuple(range(1, 1 + lead)) + tuple(1 + lead + i for i, d in enumerate(shape) if d == 1 and x.shape[1 + lead + i] != 1)
    out = np.sum(x, axis=axes, keepdims=True) if axes else x
    return out.reshape((x.shape[0], *shape))


register(Prim("broadcast_to", _bcast_shape, _bcast_impl,
              linear=Linear(lambda g, xs, shape: [op.sum_to(g, shape=xs[0].shape)]), arity=1,
              normalize=lambda shapes, p: {"shape": tuple(p["shape"])}, params=(("shape", "shape"),),
              template="{0}", doc="x broadcast to `shape`, as NumPy broadcasts"))
register(Prim("sum_to", _sum_to_shape, _sum_to_impl,
              linear=Linear(lambda g, xs, shape: [op.broadcast_to(g, shape=xs[0].shape)]), arity=1,
              normalize=lambda shapes, p: {"shape": tuple(p["shape"])}, params=(("shape", "shape"),),
              doc="sum a broadcast value back to `shape` (transpose of broadcast_to)"))


def _concat_norm(shapes, params):
    if not shapes:
        raise ShapeError("concatenate needs at least one array")
    r = len(shapes[0])
    if r == 0:
        raise ShapeError("cannot concatenate scalars (use stack)")
    return {"axis": _norm_axes(shapes[0], params.get("axis", 0))[0]}


def _concat_shape(*shapes, axis):
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != axis):
            raise ShapeError(f"cannot concatenate shapes {[list(x) for x in shapes]} along axis {axis}")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


def _concat_impl(*xs, axis):
    b = max(x.shape[0] for x in xs)
    return np.concatenate([np.broadcast_to(x, (b, *x.shape[1:])) for x in xs], axis=axis + 1)


def _concat_transpose(g, xs, axis):
    out, start = [], 0
    for x in xs:
        n = x.shape[axis]
        out.append(op.slice(g, index=tuple((0, d, 1) if i != axis else (start, n, 1) for i, d in enumerate(g.shape))))
        start += n
    return out


register(Prim("concatenate", _concat_shape, _concat_impl, linear=Linear(_concat_transpose), normalize=_concat_norm,
              params=(("axis", "axis"),), lang=("concatenate",), signature="concatenate([a, b, ...], axis=0)",
              doc="arrays joined along an existing axis"))


# -- contraction ---------------------------------------------------------------
def _einsum_norm(shapes, params):
    spec = params["spec"].replace(" ", "")
    try:
        ins, out = spec.split("->")
        sa, sb = ins.split(",")
    except ValueError:
        raise DefinitionError(f"einsum spec '{spec}' must look like 'ij,jk->ik'") from None
    for part in (sa, sb, out):
        if not all(c.isalpha() for c in part) or len(set(part)) != len(part):
            raise DefinitionError(f"einsum spec '{spec}': each term needs distinct letters")
    for part, others in ((sa, sb + out), (sb, sa + out), (out, sa + sb)):
        missing = set(part) - set(others)
        if missing:
            raise DefinitionError(f"einsum spec '{spec}': index {''.join(sorted(missing))} appears only once")
    return {"spec": spec}


def _einsum_shape(sa, sb, spec):
    ins, out = spec.split("->")
    terms = ins.split(",")
    dims = {}
    for term, s in zip(terms, (sa, sb)):
        if len(term) != len(s):
            raise ShapeError(f"einsum '{spec}': operand of shape {list(s)} does not have {len(term)} axes")
        for c, d in zip(term, s):
            if dims.setdefault(c, d) != d:
                raise ShapeError(f"einsum '{spec}': size mismatch on index {c}: {dims[c]} vs {d} "
                                 f"(shapes {list(sa)} and {list(sb)})")
    return tuple(dims[c] for c in out)


def _einsum_impl(a, b, spec):
    ins, out = spec.split("->")
    ta, tb = ins.split(",")
    return np.einsum(f"...{ta},...{tb}->...{out}", a, b)


def _einsum_jvp(ts, xs, ans, spec):
    a, b = xs
    ta, tb = ts
    parts = []
    if ta is not None:
        parts.append(op.einsum(ta, b, spec=spec))
    if tb is not None:
        parts.append(op.einsum(a, tb, spec=spec))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _einsum_vjp(g, xs, ans, spec):
    a, b = xs
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    return [op.einsum(g, b, spec=f"{out},{sb}->{sa}"), op.einsum(a, g, spec=f"{sa},{out}->{sb}")]


register(Prim("einsum", _einsum_shape, _einsum_impl, _einsum_jvp, _einsum_vjp, normalize=_einsum_norm, arity=2,
              params=(("spec", "spec"),),
              doc="two-operand contraction; dot and matmul lower to it"))


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
    out[(slice(None), *_np_index(index))] = v
    return out


def _update_slice_shape(sx, sv, index):
    want = _slice_shape(sx, index)
    if tuple(sv) != want:
        raise ShapeError(f"cannot assign shape {list(sv)} into a slice of shape {list(want)}")
    return sx


_INDEX = (("index", "index"),)
register(Prim("slice", _slice_shape, lambda x, index: x[(slice(None), *_np_index(index))],
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
    axis = _norm_axes(shapes[0], params.get("axis", 0))[0]
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
        raise EvaluationError(f"index {f[bad][0]:g} is out of range 0..{hi} (or not an integer)", code="index_out_of_range")
    return k.astype(np.int64)


def _dyn_slice_impl(x, i, axis, size):
    ax = axis + 1
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
                              code="index_out_of_range")
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
              normalize=lambda shapes, p: {"axis": _norm_axes(shapes[0], p.get("axis", 0))[0]}, arity=2,
              params=_AXIS, signature="x[idx], take(x, idx, axis=0)",
              doc="entries of x at the integers of idx along `axis` (the result has idx's axes there); "
                  "linear in x, no derivative for idx; an index outside 0..n-1 is refused when it runs"))
register(Prim("scatter_add", _scatter_add_shape, _scatter_add_impl,
              linear=Linear(lambda g, xs, axis: [g, op.gather(g, xs[2], axis=axis), None], args=(0, 1)),
              normalize=lambda shapes, p: {"axis": _norm_axes(shapes[0], p.get("axis", 0))[0]}, arity=3,
              params=_AXIS, signature="scatter_add(x, v, idx, axis=0)",
              doc="x with v added at the integers of idx along `axis` (repeats add up): the transpose of gather"))


# Integer results: positions, as float64 values holding integers (usable as indices); derivative 0.
def _arg_shape(s, axis):
    if not math.prod(s):
        raise ShapeError(f"argmin/argmax of an empty array (shape {list(s)})")
    return () if axis is None else s[:axis] + s[axis + 1:]


def _arg_norm(shapes, params):
    axis = params.get("axis")
    return {"axis": None if axis is None else _norm_axes(shapes[0], axis)[0]}


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
