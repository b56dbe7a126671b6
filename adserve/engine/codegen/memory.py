"""Buffer ownership: which functional updates may write in place, and where a value may land.

A functional update (`update_slice`, `dyn_update`) copies its operand into a
new buffer, except in the top-level body when the operand is a buffer of its
own whose last read (its views' included) is this update: then it writes in
place (see `Frame`), as the cotangent accumulations of reverse mode do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ir import Graph, Var

if TYPE_CHECKING:
    from .emit import Emitter

VIEWS = {"slice", "dyn_slice", "transpose", "reshape"}
UPDATES = {"update_slice", "dyn_update", "scatter_add"}


@dataclass
class Frame:
    """What the top-level graph's equations may overwrite: `root` maps a view to the value it views, `last`
    gives each value the index of the last equation reading it or a view of it (graph outputs count as read
    after every equation), `i` is the equation being emitted and `run` the open fused run (equations before
    `i` whose loop is emitted after it)."""
    root: dict
    last: dict
    slices: dict = field(default_factory=dict)  # a static slice's value -> (the value sliced, the index)
    succ: dict = field(default_factory=dict)  # a value -> the update that reads it last (it may take its buffer)
    i: int = 0
    run: list = field(default_factory=list)

    @staticmethod
    def of(g: Graph) -> Frame:
        root: dict = {}
        slices: dict = {}
        for e in g.eqns:
            x = e.inputs[0] if e.inputs else None
            if e.prim in VIEWS and isinstance(x, Var) and x.shape and e.out.shape:
                root[e.out] = root.get(x, x)
                if e.prim == "slice":
                    slices[e.out] = (x, tuple(e.params["index"]))
        last: dict = {}
        for i, e in enumerate(g.eqns):
            for a in e.inputs:
                if isinstance(a, Var):
                    last[root.get(a, a)] = i
        for a in g.outputs:
            if isinstance(a, Var):
                last[root.get(a, a)] = len(g.eqns)
        succ: dict = {}
        for i, e in enumerate(g.eqns):
            x = e.inputs[0] if e.inputs else None
            if e.prim in UPDATES and isinstance(x, Var) and x not in root and last.get(x) == i:
                succ[x] = e.out
        return Frame(root, last, slices, succ)

    def heir(self, x):
        """The value that will hold x's buffer if every update along the way may write in place."""
        while x in self.succ:
            x = self.succ[x]
        return x

    def in_place(self, s: Emitter, x, value) -> bool:
        """May an update of `x` by `value` overwrite x's buffer? Only if x owns it (not an input, literal, view or
        a loop's alias) and nothing reads x or a view of x after this equation."""
        if not isinstance(x, Var) or not x.shape or s.owner.get(s.names.get(x)) is not x or x in self.root:
            return False
        if self.last.get(x, -1) > self.i or isinstance(value, Var) and self.root.get(value, value) is x:
            return False
        return not any(isinstance(a, Var) and self.root.get(a, a) is x for m in self.run for a in m.inputs)

    def reads_only(self, run, x, index, shape) -> bool:
        """Does `run` read x only through the slice x[index], element by element (so a loop over that slice may
        overwrite each element once it has read it)?"""
        for m in run:
            for a in m.inputs:
                if isinstance(a, Var) and self.root.get(a, a) is x and (
                        self.slices.get(a) != (x, index) or a.shape != shape):
                    return False
        return True


def updated(s, e, x, v) -> str:
    """The buffer an update of `x` writes: x's own when nothing reads x later (see `Frame`), else a copy."""
    if s.frame is not None and s.frame.in_place(s, x, v):
        name = s.names[e.out] = s.names[x]
        s.owner[name] = e.out
        return name
    name = s.buffer(e.out)
    s.copy(name, x, x.shape)
    return name
