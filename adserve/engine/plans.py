"""Evaluation plans: the graphs a request runs, built once per function and cached.

* `main_plan`: ONE graph computing every requested value, gradient, JVP, VJP and
  HVP, built by inlining the transforms into one builder so CSE shares the
  primal work. HVP is forward-over-reverse (jvp of the gradient graph), never a
  Hessian; its forward pass yields the JVP for free.
* `jacobian`: one VJP per output component (reverse) or one JVP per input
  component (forward, a plan per input), whichever is fewer, pushed through the batch axis.
* `hessian`: HVPs against a basis, also through the batch axis.

A sweep's rows of one point share everything computed from the point's inputs alone (the primal, a reverse
pass's tape, the gradient under an HVP): `split.split` cuts its plan so that part runs once per point and only
the rest on every row (`_sweep`).

`wrt` names the inputs to differentiate (default: all); the rest are held
constant, so a matrix of data costs no gradient. A sweep's size is capped by
`max_rows` (the engine's `Limits.max_sweep_rows`).
"""

from __future__ import annotations

import math

import numpy as np

from .builder import Builder, inline
from .errors import LimitError
from .jvp import jvp_graph, jvp_inline
from .limits import cost
from .memory import F64
from .split import split
from .vjp import vjp_graph, vjp_inline

MAX_BASIS = 20_000  # basis vectors per point
# element operations a sweep's rows would repeat (the shared part's work times the rows after the first) below
# which its plan runs whole: a second kernel call and its arguments cost about as much (a Hessian of Helmholtz
# n=30 or Rosenbrock n=50 ran 1.01-1.03x as long split)
SPLIT_MIN_WORK = 50_000
# a batch's shared values are copied to each of its points' rows (a kernel reads an input's row p or its only
# one): past this many bytes of copies, its plan runs whole, as before, on buffers of one row
SPLIT_MAX_COPY = 64 << 20
KINDS = ("value", "gradient", "jvp", "vjp", "hvp")


def _mask(fn, wrt):
    return [n in wrt for n in fn.input_names]


def grad_graph(fn, wrt):
    """x -> (f(x), gradient for each input in `wrt`)."""
    def make():
        b = Builder()
        xs = [b.input(v.shape) for v in fn.graph.inputs]
        outs, grads = vjp_inline(b, fn.graph, xs, _mask(fn, wrt), [b.lit(1.0)])
        return b.build(outs + [g if g is not None else b.lit(0.0, fn.input_shapes[n]) for g, n in
                               zip([g for g, m in zip(grads, _mask(fn, wrt)) if m], wrt)])
    return fn.plan(("grad", wrt), make)


def main_plan(fn, kinds, wrt=None):
    """(graph, order) computing `kinds` (of KINDS) with derivatives for `wrt` (default: all inputs): its
    inputs are x, tangents of `wrt` (for jvp/hvp), the cotangent (for vjp); `order` lists (kind, names) per
    output group, names None for a single tensor."""
    kinds = frozenset(kinds)
    wrt = tuple(fn.input_names) if wrt is None else tuple(wrt)

    def make():
        mask = _mask(fn, wrt)
        b = Builder()
        xs = [b.input(v.shape) for v in fn.graph.inputs]
        ts = [b.input(fn.input_shapes[n]) for n in wrt] if kinds & {"jvp", "hvp"} else []
        ct = [b.input(fn.output_shape)] if "vjp" in kinds else []
        slots = {}
        # transforms are emitted straight into this builder: CSE shares their primal work
        if "hvp" in kinds:
            outs, touts = jvp_inline(b, grad_graph(fn, wrt), xs, _spread(ts, mask))
            slots["value"], slots["gradient"] = outs[0], outs[1:]
            slots["jvp"], slots["hvp"] = touts[0], touts[1:]
        elif "gradient" in kinds:
            outs, grads = vjp_inline(b, fn.graph, xs, mask, [b.lit(1.0)])
            slots["value"], slots["gradient"] = outs[0], [g for g, m in zip(grads, mask) if m]
        if "jvp" in kinds and "jvp" not in slots:
            outs, touts = jvp_inline(b, fn.graph, xs, _spread(ts, mask))
            slots["value"], slots["jvp"] = outs[0], touts[0]
        if "vjp" in kinds:
            outs, cts = vjp_inline(b, fn.graph, xs, mask, ct)
            slots["value"], slots["vjp"] = outs[0], [c for c, m in zip(cts, mask) if m]
        if "value" not in slots:
            slots["value"] = inline(b, fn.graph, xs)[0]
        order, outs = [], []
        for kind in KINDS:
            if kind not in kinds and kind != "value":
                continue
            v = slots.get(kind)
            if isinstance(v, list):
                outs += [x if x is not None else b.lit(0.0, fn.input_shapes[n]) for x, n in zip(v, wrt)]
                order.append((kind, wrt))
            else:
                outs.append(v if v is not None else b.lit(0.0, fn.output_shape))
                order.append((kind, None))
        return b.build(outs), order
    return fn.plan(("main", kinds, wrt), make)


