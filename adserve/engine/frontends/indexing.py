"""Indexing and element assignment: `x[i]`, `x[i, j]`, `x[a:b]`, `y[i] = e`.

Static parts become one `slice` / `update_slice`; parts that depend on a loop
counter or on integer data (a scalar value) become `dyn_slice` / `dyn_update`
along one axis; an integer array `x[idx]` becomes a `gather`. Every index is
checked against the axis length before anything runs, using the loop's trip
count for indices that move (`x[i+1]` with i up to n-1 is refused with a message).
"""

from __future__ import annotations

import ast

from ..builder import V
from ..errors import DefinitionError
from .values import Index

FULL = "full"


def _loc(node):
    return {"line": node.lineno, "column": node.col_offset + 1} if hasattr(node, "lineno") else None


def _entries(low, x, slice_node):
    """Per-axis entries: int, Index, ('slice', start, length, step) static, ('dyn', Index, size), or FULL."""
    nodes = slice_node.elts if isinstance(slice_node, ast.Tuple) else [slice_node]
    if len(nodes) > len(x.shape):
        raise DefinitionError(f"too many indices: {len(nodes)} for shape {list(x.shape)}", _loc(slice_node), code="index_error")
    out = []
    for axis, (node, dim) in enumerate(zip(nodes, x.shape)):
        if isinstance(node, ast.Slice):
            out.append(_slice_entry(low, node, dim))
            continue
        k = low.expr(node)
        if isinstance(k, V):  # integer data (an int64 input, an element of one, argmax...): checked when it runs
            if k.shape and any(isinstance(e, tuple) and e[0] == "gather" for e in out):
                raise DefinitionError("at most one integer-array index per subscript (index twice instead)",
                                      _loc(node), code="index_error")
            out.append(("gather", k) if k.shape else k)
            continue
        if isinstance(k, bool) or not isinstance(k, (int, Index)):
            raise DefinitionError("an index must be an integer: a literal, a loop variable, integer data or integer "
                                  "arithmetic of those", _loc(node), code="index_error")
        if isinstance(k, int):
            if not -dim <= k < dim:
                raise DefinitionError(f"index {k} is out of range for axis {axis} of length {dim}", _loc(node),
                                      code="index_out_of_range")
            out.append(k % dim)
        else:
            lo, hi = k.bounds()
            if lo < 0 or hi >= dim:
                raise DefinitionError(f"index takes values {lo}..{hi} in the loop, out of range 0..{dim - 1} for axis {axis}",
                                      _loc(node), code="index_out_of_range")
            out.append(k)
    return out + [FULL] * (len(x.shape) - len(out))


def _slice_entry(low, node, dim):
    parts = [None if p is None else low.expr(p) for p in (node.lower, node.upper, node.step)]
    if any(isinstance(p, Index) for p in parts):
        start, stop, step = parts
        if step not in (None, 1) or start is None or stop is None:
            raise DefinitionError("a slice with a loop variable needs both bounds and step 1, e.g. x[i:i+2]", _loc(node),
                                  code="index_error")
        size = Index.of(stop) - start
        if not isinstance(size, int) or size < 0:
            raise DefinitionError("a slice with a loop variable must have a constant length, e.g. x[i:i+2]", _loc(node),
                                  code="index_error")
        lo, hi = Index.of(start).bounds()
        if lo < 0 or hi + size > dim:
            raise DefinitionError(f"slice start takes values {lo}..{hi}, so the window of {size} leaves the axis of "
                                  f"length {dim}", _loc(node), code="index_out_of_range")
        return ("dyn", start, size)
    for p, n in zip(parts, (node.lower, node.upper, node.step)):
        if p is not None and (isinstance(p, bool) or not isinstance(p, int)):
            raise DefinitionError("slice bounds must be integers", _loc(n), code="index_error")
    if parts[2] == 0:
        raise DefinitionError("slice step cannot be zero", _loc(node), code="index_error")
    start, stop, step = slice(*parts).indices(dim)
    return ("slice", start, len(range(start, stop, step)), step)


def _static_index(entries, shape):
    """The static part as a `slice` index; dynamic entries keep their axis whole."""
    out = []
    for e, d in zip(entries, shape):
        if isinstance(e, int):
            out.append(e)
        elif isinstance(e, tuple) and e[0] == "slice":
            out.append(e[1:])
        else:
            out.append((0, d, 1))
    return tuple(out)


def _is_trivial(index, shape):
    return all(not isinstance(e, int) and e == (0, d, 1) for e, d in zip(index, shape))


def get_item(low, x, slice_node):
    entries = _entries(low, x, slice_node)
    index = _static_index(entries, x.shape)
    if not _is_trivial(index, x.shape):
        x = low.emit("slice", x, index=index)
    axis_after, kept = [], 0
    for e in entries:
        axis_after.append(kept)
        if not isinstance(e, int):
            kept += 1
    for pos in reversed(range(len(entries))):
        e = entries[pos]
        if isinstance(e, (Index, V)):
            x = low.emit("dyn_slice", x, low.value(e), axis=axis_after[pos], size=None)
        elif isinstance(e, tuple) and e[0] == "gather":
            x = low.emit("gather", x, e[1], axis=axis_after[pos])
        elif isinstance(e, tuple) and e[0] == "dyn":
            x = low.emit("dyn_slice", x, low.value(e[1]), axis=axis_after[pos], size=e[2])
    return x


def set_item(low, y, slice_node, v):
    """`y[index] = v` as a functional update; returns the new y."""
    entries = _entries(low, y, slice_node)
    return _set(low, y, entries, v, slice_node)


def _set(low, y, entries, v, node):
    if not entries:  # y is a scalar element: the assignment replaces it
        return low.emit("broadcast_to", v, shape=y.shape)
    static = all(isinstance(e, int) or e == FULL or (isinstance(e, tuple) and e[0] == "slice") for e in entries)
    if static:
        index = _static_index(entries, y.shape)
        target = tuple(e[1] for e in index if not isinstance(e, int))
        v = low.emit("broadcast_to", v, shape=target)
        return low.emit("update_slice", y, v, index=index)
    if any(isinstance(e, tuple) and e[0] == "gather" for e in entries):
        raise DefinitionError("assignment through an integer-array index is not supported; assign element by "
                              "element in a loop (y[idx[k]] = ...)", _loc(node), code="index_error")
    head, rest = entries[0], entries[1:]
    whole = tuple((0, d, 1) for d in y.shape[1:])
    if isinstance(head, (int, Index, V)):
        if isinstance(head, int):
            row = low.emit("slice", y, index=(head, *whole))
            return low.emit("update_slice", y, _set(low, row, rest, v, node), index=(head, *whole))
        i = low.value(head)
        row = low.emit("dyn_slice", y, i, axis=0, size=None)
        return low.emit("dyn_update", y, _set(low, row, rest, v, node), i, axis=0, size=None)
    if isinstance(head, tuple) and head[0] == "dyn" and all(e == FULL for e in rest):
        v = low.emit("broadcast_to", v, shape=(head[2], *y.shape[1:]))
        return low.emit("dyn_update", y, v, low.value(head[1]), axis=0, size=head[2])
    raise DefinitionError("unsupported assignment: after a slice, indices must be static (e.g. y[i, j] = e or y[i:i+2] = v)",
                          _loc(node), code="index_error")
