"""Static limits on what one function, and one request, may cost.

Checked before any work, so a client cannot make the server loop or allocate
without bound. The cost model counts, for one evaluation at one point,
`steps` (equation executions: a loop multiplies its body by its trip count,
which is what the interpreter pays per dispatch) and `work` (element
operations: the elements each equation touches; a contraction the product of
its index ranges). A request multiplies `work` by its batch size and by a
factor for what it computes. Every rejection says which limit, and by how much.

`Limits` is a frozen value: an engine is given one (`Engine(limits=...)`), and
a different one is a new value (`limits.updated(...)`), never a change to a
value another engine reads. The functions here take it explicitly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .errors import LimitError
from .ir import Graph, Lit, sub_graphs

# rough cost of each kind relative to one primal evaluation (reverse mode ~3-4x, HVP ~2x that)
KIND_FACTOR = {"value": 1, "gradient": 4, "jvp": 3, "vjp": 4, "hvp": 10, "trace": 8}


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 20_000            # equations, counting loop and branch bodies
    max_elements: int = 10_000_000     # elements of any one value
    max_trip_count: int = 1_000_000    # iterations of one loop
    max_steps: int = 5_000_000         # equation executions per point per evaluation
    max_work: float = 5e9              # element operations per point per evaluation
    max_request_work: float = 5e10     # work x batch x derivative factor, per request
    max_expr_depth: int = 400          # nesting of an expr or program (expression and statement levels)
    max_sweep_rows: int = 200_000      # batch points x basis vectors in one Jacobian/Hessian sweep
    max_while_iterations: int = 100_000  # iterations of one while loop (it runs at most this often)
    max_request_bytes: int = 512 << 20   # estimated peak memory of one request (memory.py), answer included
    # operation executions of a request's plans (its derivatives included): 10x max_steps, what an HVP of a
    # function at max_steps runs, so it refuses nothing registration admitted; the deadline bounds the time
    # (docs/security.md gives the value that fits 30 s on the interpreter)
    max_request_steps: int = 50_000_000

    def updated(self, **kw) -> Limits:
        """These limits with the given ones replaced; a None or an unknown name leaves a limit as it is."""
        names = {f.name for f in fields(self)}
        return dataclasses.replace(self, **{k: type(getattr(self, k))(v) for k, v in kw.items()
                                            if k in names and v is not None})

    @classmethod
    def from_settings(cls, settings) -> Limits:
        """The defaults, with each limit the settings set (`settings.max_nodes` and so on; None: unset)."""
        return cls().updated(**{f.name: getattr(settings, f.name, None) for f in fields(cls)})


DEFAULT_LIMITS = Limits()


def _over(what, value, limit, unit=""):
    raise LimitError(f"{what} is {value:,.0f}{unit}, over the limit of {limit:,.0f}{unit} "
                     f"({value / limit:.1f}x)", code="limit_exceeded")


def _eqn_work(e) -> float:
    if e.prim == "einsum":
        dims = {}
        for term, a in zip(e.params["spec"].split("->")[0].split(","), e.inputs):
            dims.update(zip(term, a.shape))
        return float(math.prod(dims.values()))
    if e.prim == "dyn_slice":  # reads one slice, however large the array (a tape) it slices
        return float(max(math.prod(e.outputs[0].shape), 1))
    # the largest operand or result, a filled literal aside (a loop, not a list: it runs per equation of every plan)
    largest = None
    for group in (e.inputs, e.outputs):
        for a in group:
            if type(a) is Lit and a.fill is not None:
                continue
            size = math.prod(a.shape)
            if largest is None or size > largest:
                largest = size
    return 1.0 if largest is None else float(largest)


def cost(graph: Graph):
    """(steps, work) of one evaluation at one point."""
    steps, work = 0, 0.0
    for e in graph.eqns:
        if e.prim == "loop":
            s, w = cost(e.params["body"])
            steps += 1 + e.params["length"] * s
            work += e.params["length"] * w
        elif e.prim == "while":  # bounded by its iteration limit: the cost of a loop that runs to it
            (sc, wc), (sb, wb) = cost(e.params["cond"]), cost(e.params["body"])
            steps += 1 + e.params["max_iter"] * (sc + sb)
            work += e.params["max_iter"] * (wc + wb)
        elif e.prim == "cond":
            branches = [cost(g) for g in sub_graphs(e)]
            steps += 1 + max(b[0] for b in branches)
            work += max(b[1] for b in branches)
        else:
            steps += 1
            work += _eqn_work(e)
    return steps, work


def check_function(graph: Graph, limits: Limits = DEFAULT_LIMITS):
    """Check a new function against the limits; returns (nodes, steps, work), in one walk of the graph."""
    n, steps, work = _measure(graph, limits)
    if n > limits.max_nodes:
        _over("the number of operations", n, limits.max_nodes)
    if steps > limits.max_steps:
        _over("the number of operation executions per evaluation (loops multiply their bodies)", steps,
              limits.max_steps)
    if work > limits.max_work:
        _over("the element operations per evaluation", work, limits.max_work)
    return n, steps, work


def _measure(graph: Graph, limits: Limits):
    """(nodes, steps, work) as `Graph.n_nodes` and `cost` count them; refuses oversized values and loops."""
    nodes, steps, work = 0, 0, 0.0
    max_elements = limits.max_elements
    for a in graph.outputs:  # a literal output is in no equation
        if math.prod(a.shape) > max_elements:
            raise LimitError(f"the output of shape {list(a.shape)[:8]} ({math.prod(a.shape):,} elements) is over the "
                             f"limit of {max_elements:,} elements", code="limit_exceeded")
    for e in graph.eqns:
        for a in (*e.inputs, *e.outputs):
            size = math.prod(a.shape)
            if size > max_elements:
                raise LimitError(f"a value of shape {list(a.shape)} ({size:,} elements) is over the limit of "
                                 f"{max_elements:,} elements", e.loc, code="limit_exceeded")
        if e.prim == "loop":
            if e.params["length"] > limits.max_trip_count:
                raise LimitError(f"a loop of {e.params['length']:,} iterations is over the limit of "
                                 f"{limits.max_trip_count:,}", e.loc, code="limit_exceeded")
            n, s, w = _measure(e.params["body"], limits)
            nodes, steps, work = nodes + 1 + n, steps + 1 + e.params["length"] * s, work + e.params["length"] * w
        elif e.prim == "while":
            n_iter = e.params["max_iter"]
            if n_iter > limits.max_while_iterations:
                raise LimitError(f"a while loop bounded by {n_iter:,} iterations is over the limit of "
                                 f"{limits.max_while_iterations:,}", e.loc, code="limit_exceeded")
            (nc, sc, wc), (nb, sb, wb) = _measure(e.params["cond"], limits), _measure(e.params["body"], limits)
            nodes, steps, work = nodes + 1 + nc + nb, steps + 1 + n_iter * (sc + sb), work + n_iter * (wc + wb)
        elif e.prim == "cond":
            branches = [_measure(g, limits) for g in sub_graphs(e)]
            nodes += 1 + sum(b[0] for b in branches)
            steps += 1 + max(b[1] for b in branches)
            work += max(b[2] for b in branches)
        else:
            nodes, steps, work = nodes + 1, steps + 1, work + _eqn_work(e)
    return nodes, steps, work


# A while loop's reverse pass keeps its carries whole (one row per iteration) while its bound times the carries'
# size is at most this many elements per point (512 KB): no recomputation. Past it, the carries are kept every
# k = ceil(sqrt(bound)) iterations and each segment of k is recomputed from its checkpoint in the reverse sweep.
TAPE_BUDGET = 65_536


def checkpoint_every(max_iter: int, elements: int) -> int:
    """Every how many iterations the forward pass of a while loop's reverse mode keeps the carries (1: all)."""
    if max_iter * elements <= TAPE_BUDGET:
        return 1
    return math.isqrt(max_iter - 1) + 1  # ceil(sqrt(max_iter))


