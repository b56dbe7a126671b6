"""What LLVM's vectoriser is told: an element-wise run's stores are none of its loads, a run is cut at libm's
calls, and which loops with sums it may vectorise.

A run's loads and stores are all in one workspace (or rows of the point's arrays): LLVM could not tell them
apart and left scalar a loop storing one array at stride 1 while loading another at stride 11 (GradBench's ba
objective: 1.1 ms, of which 0.55 the scalar projection arithmetic around its sin and cos). The run stores only
into arrays of its own (fresh workspace arrays or output rows, never a loop's carry), which nothing in its loop
loads: its stores get an alias scope of their own, its loads `noalias` it (`scoped`), in runs outside any loop (a
run in a loop body writes the same workspace every iteration; the next iteration's operands are not proven apart
from it). LLVM then vectorises the loop, its sin and cos intrinsics called lane by lane (libm's sincos per
element, as the scalar loop: the same bits): ba's kernel 1.1 -> 0.78 ms.

A call of libm's that is no LLVM intrinsic (tan, atan, log1p, ...) has no vector form and keeps the whole loop
scalar. A run with such calls and at least SPLIT_REST operations besides is written as two loops: the first
computes the calls (and what their arguments need) into the workspace; the second loads them and computes the
rest (again the values the calls' arguments needed, where the rest reads them: a few vectorised operations are
cheaper than a store and a load). Each element is computed by the same operations as in one loop: the same bits.

A loop holding a sum: LLVM vectorises it keeping the sum's order (llvm_kernel.LLVM_OPTIONS: the lanes added one
after the other, the scalar loop's bits), which pays where the lanes compute enough (lse's exps: 859 -> 308 us),
and cost more than the scalar loop elsewhere (gmm's objective 1.02 -> 1.58 ms, ode's gradient 0.99 -> 1.31 ms).
So only a sum's loop that calls mathlib's exp or log is left to the vectoriser; the others carry
`llvm.loop.vectorize.enable false` (`sum_loop_hint`) and stay scalar, as they were without the option. LLVM
interleaves no vector iterations of a loop whose sum keeps its order (the additions are one chain whatever it
does), so the next iteration's exps wait behind the ordered additions in the core's window: such a loop is told
to interleave SUM_INTERLEAVE (`llvm.loop.interleave.count`), each vector's lanes still added in their order
(the same bits), and the exps of two vectors are in flight together. lse n=80,000's kernel: 161 -> 145 us (4
interleaved: 143; a sum with `reassoc`, in an order LLVM chooses, 140). A count
(a sum of a comparison's 0.0 and 1.0, exact in any order) is added with `reassoc` (llvm_ir.Writer.accumulate) and
is no plain sum here: its loop is vectorised with parallel lanes, the same total.
"""

from __future__ import annotations

import re

# calls LLVM vectorises besides its intrinsics (mathlib's IR, inlined; sqrt, which it knows): the others are libm's
VECTOR_CALLS = {"adserve_exp", "adserve_log", "sqrt"}
# operations of the run besides the calls' (and their arguments') for a split to pay: the second loop's stores
# and loads of the calls' results cost about as much as a few operations
SPLIT_REST = 8
# vector iterations of a sum's loop calling exp or log that LLVM interleaves (see the module's docstring)
SUM_INTERLEAVE = 2


def scalar_calls(template: str) -> bool:
    """Whether an element-wise IR template calls a function LLVM cannot vectorise (an intrinsic it can: one
    without a vector instruction, as llvm.sin, is called per lane)."""
    return any(f not in VECTOR_CALLS and not f.startswith("llvm.")
               for f in re.findall(r"call double @([\w.]+)", template))


class Split:
    """Mixed into llvm_ir.Writer: which runs are cut, the alias scopes of a run's loop, and which loops with
    sums LLVM may vectorise."""

    def scoped_run(self, run, shape, body):
        """The loop(s) of `run` over `shape` (no element empty), a run storing only into arrays of its own outside
        any loop; `body(idx, dsts=, eqns=, saved=)` writes an iteration (llvm_ir.Writer.fused)."""
        split = self.split_at_calls(run, self.elementwise)
        if split is not None:
            first, calls = split
            saved = {e.out: self.arr.get(e.out) or self.scratch(e.out.shape) for e in calls}
            made_first = {e.out for e in first}
            start = len(self.part.body)
            self.loop(shape, lambda idx: body(idx, eqns=first, dsts={**self.arr, **saved}))
            self.scoped(start)
            made = {e.out for e in run}
            dsts = {v: view for v, view in self.arr.items() if v in made and v not in made_first}
            start = len(self.part.body)
            self.loop(shape, lambda idx: body(idx, dsts=dsts, saved=saved))
        else:
            start = len(self.part.body)
            self.loop(shape, body)
        self.scoped(start)

    def split_at_calls(self, run, ir) -> tuple | None:
        """(the equations the first loop computes, those among them that call libm) for a run worth cutting,
        else None. `ir`: the element-wise templates by primitive."""
        calls = [e for e in run if e.prim in ir and scalar_calls(ir[e.prim])]
        if not calls:
            return None
        made = {e.out: e for e in run}
        cone, todo = set(), list(calls)
        while todo:
            e = todo.pop()
            if e in cone:
                continue
            cone.add(e)
            todo += [made[a] for a in e.inputs if a in made]
        if len(run) - len(cone) < SPLIT_REST:
            return None
        return [e for e in run if e in cone], calls

    def scoped(self, start):
        """The loop written since body line `start`: its stores in an alias scope of their own, its loads
        `noalias` with it (see the module's docstring for when that holds)."""
        body = self.part.body
        stores = {ln.rsplit("ptr ", 1)[1] for ln in body[start:] if ln.startswith("  store double ")}
        if stores:
            self._scoped(body, start, stores)

    def sum_loop_hint(self, n) -> str:
        """Loop n's latch metadata (llvm_ir.Writer.close_loops): none, or LLVM's vectoriser turned off for a loop
        holding a sum that calls neither of mathlib's functions (the module docstring says why)."""
        start = next((k for k in range(len(self.part.body) - 1, -1, -1) if self.part.body[k] == f"L{n}:"), None)
        if start is None:
            return ""
        body = self.part.body[start:]
        if not any(" = fadd double " in ln and ln.lstrip().startswith("%q") for ln in body):
            return ""
        if any("@adserve_exp(" in ln or "@adserve_log(" in ln for ln in body):
            hint = self._loop_hint(f'!{{!"llvm.loop.interleave.count", i32 {SUM_INTERLEAVE}}}')
        else:
            hint = self._loop_hint('!{!"llvm.loop.vectorize.enable", i1 false}')
        loop = self.fresh()
        self.consts.append(f"!{loop} = distinct !{{!{loop}, !{hint}}}")
        return f", !llvm.loop !{loop}"

    def _loop_hint(self, text: str) -> int:
        """The number of the module's metadata node `text`, written once."""
        node = self.loop_hints.get(text)
        if node is None:
            node = self.loop_hints[text] = self.fresh()
            self.consts.append(f"!{node} = {text}")
        return node
