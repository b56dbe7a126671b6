"""Walk a graph and emit it, fusing runs of same-shape element-wise equations into one loop nest.

The kernel `kernel(B, a0.., o0..)` loops over the B points; per point, scalar
IR values are scalar locals (`v3 = math.log(x0)`) and array values live in
buffers allocated once per call, before the point loop. Element-wise array
ops become loop nests (a run of them one nest, which also accumulates the sums, maxima and minima,
over all axes or some, of what it computes); every other equation is emitted by
its primitive's generator (templates.py). Run-time index errors return a nonzero
status, never touch memory out of range.

Values land where they end up rather than being copied there: an array output
of the top-level body is computed in its row of the output array (`rows`), and
a fused loop whose value only feeds a static-slice update writes straight into
the updated buffer's slice (`_landing`), so reverse mode's `a[at] += v` is one loop.
"""

from __future__ import annotations

from ..ir import Graph, Var
from .emit import Emitter, loc_text
from .memory import Frame, updated
from .schedule import kernel_order
from .templates import ACCUMULATORS, FORMATS, GENERATORS, index_text, kept


class Source(Emitter):
    """The kernel body of a graph (see module.py for the module around it)."""

    def graph(self, g: Graph):
        """Emit `g`'s equations, fusing runs of same-shape element-wise ones into one loop nest.

        While a run is open, an equation that reads nothing the run computes is emitted
        ahead of it (it cannot depend on the run), so runs are not cut by unrelated work. One
        that reads a sum the run accumulates (`x * sum(x)`, or a sum over some axes) closes the run: inside
        its loop the sum is still partial. Only the top level (not a loop's or a branch's body) updates in place."""
        saved = self.frame
        if self.level == 0:
            g, pairs = kernel_order(g)
            self.pairs.update(pairs)
        self.frame = Frame.of(g) if self.level == 0 else None
        self.level += 1
        try:
            self._graph(g)
        finally:
            self.level -= 1
            self.frame = saved

    def _graph(self, g: Graph):
        uses: dict = {}
        for e in g.eqns:
            for a in e.inputs:
                uses[a] = uses.get(a, 0) + 1
        for a in g.outputs:
            uses[a] = uses.get(a, 0) + 2  # graph outputs always need a stored value
        run: list = []
        made: set = set()
        totals: set = set()  # the run's sums: complete only after its loop, so no member of the run may read one
        for i, e in enumerate(g.eqns):
            if run and not any(a in totals for a in e.inputs) and (
                    fusable(e) and e.out.shape == run[0].out.shape or total_of(e, made)):
                run.append(e)
                made.add(e.out)
                if not fusable(e):
                    totals.add(e.out)
                continue
            partner = self.pairs.get(e)
            reads = e.inputs if partner is None else (*e.inputs, *partner.inputs)
            if run and any(a in made for a in reads):
                if self.frame is not None:
                    self.frame.i, self.frame.run = i, []
                self._fused(run, uses, closer=e)
                run, made, totals = [], set(), set()
            if fusable(e) and e.out.shape:
                if run:  # a run of another shape is still open: this one cannot join it
                    self._fused(run, uses)
                run, made, totals = [e], {e.out}, set()
                continue
            if self.frame is not None:
                self.frame.i, self.frame.run = i, run
            self._eqn(e)
        if run:
            self._fused(run, uses)

    def _eqn(self, e):
        gen = GENERATORS.get(e.prim)
        if gen is None:
            raise NotImplementedError(f"no code template for '{e.prim}'")
        start = len(self.body)
        gen(self, e)
        if e.loc and len(self.body) > start:
            self.body[start] += f"  # {loc_text(e.loc)}"

    def _fused(self, run, uses, closer=None):
        shape = run[0].out.shape
        inside: dict = {}
        for e in run:
            for a in e.inputs:
                inside[a] = inside.get(a, 0) + 1
        landing = self._landing(run, uses, inside, closer)
        if len(run) == 1 and landing is None:
            return self._eqn(run[0])
        totals = [e for e in run if e.prim in SUMS]
        stored = [e.out for e in run if e not in totals and uses.get(e.out, 0) > inside.get(e.out, 0)
                  and e.out is not landing]
        for v in stored:
            self.buffer(v)
        self.line(f"# fused: {', '.join(e.prim for e in run)}")
        for e in totals:
            start = ACCUMULATORS[e.prim][0]
            if e.out.shape:
                self.line(f"{self.buffer(e.out)}[:] = {start}")
            else:
                self.line(f"{self.define(e.out)} = {start}")
        idx = self.loops(shape[:-1] if 0 not in shape else (0,) * (len(shape) - 1))  # no elements: no loop
        inner = self.fresh("i")
        idx.append(inner)
        # a partial reduction that the innermost loop does not move along accumulates in a local across it
        # (kept in a register: the buffer's element would be loaded and stored every iteration)
        local = {e: self.fresh("r") for e in totals if e.out.shape and inner not in kept(e, idx)}
        for e, r in local.items():
            self.line(f"{r} = {self.names[e.out]}[{', '.join(kept(e, idx))}]")
        self.line(f"for {inner} in range({shape[-1]}):")
        self.depth += 1
        at = ", ".join(idx)
        temps: dict = {}
        for e in run:
            args = [temps[a] if a in temps else self.elem(a, idx, shape) for a in e.inputs]
            if e in totals:
                acc = local.get(e) or (f"{self.names[e.out]}[{', '.join(kept(e, idx))}]" if e.out.shape
                                       else self.names[e.out])
                for line in ACCUMULATORS[e.prim][1](acc, args[0]):
                    self.line(line)
                continue
            t = self.fresh("u")
            line = f"{t} = " + FORMATS[e.prim].format(*args)
            self.line(line + (f"  # {loc_text(e.loc)}" if e.loc else ""))
            temps[e.out] = t
            if e.out in self.names and e.out is not landing:
                self.line(f"{self.names[e.out]}[{at}] = {t}")
        if landing is not None:  # last: the run may read the element it overwrites
            self.line(f"{self.names[landing]}[{at}] = {temps[landing]}")
        self.end(1)
        for e, r in local.items():
            self.line(f"{self.names[e.out]}[{', '.join(kept(e, idx))}] = {r}")
        self.end(len(shape) - 1)

    def _landing(self, run, uses, inside, closer):
        """The run's value that `closer`, an update x[index] = v, only stores: then the run's loop writes v
        straight into x's slice (x's buffer when it may be overwritten, else a copy of x made before the loop)
        and the update emits nothing. Returns v, or None when v needs a buffer of its own."""
        if closer is None or closer.prim != "update_slice":
            return None
        x, v = closer.inputs
        made = {e.out for e in run if e.prim not in SUMS}
        if not (isinstance(v, Var) and v in made and v.shape == run[0].out.shape and x.shape and x not in made
                and uses.get(v, 0) == inside.get(v, 0) + 1):
            return None
        index = tuple(closer.params["index"])
        if self.frame is not None and self.frame.in_place(self, x, v) and not self.frame.reads_only(
                run, x, index, v.shape):
            return None
        name = updated(self, closer, x, v)
        same = [a for m in run for a in m.inputs if self.frame is not None and self.frame.slices.get(a) == (x, index)]
        if same and self.names[x] == name:  # in place: the run reads the very slice it writes
            self.names[v] = self.names[same[0]]
        else:
            self.names[v] = self.fresh("d")
            self.line(f"{self.names[v]} = {name}[{index_text(index)}]")
        self.landed.add(closer)
        return v



def fusable(e) -> bool:
    return e.prim in FORMATS


def total_of(e, made) -> bool:
    """A sum, max or min (over all axes or some) of a value the open run computes: accumulated inside the run's
    loop, so the reduced value needs no buffer (reverse mode's sum_to of a broadcast operand's cotangent among
    them; the nearest centre's distance of k-means)."""
    return e.prim in SUMS and e.inputs[0] in made


SUMS = set(ACCUMULATORS)  # reductions a fused loop accumulates (sums, max and min)
