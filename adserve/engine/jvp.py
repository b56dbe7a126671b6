"""Forward mode as a graph transform: `jvp_graph(f)` computes f and its tangent.

Tangents are symbolic zeros (None) until an active input reaches them, so only
the part of the graph that depends on differentiated inputs is duplicated.
Each transform makes fresh variables, so nested derivatives cannot confuse
perturbations (Siskind and Pearlmutter's concern): there are no tags to mix up.
"""

from __future__ import annotations

from .builder import PRIMS, Builder, V, op
from .errors import DefinitionError
from .ir import Graph, Var


def jvp_inline(b: Builder, graph: Graph, primals, tangents, record=None):
    """Emit f and its JVP into `b`. Returns (outputs, output tangents or None).

    `record`, if given, receives {var: (primal, tangent)} for every variable of `graph`."""
    env = dict(zip(graph.inputs, primals, strict=True))
    tenv = {v: t for v, t in zip(graph.inputs, tangents) if t is not None}

    def read(a):
        return env[a] if isinstance(a, Var) else V(b, a)

    for e in graph.eqns:
        p = PRIMS[e.prim]
        ins = [read(a) for a in e.inputs]
        tins = [tenv.get(a) if isinstance(a, Var) else None for a in e.inputs]
        with b.at(e.loc):
            differentiate = not p.nondiff and any(t is not None for t in tins)
            if differentiate and p.jvp is None:
                raise DefinitionError(f"'{e.prim}' has no derivative rule", e.loc, code="not_differentiable")
            if differentiate and p.multiple_results:
                # control flow re-emits the primal alongside its tangents: one loop, not two
                outs, touts = p.jvp(tins, ins, None, **e.params)
            else:
                ans = b.replay(e, ins)
                outs = ans if p.multiple_results else (ans,)
                touts = ((p.jvp(tins, ins, ans, **e.params),) if differentiate else ())
            env.update(zip(e.outputs, outs))
            for o, t in zip(e.outputs, touts):
                if t is not None:
                    tenv[o] = fit_shape(t, o.shape)
    if record is not None:
        record.update({v: (val, tenv.get(v)) for v, val in env.items()})
    return [read(a) for a in graph.outputs], [tenv.get(a) if isinstance(a, Var) else None for a in graph.outputs]


def fit_shape(t: V, shape) -> V:
    """Broadcast a tangent (or sum a cotangent) to the shape of its primal."""
    shape = tuple(shape)
    if t.shape == shape:
        return t
    if len(t.shape) <= len(shape):
        try:
            return op.broadcast_to(t, shape=shape)
        except DefinitionError:
            pass
    return op.sum_to(t, shape=shape)


def jvp_graph(graph: Graph, nonzero) -> tuple:
    """Graph with inputs (primals, tangents for `nonzero` inputs) and outputs
    (primal outputs, tangents of the outputs that are not zero). Returns (graph, output mask)."""
    b = Builder()
    primals = [b.input(v.shape) for v in graph.inputs]
    tangents = [b.input(v.shape) if nz else None for v, nz in zip(graph.inputs, nonzero)]
    outs, touts = jvp_inline(b, graph, primals, tangents)
    mask = [t is not None for t in touts]
    return b.build(outs + [t for t in touts if t is not None]), mask
