"""Order a graph so that large arrays are read in as few passes as possible.

Sums: `early_sums` moves each sum, maximum or minimum of an element-wise value up to just after the equation
making it, so the fused loop computing the value accumulates it too (fusion.py takes such sums into a run):
reverse mode emits a broadcast operand's `sum_to` after the contraction that reads the same cotangent, which
closes the run, and the sum would be one more pass over a stored array (k-means' HVP: the column sums of the
10000x100 nearest-centre mask). The sum's accumulation order is unchanged, so are its bits.

Contractions:
Reverse mode reads a matrix twice: `A @ x` on the way forward, `Aᵀ @ w` on the
way back. When `w` does not depend on `A @ x` (a quadratic form `x·Ax` times
anything that does not involve it, as in the survey's Helmholtz energy), both
products can share one loop over `A`, which halves the memory traffic of a
memory-bound gradient. `pair_contractions` finds such pairs, moves the later
one (and whatever it needs that is not yet computed) next to the earlier one,
and returns the new order and the pairs; the code generator then emits each
pair as one loop nest (`contraction.einsum`).
"""

from __future__ import annotations

import math

from ..builder import PRIMS
from ..ir import Eqn, Graph, Lit, Var

SHARED_MIN = 1 << 15  # elements of the shared operand: below this (256 KB) a second pass hits the cache


REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "sum_to"})


def kernel_order(g: Graph):
    """A kernel's top level as both code writers (fusion.py's numba source, llvm_ir.py's IR) walk it: sums moved
    up to what they sum, equations reading nothing of an open element-wise run ahead of it, pairs of contractions
    over one large operand side by side. Returns (the graph, the pairs: pair_contractions')."""
    return pair_contractions(ahead_of_runs(early_sums(g)))


def early_sums(g: Graph) -> Graph:
    """g with each reduction of an element-wise value right after that value's equation (reductions of one
    value in their order); g itself when nothing moves."""
    made: dict = {}
    after: dict = {}
    order = []
    for e in g.eqns:
        src = e.inputs[0] if e.prim in REDUCTIONS and len(e.inputs) == 1 else None
        maker = made.get(src) if isinstance(src, Var) else None
        if maker is not None and PRIMS[maker.prim].template and order[-1] is not maker:
            after.setdefault(maker, []).append(e)
        else:
            order.append(e)
        for o in e.outputs:
            made[o] = e
    if not after:
        return g
    eqns = []
    for e in order:
        eqns.append(e)
        eqns.extend(after.get(e, ()))
    return Graph(g.inputs, tuple(eqns), g.outputs)


def ahead_of_runs(g: Graph) -> Graph:
    """g with every equation that reads nothing an open run of element-wise equations computes moved ahead of
    that run, element-wise ones of another shape too: fusion.py writes the others ahead of the run's loop
    already, but an element-wise equation of another shape closes the run, and the rest of it becomes a second
    loop over arrays the first stored (GradBench gmm: `alpha + sum(q)`, 25 elements, between the two loops over
    the 25x1000x10 `Lx`, which it then stored and read back). g itself when nothing moves."""
    out: list = []
    start, shape, made, moved = None, None, set(), False
    for e in g.eqns:
        elementwise = PRIMS[e.prim].template is not None and bool(e.outputs[0].shape)
        if start is not None:
            if elementwise and e.outputs[0].shape == shape or e.prim in REDUCTIONS and e.inputs[0] in made:
                out.append(e)
                made.update(e.outputs)
                continue
            if not any(a in made for a in e.inputs):
                out.insert(start, e)
                start += 1
                moved = moved or elementwise
                continue
            start = None
        if elementwise:
            start, shape, made = len(out), e.outputs[0].shape, set(e.outputs)
        out.append(e)
    return Graph(g.inputs, tuple(out), g.outputs) if moved else g


def big_operand(e: Eqn):
    """The einsum's larger operand, if it is the one its loop nest runs over and the loop nest reads nothing
    else at more indices (the other operand's and the output's letters are among its letters); else None."""
    if e.prim != "einsum":
        return None
    a, b = e.inputs
    ins, out = e.params["spec"].split("->")
    ta, tb = ins.split(",")
    big, term, other = (a, ta, tb) if math.prod(a.shape) >= math.prod(b.shape) else (b, tb, ta)
    if a is b or not set(other) <= set(term) or not set(out) <= set(term):
        return None
    if not isinstance(big, (Var, Lit)) or isinstance(big, Lit) and big.fill is not None:
        return None
    return big


def pair_contractions(g: Graph) -> tuple[Graph, dict]:
    """(g reordered, {first: second}) for pairs of einsums over one shared operand of SHARED_MIN elements or
    more, the second independent of the first; each second now directly follows its first."""
    eqns = list(g.eqns)
    pairs: dict = {}
    taken: set = set()
    i = 0
    while i < len(eqns):
        e1 = eqns[i]
        shared = big_operand(e1) if e1 not in taken else None
        if shared is None or math.prod(shared.shape) < SHARED_MIN:
            i += 1
            continue
        for j in range(i + 1, len(eqns)):
            e2 = eqns[j]
            if e2 in taken or big_operand(e2) is not shared:
                continue
            moved = _needs(eqns, i, j)
            if moved is None:  # it reads what e1 makes
                continue
            rest = [e for e in eqns[i + 1:j] if e not in moved]
            before = [e for e in eqns[i + 1:j] if e in moved]
            eqns[i:j + 1] = before + [e1, e2] + rest
            i += len(before)
            pairs[e1] = e2
            taken.update((e1, e2))
            break
        i += 1
    if not pairs:
        return g, pairs
    return Graph(g.inputs, tuple(eqns), g.outputs), pairs


def _needs(eqns, i, j) -> set | None:
    """The equations strictly between i and j that eqns[j] needs, or None if it needs eqns[i]."""
    made = {o: k for k in range(i, j) for o in eqns[k].outputs}
    need, todo = set(), [eqns[j]]
    while todo:
        e = todo.pop()
        for a in e.inputs:
            k = made.get(a) if isinstance(a, Var) else None
            if k is None:
                continue
            if k == i:
                return None
            if eqns[k] not in need:
                need.add(eqns[k])
                todo.append(eqns[k])
    return need
