"""A request's peak memory, estimated from its plans before any of them runs (`ADSERVE_MAX_REQUEST_BYTES`).

The model is the NumPy interpreter's, the tier every plan's first run takes and the one that holds the most:
it keeps every value of a plan until the plan ends, each with a leading axis of the rows it runs (the batch
size, or the batch times the basis of a Jacobian or Hessian sweep) or of 1 (a value computed only from
literals and inputs shared by every row). So a plan's peak is the sum of its values, the literals it
materialises, and the largest temporary of one operation on the way (TEMP_FACTOR times its largest operand or
result). Structured operations hold more: a `loop` keeps one iteration's body at a time beside its stacked
outputs (filled in place: the tape of a `for` loop under reverse mode);
a `while` loop copies its carries to every row and, with a tape, keeps a row per iteration it may run (its
declared `max_iter`, or every k-th of them when it checkpoints) twice; a branch taken by some rows but not others copies its operands' rows.
The compiled tiers keep less (one point's intermediates at a time), so the estimate bounds them too.

A plan's estimate is linear in its rows R: `per_row * R + shared` bytes (each term the largest of its kind
over the plan, so their sum bounds the true peak for every R), computed once per plan and kept with it.
A request adds its input arrays (decoded, then batched: twice), its results (copied out of the plans'
outputs; Jacobians and Hessians reshaped too), the Jacobian/Hessian sweeps' repeated inputs and basis, and
its answer's encoding (ANSWER_BYTES per result element: JSON text, or gRPC's list of floats). Measured
against real peaks in `bench/cost_calibration.py` and tests/engine/test_memory.py.
"""

from __future__ import annotations

import math

from .ir import Lit, Var
from .limits import tape_rows

F64 = 8
TEMP_FACTOR = 2       # one operation's temporaries (NumPy broadcasts, masks, reductions) / its largest array
ROW_BYTES = 160        # one row of a while loop's tape, beyond its data: the array object and its list entry
REQUEST_BYTES = 1 << 20  # a request's fixed share: Python objects, plan bookkeeping, small temporaries
ANSWER_BYTES = 48     # per result element: its JSON text (<= 25 bytes) or gRPC's Python float list (32 + 8)
MiB = 1 << 20


def _size(a) -> int:
    return math.prod(a.shape)


class _Cost:
    """Bytes as (per row, shared): a batched value's size counts per row, a shared one once."""
    __slots__ = ("row", "one")

    def __init__(self, row=0, one=0):
        self.row, self.one = row, one

    def add(self, bytes_, batched):
        if batched:
            self.row += bytes_
        else:
            self.one += bytes_


def plan_bytes(graph, batched) -> tuple:
    """(per_row, shared) bytes at the peak of one interpreter run of `graph`, whose inputs are batched (a
    leading axis of the rows) where `batched` says and shared (a leading axis of 1) elsewhere."""
    # a value's bytes and whether it is batched, by variable; literals are never batched. One pass, no objects per
    # equation: it runs on every new plan's first request, over thousands of equations
    lead = dict(zip(graph.inputs, batched))
    nbytes = {v: F64 * math.prod(v.shape) for v in graph.inputs}
    held_row = held_one = peak_row = peak_one = 0
    seen_lits = set()
    for e in graph.eqns:
        b = False
        big_row = big_one = 0  # the largest operand or result of each kind (this equation's temporaries)
        for a in e.inputs:
            if type(a) is Var:
                size = nbytes.get(a)
                if size is None:
                    size = nbytes[a] = F64 * math.prod(a.shape)
                if lead.get(a, False):
                    b = True
                    if size > big_row:
                        big_row = size
                elif size > big_one:
                    big_one = size
            else:
                size = F64 * math.prod(a.shape)
                if id(a) not in seen_lits:  # materialised once per run, at its full shape
                    seen_lits.add(id(a))
                    held_one += size
                if size > big_one:
                    big_one = size
        out = 0
        for o in e.outputs:
            size = nbytes[o] = F64 * math.prod(o.shape)
            lead[o] = b
            out += size
        if e.prim in _STRUCTURED:
            extra = _structured(e, [lead.get(a, False) if type(a) is Var else False for a in e.inputs], b)
            extra_row, extra_one = extra.row, extra.one
        else:
            biggest = max((nbytes[o] for o in e.outputs), default=0)
            if b:
                extra_row, extra_one = TEMP_FACTOR * max(big_row, biggest), TEMP_FACTOR * big_one
            else:
                extra_row, extra_one = TEMP_FACTOR * big_row, TEMP_FACTOR * max(big_one, biggest)
        if b:
            peak_row = max(peak_row, held_row + extra_row + out)
            peak_one = max(peak_one, held_one + extra_one)
            held_row += out
        else:
            peak_row = max(peak_row, held_row + extra_row)
            peak_one = max(peak_one, held_one + extra_one + out)
            held_one += out
    outs = sum(F64 * _size(a) for a in graph.outputs if isinstance(a, Lit))
    return max(peak_row, held_row), max(peak_one, held_one + outs)


def _loop(e, ins, b) -> _Cost:
    p = e.params
    n_consts, n_carry = p["n_consts"], p["n_carry"]
    consts, xs = ins[:n_consts], ins[n_consts + n_carry:]
    body = p["body"]
    row, one = plan_bytes(body, [False, *consts, *[b] * n_carry, *xs])
    # the stacked outputs (the tape, under reverse mode) are the loop's outputs, filled in place; a row shared by
    # every point that becomes one per point is copied once: counted as a second stack
    c = _Cost(row, one)
    c.add(F64 * p["length"] * sum(_size(a) for a in body.outputs[n_carry:]), b)
    return c


