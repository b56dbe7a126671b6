"""The direct-LLVM back end's concatenations read where they lie, and loop carries updated in place.

A concatenation read only by element-wise equations of its shape is not copied into a buffer of its own: it is
a `Cat`, its pieces' views side by side, and the element-wise run reading it is written as one loop nest per
stretch of the concatenation's axis that every piece boundary of its operands cuts (`regions`), each reading its
piece directly (ode's shifted state, `concatenate([ones(1), y[:-1]])`: a copy of the state per stage before).
A run that sums (its accumulation order is the whole run's, row-major) or reads concatenations along two axes
copies them first, as before (`materialize`); so does every other reader.

A loop's array carry whose new value an element-wise run computes is written by that run straight into the
carry's storage (`in_place`), instead of into a buffer copied into the carry after the body: when the body reads
nothing of the old value after that run, and the run reads it only element for element, at or before the
equation writing the new value. The same values either way. `Pieces` is a part of llvm_ir.Writer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import Eqn, Lit, Var
from .llvm_homes import same_place
from .llvm_next import NEXT, PATCH
from .llvm_ops import Fill, Ops, View, const, indexed_layout

# equations whose array value may be a view of an input's memory (control flow's and the rest's are new)
VIEWING = {"slice", "transpose", "reshape", "dyn_slice", "concatenate", "update_slice"}
# equations reading a concatenation (their first input) without a copy of it: slices and updates of it
CUTTING = {"slice", "update_slice"}
SHIFT = "shift"  # [c, v0, v1, ...] along the last axis: a run's equation (`shifted`)
MOVES = {NEXT, PATCH}  # llvm_next's run equations: a new carry value `in_place` may write into the carry


@dataclass(frozen=True)
class Piece:
    """A stretch [start, start + length) of a concatenation's axis: its value, an array of `shape` (`op`: a View
    or a Fill)."""
    start: int
    length: int
    shape: tuple
    op: object


@dataclass(frozen=True)
class Cat:
    """A concatenation not written out: its non-empty pieces along `axis` in order (two at least)."""
    axis: int
    shape: tuple
    pieces: tuple


def narrow(op, a_shape, shape, axis, lo, n):
    """Operand `op` (of an array of a_shape, broadcast to the run's `shape`) over the run's positions lo..lo + n
    along `axis`."""
    j = axis - (len(shape) - len(a_shape))
    if isinstance(op, Cat):
        for p in op.pieces:
            if p.start <= lo < p.start + p.length:
                return narrow(p.op, p.shape, shape, axis, lo - p.start, n)
        raise AssertionError("a region outside its concatenation")
    if not isinstance(op, View) or j < 0 or a_shape[j] == 1:
        return op
    return replace(op, offset=op.offset + lo * op.strides[j], shape=op.shape[:j] + (n,) + op.shape[j + 1:])


def cut(op, shape, axis, lo, n, at) -> list:
    """The pieces of positions lo..lo + n along `axis` of `op` (a View, Fill or Cat of `shape`), placed at `at`."""
    def piece(start, length, o):
        return Piece(start, length, shape[:axis] + (length,) + shape[axis + 1:], o)
    if not isinstance(op, Cat):
        return [piece(at, n, narrow(op, shape, shape, axis, lo, n))] if n else []
    out = []
    for p in op.pieces:
        a, b = max(lo, p.start), min(lo + n, p.start + p.length)
        if a < b:
            out.append(piece(at + a - lo, b - a, narrow(p.op, p.shape, p.shape, axis, a - p.start, b - a)))
    return out


def block(index, shape):
    """The one axis an index cuts, as (axis, start, length), when it takes every position of the others (all
    with step 1); else None."""
    cuts = [k for k, (ent, d) in enumerate(zip(index, shape)) if ent != (0, d, 1)]
    if len(index) != len(shape) or len(cuts) != 1 or not isinstance(index[cuts[0]], tuple) or \
            index[cuts[0]][2] != 1:
        return None
    return cuts[0], index[cuts[0]][0], index[cuts[0]][1]


class Pieces:
    """Writer's lazy concatenations and in-place carries."""

    def lazy(self, v) -> bool:
        """Whether array value `v` may stay a Cat: read only by element-wise equations of its shape, slices and
        updates of it, and copies of its graph's outputs."""
        readers = self.readers.get(v)
        return bool(readers) and all(
            e is None or e.prim in self.elementwise and tuple(e.out.shape) == tuple(v.shape) or
            e.prim in CUTTING and e.inputs[0] is v and all(a is not v for a in e.inputs[1:]) for e in readers)

    def settle(self, out, axis, pieces):
        """Value `out` is the concatenation of `pieces`: a Cat when it may stay one, else a buffer written."""
        if self.lazy(out) and all(isinstance(p.op, (View, Fill)) for p in pieces):
            if len(pieces) == 1:  # one piece is the whole value
                self.arr[out] = pieces[0].op
                return
            if pieces:
                self.arr[out] = Cat(axis, tuple(out.shape), tuple(pieces))
                return
        self.write_pieces(self.buffer(out), axis, pieces)

    def op_concatenate(self, e):
        axis = e.params["axis"]
        pieces, start = [], 0
        for x in e.inputs:
            if x.shape[axis]:
                pieces.append(Piece(start, x.shape[axis], tuple(x.shape), self.operand(x)))
            start += x.shape[axis]
        self.settle(e.out, axis, pieces)

    def op_update_slice(self, e):
        x, v = e.inputs
        cuts = block(e.params["index"], x.shape) if x.shape else None
        if cuts is None or tuple(v.shape) != tuple(x.shape[:cuts[0]]) + (cuts[2],) + tuple(x.shape[cuts[0] + 1:]):
            return Ops.op_update_slice(self, e)
        axis, start, length = cuts
        shape, op = tuple(x.shape), self.operand(x, pieces=True)
        rest = start + length
        self.settle(e.out, axis, [*cut(op, shape, axis, 0, start, 0),
                                   *cut(self.operand(v), tuple(v.shape), axis, 0, length, start),
                                   *cut(op, shape, axis, rest, shape[axis] - rest, rest)])

    def op_slice(self, e):
        x = e.inputs[0]
        op = self.arr.get(x) if x.shape else None
        if isinstance(op, Cat):
            ent = e.params["index"][op.axis]
            lo, n = (ent, 1) if isinstance(ent, int) else ent[:2]
            inside = [p for p in op.pieces if p.start <= lo and lo + n <= p.start + p.length]
            if inside and (isinstance(ent, int) or ent[2] == 1 or n == 1):
                p = inside[0]
                index = list(e.params["index"])
                index[op.axis] = lo - p.start if isinstance(ent, int) else (lo - p.start, n, 1)
                if self.slice_of(e, p.op, tuple(index)):
                    return
            self.materialize(x)
        Ops.op_slice(self, e)

    def slice_of(self, e, op, index) -> bool:
        """Slice e's value as `op` (a View or Fill) indexed, when its view is as numba's kernel types it (a C
        array's: the concatenation numba writes out); False to copy the concatenation first."""
        out = e.out
        if isinstance(op, Fill):
            if out.shape:
                self.arr[out] = op
            else:
                self.define(out, const(op.value))
            return True
        view = op.sliced(index)
        if not out.shape:
            self.load_scalar(out, view)
            return True
        layout = indexed_layout("C", len(e.inputs[0].shape), [
            "int" if isinstance(i, int) else "slice" if i[2] == 1 else "step" for i in e.params["index"]])
        if layout == "C" and not view.contiguous():
            return False
        self.arr[out], self.layouts[out] = view, layout
        return True

    def write_pieces(self, out: View, axis, pieces):
        """out = the concatenation of `pieces` (a piece already where it goes is not copied)."""
        for p in pieces:
            region = View(out.base, out.offset + p.start * out.strides[axis], p.shape, out.strides, out.dyn)
            if not same_place(p.op, region):
                self.copy(region, p, p.op, p.shape)

    def materialize(self, a) -> View:
        """Concatenation `a` copied into a buffer, which later readers read."""
        cat = self.arr[a]
        out = self.scratch(a.shape)
        self.write_pieces(out, cat.axis, cat.pieces)
        self.arr[a] = out
        return out

    def regions(self, ops, shape, sums, shifts=False) -> list:
        """The run's loop nests as (shape, operands, axis, lo): one (shape, ops, None, 0) without concatenations;
        else one per stretch of the axis of the first concatenation read, the others copied first (all of them
        for a run that sums; those along the last axis of a run with shifts and more axes: a shift carries its
        value from one stretch to the next only along a single loop)."""
        axis = None
        for a, op in ops.items():
            if isinstance(op, Cat):
                at = op.axis + len(shape) - len(a.shape)
                if axis is None and not sums and not (shifts and len(shape) > 1 and at == len(shape) - 1):
                    axis = at
                if at != axis:
                    ops[a] = self.materialize(a)
        if axis is None:
            return [(shape, ops, None, 0)]
        cuts = {0, shape[axis]}
        for op in ops.values():
            if isinstance(op, Cat):
                cuts.update(p.start for p in op.pieces)
        cuts = sorted(cuts)
        out = []
        for lo, hi in zip(cuts, cuts[1:]):
            sub = tuple(shape[:axis]) + (hi - lo,) + tuple(shape[axis + 1:])
            out.append((sub, {a: narrow(op, a.shape, shape, axis, lo, hi - lo) for a, op in ops.items()}, axis, lo))
        return out

    # -- shifts ------------------------------------------------------------------------------------------
    def shifted(self, g) -> list:
        """g's equations with each `concatenate([c, v[..., :-1]], axis=-1)` (c a literal of one value, v of the
        concatenation's shape; read only by element-wise equations of its shape) an equation SHIFT(v) of the
        element-wise runs, and its slice dropped when nothing else reads it: the run reads v's element of the
        previous iteration (a phi), so v need not be stored and read again shifted (ode's stages: one loop)."""
        made = {o: e for e in g.eqns for o in e.outputs}
        out, dropped = [], set()
        for e in g.eqns:
            v = _shifted_value(e, made)
            if v is None or not self.lazy(e.out):
                out.append(e)
                continue
            s = Eqn(SHIFT, (v,), e.outputs, {"fill": e.inputs[0].fill}, e.loc)
            self.position[s] = self.position[e]
            self.last_read[v] = max(self.last_read[v], self.position[e])
            self.readers[v].append(s)
            if self.readers[e.inputs[1]] == [e]:
                dropped.add(made[e.inputs[1]])
            out.append(s)
        return [e for e in out if e not in dropped]

    def shift(self, e, v, lasts) -> str:
        """Shift e's element: a phi in the innermost loop's header, its first value c (or the element before this
        stretch: `lasts`), then `v` (v's element here) of the iteration before."""
        n, pre, at = self.header
        name = f"%sh{self.fresh()}"
        first = lasts.get(e, const(e.params["fill"]))
        self.part.body.insert(at, f"  {name} = phi double [{first}, %{pre}], [{v}, %L{n}.l]")
        lasts[e] = v
        return name

    # -- in-place carries ----------------------------------------------------------------------------------
    def in_place(self, body, olds, news, carries):
        """Offer each array carry's storage to the run computing its new value (`news`, body outputs) from its
        old one (`olds`, body inputs): `self.targets` maps the new value to (the carry, what views the old value).
        Not when another output may view the old value (a, b = b, a), or the new value is two carries'."""
        made = {o: e for e in body.eqns for o in e.outputs}
        outs = list(body.outputs)
        for old, new, c in zip(olds, news, carries):
            e = made.get(new)
            if not isinstance(c, View) or e is None or e.prim not in self.elementwise and e.prim not in MOVES or \
                    outs.count(new) != 1:
                continue
            views = {old}
            for q in body.eqns:
                if q.prim in VIEWING and any(a in views for a in q.inputs):
                    views.update(q.outputs)
            if any(o in views for o in outs):
                continue
            self.targets[new] = (c, old, views)

    def target(self, e, run) -> View | None:
        """The carry storage run equation e may write its value into (None: a buffer of its own): no equation
        after the run reads the old value, and the run reads it only as itself (element for element) and not
        after e."""
        got = self.targets.get(e.out)
        if got is None:
            return None
        c, old, views = got
        last = max(self.position[q] for q in run)
        if any(self.last_read.get(v, -1) > last for v in views):
            return None
        after, temps = False, {q.out for q in run}  # the run's own values are no memory (a shift's among them)
        for q in run:
            read = [a for a in q.inputs if a in views and a not in temps]
            if read and (after or any(a is not old for a in read)):
                return None
            after = after or q is e
        return c


def _shifted_value(e, made):
    """v when equation e is concatenate([c, v[..., :-1]], axis=-1) with c a literal of one value, else None."""
    if e.prim != "concatenate" or len(e.inputs) != 2 or not e.out.shape:
        return None
    axis, shape = e.params["axis"], tuple(e.out.shape)
    c, part = e.inputs
    if axis not in (len(shape) - 1, -1) or shape[-1] < 2 or not isinstance(c, Lit) or c.fill is None or \
            not isinstance(part, Var) or part not in made:
        return None
    s = made[part]
    if s.prim != "slice" or tuple(s.inputs[0].shape) != shape or not isinstance(s.inputs[0], Var):
        return None
    want = tuple((0, d, 1) for d in shape[:-1]) + ((0, shape[-1] - 1, 1),)
    return s.inputs[0] if tuple(s.params["index"]) == want else None
