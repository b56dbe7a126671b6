"""The direct-LLVM back end's loops and branches: `loop`, `while` and `cond`, as structured.py writes them for numba.

Each is written where it stands, its bodies walked by the same walk as the top level (Writer.walk), all in the
function being written (a body is never cut). As numba's kernel: a carry lives in storage of its own (an array in
a buffer, which is the output's when the loop's value is the kernel's output; a scalar in an alloca, which LLVM
keeps in a register), set to its initial value before the loop and to the body's new values after each
iteration (staged first where a new value's memory may be a carry's: a, b = b, a; or written into the carry by
the run computing it: llvm_pieces.in_place); a `loop`'s stacked outputs
(the VJP's tape among them) are buffers of (length, ...) filled one row an iteration; a `while` checks its
condition, then its iteration limit (the error `while_limit`: its message's status is stored in the kernel's
`err`, the loop ends and the point goes on, reported after it, as numba's), then keeps its tape rows, then runs
its body; a `cond` runs one branch into its outputs' storage.

Stopping as numba's kernels (emit.Emitter.open_loop): every outermost loop is one of the module's LOOPS; a `while`
checks the stop flag at the top of every iteration, a `loop` whose whole run is longer than
structured.UNCHECKED_STEPS too; a set flag records the point, the outermost loop's number and its iterations
done in the stop array and returns STOPPED from the function, which the kernel returns (runtime.stopped).
"""

from __future__ import annotations

import math

from ..ir import Lit
from ..limits import cost, tape_rows
from .emit import loc_text
from .llvm_ops import View, c_strides, const, indexed_layout
from .llvm_pieces import Cat
from .structured import UNCHECKED_STEPS