def _spread(ts, mask):
    """Tangents for the `wrt` inputs placed at their positions among all inputs (None elsewhere)."""
    it = iter(ts)
    return [next(it) if m else None for m in mask]


def _layout(fn, wrt):
    sizes = [math.prod(fn.input_shapes[n]) for n in wrt]
    return sizes, [int(o) for o in np.cumsum([0, *sizes])]


def sweeps(fn, kind, wrt) -> int:
    """How many derivative sweeps per point a Jacobian or Hessian takes."""
    n = sum(math.prod(fn.input_shapes[n]) for n in wrt)
    return min(n, math.prod(fn.output_shape)) if kind == "jacobian" else n


def _guard(B, rows, max_rows):
    if rows > MAX_BASIS or B * rows > max_rows:
        raise LimitError(f"this needs {B} x {rows} derivative sweeps; the limit is {max_rows:,} "
                         f"(at most {MAX_BASIS:,} per point)", code="too_many_sweeps")


def _repeat(xs, B, rows):
    """Each point's inputs once per sweep row; one point's are broadcast (both tiers read a
    leading axis of 1 as shared), so a large data input is not copied per row."""
    if B == 1:
        return [x[:1] for x in xs]
    return [np.repeat(full(x, B), rows, axis=0) for x in xs]


def _basis(fn, wrt, B):
    """Tangents for every basis vector of the `wrt` inputs, tiled over B points."""
    sizes, offsets = _layout(fn, wrt)
    n, eye = offsets[-1], np.eye(offsets[-1])
    return [np.tile(eye[:, o:o + s].reshape(n, *fn.input_shapes[nm]), (B,) + (1,) * len(fn.input_shapes[nm]))
            for nm, o, s in zip(wrt, offsets, sizes)]


def jacobian_plans(fn, wrt) -> list:
    """[(graph, basis size, the inputs it differentiates)] of a Jacobian: one VJP per output component
    (reverse), or one JVP per input component (forward), whichever is fewer. Forward, each input of `wrt` has a
    JVP plan of its own, pushing its tangents alone: in one plan for all of them, a row's tangents are zero in
    every other input, and the plan carries those zeros through all that they reach (GradBench's hand tracking:
    200 rows in the correspondences' `us`, whose tangents reach only the last interpolation, computed the
    skinning's tangents too)."""
    n, m = _layout(fn, wrt)[1][-1], math.prod(fn.output_shape)
    if m <= n:
        return [(fn.plan(("vjp", wrt), lambda: vjp_graph(fn.graph, _mask(fn, wrt), [True])), m, wrt)]
    return [(_jvp_plan(fn, (nm,))[0], math.prod(fn.input_shapes[nm]), (nm,)) for nm in wrt]


def _jvp_plan(fn, wrt):
    """(graph, whether each output's tangent is nonzero) of a JVP in the inputs `wrt`."""
    return fn.plan(("jvp", wrt), lambda: jvp_graph(fn.graph, _mask(fn, wrt)))


