"""Counted `while` loops: a loop whose trip count its inputs say, so the interpreter need not ask its condition.

Reverse mode writes three such loops (whiles.py): a `for` loop differentiated as a while (`i < N`, `i += 1`),
a checkpointed segment's recompute (`i < length`, `i += 1`) and a reverse sweep (`j >= 0`, `j -= 1`). Their
condition is one comparison of a carried counter that the body steps by one: `lt(i, limit)` with the body's
`add(i, 1.0)`, limit a constant of the loop or a literal, or `ge(j, 0.0)` with `sub(j, 1.0)`. When the counter
and limit are integers (|x| <= 2^52, so every step is exact), the trip count is `limit - i` or `j + 1` (none
when negative), the same number of iterations the condition would allow. Which loops match is read from the
graphs (once per condition graph), never from a parameter a client could set.
"""

from __future__ import annotations

import weakref

import numpy as np

from .ir import Graph, Lit, Var

EXACT = 2.0 ** 52  # integers up to this size step by 1.0 exactly
_PATTERNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cond -> (weakref to body, pattern)


def _unit_lit(a, value) -> bool:
    return type(a) is Lit and a.shape == () and a.fill == value


def _pattern(cond: Graph, body: Graph, n_consts: int):
    """(counter's input index, limit: a const's input index or a float, counts down) or None."""
    if len(cond.eqns) != 1 or len(cond.outputs) != 1:
        return None
    e = cond.eqns[0]
    if e.outputs[0] is not cond.outputs[0] or e.prim not in ("lt", "ge") or len(e.inputs) != 2:
        return None
    i, lim = e.inputs
    if type(i) is not Var or i.shape != () or i not in cond.inputs:
        return None
    at = cond.inputs.index(i)
    if at < n_consts:
        return None
    if e.prim == "ge":
        if not _unit_lit(lim, 0.0):
            return None
        limit, down, step = None, True, "sub"
    elif type(lim) is Lit:
        if lim.shape != () or lim.fill is None:
            return None
        limit, down, step = float(lim.fill), False, "add"
    elif lim in cond.inputs and cond.inputs.index(lim) < n_consts and lim.shape == ():
        limit, down, step = cond.inputs.index(lim), False, "add"
    else:
        return None
    out = body.outputs[at - n_consts]
    made = next((x for x in body.eqns if any(o is out for o in x.outputs)), None) if type(out) is Var else None
    if made is None or made.prim != step or made.inputs[0] is not body.inputs[at] or not _unit_lit(made.inputs[1], 1.0):
        return None
    return at, limit, down


def pattern(cond: Graph, body: Graph, n_consts: int):
    known = _PATTERNS.get(cond)
    if known is None or known[0]() is not body:
        known = _PATTERNS[cond] = (weakref.ref(body), _pattern(cond, body, n_consts))
    return known[1]


def _integers(x) -> bool:
    return bool(np.all(np.floor(x) == x) and np.all(np.abs(x) <= EXACT))


def trip_count(cond: Graph, body: Graph, n_consts: int, consts, carry):
    """The iterations the loop runs from `consts` and `carry` (batched, per point), when it is a counted loop
    and every point runs the same number; else None."""
    p = pattern(cond, body, n_consts)
    if p is None:
        return None
    at, limit, down = p
    i = carry[at - n_consts]
    if down:
        if not _integers(i):
            return None
        n = i + 1.0
    else:
        lim = consts[limit] if isinstance(limit, int) else limit
        if not (_integers(i) and _integers(lim)):
            return None
        n = lim - i
    n = np.asarray(n).reshape(-1)
    if not (n == n[0]).all():
        return None
    return max(int(n[0]), 0)