def _while(e, ins, b) -> _Cost:
    p = e.params
    n_consts = p["n_consts"]
    consts = ins[:n_consts]
    carries = F64 * sum(_size(a) for a in e.inputs[n_consts:])
    leads = [*consts, *[b] * (len(e.inputs) - n_consts)]
    bodies = [plan_bytes(g, leads) for g in (p["cond"], p["body"])]
    c = _Cost(max(x[0] for x in bodies), max(x[1] for x in bodies))
    c.add(2 * carries + F64 * sum(_size(a) for a, x in zip(e.inputs[:n_consts], consts) if x), b)  # rows' copies
    if p["tape"]:  # the tape's rows before their stack (the stack is the output): every `every`-th iteration's
        rows = tape_rows(p["max_iter"], p.get("every", 1))
        c.add(rows * carries, b)
        c.one += ROW_BYTES * rows * (len(e.inputs) - n_consts)
    return c


def _cond(e, ins, b) -> _Cost:
    from .ir import sub_graphs
    bodies = [plan_bytes(g, ins[1:]) for g in sub_graphs(e)]
    c = _Cost(max(x[0] for x in bodies), max(x[1] for x in bodies))
    c.add(F64 * sum(_size(a) for a in e.inputs[1:]), b)  # the rows of each branch, taken from the operands
    return c


_STRUCTURED = {"loop": _loop, "while": _while, "cond": _cond}


def _structured(e, ins, b) -> _Cost:
    return _STRUCTURED[e.prim](e, ins, b)


def estimate(cost: tuple, rows: int) -> int:
    """A plan's bytes on `rows` rows, from its `plan_bytes`."""
    return cost[0] * rows + cost[1]


def describe(n: float) -> str:
    return f"{n / MiB:,.1f} MiB" if n < 10 * (1 << 30) else f"{n / (1 << 30):,.1f} GiB"


def _plan_cost(fn, key, graph, batched) -> tuple:
    """`plan_bytes` of one of `fn`'s plans, kept with its plans (which keep the graph: its id is its own)."""
    return fn.plan(("bytes", key, id(graph), tuple(batched)), lambda: plan_bytes(graph, batched))


def request_plans(fn, main, kinds, wrt) -> list:
    """The plan graphs a request runs: its main plan, then a Jacobian's or Hessian's sweep plan."""
    from .plans import jacobian_plans, main_plan
    graphs = [] if main is None else [main[0]]
    if "jacobian" in kinds:
        graphs += [g for g, _, _ in jacobian_plans(fn, wrt)]
    if "hessian" in kinds:
        graphs.append(main_plan(fn, frozenset({"hvp"}), wrt)[0])
    return graphs


def request_steps(fn, graphs) -> int:
    """Operation executions of one run of each plan (the interpreter's dispatches; loops multiply bodies)."""
    from .limits import cost
    return sum(fn.plan(("cost", id(g)), lambda g=g: cost(g))[0] for g in graphs)


def request_bytes(fn, main, kinds, wrt, B: int, n_args: int) -> int:
    """Estimated peak bytes of a request on `fn`: `main` is its main plan's (graph, order) or None, `kinds`
    what it computes, `wrt` the inputs differentiated, `B` its batch size (1 without batch), `n_args` the
    elements of one point's inputs, tangents and cotangent."""
    from .plans import jacobian_plans, main_plan
    total = REQUEST_BYTES + 2 * F64 * n_args * B  # inputs decoded, then batched as float64
    answer = 0
    if main is not None:
        graph, order = main
        total += estimate(_plan_cost(fn, "main", graph, [True] * len(graph.inputs)), B)
        outs = sum(_size(a) for a in graph.outputs) * B
        total += F64 * outs  # each result copied out of the plan's outputs
        answer += outs
    shapes = fn.input_shapes
    n = sum(math.prod(shapes[w]) for w in wrt)
    n_x = len(fn.input_names)
    for kind in sorted(kinds & {"jacobian", "hessian"}):
        if kind == "jacobian":  # the sweeps' plans (one per input, forward) are counted as if held together
            sweeps_ = [(g, basis) for g, basis, _ in jacobian_plans(fn, wrt)]
            result = math.prod(fn.output_shape) * n * B
        else:
            sweeps_ = [(main_plan(fn, frozenset({"hvp"}), wrt)[0], n)]
            result = n * n * B
        for graph, basis in sweeps_:
            rows = B * basis
            batched = [B > 1] * n_x + [True] * (len(graph.inputs) - n_x)  # one point's inputs are shared by its rows
            total += estimate(_plan_cost(fn, kind, graph, batched), rows)
            if B > 1:
                total += F64 * rows * sum(math.prod(s) for s in shapes.values())  # each point's inputs per row
            total += F64 * (basis * basis + rows * basis)  # the identity, and its rows tiled over the batch
        total += 2 * F64 * result  # reshaped per input (pair), then copied out
        answer += result
    if "trace" in kinds:
        from .trace import trace_graph
        graph, _ = fn.plan(("trace", True, True), lambda: trace_graph(fn, True, True))
        total += estimate(_plan_cost(fn, "trace", graph, [True] * len(graph.inputs)), B)
        outs = sum(_size(a) for a in graph.outputs) * B
        total += F64 * outs
        answer += outs
    return total + ANSWER_BYTES * answer
