"""The functions an expression may call, each lowered to primitives.

Which functions lower to a primitive is the table's to say (a row's `lang`): an
element-wise one takes its arguments as they are; the few with axes, shapes or
lists of arrays have a handler here (`_CALLS`, keyed by primitive). Composite
functions (mean, prod, norm, dot, matmul, stack, ...) are lowered here to a few
primitives, so their derivatives come from the primitives' rules; each has a doc
line in `COMPOSITES` for docs/language.md. `prod` is a balanced tree of
multiplications: exact at zeros, unlike a rule that divides.
"""

from __future__ import annotations

import math

from ..builder import PRIMS, V
from ..errors import DefinitionError, LimitError
from .values import static_int

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _loc(node):
    return {"line": node.lineno, "column": node.col_offset + 1}


def _arity(node, name, args, lo, hi=None):
    hi = lo if hi is None else hi
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise DefinitionError(f"{name}() takes {want} positional argument(s), got {len(args)}", _loc(node),
                              code="bad_arguments")


def _no_kwargs(node, name, kwargs, allowed=()):
    bad = set(kwargs) - set(allowed)
    if bad:
        raise DefinitionError(f"{name}() got an unexpected keyword argument '{sorted(bad)[0]}'", _loc(node),
                              code="bad_arguments")


def _elementwise(prim, name):
    n = PRIMS[prim].arity

    def call(low, node, *args, **kwargs):
        _arity(node, name, args, n)
        _no_kwargs(node, name, kwargs)
        return low.emit(prim, *[low.value(a, node) for a in args])
    return call


def _axis_arg(node, name, args, kwargs, pos=1):
    _arity(node, name, args, pos, pos + 1)
    _no_kwargs(node, name, kwargs, ("axis",))
    if len(args) > pos and "axis" in kwargs:
        raise DefinitionError(f"{name}() got axis twice", _loc(node), code="bad_arguments")
    axis = args[pos] if len(args) > pos else kwargs.get("axis")
    if axis is None:
        return None
    if isinstance(axis, tuple):
        return tuple(static_int(a, "axis", _loc(node)) for a in axis)
    return static_int(axis, "axis", _loc(node))


def _reduction(prim):
    def call(low, node, *args, **kwargs):
        axis = _axis_arg(node, prim, args, kwargs)
        x = low.value(args[0], node)
        if prim in ("reduce_max", "reduce_min") and x.size == 0:
            raise DefinitionError("max/min of an empty array", _loc(node), code="empty_reduction")
        return low.emit(prim, x, axes=axis)
    return call


def _mean(low, node, *args, **kwargs):
    axis = _axis_arg(node, "mean", args, kwargs)
    x = low.value(args[0], node)
    s = low.emit("reduce_sum", x, axes=axis)
    count = x.size // max(s.size, 1) if x.size else 0
    return low.emit("div", s, float(count))


def _prod(low, node, *args, **kwargs):
    axis = _axis_arg(node, "prod", args, kwargs)
    x = low.value(args[0], node)
    axes = list(range(len(x.shape))) if axis is None else [a % max(len(x.shape), 1) for a in
                                                            ((axis,) if isinstance(axis, int) else axis)]
    if any(not -len(x.shape) <= a < len(x.shape) for a in ((axis,) if isinstance(axis, int) else axis or ())):
        raise DefinitionError(f"axis {axis} is out of range for shape {list(x.shape)}", _loc(node), code="shape_mismatch")
    for a in sorted(set(axes), reverse=True):
        x = _prod_axis(low, x, a)
    return x


def _prod_axis(low, x, axis):
    def window(start, n):
        return tuple((start, n, 1) if i == axis else (0, d, 1) for i, d in enumerate(x.shape))

    if x.shape[axis] == 0:
        return low.b.lit(1.0, x.shape[:axis] + x.shape[axis + 1:])
    while x.shape[axis] > 1:
        n = x.shape[axis]
        h = n // 2
        pair = low.emit("mul", low.emit("slice", x, index=window(0, h)), low.emit("slice", x, index=window(h, h)))
        x = pair if n % 2 == 0 else low.emit("concatenate", pair, low.emit("slice", x, index=window(2 * h, 1)), axis=axis)
    return low.emit("slice", x, index=tuple(0 if i == axis else (0, d, 1) for i, d in enumerate(x.shape)))


