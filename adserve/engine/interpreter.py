"""The NumPy reference interpreter: runs a graph on a batch of points at once.

Every value carries a leading batch axis of size B (or 1 for values shared by
all points, such as literals), so `"batch": true` costs no Python loop over
points; a single point is a batch of one. Floating-point warnings are silenced:
NaN and infinity are results, not errors. Run-time errors (an index out of
range) are raised as EvaluationError naming the node.
"""

from __future__ import annotations

import numpy as np

from .builder import PRIMS
from .errors import EngineError
from .ir import Graph, Lit, Var


def lit_array(lit: Lit) -> np.ndarray:
    if len(lit.data) == 1:
        return np.full((1, *lit.shape), lit.data[0])
    return np.asarray(lit.data, dtype=np.float64).reshape((1, *lit.shape))


def run(graph: Graph, args) -> list:
    """Evaluate `graph` on batched arrays (leading axis B or 1); returns batched outputs."""
    with np.errstate(all="ignore"):
        return _run(graph, [np.asarray(a, dtype=np.float64) for a in args])


def _run(graph: Graph, args) -> list:
    env = dict(zip(graph.inputs, args, strict=True))
    lits = {}  # one array per literal object in this run (read-only: implementations never write inputs)

    def read(a):
        if type(a) is Var:
            return env[a]
        arr = lits.get(id(a))
        if arr is None:
            arr = lits[id(a)] = lit_array(a)
            arr.setflags(write=False)
        return arr

    for e in graph.eqns:
        p = PRIMS[e.prim]
        try:
            out = p.impl(*[read(a) for a in e.inputs], **e.params)
        except EngineError as err:
            raise err.at(e.loc)
        if p.multiple_results:
            env.update(zip(e.outputs, out))
        else:
            env[e.outputs[0]] = out
    return [env[a] if type(a) is Var else lit_array(a) for a in graph.outputs]
