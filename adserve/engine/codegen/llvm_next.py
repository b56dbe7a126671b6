"""The direct-LLVM back end's reads of the NEXT element along the last axis: element-wise runs in descending order.

The reverse of a shift (`concatenate([c, v[..., :-1]])`, llvm_pieces.shifted) reads the next element: ode's
gradient adds `v[1:]` into the first n - 1 elements of a cotangent (`update_slice(g, g[:-1] + v[1:])`) and
shifts `update_slice(zeros(n), v[1:])`, four times a step, each from the value the step computed before. Written
as they stand, each [n - 1] value is a loop of its own and each v is stored and read again one element on: ode's
reverse step was eleven loops after its first.

`rewrite(g)` rewrites those equations as [n] element-wise ones: `v[..., 1:]` is NEXT(v) ([v1, ..., v(n-1), c]),
`v[..., :-1]` is v, an element-wise equation of such values the same equation over n elements, and
`update_slice(base, r)` over the first n - 1 elements is PATCH(base, r) (r's element, and base's at the last
position: a select). Only where every reader of the [n - 1] values is one of these, so an element computed at the
last position (from NEXT's fill) is never read but by PATCH's select, which drops it. Each element the kernel keeps
is computed by the same operations on the same operands as before: the same bits.

A run holding a NEXT is written with its last axis descending (llvm_ir.Writer.fused), so the next element is the
previous iteration's (a phi, as a shift's), and joins no run with a shift or a sum (whose order it would change).
"""

from __future__ import annotations

from ..ir import Eqn, Graph, Lit, Var

NEXT = "next"    # [v1, ..., v(n-1), fill] along the last axis: a run's equation
PATCH = "patch"  # (base, r): r's element, base's at the last position along the last axis: a run's equation


def _cut(index, shape):
    """'next' for an index taking [1, n) of the last axis, 'same' for [0, n - 1), all of the others; else None."""
    if len(index) != len(shape) or not shape or shape[-1] < 2:
        return None
    if any(ent != (0, d, 1) for ent, d in zip(index[:-1], shape[:-1])):
        return None
    n = shape[-1]
    return {(1, n - 1, 1): "next", (0, n - 1, 1): "same"}.get(tuple(index[-1]) if isinstance(index[-1], tuple)
                                                            else None)


def _short_of(e):
    """(kind, the [n] value) when e is a slice of a value's next or same n - 1 elements, else None."""
    if e.prim != "slice" or not isinstance(e.inputs[0], Var):
        return None
    kind = _cut(tuple(e.params["index"]), tuple(e.inputs[0].shape))
    return None if kind is None else (kind, e.inputs[0])


def _patch_of(e):
    """(base, r) when e is update_slice(base, r) over the first n - 1 elements of the last axis, else None."""
    if e.prim != "update_slice" or not e.out.shape:
        return None
    base, r = e.inputs
    if _cut(tuple(e.params["index"]), tuple(base.shape)) != "same" or not isinstance(r, Var) or \
            not (isinstance(base, Var) or isinstance(base, Lit) and base.fill is not None):
        return None
    return base, r