def norm(emit, x: V) -> V:
    """The 2-norm of all of x, with derivative 0 at x = 0, to every order: the square root only ever sees a
    positive sum (1 where the sum is 0), so no 0/0 reaches a derivative (`emit(prim, *args, **params)`)."""
    s = emit("reduce_sum", emit("mul", x, x), axes=None)
    zero = emit("eq", s, 0.0)
    return emit("where", zero, 0.0, emit("sqrt", emit("where", zero, 1.0, s)))


def _norm(low, node, *args, **kwargs):
    _arity(node, "norm", args, 1)
    _no_kwargs(node, "norm", kwargs)
    return norm(low.emit, low.value(args[0], node))


def dot(low, a: V, b: V) -> V:
    """numpy.dot: sum over the last axis of a and the second-to-last of b (the only axis of a 1-D b)."""
    ra, rb = len(a.shape), len(b.shape)
    if ra == 0 or rb == 0:
        return low.emit("mul", a, b)
    la = _LETTERS[:ra - 1]
    lb = _LETTERS[ra - 1:ra - 1 + rb - 1]
    sa = la + "z"
    sb = lb[:-1] + "z" + lb[-1:] if rb >= 2 else "z"
    out = la + (lb[:-1] + lb[-1:] if rb >= 2 else "")
    return low.emit("einsum", a, b, spec=f"{sa},{sb}->{out}")


def matmul(low, a: V, b: V) -> V:
    """numpy.matmul (@): batched over leading axes, which broadcast."""
    ra, rb = len(a.shape), len(b.shape)
    if ra == 0 or rb == 0:
        raise DefinitionError("matmul (@) does not take scalars; use *", low.b.loc, code="shape_mismatch")
    if ra <= 2 and rb <= 2:
        return dot(low, a, b)
    batch_a, batch_b = a.shape[:-2] if ra > 2 else (), b.shape[:-2] if rb > 2 else ()
    try:
        import numpy as np
        batch = tuple(np.broadcast_shapes(batch_a, batch_b))
    except ValueError:
        raise DefinitionError(f"matmul: batch shapes {list(batch_a)} and {list(batch_b)} do not broadcast",
                              low.b.loc, code="shape_mismatch") from None
    if ra > 2:
        a = low.emit("broadcast_to", a, shape=batch + a.shape[-2:])
    if rb > 2:
        b = low.emit("broadcast_to", b, shape=batch + b.shape[-2:])
    lb = _LETTERS[:len(batch)]
    sa = (lb + "xy") if ra > 2 else ("y" if ra == 1 else "xy")
    sb = (lb + "yw") if rb > 2 else ("y" if rb == 1 else "yw")
    out = lb + ("x" if ra >= 2 else "") + ("w" if rb >= 2 else "")
    return low.emit("einsum", a, b, spec=f"{sa},{sb}->{out}")


def _dot(low, node, *args, **kwargs):
    _arity(node, "dot", args, 2)
    _no_kwargs(node, "dot", kwargs)
    return dot(low, low.value(args[0], node), low.value(args[1], node))


def _matmul(low, node, *args, **kwargs):
    _arity(node, "matmul", args, 2)
    _no_kwargs(node, "matmul", kwargs)
    return matmul(low, low.value(args[0], node), low.value(args[1], node))


def _where(low, node, *args, **kwargs):
    _arity(node, "where", args, 3)
    _no_kwargs(node, "where", kwargs)
    c, a, b = args
    if isinstance(c, bool):
        return low.value(a if c else b, node)
    return low.emit("where", low.value(c, node), low.value(a, node), low.value(b, node))


