"""Loops and branches: a `loop` stays a `for` loop, a `while` a `while`, a `cond` an `if`.

A loop's carries live in buffers of their own; its stacked outputs (the VJP's
tape among them) are preallocated from the static trip count. Bodies are
emitted by the same walk as the top level (`Source.graph`), without in-place
updates.
"""

from __future__ import annotations

from ..ir import Graph, Var
from ..limits import cost, tape_rows
from .emit import Emitter, loc_text, num
from .memory import VIEWS

# a `for` loop whose whole run (trip count x its body's operations or element operations, inner loops counted
# by their trips) is at most this checks no stop flag: the check at the top of an enclosing loop or point
# comes soon enough (microseconds), and a short inner loop's iterations stay free of it (measured: 40x40
# nested scalar loops ran 12-16% slower with a check in every iteration)
UNCHECKED_STEPS = 10_000


def _bind(s: Emitter, var: Var, expr: str):
    s.names[var] = s.fresh("b")
    s.line(f"{s.names[var]} = {expr}")


def loop(s, e):
    p = e.params
    body, length, nc, ncar = p["body"], p["length"], p["n_consts"], p["n_carry"]
    consts, inits, xs = e.inputs[:nc], e.inputs[nc:nc + ncar], e.inputs[nc + ncar:]
    carries = []
    for init in inits:
        c = s.buffer(Var(init.shape), "c") if init.shape else s.fresh("c")
        s.copy(c, init, init.shape)
        carries.append(c)
    ybufs = []
    for y in body.outputs[ncar:]:
        yb = s.fresh("ys")
        s.prologue.append(f"    {yb} = np.empty({(length, *y.shape)!r})")
        ybufs.append(yb)
    k = s.fresh("k")
    rng = f"range({length} - 1, -1, -1)" if p["reverse"] else f"range({length})"
    s.line(f"for {k} in {rng}:")
    s.depth += 1
    s.open_loop(length, e.loc, f"{length} - 1 - {k}" if p["reverse"] else k,
                check=length * max(cost(body)) > UNCHECKED_STEPS)
    ins = body.inputs
    _bind(s, ins[0], f"float({k})")
    for v, a in zip(ins[1:1 + nc], consts):
        s.names[v] = s.ref(a) if isinstance(a, Var) or a.shape else num(a.fill)
    for v, c in zip(ins[1 + nc:1 + nc + ncar], carries):
        s.names[v] = c
    for v, x in zip(ins[1 + nc + ncar:], xs):
        _bind(s, v, f"{s.ref(x)}[{k}]")
    s.graph(body)
    for yb, y in zip(ybufs, body.outputs[ncar:]):
        if y.shape:
            s.store(yb, [k, *[(0, 1)] * len(y.shape)], y, y.shape)
        else:
            s.line(f"{yb}[{k}] = {s.ref(y) if isinstance(y, Var) else num(y.fill)}")
    _carry_on(s, body, body.outputs[:ncar], carries)
    s.close_loop()
    s.depth -= 1
    for o, c in zip(e.outputs[:ncar], carries):
        s.names[o] = c
        if o.shape:
            s.owner[c] = o
    for o, yb in zip(e.outputs[ncar:], ybufs):
        s.names[o] = yb
        s.owner[yb] = o


def _is_view(g: Graph, a: Var) -> bool:
    return any(a in e.outputs and e.prim in VIEWS for e in g.eqns)


def cond(s, e):
    pred, ops = e.inputs[0], e.inputs[1:]
    outs = []
    for o in e.outputs:
        outs.append(s.buffer(o) if o.shape else s.define(o))
    s.line(f"if {s.ref(pred) if isinstance(pred, Var) else num(pred.fill)} != 0.0:")
    for branch, first in ((e.params["true_body"], True), (e.params["false_body"], False)):
        if not first:
            s.line("else:")
        s.depth += 1
        for v, a in zip(branch.inputs, ops):
            s.names[v] = s.ref(a) if isinstance(a, Var) or a.shape else num(a.fill)
        s.graph(branch)
        for name, a, o in zip(outs, branch.outputs, e.outputs):
            if o.shape:
                s.copy(name, a, o.shape)
            else:
                s.line(f"{name} = {s.ref(a) if isinstance(a, Var) else num(a.fill)}")
        s.line("pass")
        s.depth -= 1


