"""The LLVM writer's loop nests and accumulators (a mixin of llvm_ir.Writer): loops over a shape (ascending, or
the last axis descending for next-element reads, llvm_next.py), stores, fills and copies, and the scalar or
array accumulators reductions add into, with numba's semantics (templates.ACCUMULATORS).
"""

from __future__ import annotations

from .llvm_ops import View
from .llvm_pieces import Cat
from .templates import kept


class Loops:
    # -- loops ----------------------------------------------------------------------------------------
    def open_loops(self, shape) -> list:
        """A loop nest over `shape` (no element empty): its (number, length) pairs, innermost last; the index of
        loop n is %i<n>."""
        idx = []
        for d in shape:
            n = self.fresh()
            pre = self.block
            self.emit(f"br label %L{n}")
            self.label(f"L{n}")
            self.emit(f"%i{n} = phi i64 [0, %{pre}], [%i{n}.n, %L{n}.l]")
            self.header = (n, pre, len(self.part.body))  # where a shift's phi goes (llvm_pieces)
            idx.append((n, d))
        self.part.loops += len(shape)
        self.memo = {}
        return idx

    def close_loops(self, idx_shape):
        for n, d in reversed(idx_shape):
            self.emit(f"br label %L{n}.l")
            self.label(f"L{n}.l")
            self.emit(f"%i{n}.n = add nuw nsw i64 %i{n}, 1")
            self.emit(f"%i{n}.c = icmp ult i64 %i{n}.n, {d}")
            self.emit(f"br i1 %i{n}.c, label %L{n}, label %L{n}.x{self.sum_loop_hint(n)}")
            self.label(f"L{n}.x")
        self.memo = {}

    def loop(self, shape, body, descending=False):
        """Run body(idx) in a loop nest over shape (nothing when shape has no elements); `descending`: the last
        axis from its end."""
        if 0 in shape:
            return
        nest = self.open_loops(shape)
        idx = [f"%i{n}" for n, _ in nest]
        if descending:
            n, d = nest[-1]
            self.emit(f"%i{n}.d = sub nuw nsw i64 {d - 1}, %i{n}")
            idx[-1] = f"%i{n}.d"
        body(idx)
        self.close_loops(nest)

    def store(self, view: View, idx, value):
        self.emit(f"store double {value}, ptr {self.address(view, list(zip(idx, view.strides)))}")

    def fill(self, view: View, value: str):
        self.loop(view.shape, lambda idx: self.store(view, idx, value))

    def copy(self, dst: View, a, op, shape):
        """dst (of `shape`) = operand a, broadcast (a Cat: piece by piece)."""
        if isinstance(op, Cat):
            return self.write_pieces(dst, op.axis, op.pieces)
        self.loop(shape, lambda idx: self.store(dst, idx, self.elem(a, op, idx, shape)))

    # -- accumulators -----------------------------------------------------------------------------------
    def accumulate(self, prim, acc, v, exact=False) -> str:
        """The accumulator's next value (templates.ACCUMULATORS: max/min keep a NaN, and of two zeros max is 0.0
        and min -0.0): numba's one select (`v` if it is better, NaN, or equal with the sign that wins) is
        IEEE 754-2019's maximum and minimum, LLVM's llvm.maximum and llvm.minimum (a NaN's payload aside,
        nobody's answer), which its vectoriser knows as reductions, where it cannot see one in the select.
        An `exact` sum (of values that are 0.0 or 1.0: a count, exact below 2**53 in any order) may be
        reassociated: LLVM adds it in parallel lanes, and the total is the scalar loop's, bit for bit."""
        n = self.fresh()
        if prim in ("reduce_sum", "sum_to"):
            self.emit(f"%q{n} = fadd {'reassoc ' if exact else ''}double {acc}, {v}")
            return f"%q{n}"
        fn = "llvm.maximum.f64" if prim == "reduce_max" else "llvm.minimum.f64"
        self.emit(f"%q{n} = call double @{fn}(double {acc}, double {v})")
        return f"%q{n}"

    def slot(self, start) -> str:
        """A scalar accumulator (an alloca LLVM keeps in a register), set to `start` here."""
        n = self.fresh()
        self.part.entry.append(f"  %acc{n} = alloca double")
        self.emit(f"store double {start}, ptr %acc{n}")
        return f"%acc{n}"

    def element(self, e, acc: View, idx) -> str:
        """A pointer to the element of reduction e's accumulator that the input's element at `idx` goes to."""
        return self.address(acc, [(i, s) for i, s in zip(kept(e, idx), acc.strides) if i != "0"])

    def load(self, ptr) -> str:
        """The double at `ptr`, loaded here."""
        n = self.fresh()
        self.emit(f"%g{n} = load double, ptr {ptr}")
        return f"%g{n}"

    def add_to(self, prim, ptr, v, exact=False):
        self.emit(f"store double {self.accumulate(prim, self.load(ptr), v, exact)}, ptr {ptr}")