def _shape_arg(node, x, what):
    if isinstance(x, list):
        x = tuple(x)
    if not isinstance(x, tuple):
        x = (x,)
    dims = tuple(static_int(d, what, _loc(node)) for d in x)
    if any(d < -1 for d in dims):
        raise DefinitionError(f"{what} has a negative size: {list(dims)}", _loc(node), code="shape_mismatch")
    return dims


def _reshape(low, node, *args, **kwargs):
    _no_kwargs(node, "reshape", kwargs, ("shape", "newshape"))
    if len(args) == 1 and kwargs:
        args = (*args, next(iter(kwargs.values())))
    _arity(node, "reshape", args, 2)
    return low.emit("reshape", low.value(args[0], node), shape=_shape_arg(node, args[1], "reshape's shape"))


def _transpose(low, node, *args, **kwargs):
    _no_kwargs(node, "transpose", kwargs, ("axes",))
    _arity(node, "transpose", args, 1, 2)
    axes = args[1] if len(args) > 1 else kwargs.get("axes")
    perm = None if axes is None else tuple(static_int(a, "axes", _loc(node)) for a in (axes if isinstance(axes, (tuple, list)) else (axes,)))
    return low.emit("transpose", low.value(args[0], node), perm=perm)


def _array_list(low, node, name, args):
    if not args or not isinstance(args[0], (list, tuple)) or not args[0]:
        raise DefinitionError(f"{name}() takes a non-empty list, e.g. {name}([a, b])", _loc(node), code="bad_arguments")
    return [low.value(v, node) for v in args[0]]


def _stack(low, node, *args, **kwargs):
    axis = _axis_arg(node, "stack", args, kwargs) or 0
    xs = _array_list(low, node, "stack", args)
    shape = xs[0].shape
    if any(x.shape != shape for x in xs):
        raise DefinitionError(f"stack needs equal shapes, got {[list(x.shape) for x in xs]}", _loc(node), code="shape_mismatch")
    r = len(shape) + 1
    if not -r <= axis < r:
        raise DefinitionError(f"axis {axis} is out of range for stacking shape {list(shape)}", _loc(node), code="shape_mismatch")
    axis %= r
    new_shape = shape[:axis] + (1,) + shape[axis:]
    parts = [low.emit("reshape", x, shape=new_shape) for x in xs]
    return parts[0] if len(parts) == 1 else low.emit("concatenate", *parts, axis=axis)


def _concatenate(low, node, *args, **kwargs):
    axis = _axis_arg(node, "concatenate", args, kwargs) or 0
    xs = _array_list(low, node, "concatenate", args)
    return xs[0] if len(xs) == 1 else low.emit("concatenate", *xs, axis=axis)


def _filled(value):
    def call(low, node, *args, **kwargs):
        _arity(node, "zeros" if value == 0 else "ones", args, 1)
        _no_kwargs(node, "zeros", kwargs)
        shape = _shape_arg(node, args[0], "shape")
        if any(d < 0 for d in shape):
            raise DefinitionError("shape sizes must be >= 0", _loc(node), code="shape_mismatch")
        if math.prod(shape) > 10_000_000:
            raise LimitError(f"array of shape {list(shape)} has {math.prod(shape)} elements; the limit is 10000000",
                             _loc(node), code="too_large")
        return low.b.lit(value, shape)
    return call


def _len(low, node, *args, **kwargs):
    _arity(node, "len", args, 1)
    x = args[0]
    if isinstance(x, tuple):
        return len(x)
    x = low.value(x, node)
    if not x.shape:
        raise DefinitionError("len() of a scalar", _loc(node), code="shape_mismatch")
    return x.shape[0]


def _take(low, node, *args, **kwargs):
    """numpy.take: entries of x at integer index data along `axis` (None: of x flattened)."""
    axis = _axis_arg(node, "take", args, kwargs, pos=2)
    x, idx = low.value(args[0], node), args[1]
    if axis is None:
        x, axis = low.emit("reshape", x, shape=(x.size,)), 0
    if not isinstance(axis, int) or not -len(x.shape) <= axis < len(x.shape):
        raise DefinitionError(f"take: axis {axis} is out of range for shape {list(x.shape)}", _loc(node),
                              code="shape_mismatch")
    axis %= len(x.shape)
    i = low.value(idx, node)
    if isinstance(idx, int) and not 0 <= idx < x.shape[axis]:
        raise DefinitionError(f"take: index {idx} is out of range 0..{x.shape[axis] - 1}", _loc(node),
                              code="index_out_of_range")
    if not i.shape:
        return low.emit("dyn_slice", x, i, axis=axis, size=None)
    return low.emit("gather", x, i, axis=axis)


