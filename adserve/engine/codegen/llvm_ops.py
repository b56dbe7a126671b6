"""The direct-LLVM back end's arrays and its equations other than element-wise runs and reductions.

An array value is a `View` (base, offset, strides) or a `Fill` (a literal of one value): static slices,
transposes and reshapes of contiguous values are new views of the same memory and write no code; updates copy
into a buffer of their own (no in-place update: what numba's kernel does in place, this one copies, the same
values; concatenations: llvm_pieces.py); logsumexp writes the loops of templates._logsumexp, in its order. A
view's layout as numba types it (`layouts`: C unless a view made it F or A) decides which products are BLAS
calls (llvm_contraction). `Ops` is a part of llvm_ir.Writer, which has the loops, loads and stores these call.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

from ..ir import Var
from .emit import loc_text
from .templates import kept


def const(x: float) -> str:
    """A double as LLVM writes it exactly: its bits."""
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def c_strides(shape) -> tuple:
    out, n = [], 1
    for d in reversed(shape):
        out.append(n)
        n *= d
    return tuple(reversed(out))


@dataclass(frozen=True)
class View:
    """An array value: element i at base + offset + sum(i_k * strides_k) (+ sum(index * stride) over `dyn`, the
    run-time part of the offset: (SSA index, stride) pairs, a loop's slice x[k]); base "in3", "out0", "ws" or "@K2"."""
    base: str
    offset: int
    shape: tuple
    strides: tuple
    dyn: tuple = ()

    def contiguous(self) -> bool:
        return 0 in self.shape or all(s == c for s, c, d in zip(self.strides, c_strides(self.shape), self.shape)
                                      if d != 1)

    def sliced(self, index) -> "View":
        """The view of a static index: per axis an int (the axis dropped) or (start, length, step)."""
        offset, shape, strides = self.offset, [], []
        for k, ent in enumerate(index):
            if isinstance(ent, int):
                offset += ent * self.strides[k]
            else:
                start, length, step = ent
                offset += start * self.strides[k]
                shape.append(length)
                strides.append(self.strides[k] * step)
        return View(self.base, offset, tuple(shape), tuple(strides), self.dyn)

    def row(self, k: str) -> "View":
        """The view of x[k], k a run-time index (an SSA i64) along the leading axis."""
        return View(self.base, self.offset, self.shape[1:], self.strides[1:], self.dyn + ((k, self.strides[0]),))

    def along(self, axis: int, k: str, size) -> "View":
        """The view of x[..., k, ...] (size None: the axis dropped) or x[..., k:k + size, ...] along `axis`, k a
        run-time index (an SSA i64)."""
        keep = () if size is None else (size,)
        return View(self.base, self.offset, self.shape[:axis] + keep + self.shape[axis + 1:],
                    self.strides[:axis] + (self.strides[axis],) * len(keep) + self.strides[axis + 1:],
                    self.dyn + ((k, self.strides[axis]),))

    def span(self) -> tuple:
        """The elements it may touch: [lo, hi) of its base (statically: a run-time offset spans the base)."""
        if self.dyn:
            return 0, math.inf
        if 0 in self.shape:
            return self.offset, self.offset
        lo = self.offset + sum(min(0, (d - 1) * s) for d, s in zip(self.shape, self.strides))
        hi = self.offset + sum(max(0, (d - 1) * s) for d, s in zip(self.shape, self.strides))
        return lo, hi + 1


@dataclass(frozen=True)
class Fill:
    """An array all of one value (a literal)."""
    value: float


def indexed_layout(layout: str, ndim: int, kinds) -> str:
    """numba's layout ("C", "F" or "A") of the view x[index] in its kernel (x of `layout`, `ndim` axes; per index
    "int", "slice" (no step written) or "step"): numba/core/typing/arraydecl.py's get_array_index_type without
    ellipsis or newaxis. llvm_contraction hands the products numba's kernel hands BLAS (C or F) to BLAS."""
    def keeps(kind, innermost):
        return kind == "int" or innermost and kind == "slice"

    def contiguous(ks):
        return all(keeps(k, False) for k in ks[:-1]) and (not ks or keeps(ks[-1], True))
    kinds = list(kinds)
    if layout == "C":
        return "C" if contiguous(kinds) else "A"
    if layout == "F":
        return "F" if len(kinds) == ndim and contiguous(kinds[::-1]) else "A"
    return "A"


def transposed_layout(layout: str, perm) -> str:
    """numba's layout of templates._transpose's value: x.T for (1, 0), else np.transpose's ("A")."""
    return {"C": "F", "F": "C"}.get(layout, "A") if tuple(perm) == (1, 0) else "A"


class Ops:
    """Writer's equations other than runs: `op_<prim>(eqn)`."""

    def op_slice(self, e):
        x, out = e.inputs[0], e.out
        op = self.operand(x)
        if isinstance(op, str):  # a scalar's empty index
            return self.define(out, op)
        if isinstance(op, Fill):
            return self.define(out, const(op.value)) if not out.shape else self.arr.__setitem__(out, op)
        view = op.sliced(e.params["index"])
        if out.shape:
            self.arr[out] = view
            self.layouts[out] = indexed_layout(self.layout(x), len(x.shape), [
                "int" if isinstance(i, int) else "slice" if i[2] == 1 else "step" for i in e.params["index"]])
        else:
            self.load_scalar(out, view)

    def op_transpose(self, e):
        op, perm = self.operand(e.inputs[0]), e.params["perm"]
        if isinstance(e.inputs[0], Var):
            self.transposed[e.out] = (e.inputs[0], tuple(perm))
        self.layouts[e.out] = transposed_layout(self.layout(e.inputs[0]), perm)
        self.arr[e.out] = op if isinstance(op, Fill) else replace(
            op, shape=tuple(op.shape[p] for p in perm), strides=tuple(op.strides[p] for p in perm))

    def op_reshape(self, e):
        x, out = e.inputs[0], e.out
        op = self.operand(x)
        if not out.shape:
            if isinstance(op, View):
                return self.load_scalar(out, op)
            return self.define(out, op if isinstance(op, str) else const(op.value))
        if isinstance(op, Fill):
            self.arr[out] = op
            return
        if isinstance(op, str):
            return self.fill(self.buffer(out), op)
        from .llvm_homes import reshaped
        # a C-ordered view; or axes of one element gained or lost, for concatenations (a stack's column in place)
        view = reshaped(op, out.shape) if op.contiguous() or all(
            r is not None and r.prim == "concatenate" for r in self.readers.get(out, [None])) else None
        if view is None:
            copy = self.scratch(op.shape)
            self.copy(copy, x, op, op.shape)
            view = replace(copy, shape=tuple(out.shape), strides=c_strides(out.shape))
        self.arr[out] = view

    def op_update_slice(self, e):
        x, v = e.inputs
        if not x.shape:
            return self.define(e.out, self.scalar(v))
        out = self.buffer(e.out)
        self.copy(out, x, self.operand(x), x.shape)
        part = out.sliced(e.params["index"])
        self.copy(part, v, self.operand(v), part.shape)

    def index_error(self, e, hi) -> int:
        """A new run-time error: e's index outside 0..hi or not an integer (templates' message); its status."""
        self.errors.append(f"index out of range 0..{hi} or not an integer at {loc_text(e.loc)}")
        return len(self.errors)

    def as_index(self, x, hi) -> tuple:
        """(i64, ok): the double x as an index if 0 <= x <= hi and an integer (ok, an i1), else 0. Checked in
        floating point: converting an out-of-range double to an integer gives LLVM's poison."""
        n = self.fresh()
        self.emit(f"%y{n}.a = fcmp oge double {x}, 0.0")
        self.emit(f"%y{n}.b = fcmp ole double {x}, {const(hi)}")
        self.emit(f"%y{n}.f = call double @llvm.floor.f64(double {x})")
        self.emit(f"%y{n}.c = fcmp oeq double {x}, %y{n}.f")
        self.emit(f"%y{n}.d = and i1 %y{n}.a, %y{n}.b")
        self.emit(f"%y{n}.e = and i1 %y{n}.d, %y{n}.c")
        self.emit(f"%y{n}.i = fptosi double {x} to i64")
        self.emit(f"%y{n} = select i1 %y{n}.e, i64 %y{n}.i, i64 0")
        return f"%y{n}", f"%y{n}.e"

    def dyn_index(self, e, i, length) -> str:
        """templates._dyn_index: the run-time index i (a scalar atom) as an i64, checked: a NaN, a non-integer or
        one outside 0..length - size stores the error's status in `err` (reported after the point) and reads
        entry 0."""
        size = e.params["size"]
        hi = length - (1 if size is None else size)
        code = self.index_error(e, hi)
        k, ok = self.as_index(self.scalar(i), hi)
        s = self.fresh()
        self.emit(f"%y{s}.s = load i64, ptr %err")
        self.emit(f"%y{s}.t = select i1 {ok}, i64 %y{s}.s, i64 {code}")
        self.emit(f"store i64 %y{s}.t, ptr %err")
        return k

    def _gathered(self, e, idx, at):
        """templates._gathered_index: the index of idx at loop indices `at` (a gather's or scatter's) as an i64,
        checked as dyn_index's (one error per equation)."""
        n = e.inputs[0].shape[e.params["axis"]]
        code = self.codes.get(id(e))
        if code is None:
            code = self.codes[id(e)] = self.index_error(e, n - 1)
        t = self.elem(idx, self.operand(idx), at, idx.shape) if idx.shape else self.scalar(idx)
        k, ok = self.as_index(t, n - 1)
        m = self.fresh()
        self.emit(f"br i1 {ok}, label %y{m}.ok, label %y{m}.bad")
        self.label(f"y{m}.bad")
        self.emit(f"store i64 {code}, ptr %err")
        self.emit(f"br label %y{m}.ok")
        self.label(f"y{m}.ok")
        return k

    def op_gather(self, e):
        x, idx = e.inputs
        axis, ni, out = e.params["axis"], len(idx.shape), e.out
        op = self.operand(x)
        dst = self.buffer(out) if out.shape else None

        def body(loop):
            k = self._gathered(e, idx, loop[axis:axis + ni])
            v = self.elem_at(op, [*loop[:axis], k, *loop[axis + ni:]])
            if dst is None:
                self.define(out, v)
            else:
                self.store(dst, loop, v)
        if out.shape:
            self.loop(out.shape, body)
        else:
            body([])

    def op_scatter_add(self, e):
        x, v, idx = e.inputs
        axis, ni = e.params["axis"], len(idx.shape)
        out = self.buffer(e.out)
        self.copy(out, x, self.operand(x), x.shape)
        op = self.operand(v)

        def body(loop):
            k = self._gathered(e, idx, loop[axis:axis + ni])
            at = [*loop[:axis], k, *loop[axis + ni:]]
            p = self.address(out, list(zip(at, out.strides)))
            n = self.fresh()
            self.emit(f"%g{n} = load double, ptr {p}")
            self.emit(f"%g{n}.s = fadd double %g{n}, {self.elem(v, op, loop, v.shape)}")
            self.emit(f"store double %g{n}.s, ptr {p}")
        self.loop(v.shape, body)

    def _arg(self, e):
        """argmax/argmin (templates._arg): the first best position, the first NaN counting as best."""
        x, axis, out = e.inputs[0], e.params["axis"], e.out
        op = self.operand(x)
        better = "ogt" if e.prim == "argmax" else "olt"
        if axis is None:  # of x flattened: a loop over a contiguous copy's elements
            if not (isinstance(op, View) and op.contiguous()):
                flat = self.scratch(x.shape)
                self.copy(flat, x, op, x.shape)
                op = flat
            op = replace(op, shape=(math.prod(x.shape),), strides=(1,))
            shape, axis, xs = (), 0, (math.prod(x.shape),)
        else:
            shape, xs = tuple(out.shape), tuple(x.shape)
        dst = self.buffer(out) if out.shape else None

        def body(idx):
            def at(k):
                return self.elem_at(op, [*idx[:axis], k, *idx[axis:]])
            n = self.fresh()
            first = at("0")
            pre = self.block
            self.emit(f"br label %A{n}")
            self.label(f"A{n}")
            self.emit(f"%A{n}.j = phi i64 [1, %{pre}], [%A{n}.jn, %A{n}.l]")
            self.emit(f"%A{n}.bi = phi i64 [0, %{pre}], [%A{n}.bi2, %A{n}.l]")
            self.emit(f"%A{n}.bv = phi double [{first}, %{pre}], [%A{n}.bv2, %A{n}.l]")
            self.emit(f"%A{n}.c = icmp slt i64 %A{n}.j, {xs[axis]}")
            self.emit(f"br i1 %A{n}.c, label %A{n}.b, label %A{n}.x")
            self.label(f"A{n}.b")
            w = at(f"%A{n}.j")
            self.emit(f"%A{n}.o = fcmp ord double %A{n}.bv, %A{n}.bv")  # bv == bv
            self.emit(f"%A{n}.u = fcmp uno double {w}, {w}")  # w != w
            self.emit(f"%A{n}.g = fcmp {better} double {w}, %A{n}.bv")
            self.emit(f"%A{n}.h = or i1 %A{n}.u, %A{n}.g")
            self.emit(f"%A{n}.t = and i1 %A{n}.o, %A{n}.h")
            self.emit(f"%A{n}.bv2 = select i1 %A{n}.t, double {w}, double %A{n}.bv")
            self.emit(f"%A{n}.bi2 = select i1 %A{n}.t, i64 %A{n}.j, i64 %A{n}.bi")
            self.emit(f"br label %A{n}.l")
            self.label(f"A{n}.l")
            self.emit(f"%A{n}.jn = add nuw nsw i64 %A{n}.j, 1")
            self.emit(f"br label %A{n}")
            self.label(f"A{n}.x")
            self.emit(f"%A{n}.f = sitofp i64 %A{n}.bi to double")
            if dst is None:
                self.define(out, f"%A{n}.f")
            else:
                self.store(dst, idx, f"%A{n}.f")
        if shape:
            self.loop(shape, body)
        else:
            body([])

    op_argmax = op_argmin = _arg

    def elem_at(self, op, at) -> str:
        """View op's element at indices `at` (SSA i64s), loaded (or a Fill's value)."""
        if isinstance(op, Fill):
            return const(op.value)
        return self.load(self.address(op, list(zip(at, op.strides))))

    def op_arange(self, e):
        out = self.buffer(e.out)

        def body(idx):
            n = self.fresh()
            self.emit(f"%g{n} = sitofp i64 {idx[0]} to double")
            self.store(out, idx, f"%g{n}")
        self.loop(out.shape, body)

    def op_dyn_slice(self, e):
        x, i = e.inputs
        axis, size, out = e.params["axis"], e.params["size"], e.out
        k = self.dyn_index(e, i, x.shape[axis])
        op = self.operand(x)
        if isinstance(op, Fill):
            return self.arr.__setitem__(out, op) if out.shape else self.define(out, const(op.value))
        view = op.along(axis, k, size)
        if out.shape:
            self.arr[out] = view
            kinds = ["slice"] * axis + ["int" if size is None else "slice"]
            self.layouts[out] = indexed_layout(self.layout(x), len(x.shape), kinds)
        else:
            self.load_scalar(out, view)

    def op_dyn_update(self, e):
        x, v, i = e.inputs
        axis, size = e.params["axis"], e.params["size"]
        k = self.dyn_index(e, i, x.shape[axis])
        out = self.buffer(e.out)
        self.copy(out, x, self.operand(x), x.shape)
        region = out.along(axis, k, size)
        if region.shape:
            self.copy(region, v, self.operand(v), region.shape)
        else:
            self.emit(f"store double {self.scalar(v)}, ptr {self.address(region, [])}")

    def _max_into(self, ptr, v):
        """acc = v if v > acc or v is NaN (logsumexp's maximum: templates._logsumexp)."""
        n = self.fresh()
        self.emit(f"%m{n}.g = load double, ptr {ptr}")
        self.emit(f"%m{n}.a = fcmp ogt double {v}, %m{n}.g")
        self.emit(f"%m{n}.b = fcmp uno double {v}, {v}")
        self.emit(f"%m{n}.c = or i1 %m{n}.a, %m{n}.b")
        self.emit(f"%m{n} = select i1 %m{n}.c, double {v}, double %m{n}.g")
        self.emit(f"store double %m{n}, ptr {ptr}")

    def _shift(self, m) -> str:
        """m if m is finite, else 0.0."""
        n = self.fresh()
        self.emit(f"%h{n}.d = fsub double {m}, {m}")
        self.emit(f"%h{n}.c = fcmp oeq double %h{n}.d, 0.0")
        self.emit(f"%h{n} = select i1 %h{n}.c, double {m}, double 0.0")
        return f"%h{n}"

    def _exp_diff(self, v, shift) -> str:
        n = self.fresh()
        self.emit(f"%d{n} = fsub double {v}, {shift}")
        self.emit(f"%d{n}.e = call double @adserve_exp(double %d{n})")
        return f"%d{n}.e"

    def op_logsumexp(self, e):
        x, out = e.inputs[0], e.out
        op, shape = self.operand(x), tuple(x.shape)
        if not out.shape:
            m = self.slot(const(-math.inf))
            self.loop(shape, lambda idx: self._max_into(m, self.elem(x, op, idx, shape)))
            n = self.fresh()
            self.emit(f"%v{n}.m = load double, ptr {m}")
            shift = self._shift(f"%v{n}.m")
            total = self.slot(const(0.0))
            self.loop(shape, lambda idx: self.add_to(
                "reduce_sum", total, self._exp_diff(self.elem(x, op, idx, shape), shift)))
            self.emit(f"%v{n}.t = load double, ptr {total}")
            self.emit(f"%v{n}.l = call double @adserve_log(double %v{n}.t)")
            self.emit(f"%v{n} = fadd double %v{n}.l, {shift}")
            return self.define(out, f"%v{n}")
        oshape = tuple(out.shape)
        m, ms = self.scratch(oshape), self.scratch(oshape)
        self.fill(m, const(-math.inf))

        def at(acc, idx):
            return self.address(acc, [(i, s) for i, s in zip(kept(e, idx), acc.strides) if i != "0"])
        self.loop(shape, lambda idx: self._max_into(at(m, idx), self.elem(x, op, idx, shape)))

        def shifts(idx):
            n = self.fresh()
            self.emit(f"%w{n} = load double, ptr {self.address(m, list(zip(idx, m.strides)))}")
            self.store(ms, idx, self._shift(f"%w{n}"))
        self.loop(oshape, shifts)
        res = self.buffer(out)
        self.fill(res, const(0.0))

        def add(idx):
            n = self.fresh()
            self.emit(f"%w{n} = load double, ptr {at(ms, idx)}")
            self.add_to("reduce_sum", at(res, idx), self._exp_diff(self.elem(x, op, idx, shape), f"%w{n}"))
        self.loop(shape, add)

        def finish(idx):
            n = self.fresh()
            self.emit(f"%w{n}.t = load double, ptr {self.address(res, list(zip(idx, res.strides)))}")
            self.emit(f"%w{n}.m = load double, ptr {self.address(ms, list(zip(idx, ms.strides)))}")
            self.emit(f"%w{n}.l = call double @adserve_log(double %w{n}.t)")
            self.emit(f"%w{n} = fadd double %w{n}.l, %w{n}.m")
            self.store(res, idx, f"%w{n}")
        self.loop(oshape, finish)
