"""The direct-LLVM back end's code writer: a plan's kernel as LLVM IR text, without numba.

A plan in scope (`declined(graph)` is empty) is written here instead of as numba source: element-wise equations
(a table row with an `ir` template), reductions (sum, max, min, sum_to, logsumexp), broadcasts, static slices,
reshapes, transposes, updates, run-time indices, gathers and scatters, argmax/argmin and arange (llvm_ops.py),
concatenations, shifts and in-place carries (llvm_pieces.py), next-element reads (llvm_next.py), contractions
(llvm_contraction.py: numba's loop nests, shared passes and BLAS calls), loops,
`while` and `cond` with their bodies (llvm_control.py); loop nests and accumulators are llvm_loops.py's. Only plans of more than MAX_ARRAYS inputs and outputs stay
on numba, decided before any code is written.

The kernel computes what numba's does, operation for operation: the same fusion of same-shape element-wise runs
(reductions accumulate in the loop computing what they reduce, in the same order: one element after the other,
row-major, so sums round the same; a count may be added in any order, its total exact), the table's IR
templates for the elements, no fast-math flags. Scalars are
SSA registers; an array is a view (base, offset, strides) of an input row, an output row, a module constant or
the workspace (segments of up to SEGMENT doubles, each malloc'd per call). Views of views (slices, transposes,
reshapes of contiguous values) cost nothing. The code is cut into `noinline` functions of at most MAX_LOOPS loops, called in order for every
point, so LLVM's cost grows with the kernel's size, not faster; a scalar crossing a cut goes through the
workspace. See llvm_kernel.py for the calling convention, compiling and loading.
"""

from __future__ import annotations

import math

from ..builder import PRIMS
from ..ir import Graph, Lit, Var, sub_graphs
from .llvm_contraction import Contract
from .llvm_control import Control
from .llvm_ops import Fill, Ops, View, c_strides, const
from .llvm_pieces import SHIFT, Cat, Pieces, narrow
from .llvm_homes import Homes
from .llvm_loops import Loops
from .llvm_next import NEXT, PATCH, Nexts, ordered
from .llvm_split import Split
from .schedule import kernel_order
from .templates import kept

MAX_LOOPS = 28  # loops per function: LLVM's time grows faster than linearly in a function's size
MAX_ARRAYS = 200  # inputs and outputs: each is an argument of every function
SEGMENT = 1 << 21  # doubles (16 MiB): a workspace segment's size, unless one array needs more
STOPPED = -1
IR = {name: p.ir for name, p in PRIMS.items() if p.ir}
# reductions accumulated in a fused loop: (start, the update) as in templates.ACCUMULATORS
SUMS = ("reduce_sum", "reduce_max", "reduce_min", "sum_to")
START = {"reduce_sum": 0.0, "sum_to": 0.0, "reduce_max": -math.inf, "reduce_min": math.inf}
OTHERS = {"logsumexp", "slice", "transpose", "reshape", "update_slice", "concatenate", "dyn_slice", "dyn_update",
          "gather", "scatter_add", "argmax", "argmin", "arange", "einsum"}
CONTROL = {"loop", "while", "cond"}  # written with their bodies (llvm_control.py)
RUNS = {*IR, SHIFT, NEXT, PATCH}  # equations of element-wise runs
ASCENDING = {SHIFT, *SUMS}  # run equations a descending run may not hold (llvm_next.ordered)


def declined(graph: Graph) -> set:
    """The primitives of `graph` (bodies included) the LLVM back end does not write (its plans stay on numba);
    empty: in scope."""
    out: set = set()

    def visit(g):
        for e in g.eqns:
            if e.prim in CONTROL:
                for body in sub_graphs(e):
                    visit(body)
            elif e.prim not in IR and e.prim not in SUMS and e.prim not in OTHERS:
                out.add(e.prim)
    visit(graph)
    if len(graph.inputs) + len(graph.outputs) > MAX_ARRAYS:
        out.add(f"more than {MAX_ARRAYS} inputs and outputs")
    return out


class Part:
    """One function being written: its entry block (loads, allocas), body and the stores of scalars later
    functions read (before it returns)."""

    def __init__(self, index):
        self.index = index
        self.entry: list = []
        self.body: list = []
        self.tail: list = []
        self.loops = 0
        self.cache: dict = {}


