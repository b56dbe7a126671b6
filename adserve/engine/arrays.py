"""The primitive table, array part: reductions, shape manipulation and contraction (indexing is in indexing.py).

Rows as in primitives.py: shape rule, batched NumPy implementation, derivative rules in IR ops, graph-JSON
parameters, language names and a doc line. The linear ones declare `linear` (their transpose rule, as JAX's
`deflinear`) and get both derivative rules from it; their kernel code is in codegen/templates.py.
"""

from __future__ import annotations

import math

import numpy as np

from . import mathlib
from .builder import Linear, Prim, V, op, register, zeros
from .errors import DefinitionError, ShapeError
from .primitives import align, broadcast_shape


def norm_axes(shape, axis):
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
    return {"axes": norm_axes(shapes[0], params.get("axes"))}


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
                  lambda x, axes: _zero_tie(np_fn(x, axis=_batched_axes(axes), initial=identity), x, axes, word),
                  jvp, vjp, normalize=_reduce_norm, arity=1, params=_AXES, lang=(word,),
                  signature=f"{word}(x, axis=None)",
                  doc=f"the {'largest' if word == 'max' else 'smallest'} entry, over all axes or the given "
                      "ones (refused for an empty array); tied entries share the derivative evenly"))


def _zero_tie(out, x, axes, word):
    """max of -0.0 and 0.0 is 0.0, min -0.0 (IEEE 754-2019's maximum and minimum), whatever the order: NumPy's
    vectorised reductions return either zero, and the kernels' loops must agree with one rule."""
    zero = out == 0
    if not np.any(zero):
        return out
    ax = _batched_axes(axes)
    pos = np.any((x == 0) & ~np.signbit(x), axis=ax) if word == "max" else ~np.any((x == 0) & np.signbit(x), axis=ax)
    return np.where(zero, np.where(pos, 0.0, -0.0), out)


def _lse_impl(x, axes):
    ax = _batched_axes(axes)
    if x.size == 0:
        return np.full(np.sum(x, axis=ax).shape, -np.inf)
    m = np.max(x, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return mathlib.log_array(np.sum(mathlib.exp_array(x - m), axis=ax)) + np.squeeze(m, axis=ax)


def _lse_jvp(ts, xs, ans, axes):
    x = xs[0]
    return op.reduce_sum(ts[0] * op.exp(x - expand_reduced(ans, x.shape, axes)), axes=axes)


def _lse_vjp(g, xs, ans, axes):
    x = xs[0]
    return [expand_reduced(g, x.shape, axes) * op.exp(x - expand_reduced(ans, x.shape, axes))]


_AXES = (("axes", "axes"),)
register(Prim("reduce_sum", lambda s, axes: _reduced_shape(s, axes), lambda x, axes: np.add.reduce(x, axis=_batched_axes(axes)),
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
    to = (x.shape[0], *shape)
    if math.prod(to) > 1024:
        return np.broadcast_to(x, to)  # a view: no memory for a large one
    out = np.empty(to)  # a small one is copied: np.broadcast_to's own cost is several times a small copy's
    np.copyto(out, x)
    return out


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
              template="{0}", ir="%{t}r = fadd double {0}, -0.0",  # x + -0.0 is x: LLVM folds it away
              doc="x broadcast to `shape`, as NumPy broadcasts"))
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
    return {"axis": norm_axes(shapes[0], params.get("axis", 0))[0]}


def _concat_shape(*shapes, axis):
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != axis):
            raise ShapeError(f"cannot concatenate shapes {[list(x) for x in shapes]} along axis {axis}")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


def _concat_impl(*xs, axis):
    b = max(x.shape[0] for x in xs)
    return np.concatenate([x if x.shape[0] == b else np.broadcast_to(x, (b, *x.shape[1:])) for x in xs], axis=axis + 1)


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
