"""Values computed where the kernel's outputs need them: the pieces of an output's concatenation in its row.

GradBench's ba objective returns concatenate([reshape(stack([e0, e1], axis=1), (-1,)), 1 - w * w]): written
naively, e0 and e1 go to the workspace, are copied interleaved into the stack's buffer, which is copied into the
output row, as is 1 - w * w (five passes over 0.25-0.5 MB: 0.1 ms of a 0.8 ms kernel). Before the equations are
written, each output row is given to the value it is, and a value so placed that is a concatenation (or a
reshape) hands each of its inputs the region it will take, when that input is read by nothing else: its `home`.
`buffer` computes a value in its home instead of in the workspace, and the concatenation then finds its pieces
where they go and copies nothing (`same_place`). A home is only where a value is computed when its writer asks
for a buffer; a value that is a view of another stays one, and is copied into place as before.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Var
from .llvm_ops import View, c_strides


def same_place(a, b) -> bool:
    """Whether views a and b are the same elements in the same order (the strides of axes of one element do not
    matter)."""
    if not (isinstance(a, View) and isinstance(b, View)):
        return a == b
    return (a.base, a.offset, tuple(a.shape), a.dyn) == (b.base, b.offset, tuple(b.shape), b.dyn) and all(
        s == t for s, t, d in zip(a.strides, b.strides, a.shape) if d != 1)


def reshaped(view: View, shape) -> View | None:
    """`view` as `shape` (its elements in C order), where strides can say it: a C-ordered view, or one whose shape
    only gains or loses axes of one element."""
    shape = tuple(shape)
    if view.contiguous():
        return replace(view, shape=shape, strides=c_strides(shape))
    if [d for d in view.shape if d != 1] != [d for d in shape if d != 1]:
        return None
    kept = iter(s for s, d in zip(view.strides, view.shape) if d != 1)
    return replace(view, shape=shape, strides=tuple(next(kept) if d != 1 else 0 for d in shape))


class Homes:
    """Mixed into llvm_ir.Writer: `place(eqns)` before the top-level graph is written; `homes` read by buffer."""

    def place(self, eqns):
        producer = {e.out: e for e in eqns}
        outs = self.graph.outputs
        todo = []
        for j, o in enumerate(outs):
            if isinstance(o, Var) and o.shape and sum(x is o for x in outs) == 1 and o in producer:
                todo.append((o, View(f"out{j}", 0, tuple(o.shape), c_strides(o.shape))))
        while todo:
            v, view = todo.pop()
            self.homes[v] = view
            e = producer[v]
            if e.prim == "concatenate":
                axis, start = e.params["axis"], 0
                for x in e.inputs:
                    region = View(view.base, view.offset + start * view.strides[axis], tuple(x.shape), view.strides,
                                  view.dyn)
                    start += x.shape[axis]
                    if self._placeable(x, e, producer) and 0 not in x.shape:
                        todo.append((x, region))
            elif e.prim == "reshape" and self._placeable(e.inputs[0], e, producer):
                inner = reshaped(view, e.inputs[0].shape)
                if inner is not None:
                    todo.append((e.inputs[0], inner))

    def _placeable(self, x, e, producer) -> bool:
        """Whether x may be computed in a region of e's value: an array computed here, read by e alone, once."""
        return (isinstance(x, Var) and bool(x.shape) and x in producer and x not in self.homes
                and self.readers.get(x) == [e] and sum(a is x for a in e.inputs) == 1)