def rewrite(g: Graph, elementwise) -> Graph:
    """g with its next-element reads rewritten as NEXT and PATCH equations (the module's docstring); g itself
    when it has none. `elementwise`: the primitives of element-wise runs (llvm_ir.IR)."""
    made = {o: e for e in g.eqns for o in e.outputs}
    readers: dict = {}
    for e in g.eqns:
        for a in e.inputs:
            readers.setdefault(a, []).append(e)
    # the [n - 1] values that may become [n] ones: slices, and element-wise equations of them and scalars
    short: dict = {}  # value -> the [n] shape it stands for
    for e in g.eqns:
        s = _short_of(e)
        if s is not None:
            short[e.out] = tuple(s[1].shape)
        elif e.prim in elementwise and not e.params and e.out.shape and len(e.outputs) == 1:
            shapes = {short.get(a) for a in e.inputs if isinstance(a, Var) and a.shape}
            n_shape = shapes.pop() if len(shapes) == 1 else None
            if n_shape is not None and tuple(e.out.shape) == n_shape[:-1] + (n_shape[-1] - 1,) and all(
                    a in short or not a.shape or isinstance(a, Lit) and a.fill is not None and
                    tuple(a.shape) == tuple(e.out.shape) for a in e.inputs):
                short[e.out] = n_shape
    outs = set(o for o in g.outputs if isinstance(o, Var))
    changed = True
    while changed:  # keep only values whose every reader is rewritten too
        changed = False
        for v in list(short):
            ok = v not in outs and all(
                q.out in short and q.prim != "slice" or
                (_patch_of(q) is not None and q.inputs[1] is v and q.inputs[0] is not v and
                 tuple(q.out.shape) == short[v])
                for q in readers.get(v, []))
            if ok and made[v].prim != "slice":
                ok = all(a in short for a in made[v].inputs if isinstance(a, Var) and a.shape)
            if not ok:
                del short[v]
                changed = True
    if not short:
        return g
    full: dict = {}  # short value -> its [n] stand-in

    def mapped(a, shape):
        return Lit(shape, a.data) if isinstance(a, Lit) and a.shape else full.get(a, a)
    eqns = []
    for e in g.eqns:
        if e.out in short:
            s = _short_of(e)
            if s is not None and s[0] == "same":
                full[e.out] = s[1]
                continue
            out = Var(short[e.out])
            full[e.out] = out
            if s is not None:
                eqns.append(Eqn(NEXT, (s[1],), (out,), {"fill": 0.0}, e.loc))
            else:
                eqns.append(Eqn(e.prim, tuple(mapped(a, short[e.out]) for a in e.inputs), (out,), e.params, e.loc))
        elif _patch_of(e) is not None and e.inputs[1] in short:
            base, r = e.inputs
            s = _short_of(made[r])
            if isinstance(base, Lit) and s is not None and s[0] == "next":  # update_slice(full(c), v[1:])
                eqns.append(Eqn(NEXT, (s[1],), e.outputs, {"fill": base.fill}, e.loc))
            else:
                eqns.append(Eqn(PATCH, (base, full[r]), e.outputs, {}, e.loc))
        else:
            eqns.append(e)
    used = {a for e in eqns for a in e.inputs} | outs
    keep = [e for e in eqns if not (e.prim == NEXT and e.out not in used)]
    return Graph(g.inputs, tuple(keep), g.outputs)


class Nexts:
    """Mixed into llvm_ir.Writer: graphs rewritten once, a run's tail handed to a NEXT's run, PATCH's select."""

    def nexted(self, g: Graph) -> Graph:
        """g with its next-element reads rewritten (`rewrite`), once: a loop's body is rewritten before its
        carries are offered (in_place), then walked."""
        if g not in self.rewritten:
            self.rewritten[g] = rewrite(g, self.elementwise)
            self.rewritten[self.rewritten[g]] = self.rewritten[g]
        return self.rewritten[g]

    def tail(self, run, ascending) -> tuple:
        """(head, tail) of a run a NEXT meets: the tail, its equations after its last of `ascending`,
        written in the NEXT's descending run instead when fewer of the head's values cross to it than of the
        tail's cross out of the run (each crossing value is stored and loaded again: ode's reverse step stored
        four values of its cotangent times constants for the descending loop, now one shift)."""
        k = max(j for j, q in enumerate(run) if q.prim in ascending)
        head, tail = run[:k + 1], run[k + 1:]
        made_head = {q.out for q in head}
        into = {a for q in tail for a in q.inputs if a in made_head}
        out = {q.out for q in tail if any(r is None or r not in tail for r in self.readers.get(q.out, []))}
        return (head, tail) if tail and len(into) < len(out) else (run, [])

    def patch(self, args, i, n) -> str:
        """PATCH's element at last-axis index i (of n): r's (args[1]), base's (args[0]) at the last."""
        k = self.fresh()
        self.emit(f"%c{k} = icmp ult i64 {i}, {n - 1}")
        self.emit(f"%e{k}.r = select i1 %c{k}, double {args[1]}, double {args[0]}")
        return f"%e{k}.r"


def ordered(run, e, ascending) -> bool:
    """Whether e may join `run` in one loop order: a NEXT's run is written descending, which equations of
    `ascending` may not be (a shift: the previous element; a sum: its order)."""
    if e.prim == NEXT:
        return not any(q.prim in ascending for q in run)
    if e.prim in ascending:
        return not any(q.prim == NEXT for q in run)
    return True
