"""Reverse mode as a graph transform: `vjp_graph(f)` computes f and a vector-Jacobian product.

A forward sweep re-emits f (primitives with a `vjp_fwd` hook, such as loops,
emit a version that also saves what the reverse sweep needs); the reverse sweep
is one loop over the equations backwards with a cotangent accumulator, calling
each primitive's VJP rule. Rules are IR ops, so the result can be differentiated
again: HVP = jvp of vjp.
"""

from __future__ import annotations

from .activity import eqn_activity
from .builder import PRIMS, Builder, V, zeros
from .errors import DefinitionError
from .ir import Graph, Var
from .jvp import fit_shape


def vjp_inline(b: Builder, graph: Graph, primals, wrt, out_cts, record=None):
    """Emit f and the cotangents of its inputs into `b`.

    `wrt`: which inputs to differentiate; `out_cts`: a cotangent per output (None = zero).
    Returns (outputs, input cotangents (None where zero or not in `wrt`)).
    `record`, if given, receives {var: complete cotangent} for every variable reached.
    """
    env = dict(zip(graph.inputs, primals, strict=True))
    active = {v for v, w in zip(graph.inputs, wrt) if w}

    def read(a):
        return env[a] if isinstance(a, Var) else V(b, a)

    # written for speed (a new function's first gradient builds this plan): no per-equation closures
    tape = []
    outer = b.loc
    for e in graph.eqns:
        p = PRIMS[e.prim]
        ins = [env[a] if type(a) is Var else V(b, a) for a in e.inputs]
        in_active = [type(a) is Var and a in active for a in e.inputs]
        b.loc = e.loc
        try:
            fwd = p.extra.get("vjp_fwd") if True in in_active else None
            if fwd:
                ans, residuals = fwd(ins, **e.params)
            else:
                ans, residuals = b.replay(e, ins), None
        finally:
            b.loc = outer
        outs = e.outputs
        if len(outs) == 1 and not p.multiple_results:
            env[outs[0]] = ans
        else:
            env.update(zip(outs, ans if p.multiple_results else (ans,)))
        if True not in in_active:  # nothing active in, nothing active out (eqn_activity)
            continue
        out_active = eqn_activity(e, in_active)
        if True in out_active:
            active.update(o for o, a in zip(outs, out_active) if a)
            tape.append((e, ins, ans, in_active, residuals))

    cts = {}

    def accumulate(var, ct):
        if ct is None or not isinstance(var, Var) or var not in active:
            return
        ct = fit_shape(ct, var.shape)
        cts[var] = cts[var] + ct if var in cts else ct

    for a, ct in zip(graph.outputs, out_cts):
        accumulate(a, ct)
    for e, ins, ans, in_active, residuals in reversed(tape):
        p = PRIMS[e.prim]
        gs = [cts.pop(o, None) for o in e.outputs]
        if record is not None:
            record.update((o, g) for o, g in zip(e.outputs, gs) if g is not None)
        if gs.count(None) == len(gs):
            continue
        if p.vjp is None:
            raise DefinitionError(f"'{e.prim}' has no derivative rule", e.loc, code="not_differentiable")
        b.loc = e.loc
        try:
            if p.multiple_results:
                in_cts = p.vjp(gs, ins, ans, active=in_active, residuals=residuals, **e.params)
            else:
                in_cts = p.vjp(gs[0], ins, ans, **e.params)
            for a, ct, act in zip(e.inputs, in_cts, in_active):
                if act:
                    accumulate(a, ct)
        finally:
            b.loc = outer
    if record is not None:
        record.update((v, cts[v]) for v in graph.inputs if v in cts)
    return [read(a) for a in graph.outputs], [cts.get(v) if w else None for v, w in zip(graph.inputs, wrt)]


def vjp_graph(graph: Graph, wrt, ct_nonzero) -> Graph:
    """Graph with inputs (primals, cotangents of the outputs in `ct_nonzero`) and outputs
    (primal outputs, cotangents of the inputs in `wrt`, zeros materialised)."""
    b = Builder()
    primals = [b.input(v.shape) for v in graph.inputs]
    cts = [b.input(a.shape) if nz else None for a, nz in zip(graph.outputs, ct_nonzero)]
    outs, grads = vjp_inline(b, graph, primals, wrt, cts)
    grads = [zeros(v.shape) if g is None else g for v, g, w in zip(graph.inputs, grads, wrt) if w]
    return b.build(outs + grads)
