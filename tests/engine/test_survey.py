"""Worked examples from Baydin, Pearlmutter, Radul and Siskind, "Automatic Differentiation
in Machine Learning: a Survey" (JMLR 2018), read off the engine's IR.

Tables 2 and 3: f(x1, x2) = ln(x1) + x1*x2 - sin(x2) at (x1, x2) = (2, 5), with the
evaluation trace
    v-1 = x1, v0 = x2, v1 = ln v-1, v2 = v-1 * v0, v3 = sin v0, v4 = v1 + v2, v5 = v4 - v3.
Primals and forward tangents are read by making the intermediate variables graph outputs;
adjoints by recording, for each equation of the trace, the cotangent the reverse sweep hands
to its VJP rule (v-bar of that equation's output) and the contributions the rule returns.

Also: the logistic map (Section 2's expression-swell example) as a loop, against the closed
form; and perturbation confusion (Siskind and Pearlmutter 2005).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine_helpers import (PRIMS, Builder, assert_close, central_fd, hvp_point, inline, jvp_graph, jvp_point,
                            make_graph, op, run_batch, run_point, scan, value_and_grad_graph, vjp_graph,
                            vjp_point)
from adserve.engine.vjp import vjp_inline

X1, X2 = 2.0, 5.0
TRACE_PRIMS = ["log", "mul", "sin", "add", "sub"]  # v1..v5


def _trace(b):
    x1, x2 = b.input(()), b.input(())
    v1 = op.log(x1)
    v2 = x1 * x2
    v3 = op.sin(x2)
    v4 = v1 + v2
    v5 = v4 - v3
    return [x1, x2, v1, v2, v3, v4, v5]


def _f_graph():
    b = Builder()
    vs = _trace(b)
    return b.build([vs[-1]])


# -- Table 2: forward primal and tangent trace ------------------------------------------------------
PRIMAL = {"v-1": 2.0, "v0": 5.0, "v1": math.log(2.0), "v2": 10.0, "v3": math.sin(5.0),
          "v4": math.log(2.0) + 10.0, "v5": math.log(2.0) + 10.0 - math.sin(5.0)}
PRIMAL_TABLE = {"v-1": 2, "v0": 5, "v1": 0.693, "v2": 10, "v3": -0.959, "v4": 10.693, "v5": 11.652}
TANGENT = {"v-1": 1.0, "v0": 0.0, "v1": 0.5, "v2": 5.0, "v3": 0.0, "v4": 5.5, "v5": 5.5}
NAMES = ["v-1", "v0", "v1", "v2", "v3", "v4", "v5"]


def test_evaluation_trace_is_the_graph():
    g = _f_graph()
    assert [e.prim for e in g.eqns] == TRACE_PRIMS, g
    assert len(g.inputs) == 2 and g.n_nodes() == 5


def test_table2_primal_trace():
    b = Builder()
    g = b.build(_trace(b))
    vals = run_point(g, [X1, X2])
    for name, v in zip(NAMES, vals):
        assert float(v) == pytest.approx(PRIMAL[name], rel=1e-15), name
        assert round(float(v), 3) == pytest.approx(PRIMAL_TABLE[name]), name  # the table's 3 decimals


def test_table2_tangent_trace():
    b = Builder()
    g = b.build(_trace(b))
    jg, mask = jvp_graph(g, [True, False])  # x1-dot = 1, x2-dot = 0 (symbolically)
    # v0 (= x2) and v3 (= sin x2) have symbolic zero tangents: no equation computes them
    assert mask == [True, False, True, True, False, True, True], mask
    res = run_point(jg, [X1, X2, 1.0])
    it = iter(res[7:])
    tangents = {n: (float(next(it)) if m else 0.0) for n, m in zip(NAMES, mask)}
    for name in NAMES:
        assert tangents[name] == pytest.approx(TANGENT[name], rel=1e-14, abs=1e-15), name
    assert [float(v) for v in res[:7]] == pytest.approx([PRIMAL[n] for n in NAMES], rel=1e-15)
    # the tangent trace adds no more than a few equations per primal one
    assert len(jg.eqns) <= 3 * 5


# -- Table 3: reverse adjoint trace -------------------------------------------------------------------
def _record_adjoints(monkeypatch):
    """Wrap the VJP rules of the trace's primitives: record the output adjoint each is given
    and the contributions it returns for its inputs."""
    seen = {}
    for name in TRACE_PRIMS:
        p = PRIMS[name]
        rule = p.vjp

        def wrapped(g, xs, ans, _rule=rule, _name=name, **params):
            cts = _rule(g, xs, ans, **params)
            assert _name not in seen, f"{_name} rule called twice"
            seen[_name] = (g, list(cts))
            return cts

        monkeypatch.setattr(p, "vjp", wrapped)
    return seen


@pytest.mark.parametrize("seed", [1.0, 2.5])
def test_table3_adjoint_trace(monkeypatch, seed):
    seen = _record_adjoints(monkeypatch)
    f = _f_graph()
    b = Builder()
    x1, x2, ybar = b.input(()), b.input(()), b.input(())
    _, (x1bar, x2bar) = vjp_inline(b, f, [x1, x2], [True, True], [ybar])
    assert set(seen) == set(TRACE_PRIMS)
    adj = {"v5": seen["sub"][0], "v4": seen["add"][0], "v3": seen["sin"][0], "v2": seen["mul"][0],
           "v1": seen["log"][0]}
    # Table 3's partial adjoints: v-1bar += v1bar/v-1, v0bar += v2bar*v-1, v-1bar += v2bar*v0, v0bar += v3bar*cos v0
    partial = {"v1->v-1": seen["log"][1][0], "v2->v-1": seen["mul"][1][0], "v2->v0": seen["mul"][1][1],
               "v3->v0": seen["sin"][1][0], "v4->v1": seen["add"][1][0], "v4->v2": seen["add"][1][1],
               "v5->v4": seen["sub"][1][0], "v5->v3": seen["sub"][1][1]}
    names = list(adj) + list(partial)
    g = b.build([x1bar, x2bar, *adj.values(), *partial.values()])
    res = dict(zip(["v-1", "v0"] + names, (float(v) for v in run_point(g, [X1, X2, seed]))))
    want = {"v5": 1.0, "v4": 1.0, "v3": -1.0, "v2": 1.0, "v1": 1.0,
            "v-1": 5.5, "v0": 2.0 - math.cos(5.0),
            "v1->v-1": 0.5, "v2->v-1": 5.0, "v2->v0": 2.0, "v3->v0": -math.cos(5.0),
            "v4->v1": 1.0, "v4->v2": 1.0, "v5->v4": 1.0, "v5->v3": -1.0}
    for name, w in want.items():
        assert res[name] == pytest.approx(seed * w, rel=1e-14), name
    assert round(res["v0"] / seed, 3) == 1.716 and res["v-1"] / seed == 5.5


def test_table3_gradient_through_the_public_graph():
    g = _f_graph()
    vg = vjp_graph(g, [True, True], [True])
    y, x1bar, x2bar = run_point(vg, [X1, X2, 1.0])
    assert float(y) == pytest.approx(PRIMAL["v5"], rel=1e-15)
    assert float(x1bar) == pytest.approx(5.5, rel=1e-15)
    assert float(x2bar) == pytest.approx(2.0 - math.cos(5.0), rel=1e-15)


# -- the logistic map l_{n+1} = 4 l_n (1 - l_n) -------------------------------------------------------
# With l_0 = sin^2(theta): l_n = sin^2(2^n theta), so
#   dl_n/dl_0 = 2^n sin(2^{n+1} theta) / sin(2 theta).
def _logistic_graph(n):
    def f(l0):
        def body(k, consts, carries, xs):
            (l,) = carries
            new = 4.0 * l * (1.0 - l)
            return [new], [new]
        (ln,), (ls,) = scan(body, [], [l0], [], n)
        return ln, ls
    return make_graph(f, [()])


def _closed_form(n, l0):
    th = math.asin(math.sqrt(l0))
    h = lambda th: 2 ** n * math.sin(2 ** (n + 1) * th) / math.sin(2 * th)  # noqa: E731
    value = math.sin(2 ** n * th) ** 2
    d1 = h(th)
    # second derivative: d/dl0 = (1 / sin 2theta) d/dtheta
    a, s = 2 ** (n + 1), math.sin(2 * th)
    dh = 2 ** n * (a * math.cos(a * th) * s - 2 * math.sin(a * th) * math.cos(2 * th)) / s ** 2
    return value, d1, dh / s


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_logistic_map_derivative_matches_closed_form(n):
    g = _logistic_graph(n)
    assert g.n_nodes() <= 6  # one loop equation and a few body equations, whatever n is
    l0 = 0.3
    value, d1, d2 = _closed_form(n, l0)
    (ln, ls), (tn, ts) = jvp_point(g, [np.array(l0)], [np.array(1.0)])
    assert float(ln) == pytest.approx(value, rel=1e-9)
    assert float(tn) == pytest.approx(d1, rel=1e-9)
    # every stacked iterate too
    for k in range(n):
        _, dk, _ = _closed_form(k + 1, l0)
        assert float(ts[k]) == pytest.approx(dk, rel=1e-9), k
    # reverse mode, seeding only the final value
    _, (gl0,) = vjp_point(g, [np.array(l0)], [np.array(1.0), np.zeros(n)])
    assert float(gl0) == pytest.approx(d1, rel=1e-9)
    # second derivative (HVP of the final value)
    gf = make_graph(lambda l0: inline(l0.b, g, [l0])[0], [()])
    _, _, (h,) = hvp_point(gf, [np.array(l0)], [np.array(1.0)])
    assert float(h) == pytest.approx(d2, rel=1e-8)
    fd = central_fd(lambda a: [run_point(g, a)[0]], [np.array(l0)], [np.array(1.0)], h=1e-7)
    assert float(fd[0]) == pytest.approx(d1, rel=1e-5)


def test_logistic_map_batched_starting_points():
    g = _logistic_graph(4)
    jg, _ = jvp_graph(g, [True])
    l0 = np.array([0.1, 0.3, 0.45, 0.8])
    res = run_batch(jg, [l0, np.ones(4)], 4)
    for j, x in enumerate(l0):
        value, d1, _ = _closed_form(4, x)
        assert res[0][j] == pytest.approx(value, rel=1e-9)
        assert res[2][j] == pytest.approx(d1, rel=1e-9)


# -- perturbation confusion ------------------------------------------------------------------------------
# d/dx [ x * (d/dy (x + y))|_{y=1} ] = d/dx [x * 1] = 1 (a confused implementation says 2),
# d/dx [ x * (d/dy (x * y)) ] = d/dx [x * x] = 2x.
def _inner_derivative_fwd(h):
    """A graph (x, y) -> dh/dy built with jvp_graph."""
    jg, mask = jvp_graph(h, [False, True])
    assert mask == [True]
    b = Builder()
    x, y = b.input(()), b.input(())
    return b.build([inline(b, jg, [x, y, 1.0])[1]])


def _inner_derivative_rev(h):
    """The same with vjp_graph."""
    vg = vjp_graph(h, [False, True], [True])
    b = Builder()
    x, y = b.input(()), b.input(())
    return b.build([inline(b, vg, [x, y, 1.0])[1]])


def _outer(dh):
    b = Builder()
    x = b.input(())
    (d,) = inline(b, dh, [x, 1.0])  # y = 1
    return b.build([x * d])


INNER = {"fwd": _inner_derivative_fwd, "rev": _inner_derivative_rev}


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("outer", ["fwd", "rev"])
def test_perturbation_confusion(inner, outer):
    cases = [(lambda x, y: x + y, lambda x: 1.0), (lambda x, y: x * y, lambda x: 2.0 * x)]
    for h_fn, want in cases:
        g = _outer(INNER[inner](make_graph(h_fn, [(), ()])))
        for x in (1.0, -0.5, 3.0):
            if outer == "fwd":
                _, (d,) = jvp_point(g, [np.array(x)], [np.array(1.0)])
            else:
                _, (d,) = vjp_point(g, [np.array(x)], [np.array(1.0)])
            assert float(d) == pytest.approx(want(x), rel=1e-15), (inner, outer, x)


def test_perturbation_confusion_nested_inside_one_builder():
    # the inner derivative is taken of a function that closes over the outer x, all in one
    # outer graph: D_x [ x * D_y (x * y + y * y)|_{y=x} ] = D_x [x * (x + 2x)] = 6x
    h = make_graph(lambda x, y: x * y + y * y, [(), ()])
    jg, _ = jvp_graph(h, [False, True])
    b = Builder()
    x = b.input(())
    (d,) = inline(b, jg, [x, x, 1.0])[1:]
    g = b.build([x * d])
    for xv in (1.0, 2.0):
        _, (t,) = jvp_point(g, [np.array(xv)], [np.array(1.0)])
        assert float(t) == pytest.approx(6.0 * xv, rel=1e-15)
        _, _, (hh,) = hvp_point(g, [np.array(xv)], [np.array(1.0)])
        assert float(hh) == pytest.approx(6.0, rel=1e-15)
    vg = value_and_grad_graph(g)
    assert float(run_point(vg, [np.array(2.0)])[1]) == pytest.approx(12.0)


# -- the engine's own trace (trace.py) and the transforms' `record` hook reproduce Tables 2 and 3 ----
def test_vjp_record_hook_gives_table3_adjoints(monkeypatch):
    """The `record` hook of vjp_inline and the cotangents handed to each VJP rule agree."""
    seen = _record_adjoints(monkeypatch)
    f = _f_graph()
    b = Builder()
    x1, x2, ybar = b.input(()), b.input(()), b.input(())
    rec = {}
    vjp_inline(b, f, [x1, x2], [True, True], [ybar], record=rec)
    by_prim = {e.prim: e.out for e in f.eqns}
    for prim, (g, _) in seen.items():
        assert rec[by_prim[prim]].atom is g.atom, prim
    vals = run_point(b.build([rec[v] for v in (*f.inputs, *[e.out for e in f.eqns])]), [X1, X2, 1.0])
    want = [5.5, 2.0 - math.cos(5.0), 1.0, 1.0, -1.0, 1.0, 1.0]  # v-1, v0, v1..v5
    assert [float(v) for v in vals] == pytest.approx(want, rel=1e-14)


def test_engine_trace_reproduces_tables_2_and_3():
    from adserve.engine import Function
    from adserve.engine.trace import trace_graph

    fn = Function(_f_graph(), [("x1", ()), ("x2", ())])
    tg, rows = trace_graph(fn, with_tangent=True, with_adjoint=True)
    assert [r["name"] for r in rows] == ["x1", "x2", "v1", "v2", "v3", "v4", "v5"]
    assert [r["output"] for r in rows] == [False] * 6 + [True]
    res = [float(v) for v in run_point(tg, [X1, X2, 1.0, 0.0, 1.0])]
    values, tangents, adjoints = res[0::3], res[1::3], res[2::3]
    assert values == pytest.approx([PRIMAL[n] for n in NAMES], rel=1e-15)
    assert tangents == pytest.approx([TANGENT[n] for n in NAMES], rel=1e-14, abs=1e-15)
    assert adjoints == pytest.approx([5.5, 2.0 - math.cos(5.0), 1.0, 1.0, -1.0, 1.0, 1.0], rel=1e-14)
