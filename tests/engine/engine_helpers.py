"""Shared helpers for the engine's builder/IR-level correctness tests.

Everything here drives the engine through its public pieces only: `Builder`,
`op`, `inline`, the interpreter (`run`, with a leading batch axis) and the two
graph transforms (`jvp_graph`, `vjp_graph`). JAX (float64) is the reference.
"""

from __future__ import annotations

import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402,F401

import adserve.engine  # noqa: E402,F401  (fills the primitive table)
from adserve.engine.builder import PRIMS, Builder, V, inline, op  # noqa: E402,F401
from adserve.engine.interpreter import run  # noqa: E402
from adserve.engine.ir import Graph, Lit, Var, sub_graphs  # noqa: E402,F401
from adserve.engine.jvp import jvp_graph  # noqa: E402
from adserve.engine.vjp import vjp_graph  # noqa: E402

# compiled test kernels are kept per machine, so reruns skip numba's compile; ADSERVE_TEST_CACHE moves them
# (an empty directory gives a cold run, as on a new machine)
TEST_CACHE = os.environ.get("ADSERVE_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache")


def no_stop():
    """A stop array whose flag is never set: what a generated kernel takes after B when nothing stops it."""
    from adserve.engine.deadline import FLAG_SLOTS
    return np.zeros(FLAG_SLOTS, np.int64)

# tolerances -------------------------------------------------------------------
VAL = dict(rtol=1e-10, atol=1e-12)  # engine value vs NumPy/JAX
DER = dict(rtol=1e-8, atol=1e-10)  # engine derivative vs JAX
FD = dict(rtol=1e-5, atol=1e-6)  # engine derivative vs central finite differences
FD_STEP = 1e-5


def as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


# building ---------------------------------------------------------------------
def make_graph(fn, shapes) -> Graph:
    """A graph with inputs of `shapes` whose outputs are `fn(*inputs)` (one value or a tuple)."""
    b = Builder()
    xs = [b.input(s) for s in shapes]
    return b.build(as_list(fn(*xs)))


def _shape(v):
    return tuple(v.shape) if isinstance(v, V) else ()


def scan(body_fn, consts, init, xs, length, reverse=False):
    """Emit the engine's `loop` primitive (lax.scan-like). `body_fn(k, consts, carries, x_slices)
    -> (new_carries, ys)` works on V values of a fresh body builder. Returns (final carries,
    stacked ys) as lists."""
    nb = Builder()
    k = nb.input(())
    c = [nb.input(_shape(v)) for v in consts]
    car = [nb.input(_shape(v)) for v in init]
    x = [nb.input(_shape(v)[1:]) for v in xs]
    new, ys = body_fn(k, c, car, x)
    body = nb.build([*new, *ys])
    res = op.loop(*consts, *init, *xs, body=body, length=length, n_consts=len(consts),
                  n_carry=len(init), reverse=reverse)
    res = list(res)
    return res[:len(init)], res[len(init):]


def cond(pred, operands, true_fn, false_fn):
    """Emit a cond; the branch functions take and return lists of V values."""
    bodies = []
    for fn in (true_fn, false_fn):
        nb = Builder()
        ins = [nb.input(_shape(v)) for v in operands]
        bodies.append(nb.build(as_list(fn(*ins))))
    return list(op.cond(pred, *operands, true_body=bodies[0], false_body=bodies[1]))


# walking the IR ---------------------------------------------------------------
def all_graphs(graph: Graph):
    """`graph` and every loop/branch body inside it, recursively."""
    yield graph
    for e in graph.eqns:
        for g in sub_graphs(e):
            yield from all_graphs(g)


def prims_used(graph: Graph) -> set:
    return {e.prim for g in all_graphs(graph) for e in g.eqns}


def count_eqns(graph: Graph, prim=None) -> int:
    return sum(1 for g in all_graphs(graph) for e in g.eqns if prim is None or e.prim == prim)


def dead_eqns(graph: Graph) -> list:
    """Equations (in any body too) none of whose outputs is read later or returned."""
    dead = []
    for g in all_graphs(graph):
        used = {a for a in g.outputs if isinstance(a, Var)}
        for e in g.eqns:
            used.update(a for a in e.inputs if isinstance(a, Var))
        dead += [e for e in g.eqns if not any(o in used for o in e.outputs)]
    return dead


