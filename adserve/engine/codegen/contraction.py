"""Contractions (`einsum`) as loop nests, and pairs of them sharing one pass over a large operand."""

from __future__ import annotations

import math

from ..ir import Lit, Var
from .emit import loc_text, num
from .schedule import big_operand


def einsum(s, e):
    if e in s.joined:
        return
    partner = s.pairs.get(e)
    if partner is not None:
        s.joined.add(partner)
        return _shared_pass(s, (e, partner))
    a, b = e.inputs
    spec = e.params["spec"]
    ins, out_letters = spec.split("->")
    la, lb = ins.split(",")
    dims = {c: d for term, x in ((la, a), (lb, b)) for c, d in zip(term, x.shape)}
    big, other = (la, lb) if math.prod(a.shape) >= math.prod(b.shape) else (lb, la)
    order = list(big) + [c for c in other + out_letters if c not in big]
    order = list(dict.fromkeys(order))
    out = e.out
    scalar = not out.shape
    name = s.define(out) if scalar else s.buffer(out)
    s.line(f"{name} = 0.0" if scalar else f"{name}.fill(0.0)")
    idx = dict(zip(order, s.loops([dims[c] for c in order])))

    def at(x, term):
        return s.ref(x) if not term else (f"{s.ref(x)}[{', '.join(idx[c] for c in term)}]"
                                          if isinstance(x, Var) or x.fill is None else num(x.fill))
    target = name if scalar else f"{name}[{', '.join(idx[c] for c in out_letters)}]"
    s.line(f"{target} += {at(a, la)} * {at(b, lb)}")
    s.end(len(order))


def _shared_pass(s, eqns):
    """Contractions over one large operand in one loop nest over it: each element is read once. Written so
    the innermost loop vectorises: what does not move along it (a sum over it, an operand entry) is a local."""
    shared = big_operand(eqns[0])
    terms = []
    for e in eqns:
        a, b = e.inputs
        (ta, tb), out = (t.split(",") if i == 0 else t for i, t in enumerate(e.params["spec"].split("->")))
        term, other, other_term = (ta, b, tb) if a is shared else (tb, a, ta)
        name = s.define(e.out) if not e.out.shape else s.buffer(e.out)
        s.line(f"{name} = 0.0" if not e.out.shape else f"{name}.fill(0.0)")
        terms.append((e, term, other, other_term, out, name))
    s.line(f"# one pass over {s.ref(shared)}: {len(eqns)} contractions")
    idx = s.loops(shared.shape[:-1] if shared.shape[-1] else (0,) * (len(shared.shape) - 1))  # empty: no pass
    inner = s.fresh("i")
    last = []  # lines after the innermost loop
    body = []
    for e, term, other, other_term, out, name in terms:
        at = dict(zip(term, idx + [inner]))
        moves = term[-1]  # the innermost loop's letter
        if not other_term or isinstance(other, Lit) and other.fill is not None:
            value = s.ref(other) if isinstance(other, Var) or other.fill is None else num(other.fill)
        else:
            value = f"{s.ref(other)}[{', '.join(at[c] for c in other_term)}]"
            if moves not in other_term:
                local = s.fresh("w")
                s.line(f"{local} = {value}")
                value = local
        target = f"{name}[{', '.join(at[c] for c in out)}]" if out else name
        loc = f"  # {loc_text(e.loc)}" if e.loc else ""
        if moves in out:
            body.append(f"{target} += ELEM * {value}{loc}")
        else:
            acc = s.fresh("acc")
            s.line(f"{acc} = 0.0")
            body.append(f"{acc} += ELEM * {value}{loc}")
            last.append(f"{target} += {acc}")
    s.line(f"for {inner} in range({shared.shape[-1]}):")
    s.depth += 1
    elem = s.fresh("a")
    s.line(f"{elem} = {s.ref(shared)}[{', '.join(idx + [inner])}]")
    for line in body:
        s.line(line.replace("ELEM", elem, 1))
    s.depth -= 1
    for line in last:
        s.line(line)
    s.end(len(shared.shape) - 1)