def while_(s, e):
    """`while True:` with the condition's graph, a bound check (status `while_limit`, reported after the point,
    as a bad index is) and the body's; in tape mode the carries of every `every`-th iteration go to rows
    preallocated for `max_iter` iterations (the size the limits checked), and the count is the iterations run."""
    p = e.params
    cond, body, nc, max_iter, tape = p["cond"], p["body"], p["n_consts"], p["max_iter"], p["tape"]
    every = p.get("every", 1)
    consts, inits = e.inputs[:nc], e.inputs[nc:]
    carries = []
    for init in inits:
        c = s.buffer(Var(init.shape), "c") if init.shape else s.fresh("c")
        s.copy(c, init, init.shape)
        carries.append(c)
    rows = []
    for init in inits if tape else ():
        r = s.fresh("tape")
        s.prologue.append(f"    {r} = np.empty({(tape_rows(max_iter, every), *init.shape)!r})")
        rows.append(r)
    it = s.fresh("it")
    code = s.error(f"a while loop ran past {max_iter:,} iterations, the limit (ADSERVE_MAX_WHILE_ITERATIONS), "
                   f"at {loc_text(e.loc)}")
    s.line(f"{it} = 0")
    s.line("while True:")
    s.depth += 1
    trips = p.get("trips") or None
    s.open_loop(trips, e.loc, f"min({it} * {every}, {trips})" if trips and not tape and every > 1 else it)
    for g in (cond, body):
        for v, a in zip(g.inputs[:nc], consts):
            s.names[v] = s.ref(a) if isinstance(a, Var) or a.shape else num(a.fill)
        for v, c in zip(g.inputs[nc:], carries):
            s.names[v] = c
    s.graph(cond)
    pred = cond.outputs[0]
    s.line(f"if {s.ref(pred) if isinstance(pred, Var) else num(pred.fill)} == 0.0:")
    s.line("    break")
    s.line(f"if {it} >= {max_iter}:")
    s.line(f"    err = {code}")
    s.line("    break")
    if rows and every > 1:
        s.line(f"if {it} % {every} == 0:")
        s.depth += 1
    for r, c, init in zip(rows, carries, inits):
        row = f"{it} // {every}" if every > 1 else it
        if init.shape:
            s.store(r, [row, *[(0, 1)] * len(init.shape)], c, init.shape)
        else:
            s.line(f"{r}[{row}] = {c}")
    if rows and every > 1:
        s.depth -= 1
    s.graph(body)
    _carry_on(s, body, body.outputs, carries)
    s.line(f"{it} += 1")
    s.close_loop()
    s.depth -= 1
    outs = list(zip(e.outputs[:len(inits)], carries))
    if tape:
        count = e.outputs[len(inits)]
        s.line(f"{s.define(count)} = float({it})")
        outs += list(zip(e.outputs[len(inits) + 1:], rows))
    for o, c in outs:
        s.names[o] = c
        if o.shape:
            s.owner[c] = o


def _carry_on(s, body, new, carries):
    """Set the carries to the body's `new` values, staged first where one may read another's old value
    (a, b = b, a) or a new value is a view of an input."""
    aliased = any(isinstance(a, Var) and a.shape and (a in body.inputs or _is_view(body, a)) for a in new)
    assign = []
    for a, c in zip(new, carries):
        if not a.shape:
            t = s.fresh("n")
            s.line(f"{t} = {s.elem(a, [], ())}")
            assign.append(f"{c} = {t}")
        elif aliased:
            t = s.buffer(Var(a.shape), "stage")
            s.copy(t, a, a.shape)
            assign.append((c, t, a.shape))
        else:
            assign.append((c, a))
    for item in assign:
        if isinstance(item, str):
            s.line(item)
        elif len(item) == 3:  # from its staging buffer
            s.store(item[0], [(0, 1)] * len(item[2]), item[1], item[2])
        else:
            s.copy(item[0], item[1], item[1].shape)