# evaluation -------------------------------------------------------------------
def run_point(graph: Graph, args) -> list:
    """Evaluate at one point: add and strip the batch axis."""
    outs = run(graph, [np.asarray(a, dtype=np.float64)[None] for a in args])
    for o, a in zip(outs, graph.outputs):
        assert o.shape[0] == 1 and o.shape[1:] == tuple(a.shape), (o.shape, a.shape)
    return [np.asarray(o[0]) for o in outs]


def run_batch(graph: Graph, batched_args, B) -> list:
    """Evaluate on B points (each arg has a leading axis of B or 1); outputs broadcast to B."""
    outs = run(graph, [np.asarray(a, dtype=np.float64) for a in batched_args])
    res = []
    for o, a in zip(outs, graph.outputs):
        assert o.shape[0] in (1, B) and o.shape[1:] == tuple(a.shape), (o.shape, a.shape)
        res.append(np.broadcast_to(o, (B, *a.shape)))
    return res


def jvp_point(graph: Graph, xs, ts, mask=None):
    """(outputs, output tangents) at one point; tangents of inputs outside `mask` are zero."""
    mask = [True] * len(xs) if mask is None else list(mask)
    jg, omask = jvp_graph(graph, mask)
    res = run_point(jg, [*xs, *[t for t, m in zip(ts, mask) if m]])
    n = len(graph.outputs)
    it = iter(res[n:])
    touts = [next(it) if m else np.zeros(a.shape) for m, a in zip(omask, graph.outputs)]
    return res[:n], touts


def vjp_point(graph: Graph, xs, cts, wrt=None):
    """(outputs, input cotangents) at one point; zeros for inputs outside `wrt`."""
    wrt = [True] * len(xs) if wrt is None else list(wrt)
    vg = vjp_graph(graph, wrt, [True] * len(graph.outputs))
    res = run_point(vg, [*xs, *cts])
    n = len(graph.outputs)
    it = iter(res[n:])
    return res[:n], [next(it) if w else np.zeros(v.shape) for w, v in zip(wrt, graph.inputs)]


def value_and_grad_graph(graph: Graph, wrt=None) -> Graph:
    """Graph (inputs of `graph`) -> (value, gradients for `wrt`), for a scalar-output graph,
    built as the brief says: inline the VJP with cotangent 1.0."""
    assert len(graph.outputs) == 1 and tuple(graph.outputs[0].shape) == ()
    n = len(graph.inputs)
    wrt = [True] * n if wrt is None else list(wrt)
    b = Builder()
    xs = [b.input(v.shape) for v in graph.inputs]
    outs = inline(b, vjp_graph(graph, wrt, [True]), [*xs, 1.0])
    return b.build(outs)


def hvp_graph(graph: Graph, wrt=None):
    """(graph, out mask): inputs (xs..., tangents for wrt), outputs (value, grads..., tangents)."""
    n = len(graph.inputs)
    wrt = [True] * n if wrt is None else list(wrt)
    return jvp_graph(value_and_grad_graph(graph, wrt), wrt)


def hvp_point(graph: Graph, xs, ts, wrt=None):
    """(value, gradient list, Hessian-vector product list) for the inputs in `wrt`."""
    n = len(graph.inputs)
    wrt = [True] * n if wrt is None else list(wrt)
    hg, omask = hvp_graph(graph, wrt)
    res = run_point(hg, [*xs, *[t for t, w in zip(ts, wrt) if w]])
    ng = sum(wrt)
    value, grads = res[0], res[1:1 + ng]
    it = iter(res[1 + ng:])
    tans = [next(it) if m else None for m in omask]
    hv = [np.zeros(g.shape) if t is None else t for g, t in zip(grads, tans[1:])]
    return value, grads, hv


def central_fd(f, xs, ts, h=FD_STEP):
    """Directional derivative of f (list of arrays -> list of arrays) by central differences."""
    plus = f([x + h * t for x, t in zip(xs, ts)])
    minus = f([x - h * t for x, t in zip(xs, ts)])
    return [(p - m) / (2 * h) for p, m in zip(plus, minus)]