class Control:
    """Writer's loops and branches: `op_loop`, `op_while`, `op_cond`."""

    # -- binding and storage -----------------------------------------------------------------------------
    def bind(self, v, a):
        """Body input `v` is the outer value `a`."""
        if isinstance(a, Lit) or not a.shape:
            if v.shape:
                self.arr[v] = self.view(a)
            else:
                self.define(v, self.scalar(a))
        else:
            self.arr[v] = self.arr[a]
            self.layouts[v] = self.layout(a)

    def alloca(self) -> str:
        n = self.fresh()
        self.part.entry.append(f"  %c{n} = alloca double")
        return f"%c{n}"

    def carries(self, inits, outs) -> list:
        """The carries' storage (a View, or an alloca for a scalar), set to their initial values."""
        out = []
        for init, o in zip(inits, outs):
            if init.shape:
                c = self.buffer(o)
                self.copy(c, init, self.operand(init), init.shape)
            else:
                c = self.alloca()
                self.emit(f"store double {self.scalar(init)}, ptr {c}")
            out.append(c)
        return out

    def read_carries(self, carries, inputs):
        """At the top of an iteration: each body input of `inputs` is its carry (a scalar loaded once)."""
        for c, vs in zip(carries, inputs):
            if isinstance(c, View):
                for v in vs:
                    self.arr[v] = c
            else:
                value = self.load(c)
                for v in vs:
                    self.define(v, value)

    def put(self, dst: View, a):
        """dst (a View of a's shape; a row of a stacked output) = a."""
        if a.shape:
            self.copy(dst, a, self.operand(a, pieces=True), a.shape)
        else:
            self.emit(f"store double {self.scalar(a)}, ptr {self.address(dst, [])}")

    def carry_on(self, new, carries):
        """Each carry = the body's new value; staged first where a new value's memory may be a carry's (numba's
        structured._carry_on: a, b = b, a, or a view of a carry)."""
        ops = [self.operand(a, pieces=True) if a.shape else self.scalar(a) for a in new]
        # the carries written (a new value written in place, or unchanged, is its carry's storage already)
        bufs = [c for op, c in zip(ops, carries) if isinstance(c, View) and op != c]
        aliased = any(any(_overlap(r, b) for r in _reads(op, c) for b in bufs) for op, c in zip(ops, carries))
        assign = []
        for a, op, c in zip(new, ops, carries):
            if isinstance(c, View) and aliased and isinstance(op, (View, Cat)) and op != c:
                t = self.scratch(a.shape)
                self.copy(t, a, op, a.shape)
                op = t
            assign.append((a, op, c))
        for a, op, c in assign:
            if isinstance(c, View):
                if op != c:
                    self.copy(c, a, op, a.shape)
            else:
                self.emit(f"store double {op}, ptr {c}")

    def finish(self, outs, carries):
        """After the loop: its carries are its outputs' values."""
        for o, c in zip(outs, carries):
            if isinstance(c, View):
                self.arr[o] = c
            else:
                self.define(o, self.load(c))

    # -- stopping ----------------------------------------------------------------------------------------
    def open_loop(self, length, loc, done, check):
        """A loop's iteration starts (`done()`: its iterations done, an i64 operand): numba's Emitter.open_loop."""
        if not self.enclosing:
            self.stop_loops.append((length, loc))
            self.enclosing.append((len(self.stop_loops), done))
        else:
            self.enclosing.append(self.enclosing[0])  # a stop inside reports the outermost loop
        if check:
            self.stop_check()

    def close_loop(self):
        self.enclosing.pop()

    def stop_check(self):
        """Return STOPPED when the stop flag is set, having recorded the point, the outermost loop and its
        iterations done (plain.stopped with a loop: always recorded)."""
        loop, done = self.enclosing[0]
        n = self.fresh()
        self.emit(f"%f{n} = load atomic i64, ptr %sd monotonic, align 8")
        self.emit(f"%f{n}.s = icmp ne i64 %f{n}, 0")
        self.emit(f"br i1 %f{n}.s, label %S{n}, label %S{n}.c")
        self.label(f"S{n}")
        d = done()
        for slot, value in ((1, "%pt"), (2, str(loop)), (3, d)):
            self.emit(f"%f{n}.{slot} = getelementptr inbounds i64, ptr %sd, i64 {slot}")
            self.emit(f"store i64 {value}, ptr %f{n}.{slot}")
        self.emit("ret i64 -1")
        self.label(f"S{n}.c")

    # -- the three -------------------------------------------------------------------------------------
    def op_loop(self, e):
        """structured.loop: `for k in range(length)` (or reversed), the counter float(k), x[k] of each xs."""
        p = e.params
        body, length, nc, ncar = p["body"], p["length"], p["n_consts"], p["n_carry"]
        consts, inits, xs = e.inputs[:nc], e.inputs[nc:nc + ncar], e.inputs[nc + ncar:]
        carries = self.carries(inits, e.outputs[:ncar])
        ys = [self.buffer(o) for o in e.outputs[ncar:]]
        ins = body.inputs
        for v, a in zip(ins[1:1 + nc], consts):
            self.bind(v, a)
        n = self.fresh()
        pre = self.block
        self.emit(f"br label %W{n}")
        self.label(f"W{n}")
        j = f"%j{n}"
        self.emit(f"{j} = phi i64 [0, %{pre}], [{j}.n, %W{n}.l]")
        self.emit(f"{j}.c = icmp slt i64 {j}, {length}")
        self.emit(f"br i1 {j}.c, label %W{n}.b, label %W{n}.x")
        self.label(f"W{n}.b")
        k = j
        if p["reverse"]:
            k = f"%k{n}"
            self.emit(f"{k} = sub nsw i64 {length - 1}, {j}")
        self.open_loop(length, e.loc, lambda: j, check=length * max(cost(body)) > UNCHECKED_STEPS)
        self.emit(f"%k{n}.f = sitofp i64 {k} to double")
        self.define(ins[0], f"%k{n}.f")
        self.read_carries(carries, [[v] for v in ins[1 + nc:1 + nc + ncar]])
        for v, x in zip(ins[1 + nc + ncar:], xs):
            op = self.operand(x)
            if not isinstance(op, View):  # a literal of one value: each row is that value
                if v.shape:
                    self.arr[v] = op
                else:
                    self.define(v, const(op.value))
            elif v.shape:
                self.arr[v] = op.row(k)
                self.layouts[v] = indexed_layout(self.layout(x), len(x.shape), ["int"])
            else:
                self.load_scalar(v, op.row(k))
        body = self.nexted(body)
        self.in_place(body, ins[1 + nc:1 + nc + ncar], body.outputs[:ncar], carries)
        self.walk(body)
        for yb, y in zip(ys, body.outputs[ncar:]):
            self.put(yb.row(k), y)
        self.carry_on(body.outputs[:ncar], carries)
        self.close_loop()
        self.emit(f"br label %W{n}.l")
        self.label(f"W{n}.l")
        self.emit(f"{j}.n = add nuw nsw i64 {j}, 1")
        self.emit(f"br label %W{n}")
        self.label(f"W{n}.x")
        self.finish(e.outputs[:ncar], carries)

    def op_while(self, e):
        """structured.while_: the condition (0.0 ends the loop), the iteration limit, the tape, the body."""
        p = e.params
        cond, body, nc, max_iter, tape = p["cond"], p["body"], p["n_consts"], p["max_iter"], p["tape"]
        every, trips = p.get("every", 1), p.get("trips") or None
        consts, inits = e.inputs[:nc], e.inputs[nc:]
        nk = len(inits)
        carries = self.carries(inits, e.outputs[:nk])
        rows = [self.buffer(o) for o in e.outputs[nk + 1:]] if tape else []
        for r, init in zip(rows, inits):
            assert r.shape == (tape_rows(max_iter, every), *init.shape), (r.shape, init.shape)
        self.errors.append(f"a while loop ran past {max_iter:,} iterations, the limit "
                           f"(ADSERVE_MAX_WHILE_ITERATIONS), at {loc_text(e.loc)}")
        code = len(self.errors)
        for g in (cond, body):
            for v, a in zip(g.inputs[:nc], consts):
                self.bind(v, a)
        n = self.fresh()
        pre = self.block
        it = f"%it{n}"
        self.emit(f"br label %W{n}")
        self.label(f"W{n}")
        self.emit(f"{it} = phi i64 [0, %{pre}], [{it}.n, %W{n}.l]")

        def done():
            if not (trips and not tape and every > 1):
                return it
            m = self.fresh()
            self.emit(f"%d{m}.a = mul nsw i64 {it}, {every}")
            self.emit(f"%d{m}.b = icmp slt i64 %d{m}.a, {trips}")
            self.emit(f"%d{m} = select i1 %d{m}.b, i64 %d{m}.a, i64 {trips}")
            return f"%d{m}"
        self.open_loop(trips, e.loc, done, check=True)
        self.read_carries(carries, list(zip(cond.inputs[nc:], body.inputs[nc:])))
        self.walk(cond)
        self.emit(f"%w{n}.z = fcmp oeq double {self.scalar(cond.outputs[0])}, 0.0")
        self.emit(f"br i1 %w{n}.z, label %W{n}.x, label %W{n}.g")
        self.label(f"W{n}.g")
        self.emit(f"%w{n}.m = icmp sge i64 {it}, {max_iter}")
        self.emit(f"br i1 %w{n}.m, label %W{n}.e, label %W{n}.t")
        self.label(f"W{n}.e")
        self.emit(f"store i64 {code}, ptr %err")
        self.emit(f"br label %W{n}.x")
        self.label(f"W{n}.t")
        if rows:
            row = it
            if every > 1:
                self.emit(f"%w{n}.r = urem i64 {it}, {every}")
                self.emit(f"%w{n}.q = icmp eq i64 %w{n}.r, 0")
                self.emit(f"br i1 %w{n}.q, label %W{n}.s, label %W{n}.u")
                self.label(f"W{n}.s")
                row = f"%w{n}.k"
                self.emit(f"{row} = udiv i64 {it}, {every}")
            for r, c, v in zip(rows, carries, cond.inputs[nc:]):
                self.put(r.row(row), v)
            if every > 1:
                self.emit(f"br label %W{n}.u")
                self.label(f"W{n}.u")
        body = self.nexted(body)
        self.in_place(body, body.inputs[nc:], body.outputs, carries)
        self.walk(body)
        self.carry_on(body.outputs, carries)
        self.close_loop()
        self.emit(f"br label %W{n}.l")
        self.label(f"W{n}.l")
        self.emit(f"{it}.n = add nuw nsw i64 {it}, 1")
        self.emit(f"br label %W{n}")
        self.label(f"W{n}.x")
        self.finish(e.outputs[:nk], carries)
        if tape:
            self.emit(f"%it{n}.f = sitofp i64 {it} to double")
            self.define(e.outputs[nk], f"%it{n}.f")
            for o, r in zip(e.outputs[nk + 1:], rows):
                self.arr[o] = r

    def op_cond(self, e):
        """structured.cond: `if pred != 0.0` (NaN too) the true branch, else the false one, into the outputs."""
        pred, ops = e.inputs[0], e.inputs[1:]
        outs = [self.buffer(o) if o.shape else self.alloca() for o in e.outputs]
        n = self.fresh()
        self.emit(f"%w{n}.p = fcmp une double {self.scalar(pred)}, 0.0")
        self.emit(f"br i1 %w{n}.p, label %C{n}.t, label %C{n}.f")
        for branch, name in ((e.params["true_body"], "t"), (e.params["false_body"], "f")):
            self.label(f"C{n}.{name}")
            for v, a in zip(branch.inputs, ops):
                self.bind(v, a)
            self.walk(branch)
            for dst, a, o in zip(outs, branch.outputs, e.outputs):
                if o.shape:
                    self.copy(dst, a, self.operand(a, pieces=True), o.shape)
                else:
                    self.emit(f"store double {self.scalar(a)}, ptr {dst}")
            self.emit(f"br label %C{n}.m")
        self.label(f"C{n}.m")
        for o, dst in zip(e.outputs, outs):
            if not o.shape:
                self.define(o, self.load(dst))


def _reads(op, c) -> list:
    """The views copying new value `op` into carry `c` reads (not a piece already where it goes, nor `c` itself
    when it is the new value)."""
    if isinstance(op, Cat):
        return [p.op for p in op.pieces if isinstance(p.op, View) and p.op != View(
            c.base, c.offset + p.start * c.strides[op.axis], p.shape, c.strides, c.dyn)]
    return [op] if isinstance(op, View) and op != c else []


def _overlap(a: View, b: View) -> bool:
    if a.base != b.base:
        return False
    (lo, hi), (lo2, hi2) = a.span(), b.span()
    return lo < hi2 and lo2 < hi
