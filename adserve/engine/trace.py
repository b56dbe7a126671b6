"""Evaluation traces, as in Tables 2 and 3 of Baydin et al. (2018).

One row per variable of the function's top-level graph (inputs first, then
each equation in order): its formula, primal value, tangent (forward mode,
given a tangent direction) and adjoint (reverse mode, seeded with the output
cotangent, 1 for a scalar output). A loop or branch is one row: its body is
one step of the trace, like a call.
"""

from __future__ import annotations

from .builder import Builder
from .errors import LimitError
from .ir import Lit, Var
from .jvp import jvp_inline
from .vjp import vjp_inline

MAX_TRACE_ROWS = 500
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


def _names(fn):
    names = {v: n for v, n in zip(fn.graph.inputs, fn.input_names)}
    for i, e in enumerate(fn.graph.eqns):
        for j, o in enumerate(e.outputs):
            names[o] = f"v{i + 1}" if len(e.outputs) == 1 else f"v{i + 1}.{j}"
    return names


def _formula(e, names):
    def ref(a):
        if isinstance(a, Var):
            return names[a]
        return repr(a) if isinstance(a, Lit) else str(a)
    args = [ref(a) for a in e.inputs]
    if e.prim in _INFIX and len(args) == 2:
        return f"{args[0]} {_INFIX[e.prim]} {args[1]}"
    if e.prim == "neg":
        return f"-{args[0]}"
    params = [f"{k}={v}" for k, v in sorted(e.params.items()) if not hasattr(v, "eqns")]
    return f"{e.prim}({', '.join(args + params)})"


def trace_graph(fn, with_tangent: bool, with_adjoint: bool):
    """Graph (x, [t], [ct]) -> per row: value, [tangent], [adjoint]; and the row descriptions."""
    g = fn.graph
    if len(g.eqns) + len(g.inputs) > MAX_TRACE_ROWS:
        raise LimitError(f"a trace shows at most {MAX_TRACE_ROWS} rows; this function has "
                         f"{len(g.eqns) + len(g.inputs)}", code="trace_too_long")
    b = Builder()
    xs = [b.input(v.shape) for v in g.inputs]
    ts = [b.input(v.shape) for v in g.inputs] if with_tangent else [None] * len(xs)
    ct = [b.input(fn.output_shape)] if with_adjoint else [None]
    fwd, rev = {}, {}
    jvp_inline(b, g, xs, ts, record=fwd)
    if with_adjoint:
        vjp_inline(b, g, xs, [True] * len(xs), ct, record=rev)
    names = _names(fn)
    rows, outs = [], []
    variables = list(g.inputs) + [o for e in g.eqns for o in e.outputs]
    formulas = {v: n for v, n in zip(g.inputs, fn.input_names)}
    formulas.update({o: _formula(e, names) for e in g.eqns for o in e.outputs})
    for v in variables:
        value, tangent = fwd[v]
        rows.append({"name": names[v], "expr": formulas[v], "shape": list(v.shape),
                     "output": any(v is o for o in g.outputs)})
        outs.append(value)
        if with_tangent:
            outs.append(tangent if tangent is not None else b.lit(0.0, v.shape))
        if with_adjoint:
            adj = rev.get(v)
            outs.append(adj if adj is not None else b.lit(0.0, v.shape))
    return b.build(outs), rows
