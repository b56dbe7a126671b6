"""The NumPy reference interpreter: runs a graph on a batch of points at once.

Every value carries a leading batch axis of size B (or 1 for values shared by
all points, such as literals), so `"batch": true` costs no Python loop over
points; a single point is a batch of one. Floating-point warnings are silenced:
NaN and infinity are results, not errors. Run-time errors (an index out of
range) are raised as EvaluationError naming the node.

A graph runs from its `Program` (made once per graph, kept while the graph
lives): its equations as a list of steps over numbered slots, each with its
implementation looked up and its small literals made, so a loop or branch body
run hundreds of thousands of times pays for neither again. Steps are fitted when
made (RANK_FITTED): a literal beside a value of higher rank in an element-wise op
is reshaped once, so the op skips its rank check; a slice keeps its index as
`operator.itemgetter`. A program run often becomes straight-line Python
(straight.py), the same answers and errors without the walk's dispatch.

A `deadline` (deadline.py), when given, is checked before every equation, and
handed to the structured primitives (`loop`, `cond`: `TAKES_DEADLINE`) so they
check it between iterations and pass it to their bodies. A stop raises
`Stopped`, which records on its way out which operation each graph was at.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from . import straight
from .builder import PRIMS
from .deadline import Stopped
from .errors import EngineError
from .ir import Graph, Lit, Var

TAKES_DEADLINE: set = set()  # primitives whose implementation takes `deadline=` (control.py adds loop and cond)
KEPT_LITERAL_ELEMENTS = 1024  # literals up to this size are made once per graph; larger ones once per run
# steps fitted when a Program is made: element-wise ones of two arguments to their ranks, slices to their index
RANK_FITTED = True  # (off: every step calls its primitive's implementation with its parameters; for tests)


def lit_array(lit: Lit) -> np.ndarray:
    if len(lit.data) == 1:
        return np.full((1, *lit.shape), lit.data[0])
    return np.asarray(lit.data, dtype=np.float64).reshape((1, *lit.shape))


def _frozen(arr):
    arr.setflags(write=False)  # shared by every step that reads it (implementations never write inputs)
    return arr


class Program:
    """A graph ready to run: values live in numbered slots (inputs first); `init` holds the small literals'
    arrays in theirs (made once: one per literal object, so 0.0 and -0.0 stay apart), `per_run` the larger
    literals' slots to fill at each run; `steps` are (implementation, input slots, output slots, params,
    whether it takes the deadline, equation)."""

    __slots__ = ("n_in", "in_slots", "init", "per_run", "steps", "outputs", "runs", "fast", "__weakref__")

    def __init__(self, graph: Graph):
        slots, init, per_run = {}, [], []

        def slot(a, rank=None):
            key = a if type(a) is Var else (id(a), rank)
            if key not in slots:
                slots[key] = len(init)
                if type(a) is Var:
                    init.append(None)
                elif math.prod(a.shape) <= KEPT_LITERAL_ELEMENTS:
                    arr = lit_array(a)
                    if rank is not None:  # as `primitives.align` would reshape it, once
                        arr = arr.reshape(arr.shape[:1] + (1,) * (rank + 1 - arr.ndim) + arr.shape[1:])
                    init.append(_frozen(arr))
                else:
                    init.append(None)
                    per_run.append((slots[key], a))
            return slots[key]

        def aligned(e, p):
            """Input slots, and whether the op can skip its rank check. In an op that aligns ranks (an element-wise
            one of two arguments), a small literal beside a value of higher rank gets a slot of its own, reshaped
            to that rank, so no run reshapes it; then, or when the ranks agree anyway, the step calls the op's
            `same_rank` implementation (every value's rank is its per-point shape's plus the batch axis)."""
            a, b = e.inputs if len(e.inputs) == 2 and p.extra.get("aligns") and RANK_FITTED else (None, None)
            if a is None:
                return tuple(slot(x) for x in e.inputs), False
            if len(a.shape) == len(b.shape):
                return (slot(a), slot(b)), True
            low, rank = (a, len(b.shape)) if len(a.shape) < len(b.shape) else (b, len(a.shape))
            if type(low) is not Lit or math.prod(low.shape) > KEPT_LITERAL_ELEMENTS:
                return (slot(a), slot(b)), False
            return tuple(slot(x, rank if x is low else None) for x in e.inputs), True

        in_slots = [slot(v) for v in graph.inputs]
        self.n_in = len(graph.inputs)
        # inputs fill the first slots, unless an input is listed twice (then the last argument given wins)
        self.in_slots = None if in_slots == list(range(self.n_in)) else in_slots
        steps = []
        for e in graph.eqns:
            p = PRIMS[e.prim]
            ins, same_rank = aligned(e, p)
            impl, params = p.extra["same_rank"] if same_rank else p.impl, e.params
            if RANK_FITTED and "bind" in p.extra:  # an implementation made for these parameters (a slice's index)
                impl, params = p.extra["bind"](**params), {}
            outs = tuple(slot(v) for v in e.outputs)
            deadline = p.multiple_results and e.prim in TAKES_DEADLINE
            steps.append((impl, ins, outs if p.multiple_results else outs[0], params, deadline, e))
        self.steps = steps
        self.outputs = [(slots[a], None) if type(a) is Var else (None, a) for a in graph.outputs]
        self.init, self.per_run = init, per_run
        # per variant (index: run without a deadline, + 2 for a condition's booleans): runs so far (of the first
        # two), and straight.compiled's code (None: not yet made; False: none)
        self.runs, self.fast = [0, 0], [None, None, None, None]


_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def program(graph: Graph) -> Program:
    prog = _PROGRAMS.get(graph)
    if prog is None:
        prog = _PROGRAMS[graph] = Program(graph)
    return prog


def run(graph: Graph, args, deadline=None) -> list:
    """Evaluate `graph` on batched arrays (leading axis B or 1); returns batched outputs.

    With a `deadline`, raises `Stopped` at the first equation or loop iteration it finds it stopped."""
    with np.errstate(all="ignore"):
        return run_nested(graph, [np.asarray(a, dtype=np.float64) for a in args], deadline)


def run_nested(graph: Graph, args, deadline=None) -> list:
    """`run` for a body inside a running graph (loop, cond, while): args are float64 already, errors silenced."""
    return run_program(program(graph), args, deadline)


def run_program(prog: Program, args, deadline=None) -> list:
    """`run_nested` of the graph `prog` was made from (a loop looks its body's program up once). A program run
    often runs as the straight-line code straight.py writes for it (the same answers and errors)."""
    plain = deadline is None
    fast = prog.fast[plain]
    if fast:
        return fast(args, deadline)
    if fast is None and straight.COMPILE_AFTER is not None:
        prog.runs[plain] += 1
        if prog.runs[plain] >= straight.COMPILE_AFTER:
            prog.fast[plain] = straight.compiled(prog, not plain) or False
    if len(args) != prog.n_in:
        raise ValueError(f"a graph of {prog.n_in} inputs given {len(args)} arguments")
    vals = prog.init.copy()
    if prog.in_slots is None:
        vals[:prog.n_in] = args
    else:
        for s, a in zip(prog.in_slots, args):
            vals[s] = a
    for s, lit in prog.per_run:
        vals[s] = _frozen(lit_array(lit))
    i = 0
    try:
        for i, (impl, ins, outs, params, takes_deadline, e) in enumerate(prog.steps):
            if deadline is not None and deadline.stopped:  # one attribute read: the watchdog sets it
                raise deadline.error()
            try:
                if takes_deadline and deadline is not None:
                    out = impl(*[vals[j] for j in ins], deadline=deadline, **params)
                elif len(ins) == 2:
                    out = impl(vals[ins[0]], vals[ins[1]], **params)
                elif len(ins) == 1:
                    out = impl(vals[ins[0]], **params)
                else:
                    out = impl(*[vals[j] for j in ins], **params)
            except Stopped:
                raise
            except EngineError as err:
                raise err.at(e.loc)
            if type(outs) is int:
                vals[outs] = out
            else:
                for s, v in zip(outs, out):
                    vals[s] = v
    except Stopped as err:
        e = prog.steps[i][5] if prog.steps else None
        raise err.placed(e.loc if e is not None else None).inside("plan", i, len(prog.steps)) from None
    return [vals[s] if lit is None else lit_array(lit) for s, lit in prog.outputs]