def vdot(xs, ys) -> float:
    return float(sum(np.sum(np.asarray(x) * np.asarray(y)) for x, y in zip(xs, ys)))


def assert_close(actual, expected, what="", **tol):
    tol = tol or DER
    actual, expected = as_list(actual), as_list(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} results vs {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
        assert a.shape == e.shape, f"{what}[{i}]: shape {a.shape} vs {e.shape}"
        np.testing.assert_allclose(a, e, err_msg=f"{what}[{i}]", equal_nan=True, **tol)


# JAX reference ----------------------------------------------------------------
# Each reference computation is jitted as a whole: one XLA compile per call instead of
# one per eager operation, which is what dominates the suite's run time otherwise.
def _tuple_fn(jf):
    return lambda *a: tuple(as_list(jf(*a)))


def _np(tree):
    return [np.asarray(x) for x in tree]


def jax_value(jf, xs):
    return _np(jax.jit(_tuple_fn(jf))(*[jnp.asarray(x) for x in xs]))


def jax_jvp(jf, xs, ts):
    f = _tuple_fn(jf)
    out, tout = jax.jit(lambda xs, ts: jax.jvp(f, xs, ts))(tuple(jnp.asarray(x) for x in xs),
                                                           tuple(jnp.asarray(t) for t in ts))
    return _np(out), _np(tout)


def jax_vjp(jf, xs, cts):
    f = _tuple_fn(jf)

    def both(xs, cts):
        out, pull = jax.vjp(f, *xs)
        return out, pull(cts)

    out, grads = jax.jit(both)(tuple(jnp.asarray(x) for x in xs), tuple(jnp.asarray(c) for c in cts))
    return _np(out), _np(grads)


def jax_hvp(js, xs, ts, wrt=None):
    """(gradient, Hessian-vector product) of the scalar function js for the inputs in `wrt`."""
    n = len(xs)
    wrt = [True] * n if wrt is None else list(wrt)
    idx = [i for i in range(n) if wrt[i]]
    rest = tuple(jnp.asarray(xs[i]) for i in range(n) if not wrt[i])

    def call(active, rest):
        a, r = iter(active), iter(rest)
        return js(*[next(a) if wrt[i] else next(r) for i in range(n)])

    def hvp(active, tangents, rest):
        return jax.jvp(lambda act: jax.grad(call)(act, rest), (active,), (tangents,))

    g, hv = jax.jit(hvp)(tuple(jnp.asarray(xs[i]) for i in idx), tuple(jnp.asarray(ts[i]) for i in idx), rest)
    return _np(g), _np(hv)


def jax_reference(jf):
    """One jitted JAX function giving everything the primitive checks compare against:
    ref(xs, ts, cts, ws) -> (outputs, jvp tangents, vjp cotangents, grad of sum_j <f_j, w_j>, its HVP along ts).
    Compiled once per input shape, however many checks use it."""
    f = _tuple_fn(jf)

    def ref(xs, ts, cts, ws):
        out, tout = jax.jvp(f, xs, ts)
        _, pull = jax.vjp(f, *xs)

        def s(xs):
            return sum(jnp.sum(o * w) for o, w in zip(f(*xs), ws))

        g, hv = jax.jvp(jax.grad(s), (xs,), (ts,))
        return out, tout, pull(cts), g, hv

    jitted = jax.jit(ref)

    def call(xs, ts, cts, ws):
        res = jitted(*[tuple(jnp.asarray(a) for a in group) for group in (xs, ts, cts, ws)])
        return [_np(r) for r in res]

    return call


def identical(got, want, what):
    """Bit for bit: the same floats, NaN in the same places and zeros of the same sign (a NaN's sign and payload
    are nobody's answer)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    num = ~np.isnan(want)
    assert np.array_equal(got, want, equal_nan=True) and np.array_equal(np.signbit(got[num]), np.signbit(want[num])), \
        f"{what}: {got[got != want][:4]} vs {want[got != want][:4]}"
