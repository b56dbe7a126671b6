"""Whether a primitive is linear is checked, not listed: a row whose op is linear in its differentiable inputs
declares `linear` (JAX's deflinear: both derivative rules follow from its transpose), and a row that declares it
is linear there. Checked numerically on test_primitives' specs that apply their primitive once, so a new linear
op is one row and one Spec, with no list of linear ops kept by hand.
"""

import numpy as np
from engine_helpers import PRIMS, run, sub_graphs
from test_primitives import SPECS, Spec, _graph, _rng


# Linear in their differentiable inputs, yet with rules written by hand, and why.
HAND_WRITTEN_LINEAR = {
    "where": "its rules pass the cotangent through the branch taken as where(c, g, 0): derived from `linear`, "
             "they would be the same ops in another form, and every kernel using `where` would change",
}


def _one_application(s: Spec):
    """The graph of `s` if it is its primitive applied once to the graph's inputs (no literal argument, no other
    equation, no body of its own), else None: then the spec's inputs are the primitive's arguments."""
    g = _graph(s)
    if len(g.eqns) != 1 or sub_graphs(g.eqns[0]):
        return None
    (e,) = g.eqns
    return g if e.prim == s.prim and list(e.inputs) == list(g.inputs) else None


def _additive(s: Spec, g, moved) -> bool:
    """f(x + y) = f(x) + f(y) at two random points, the inputs not in `moved` held at x's values."""
    rng = _rng(s, "linear")
    x, y = s.draw(rng, 0), s.draw(rng, 1)
    both = [a + b if i in moved else a for i, (a, b) in enumerate(zip(x, y))]
    y = [b if i in moved else a for i, (a, b) in enumerate(zip(x, y))]
    fs = [run(g, [a[None] for a in args]) for args in (both, x, y)]
    return all(np.allclose(f_xy, f_x + f_y, rtol=1e-9, atol=1e-9) for f_xy, f_x, f_y in zip(*fs))


def test_a_primitive_is_declared_linear_exactly_when_it_is():
    """A row whose op is linear in its differentiable inputs declares `linear` (both derivative rules follow from
    its transpose), and one that declares it is linear there. Checked numerically on the specs that apply their
    primitive once, so no list of linear ops is kept by hand: a declared row must be additive on each of them,
    an undeclared one is linear if it is additive on all of them (one shape may be degenerate: a max over a
    scalar is the identity)."""
    additive, wrong = {}, []
    for s in SPECS:
        p = PRIMS[s.prim]
        g = None if s.nondiff or p.nondiff else _one_application(s)
        if g is None:
            continue
        args = range(len(s.shapes)) if p.linear is None or p.linear.args is None else p.linear.args
        moved = {i for i in args if i not in s.fd_zero}
        if not moved:
            continue
        additive.setdefault(s.prim, []).append(_additive(s, g, moved))
        if p.linear is not None and not additive[s.prim][-1]:
            wrong.append(f"{s.id}: declares `linear` but is not linear in inputs {sorted(moved)}")
    wrong += [f"'{n}' is linear in its differentiable inputs on every spec: declare `linear` instead of its rules"
              for n, seen in additive.items() if PRIMS[n].linear is None and all(seen) and n not in HAND_WRITTEN_LINEAR]
    assert not wrong, "\n".join(wrong)
    unchecked = sorted(n for n, p in PRIMS.items() if p.linear is not None and n not in additive)
    assert not unchecked, f"declared linear, with no spec applying the primitive once to check it: {unchecked}"
