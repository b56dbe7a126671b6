"""The NumPy reference interpreter: runs a graph on a batch of points at once.

Every value carries a leading batch axis of size B (or 1 for values shared by
all points, such as literals), so `"batch": true` costs no Python loop over
points; a single point is a batch of one. Floating-point warnings are silenced:
NaN and infinity are results, not errors. Run-time errors (an index out of
range) are raised as EvaluationError naming the node.

A `deadline` (deadline.py), when given, is checked before every equation, and
handed to the structured primitives (`loop`, `cond`: `TAKES_DEADLINE`) so they
check it between iterations and pass it to their bodies. A stop raises
`Stopped`, which records on its way out which operation each graph was at.
"""

from __future__ import annotations

import numpy as np

from .builder import PRIMS
from .deadline import Stopped
from .errors import EngineError
from .ir import Graph, Lit, Var

TAKES_DEADLINE: set = set()  # primitives whose implementation takes `deadline=` (control.py adds loop and cond)


def lit_array(lit: Lit) -> np.ndarray:
    if len(lit.data) == 1:
        return np.full((1, *lit.shape), lit.data[0])
    return np.asarray(lit.data, dtype=np.float64).reshape((1, *lit.shape))


def run(graph: Graph, args, deadline=None) -> list:
    """Evaluate `graph` on batched arrays (leading axis B or 1); returns batched outputs.

    With a `deadline`, raises `Stopped` at the first equation or loop iteration it finds it stopped."""
    with np.errstate(all="ignore"):
        return run_nested(graph, [np.asarray(a, dtype=np.float64) for a in args], deadline)


def run_nested(graph: Graph, args, deadline=None, lits=None) -> list:
    """`run` for a body inside a running graph (loop, cond, while): args are float64 already, errors silenced.
    `lits`: the literal arrays of earlier runs of this graph to reuse (a loop passes one dict to every
    iteration)."""
    env = dict(zip(graph.inputs, args, strict=True))
    if lits is None:
        lits = {}  # one array per literal object in this run (read-only: implementations never write inputs)

    def read(a):
        if type(a) is Var:
            return env[a]
        arr = lits.get(id(a))
        if arr is None:
            arr = lits[id(a)] = lit_array(a)
            arr.setflags(write=False)
        return arr

    e = None
    try:
        for e in graph.eqns:
            if deadline is not None and deadline.stopped:  # one attribute read: the watchdog sets it
                raise deadline.error()
            p = PRIMS[e.prim]
            try:
                if deadline is not None and p.multiple_results and e.prim in TAKES_DEADLINE:
                    out = p.impl(*[read(a) for a in e.inputs], deadline=deadline, **e.params)
                else:
                    out = p.impl(*[read(a) for a in e.inputs], **e.params)
            except Stopped:
                raise
            except EngineError as err:
                raise err.at(e.loc)
            if p.multiple_results:
                env.update(zip(e.outputs, out))
            else:
                env[e.outputs[0]] = out
    except Stopped as err:
        done = next(i for i, x in enumerate(graph.eqns) if x is e) if e is not None else 0
        raise err.placed(e.loc if e is not None else None).inside("plan", done, len(graph.eqns)) from None
    return [env[a] if type(a) is Var else lit_array(a) for a in graph.outputs]