def _sweep(fn, key, graph, xs, B, rows, moving, keep, run) -> list:
    """The outputs at `keep` of `graph` run on `rows` rows per point: `xs` are the B points' inputs (a row
    each), `moving` the rows' own inputs (B * rows). The part of the plan that reads only `xs` runs once per
    point (`split`), unless a point has a single row."""
    parts = None if rows == 1 else fn.plan(("split", key), lambda: _worth(split(
        graph, [False] * len(xs) + [True] * (len(graph.inputs) - len(xs)), keep), rows))
    if parts is not None and B > 1:
        copied = sum(math.prod(v.shape) for v in parts.per_row.inputs[:len(parts.per_row.inputs) - len(moving)])
        if F64 * B * rows * copied > SPLIT_MAX_COPY:
            parts = None
    if parts is None:
        res = run(graph, _repeat(xs, B, rows) + moving)
        return [res[i] for i in keep]
    shared = run(parts.shared, xs)
    return list(run(parts.per_row, _repeat([xs[i] for i in parts.reads] + list(shared), B, rows) + moving))


def _worth(parts, rows):
    """`parts` when the work the rows would repeat is worth a second kernel call (SPLIT_MIN_WORK), else None."""
    return parts if parts is not None and cost(parts.shared)[1] * (rows - 1) >= SPLIT_MIN_WORK else None


def jacobian(fn, xs, B, wrt, run, max_rows):
    sizes, offsets = _layout(fn, wrt)
    n, m, out = offsets[-1], math.prod(fn.output_shape), fn.output_shape
    if m == 0 or n == 0:  # no entries, no sweeps (a basis of zero rows beside inputs of one would not broadcast)
        return {nm: np.zeros((B, *out, *fn.input_shapes[nm])) for nm in wrt}
    if m <= n:  # reverse: one VJP per output component
        _guard(B, m, max_rows)
        [(g, _, _)] = jacobian_plans(fn, wrt)
        basis = np.tile(np.eye(m).reshape(m, *out), (B,) + (1,) * len(out))
        res = _sweep(fn, ("vjp", wrt), g, xs, B, m, [basis], range(1, len(g.outputs)), run)
        return {nm: full(r, B * m).reshape(B, *out, *fn.input_shapes[nm]) for nm, r in zip(wrt, res)}
    _guard(B, n, max_rows)  # forward: one JVP per input component, input by input (jacobian_plans)
    answer = {}
    for nm, s in zip(wrt, sizes):
        if s == 0:  # an empty input: no columns
            answer[nm] = np.zeros((B, *out, *fn.input_shapes[nm]))
            continue
        g, nz = _jvp_plan(fn, (nm,))
        if nz[0]:
            [t] = _sweep(fn, ("jvp", (nm,)), g, xs, B, s, _basis(fn, (nm,), B), [1], run)
            d = full(t, B * s).reshape(B, s, m)
        else:  # the output does not depend on it; the plan (the primal alone) still runs, as every request's does
            run(g, _repeat(xs, B, s) + _basis(fn, (nm,), B))
            d = np.zeros((B, s, m))
        answer[nm] = np.swapaxes(d, 1, 2).reshape(B, *out, *fn.input_shapes[nm])
    return answer


def hessian(fn, xs, B, wrt, run, max_rows):
    sizes, offsets = _layout(fn, wrt)
    n = offsets[-1]
    if n == 0:
        shapes = fn.input_shapes
        return {a: {b: np.zeros((B, *shapes[a], *shapes[b])) for b in wrt} for a in wrt}
    _guard(B, n, max_rows)
    graph, _ = main_plan(fn, frozenset({"hvp"}), wrt)
    hvps = _sweep(fn, ("hvp", wrt), graph, xs, B, n, _basis(fn, wrt, B), range(1, len(graph.outputs)), run)
    out = {}
    for a, oa, sa in zip(wrt, offsets, sizes):
        out[a] = {}
        for b, h in zip(wrt, hvps):
            h = full(h, B * n).reshape(B, n, *fn.input_shapes[b])[:, oa:oa + sa]
            out[a][b] = h.reshape(B, *fn.input_shapes[a], *fn.input_shapes[b])
    return out


def full(a, B):
    return np.broadcast_to(a, (B, *a.shape[1:])) if a.shape[0] != B else a