def tape_rows(max_iter: int, every: int) -> int:
    return -(-max_iter // every)


def reverse_elements(max_iter: int, elements: int) -> int:
    """Elements per point that reverse mode through one while loop keeps: the checkpoints, plus one segment's
    recomputed carries (and its counter) when it checkpoints."""
    k = checkpoint_every(max_iter, elements)
    if k == 1:
        return max_iter * elements
    return tape_rows(max_iter, k) * elements + k * (elements + 1)


def tape_elements(graph: Graph) -> int:
    """Elements per point that reverse mode stores for its loops: per while loop, what `reverse_elements` says
    (a loop that already keeps a tape, from a derivative inside the function, keeps that tape and one segment);
    loops nested in a body are added to it; loops one after another reuse nothing, so this is the largest."""
    most = 0
    for e in graph.eqns:
        if e.prim == "while":
            carries = e.inputs[e.params["n_consts"]:]
            size = sum(math.prod(a.shape) for a in carries)
            every = e.params.get("every", 1)
            if e.params["tape"]:
                own = tape_rows(e.params["max_iter"], every) * size + (every * (size + 1) if every > 1 else 0)
            else:
                own = reverse_elements(e.params["max_iter"], size)
            most = max(most, own + tape_elements(e.params["body"]))
        elif e.prim == "loop":  # a loop of carries only checkpoints as a while (control.py); others keep it all
            p = e.params
            size = sum(math.prod(a.shape) for a in e.inputs[p["n_consts"]:p["n_consts"] + p["n_carry"]])
            plain = len(e.inputs) == p["n_consts"] + p["n_carry"] and len(p["body"].outputs) == p["n_carry"]
            own = reverse_elements(p["length"], size + 1) if plain else p["length"] * size
            most = max(most, own + tape_elements(p["body"]))
        else:
            most = max([most, *[tape_elements(g) for g in sub_graphs(e)]])
    return most


def check_tape(tape: int, points: int, limits: Limits = DEFAULT_LIMITS):
    """Refuse, before it runs, a reverse pass whose while-loop tape could outgrow the element limit."""
    if tape * points > limits.max_elements:
        raise LimitError(f"reverse mode through this function's loops stores up to {tape * points:,} values (a "
                         f"loop's carried values at every k-th iteration, k = ceil(sqrt(its bound: its length, or "
                         f"ADSERVE_MAX_WHILE_ITERATIONS for a while loop)) once all of them would pass "
                         f"{TAPE_BUDGET:,} values a point, and one recomputed segment of k; for {points} point(s)), "
                         f"over the limit of {limits.max_elements:,} elements (max_elements)", code="limit_exceeded")


def check_request(work: float, kinds, points: int, sweeps: int = 1, limits: Limits = DEFAULT_LIMITS):
    factor = max(KIND_FACTOR.get(k, 4) for k in kinds) if kinds else 1
    total = work * factor * points * sweeps
    if total > limits.max_request_work:
        _over("the estimated element operations of this request (work x batch x derivative sweeps)", total,
              limits.max_request_work)


def check_bytes(estimate: int, limits: Limits = DEFAULT_LIMITS):
    """Refuse, before it runs, a request whose estimated peak memory (memory.py) is over `max_request_bytes`."""
    if estimate > limits.max_request_bytes:
        mib = 1 << 20
        raise LimitError(f"this request needs an estimated {estimate / mib:,.0f} MiB at its peak (its plans' values "
                         f"and tapes, batch copies, results and the answer), over the limit of "
                         f"{limits.max_request_bytes / mib:,.0f} MiB (ADSERVE_MAX_REQUEST_BYTES; "
                         f"{estimate / limits.max_request_bytes:.1f}x): ask for less at once (a smaller batch, "
                         f"fewer inputs in 'wrt', hvp instead of hessian)", code="request_too_large")


def check_steps(steps: int, limits: Limits = DEFAULT_LIMITS):
    """Refuse a request whose plans (the value and the derivatives asked for, as run) execute more operations
    than `max_request_steps`: the interpreter pays each one (bench/cost_calibration.py)."""
    if steps > limits.max_request_steps:
        raise LimitError(f"this request runs {steps:,} operation executions (its value and derivatives, loops "
                         f"multiplying their bodies), over the limit of {limits.max_request_steps:,} "
                         f"(ADSERVE_MAX_REQUEST_STEPS; {steps / limits.max_request_steps:.1f}x)",
                         code="limit_exceeded")