class Writer(Pieces, Nexts, Ops, Control, Contract, Split, Homes, Loops):
    """Writes one plan's kernel; `module(symbol)` is the LLVM module text."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.n_in, self.n_out = len(graph.inputs), len(graph.outputs)
        self.count = 0
        self.segments = [0]  # doubles of each workspace segment (scratch)
        self.consts: list = []
        self.loop_hints: dict = {}  # a loop hint's metadata text -> its node's number (llvm_split.sum_loop_hint)
        self.literals: dict = {}  # Lit of explicit data -> its module constant's view
        self.scal: dict = {}  # scalar Var -> ("in", j) or (part index, SSA name)
        self.arr: dict = {}   # array Var -> View or Fill
        self.slots: dict = {}  # scalar Var -> its workspace slot (read by a later function)
        self.taken: set = set()  # outputs rows holding a value already
        self.parts = [Part(0)]
        self.block = "b0"
        self.memo: dict = {}  # loads and index arithmetic of the block being written (a label clears it)
        self.errors: list = []  # run-time error messages: status k is errors[k - 1]
        self.codes: dict = {}  # id of a gather or scatter -> its error's status
        self.stop_loops: list = []  # (length or None, location) of each outermost loop, as numba's LOOPS
        self.enclosing: list = []  # the loops open where code is written: (number in stop_loops, its done())
        self.pairs: dict = {}  # einsum -> the one sharing its pass over a large operand (schedule.py), as numba's
        self.joined: set = set()  # the second einsums of pairs: written with the first
        self.transposed: dict = {}  # a transpose -> (the value it views, perm): contraction.nest's loop order
        self.layouts: dict = {}  # an array value numba's kernel types "F" or "A" (llvm_contraction.layout)
        self.blas: set = set()  # the BLAS functions called (bound when the module is loaded)
        self.contractions = False  # whether it holds one (llvm_kernel._level: -O2 for more functions)
        self.elementwise = IR
        self.readers: dict = {}  # value -> the equations reading it (None: its graph's output), of every graph
        self.position: dict = {}  # equation -> its place in its graph's order
        self.last_read: dict = {}  # value -> the last place reading it in its graph (outputs: past the end)
        self.homes: dict = {}  # value -> the region of an output row it is computed in (llvm_homes.py)
        self.targets: dict = {}  # a loop body's new carry value -> the carry it may be written into (llvm_pieces)
        self.rewritten: dict = {}  # a graph -> it with its next-element reads as NEXT and PATCH (llvm_next)

    @property
    def part(self) -> Part:
        return self.parts[-1]

    def fresh(self) -> int:
        self.count += 1
        return self.count

    def emit(self, line):
        self.part.body.append("  " + line)

    def label(self, name):
        self.part.body.append(f"{name}:")
        self.block = name
        self.memo = {}  # what an earlier block computed need not dominate this one

    # -- values ----------------------------------------------------------------------------------------
    def scalar(self, a) -> str:
        """A scalar value as an operand (at the top level of the current function)."""
        if isinstance(a, Lit):
            return const(a.fill if a.fill is not None else a.data[0])
        where = self.scal[a]
        part = self.part
        if where[0] == "in":
            key = ("in", where[1])
            if key not in part.cache:
                part.cache[key] = f"%s{self.fresh()}"
                part.entry.append(f"  {part.cache[key]} = load double, ptr %r{where[1]}")
            return part.cache[key]
        index, name = where
        if index == part.index:
            return name
        if a not in self.slots:
            self.slots[a] = self.segments[0]
            self.segments[0] += 1
            self.parts[index].tail.append(f"  %x{self.fresh()} = getelementptr inbounds double, ptr %ws0, i64 "
                                          f"{self.slots[a]}")
            self.parts[index].tail.append(f"  store double {name}, ptr %x{self.count}")
        key = ("slot", self.slots[a])
        if key not in part.cache:
            n = self.fresh()
            part.entry.append(f"  %x{n} = getelementptr inbounds double, ptr %ws0, i64 {self.slots[a]}")
            part.entry.append(f"  %s{n} = load double, ptr %x{n}")
            part.cache[key] = f"%s{n}"
        return part.cache[key]

    def define(self, v, name):
        self.scal[v] = (self.part.index, name)

    def view(self, a):
        """An array operand: a View or a Fill."""
        if isinstance(a, Lit):
            if a.fill is not None:
                return Fill(a.fill)
            if a not in self.literals:
                key = f"@K{len(self.consts)}"
                self.consts.append(f"{key} = private unnamed_addr constant [{len(a.data)} x double] "
                                   f"[{', '.join('double ' + const(x) for x in a.data)}]")
                self.literals[a] = View(key, 0, tuple(a.shape), c_strides(a.shape))
            return self.literals[a]
        return self.arr[a]

    def buffer(self, v) -> View:
        """Where array `v` is computed: its row of the output array (the first output it is, once), else the
        workspace."""
        for j, o in enumerate(self.graph.outputs):
            if o is v and j not in self.taken:
                self.taken.add(j)
                view = View(f"out{j}", 0, tuple(v.shape), c_strides(v.shape))
                break
        else:
            view = self.homes.get(v) or self.scratch(v.shape)
        self.arr[v] = view
        return view

    def scratch(self, shape) -> View:
        """A C-ordered array of `shape` in the workspace: in the last segment, or a new one past SEGMENT doubles.
        The driver mallocs each segment per call; below glibc's largest mmap threshold (32 MiB), a freed
        segment's memory is used again by the next call's malloc, where one larger block is mapped and its pages
        zeroed by the system on every call (k-means' 40 MB: 20-40% of the kernel's time)."""
        n = math.prod(shape)
        if self.segments[-1] and self.segments[-1] + n > SEGMENT:
            self.segments.append(0)
        view = View(f"ws{len(self.segments) - 1}", self.segments[-1], tuple(shape), c_strides(shape))
        self.segments[-1] += n
        return view

    @property
    def ws(self) -> int:
        """Doubles of workspace, all segments."""
        return sum(self.segments)

    def address(self, view: View, terms) -> str:
        """A pointer to view's element at sum(index * stride) over `terms` ((SSA index, stride) pairs)."""
        base = f"%{view.base}" if view.base.startswith("ws") else \
            f"%r{view.base[2:]}" if view.base.startswith("in") else \
            f"%r{self.n_in + int(view.base[3:])}" if view.base.startswith("out") else view.base
        offset = view.offset
        terms = [*terms, *view.dyn]
        key = ("at", base, offset, tuple(terms))
        if key in self.memo:
            return self.memo[key]
        total = None
        for i, stride in terms:
            if stride == 0:
                continue
            t = i
            if stride != 1:
                t = f"%a{self.fresh()}"
                self.emit(f"{t} = mul nsw i64 {i}, {stride}")
            if total is not None:
                s = f"%a{self.fresh()}"
                self.emit(f"{s} = add nsw i64 {total}, {t}")
                t = s
            total = t
        if total is None:
            index = str(offset)
        elif offset:
            index = f"%a{self.fresh()}"
            self.emit(f"{index} = add nsw i64 {total}, {offset}")
        else:
            index = total
        p = f"%p{self.fresh()}"
        self.emit(f"{p} = getelementptr inbounds double, ptr {base}, i64 {index}")
        self.memo[key] = p
        return p

    def terms(self, view: View, a_shape, idx, shape):
        """(index, stride) of operand `a` (shape a_shape, NumPy-broadcast to `shape`) at loop indices idx."""
        r, q = len(shape), len(a_shape)
        return [(idx[j + r - q], view.strides[j]) for j in range(q)
                if not (a_shape[j] == 1 and shape[j + r - q] != 1) and a_shape[j] != 1]

    def elem(self, a, op, idx, shape) -> str:
        """Operand `a` (resolved as `op`: a scalar operand, a View or a Fill) at loop indices idx of shape."""
        if isinstance(op, str):
            return op
        if isinstance(op, Fill):
            return const(op.value)
        p = self.address(op, self.terms(op, a.shape, idx, shape))
        key = ("ld", p)
        if key not in self.memo:
            self.memo[key] = f"%l{self.fresh()}"
            self.emit(f"{self.memo[key]} = load double, ptr {p}")
        return self.memo[key]

    def operand(self, a, pieces=False):
        """A scalar operand, a View, a Fill, or (`pieces`: for an element-wise run) a Cat."""
        if not a.shape:
            return self.scalar(a)
        op = self.view(a)
        return self.materialize(a) if isinstance(op, Cat) and not pieces else op

    def apply(self, prim, args) -> str:
        t = f"e{self.fresh()}."
        for line in IR[prim].format(*args, t=t).split("\n"):
            self.emit(line)
        return f"%{t}r"

    # -- the walk ----------------------------------------------------------------------------------------
    def write(self):
        """The kernel's body for one point: every equation, then the outputs into their rows."""
        g = self.graph
        for j, v in enumerate(g.inputs):
            if v.shape:
                self.arr[v] = View(f"in{j}", 0, tuple(v.shape), c_strides(v.shape))
            else:
                self.scal[v] = ("in", j)
        self.walk(g, top=True)
        self.item(self.outputs)

    def walk(self, g: Graph, top=False):
        """g's equations (the kernel's graph, `top`, cut into functions between them; or a body, all in the
        function being written)."""
        item = self.item if top else (lambda fn, *args: fn(*args))
        if top:  # numba's order: the same kernel_order as fusion.Source.graph
            g, pairs = kernel_order(g)
            self.pairs.update(pairs)
        g = self.nexted(g)
        for k, e in enumerate(g.eqns):
            self.position[e] = k
            for a in e.inputs:
                self.readers.setdefault(a, []).append(e)
                self.last_read[a] = k
        for a in g.outputs:
            self.readers.setdefault(a, []).append(None)
            self.last_read[a] = len(g.eqns)
        eqns = self.shifted(g)
        if top:
            self.place(eqns)
        uses: dict = {}
        for e in eqns:
            for a in e.inputs:
                uses[a] = uses.get(a, 0) + 1
        for a in g.outputs:
            uses[a] = uses.get(a, 0) + 2
        # the runs of fusion.Source._graph: same-shape element-wise equations and the sums of what they compute
        # share one loop nest; an equation reading nothing the open run computes is written ahead of its loop
        run, made, totals = [], set(), set()
        for e in eqns:
            if run and e.prim == NEXT and e.out.shape == run[0].out.shape and not ordered(run, e, ASCENDING):
                head, tail = self.tail(run, ASCENDING)
                if tail:  # the tail joins the NEXT's descending run
                    item(self.fused, head, uses, run[0].out.shape)
                    run, made, totals = tail, {q.out for q in tail}, set()
            if run and not any(a in totals for a in e.inputs) and ordered(run, e, ASCENDING) and (
                    e.prim in RUNS and e.out.shape == run[0].out.shape or e.prim in SUMS and e.inputs[0] in made):
                run.append(e)
                made.add(e.out)
                if e.prim in SUMS:
                    totals.add(e.out)
                continue
            partner = self.pairs.get(e)
            if run and any(a in made for a in (e.inputs if partner is None else (*e.inputs, *partner.inputs))):
                item(self.fused, run, uses, run[0].out.shape)
                run, made, totals = [], set(), set()
            if e.prim in RUNS and e.out.shape:
                if run:  # (a NEXT meeting a shift or a sum of the open run among them)
                    item(self.fused, run, uses, run[0].out.shape)
                run, made, totals = [e], {e.out}, set()
                continue
            item(self.eqn, e, uses)
        if run:
            item(self.fused, run, uses, run[0].out.shape)

    def item(self, fn, *args):
        if self.part.loops >= MAX_LOOPS:
            self.parts.append(Part(len(self.parts)))
            self.block = "b0"
        fn(*args)

    def eqn(self, e, uses):
        if e.prim in IR:  # a scalar
            self.define(e.out, self.apply(e.prim, [self.scalar(a) for a in e.inputs]))
        elif e.prim in SUMS:
            self.fused([e], uses, e.inputs[0].shape)
        else:
            getattr(self, "op_" + e.prim)(e)

    def fused(self, run, uses, shape):
        made = {e.out for e in run}
        inside: dict = {}
        for e in run:
            for a in e.inputs:
                inside[a] = inside.get(a, 0) + 1
        ops = {}
        for e in run:
            for a in e.inputs:
                if a not in made and a not in ops:
                    ops[a] = self.operand(a, pieces=True)
        carried = False
        for e in run:
            if e.prim not in SUMS and e.out.shape and uses.get(e.out, 0) > inside.get(e.out, 0):
                carry = self.target(e, run)
                if carry is None:
                    self.buffer(e.out)
                else:
                    self.arr[e.out] = carry
                    carried = True
        # sums of a comparison's 0.0 and 1.0 (a row with a `truth`: the max's ties in lse's gradient) are counts
        # (a run's SHIFT, NEXT and PATCH equations are this writer's own, rows of no table)
        maker = {e.out: e for e in run}
        counts = {e for e in run if e.prim in ("reduce_sum", "sum_to") and (x := maker.get(e.inputs[0])) is not None
                  and x.prim in PRIMS and "truth" in PRIMS[x.prim].extra}
        accs = {}
        for e in run:
            if e.prim in SUMS:
                if e.out.shape:
                    accs[e] = self.buffer(e.out)
                    self.fill(accs[e], const(START[e.prim]))
                else:
                    accs[e] = self.slot(const(START[e.prim]))

        descending = any(e.prim == NEXT for e in run)  # its next element the previous iteration's (llvm_next)
        # a descending run, or one placing elements by their index (PATCH), reads no concatenation in stretches
        whole = descending or any(e.prim == PATCH for e in run)
        nests = self.regions(ops, shape, bool(accs) or whole, any(e.prim == SHIFT for e in run))
        lasts: dict = {}  # a shift -> its value's element of the last iteration written (the next stretch's first)

        def body(idx, ops=ops, shape=shape, dsts=self.arr, eqns=run, saved=None):
            temps: dict = {}
            for e in eqns:
                if saved and e.out in saved:  # a call's result, from the first loop of a split run
                    temps[e.out] = self.elem(e.out, saved[e.out], idx, shape)
                    continue
                args = [temps[a] if a in temps else self.elem(a, ops[a], idx, shape) for a in e.inputs]
                acc = accs.get(e)
                if acc is None:
                    if e.prim in (SHIFT, NEXT):
                        t = self.shift(e, args[0], lasts)
                    elif e.prim == PATCH:
                        t = self.patch(args, idx[-1], shape[-1])
                    else:
                        t = self.apply(e.prim, args)
                    temps[e.out] = t
                    if not e.out.shape:
                        self.define(e.out, t)
                    elif e.out in dsts:
                        self.store(dsts[e.out], idx, t)
                elif e in held:
                    self.add_to(e.prim, held[e], args[0], e in counts)
                elif isinstance(acc, View):
                    self.add_to(e.prim, self.element(e, acc, idx), args[0], e in counts)
                else:
                    self.add_to(e.prim, acc, args[0], e in counts)
        # an accumulator whose element stays put along the innermost loop (a sum over the last axis) is loaded
        # before that loop and stored after it, a register in between, as numba's source keeps it in a local:
        # LLVM cannot tell its address from the loop's other loads of the workspace, so it would load and store
        # it every iteration, a chain through memory (k-means' nearest-centre minimum: 1.4x numba's time)
        held: dict = {}
        inner = ["o"] * (len(shape) - 1) + ["INNER"]
        fixed = [e for e, acc in accs.items()
                 if isinstance(acc, View) and len(shape) > 1 and "INNER" not in kept(e, inner)]
        if len(nests) > 1:  # stretches of a concatenation's axis (no sums)
            for sub, rops, axis, lo in nests:
                if axis != len(shape) - 1:  # stretches of an outer axis: each row's shifts start again
                    lasts.clear()
                dsts = {e.out: narrow(self.arr[e.out], e.out.shape, shape, axis, lo, sub[axis])
                        for e in run if e.out in self.arr}
                self.loop(sub, lambda idx: body(idx, rops, sub, dsts))
        elif 0 in shape:
            pass
        elif descending:  # (a shift's phi would be wrong in split_at_calls' second loop: never split)
            start = len(self.part.body)
            self.loop(shape, body, descending=True)
            if not carried and not self.enclosing:
                self.scoped(start)  # stores only into the run's own arrays (llvm_split.py)
        elif not accs and not carried and not self.enclosing and not any(e.prim == SHIFT for e in run):
            self.scoped_run(run, shape, body)  # stores only into the run's own arrays (llvm_split.py)
        elif not fixed:
            self.loop(shape, body)
        else:
            outer = self.open_loops(shape[:-1])
            idx = [f"%i{n}" for n, _ in outer] + ["0"]  # the innermost index moves none of them
            for e in fixed:
                held[e] = self.slot(self.load(self.element(e, accs[e], idx)))
            last = self.open_loops(shape[-1:])
            body(idx[:-1] + [f"%i{n}" for n, _ in last])
            self.close_loops(last)
            for e in fixed:
                self.emit(f"store double {self.load(held[e])}, ptr {self.element(e, accs[e], idx)}")
            self.close_loops(outer)
        for e, acc in accs.items():
            if not e.out.shape:
                self.define(e.out, self.load(acc))

    def outputs(self):
        for j, a in enumerate(self.graph.outputs):
            dst = View(f"out{j}", 0, tuple(a.shape), c_strides(a.shape))
            if not a.shape:
                self.emit(f"store double {self.scalar(a)}, ptr %r{self.n_in + j}")
            elif not (isinstance(a, Var) and self.arr.get(a) == dst):
                self.copy(dst, a, self.operand(a, pieces=True), a.shape)

    def load_scalar(self, v, view: View):
        self.define(v, self.load(self.address(view, [])))