def _argminmax(prim):
    def call(low, node, *args, **kwargs):
        axis = _axis_arg(node, prim, args, kwargs)
        if isinstance(axis, tuple):
            raise DefinitionError(f"{prim}() takes one axis or None", _loc(node), code="bad_arguments")
        return low.emit(prim, low.value(args[0], node), axis=axis)
    return call


def _arange(low, node, *args, **kwargs):
    _arity(node, "arange", args, 1, 3)
    _no_kwargs(node, "arange", kwargs)
    bounds = [static_int(a, "an arange() bound", _loc(node)) for a in args]
    if len(bounds) == 3 and bounds[2] == 0:
        raise DefinitionError("arange() step must not be zero", _loc(node), code="bad_arguments")
    r = range(*bounds)
    if len(r) > 10_000_000:
        raise LimitError(f"arange of {len(r)} elements; the limit is 10000000", _loc(node), code="too_large")
    out = low.b.emit("arange", [], {"n": len(r)})
    if r.step != 1:
        out = low.emit("mul", out, float(r.step))
    return low.emit("add", out, float(r.start)) if r.start else out


def _range(low, node, *args, **kwargs):
    raise DefinitionError("range() is only allowed as the iterable of a for loop", _loc(node), code="unsupported")


# primitives whose language function is not element-wise: prim -> handler
_CALLS = {"reduce_sum": _reduction("reduce_sum"), "reduce_max": _reduction("reduce_max"),
          "reduce_min": _reduction("reduce_min"), "logsumexp": _reduction("logsumexp"),
          "argmax": _argminmax("argmax"), "argmin": _argminmax("argmin"), "arange": _arange,
          "where": _where, "reshape": _reshape, "transpose": _transpose, "concatenate": _concatenate}

# functions that are not one primitive: name -> (handler, signature, doc line for users)
COMPOSITES = {
    "mean": (_mean, "mean(x, axis=None)", "the average over all axes or the given ones"),
    "prod": (_prod, "prod(x, axis=None)", "the product over all axes or the given ones; exact where entries are 0"),
    "norm": (_norm, "norm(x)", "the 2-norm sqrt(sum(x * x)) over all entries; its derivative at x = 0 is 0 "
                               "(the second derivative too)"),
    "dot": (_dot, "dot(a, b)", "numpy.dot: sum over the last axis of a and the second-to-last of b"),
    "matmul": (_matmul, "matmul(a, b), a @ b", "matrix product, batched over leading axes that broadcast"),
    "stack": (_stack, "stack([a, b, ...], axis=0)", "arrays of one shape joined along a new axis"),
    "zeros": (_filled(0.0), "zeros(shape)", "an array of zeros"),
    "ones": (_filled(1.0), "ones(shape)", "an array of ones"),
    "len": (_len, "len(x)", "the length of the first axis (a static integer)"),
    "take": (_take, "take(x, idx, axis=None)", "the entries of x at integer data idx along `axis` (of x flattened "
                                               "when axis is None), as numpy.take; an index outside 0..n-1 is "
                                               "refused when it runs; reverse mode adds into those entries"),
    "range": (_range, "range(n), range(a, b, step)", "the integers of a `for` loop (only there)"),
}


def _table():
    table = {}
    for p in PRIMS.values():
        for name in p.lang:
            table[name] = _CALLS[p.name] if p.name in _CALLS else _elementwise(p.name, name)
    clash = set(table) & set(COMPOSITES)
    assert not clash, f"functions both a primitive and a composite: {clash}"
    table.update({name: handler for name, (handler, _, _) in COMPOSITES.items()})
    return table


TABLE = _table()
