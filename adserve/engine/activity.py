"""Activity analysis: which values depend on the inputs being differentiated.

Only active values get tangents or cotangents; loop counters and index
arithmetic never do, so they cost nothing under differentiation.
"""

from __future__ import annotations

from .builder import PRIMS
from .ir import Eqn, Graph, Var


def graph_activity(graph: Graph, in_active) -> list:
    """Which outputs of `graph` are active, given which inputs are."""
    active = {v for v, a in zip(graph.inputs, in_active) if a}
    for e in graph.eqns:
        mask = eqn_activity(e, [isinstance(a, Var) and a in active for a in e.inputs])
        active.update(o for o, a in zip(e.outputs, mask) if a)
    return [isinstance(a, Var) and a in active for a in graph.outputs]


def eqn_activity(e: Eqn, in_active) -> list:
    p = PRIMS[e.prim]
    if p.nondiff or not any(in_active):
        return [False] * len(e.outputs)
    rule = p.extra.get("activity")
    return rule(in_active, **e.params) if rule else [True] * len(e.outputs)
