"""Generate readable numba source from a graph: one fused loop over the batch.

The kernel `kernel(B, a0.., o0..)` loops over the B points; per point, scalar
IR values are scalar locals (`v3 = math.log(x0)`) and array values live in
buffers allocated once per call, before the point loop. Element-wise array
ops become loop nests (a run of them one nest, which also accumulates the sums,
over all axes or some, of what it computes), reductions accumulate, contractions are loops with the
largest operand's last axis innermost. A `loop` stays a `for` loop (its stacked
outputs, the VJP's tape among them, are preallocated from the static trip
count) and a `cond` an `if`. Run-time index errors return a nonzero status,
never touch memory out of range.

A functional update (`update_slice`, `dyn_update`) copies its operand into a
new buffer, except in the top-level body when the operand is a buffer of its
own whose last read (its views' included) is this update: then it writes in
place (see `Frame`), as the cotangent accumulations of reverse mode do.

Values land where they end up rather than being copied there: an array output
of the top-level body is computed in its row of the output array (`rows`), and
a fused loop whose value only feeds a static-slice update writes straight into
the updated buffer's slice (`_landing`), so reverse mode's `a[at] += v` is one loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..builder import PRIMS
from ..ir import Graph, Lit, Var
from .schedule import big_operand, pair_contractions

UNARY = {
    "neg": "-{0}", "sin": "math.sin({0})", "cos": "math.cos({0})", "tan": "math.tan({0})",
    "arcsin": "math.asin({0})", "arccos": "math.acos({0})", "arctan": "math.atan({0})",
    "sinh": "math.sinh({0})", "cosh": "math.cosh({0})", "tanh": "math.tanh({0})", "exp": "math.exp({0})",
    "expm1": "math.expm1({0})", "log": "math.log({0})", "log1p": "math.log1p({0})", "sqrt": "math.sqrt({0})",
    "abs": "abs({0})", "sign": "sign({0})", "sigmoid": "sigmoid({0})", "softplus": "softplus({0})",
}
BINARY = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}", "pow": "{0} ** {1}",
    "arctan2": "math.atan2({0}, {1})", "hypot": "math.hypot({0}, {1})",
    "maximum": "maximum({0}, {1})", "minimum": "minimum({0}, {1})",
    "lt": "1.0 if {0} < {1} else 0.0", "le": "1.0 if {0} <= {1} else 0.0", "gt": "1.0 if {0} > {1} else 0.0",
    "ge": "1.0 if {0} >= {1} else 0.0", "eq": "1.0 if {0} == {1} else 0.0", "ne": "1.0 if {0} != {1} else 0.0",
    "where": "{1} if {0} != 0.0 else {2}",
}
_VIEWS = {"slice", "dyn_slice", "transpose", "reshape"}
_UPDATES = {"update_slice", "dyn_update"}


def num(x: float) -> str:
    if math.isnan(x):
        return "math.nan"
    if math.isinf(x):
        return "math.inf" if x > 0 else "-math.inf"
    return repr(float(x))


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
            if e.prim in _VIEWS and isinstance(x, Var) and x.shape and e.out.shape:
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
            if e.prim in _UPDATES and isinstance(x, Var) and x not in root and last.get(x) == i:
                succ[x] = e.out
        return Frame(root, last, slices, succ)

    def heir(self, x):
        """The value that will hold x's buffer if every update along the way may write in place."""
        while x in self.succ:
            x = self.succ[x]
        return x

    def in_place(self, s: Source, x, value) -> bool:
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


class Source:
    def __init__(self):
        self.names: dict = {}
        self.owner: dict = {}  # buffer name -> the value it holds now (an in-place update hands it on)
        self.frame: Frame | None = None  # set while the top-level graph is emitted
        self.rows: dict = {}  # top-level array output -> its row of the output array, until a buffer takes it
        self.in_row: dict = {}  # top-level array output -> the buffer that is its row
        self.landed: set = set()  # updates whose value a fused loop wrote in place (see _landing)
        self.pairs: dict = {}  # einsum -> the one after it that shares its pass over a large operand (schedule.py)
        self.joined: set = set()  # the second einsums of pairs: emitted with the first
        self.level = 0
        self.prologue: list[str] = []
        self.body: list[str] = []
        self.consts: list[str] = []
        self.errors: list[str] = []
        self.depth = 2
        self.count = 0

    # -- names and lines ---------------------------------------------------
    def fresh(self, prefix="t"):
        self.count += 1
        return f"{prefix}{self.count}"

    def define(self, var: Var, prefix="v") -> str:
        name = self.fresh(prefix)
        self.names[var] = name
        return name

    def line(self, text):
        self.body.append("    " * self.depth + text)

    def buffer(self, var: Var, prefix="v") -> str:
        """A buffer for array `var`: allocated once per call, or the row of the output array that will hold var's
        value or, through updates in place, its heir's (see `Frame.heir`). Only that output lives in such a
        buffer: every other value there is read last by an update, so it is neither an output nor read after
        the outputs are written; when an update must copy after all, the output is copied into its row at
        the end, as any other."""
        name = self.define(var, prefix)
        self.owner[name] = var
        out = var if self.frame is None else self.frame.heir(var)
        row = self.rows.pop(out, None) if self.level == 1 else None
        if row is not None:
            self.line(f"{name} = {row}")
            self.in_row[out] = name
        else:
            self.prologue.append(f"    {name} = np.empty({tuple(var.shape)!r})")
        return name

    def in_output_row(self, var) -> bool:
        """Was `var` computed in its output row (so the module need not copy it there)?"""
        return isinstance(var, Var) and var in self.in_row and self.in_row[var] == self.names.get(var)

    def ref(self, a) -> str:
        """A value as an expression: a name, a number, or a module constant."""
        if isinstance(a, Var):
            return self.names[a]
        if a.fill is not None and not a.shape:
            return num(a.fill)
        key = f"K{len(self.consts)}"
        if a.fill is not None:
            self.consts.append(f"{key} = np.full({tuple(a.shape)!r}, {num(a.fill)})")
        else:
            self.consts.append(f"{key} = np.array([{', '.join(num(x) for x in a.data)}]).reshape({tuple(a.shape)!r})")
        return key

    def elem(self, a, idx, out_shape) -> str:
        """`a` read at loop indices `idx` of `out_shape`, with NumPy broadcasting."""
        if isinstance(a, Lit) and a.fill is not None:
            return num(a.fill)
        if not a.shape:
            return self.ref(a)
        r, q = len(out_shape), len(a.shape)
        parts = ["0" if a.shape[j] == 1 and out_shape[j + r - q] != 1 else idx[j + r - q] for j in range(q)]
        return f"{self.ref(a)}[{', '.join(parts)}]"

    def loops(self, shape, prefix="i"):
        idx = []
        for d in shape:
            i = self.fresh(prefix)
            self.line(f"for {i} in range({d}):")
            self.depth += 1
            idx.append(i)
        return idx

    def end(self, n):
        self.depth -= n

    def copy(self, dst: str, src_atom, shape):
        if not shape:
            self.line(f"{dst} = {self.ref(src_atom) if isinstance(src_atom, Var) else num(src_atom.fill)}")
            return
        if isinstance(src_atom, Lit) and src_atom.fill is not None:
            self.line(f"{dst}.fill({num(src_atom.fill)})")
            return
        idx = self.loops(shape)
        self.line(f"{dst}[{', '.join(idx)}] = {self.elem(src_atom, idx, shape)}")
        self.end(len(shape))

    def error(self, message) -> int:
        self.errors.append(message)
        return len(self.errors)

    # -- equations -----------------------------------------------------------
    def graph(self, g: Graph):
        """Emit `g`'s equations, fusing runs of same-shape element-wise ones into one loop nest.

        While a run is open, an equation that reads nothing the run computes is emitted
        ahead of it (it cannot depend on the run), so runs are not cut by unrelated work. One
        that reads a sum the run accumulates (`x * sum(x)`, or a sum over some axes) closes the run: inside
        its loop the sum is still partial. Only the top level (not a loop's or a branch's body) updates in place."""
        saved = self.frame
        if self.level == 0:
            g, pairs = pair_contractions(g)
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
                    _fusable(e) and e.out.shape == run[0].out.shape or _total_of(e, made)):
                run.append(e)
                made.add(e.out)
                if not _fusable(e):
                    totals.add(e.out)
                continue
            partner = self.pairs.get(e)
            reads = e.inputs if partner is None else (*e.inputs, *partner.inputs)
            if run and any(a in made for a in reads):
                if self.frame is not None:
                    self.frame.i, self.frame.run = i, []
                self._fused(run, uses, closer=e)
                run, made, totals = [], set(), set()
            if _fusable(e) and e.out.shape:
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
            self.body[start] += f"  # {_loc_text(e.loc)}"

    def _fused(self, run, uses, closer=None):
        shape = run[0].out.shape
        inside: dict = {}
        for e in run:
            for a in e.inputs:
                inside[a] = inside.get(a, 0) + 1
        landing = self._landing(run, uses, inside, closer)
        if len(run) == 1 and landing is None:
            return self._eqn(run[0])
        totals = [e for e in run if e.prim in _SUMS]
        stored = [e.out for e in run if e not in totals and uses.get(e.out, 0) > inside.get(e.out, 0)
                  and e.out is not landing]
        for v in stored:
            self.buffer(v)
        self.line(f"# fused: {', '.join(e.prim for e in run)}")
        for e in totals:
            if e.out.shape:
                self.line(f"{self.buffer(e.out)}.fill(0.0)")
            else:
                self.line(f"{self.define(e.out)} = 0.0")
        idx = self.loops(shape)
        at = ", ".join(idx)
        temps: dict = {}
        for e in run:
            args = [temps[a] if a in temps else self.elem(a, idx, shape) for a in e.inputs]
            if e in totals:
                acc = f"{self.names[e.out]}[{', '.join(_kept(e, idx))}]" if e.out.shape else self.names[e.out]
                self.line(f"{acc} += {args[0]}")
                continue
            t = self.fresh("u")
            line = f"{t} = " + FORMATS[e.prim].format(*args)
            self.line(line + (f"  # {_loc_text(e.loc)}" if e.loc else ""))
            temps[e.out] = t
            if e.out in self.names and e.out is not landing:
                self.line(f"{self.names[e.out]}[{at}] = {t}")
        if landing is not None:  # last: the run may read the element it overwrites
            self.line(f"{self.names[landing]}[{at}] = {temps[landing]}")
        self.end(len(shape))

    def _landing(self, run, uses, inside, closer):
        """The run's value that `closer`, an update x[index] = v, only stores: then the run's loop writes v
        straight into x's slice (x's buffer when it may be overwritten, else a copy of x made before the loop)
        and the update emits nothing. Returns v, or None when v needs a buffer of its own."""
        if closer is None or closer.prim != "update_slice":
            return None
        x, v = closer.inputs
        made = {e.out for e in run if e.prim not in _SUMS}
        if not (isinstance(v, Var) and v in made and v.shape == run[0].out.shape and x.shape and x not in made
                and uses.get(v, 0) == inside.get(v, 0) + 1):
            return None
        index = tuple(closer.params["index"])
        if self.frame is not None and self.frame.in_place(self, x, v) and not self.frame.reads_only(
                run, x, index, v.shape):
            return None
        name = _updated(self, closer, x, v)
        same = [a for m in run for a in m.inputs if self.frame is not None and self.frame.slices.get(a) == (x, index)]
        if same and self.names[x] == name:  # in place: the run reads the very slice it writes
            self.names[v] = self.names[same[0]]
        else:
            self.names[v] = self.fresh("d")
            self.line(f"{self.names[v]} = {name}[{_index_text(index)}]")
        self.landed.add(closer)
        return v


def _fusable(e) -> bool:
    return e.prim in FORMATS


def _total_of(e, made) -> bool:
    """A sum (over all axes or some) of a value the open run computes: accumulated inside the run's loop, so
    the summed value needs no buffer (reverse mode's sum_to of a broadcast operand's cotangent among them)."""
    return e.prim in _SUMS and e.inputs[0] in made


_SUMS = {"reduce_sum", "sum_to"}


def _kept(e, idx) -> list[str]:
    """The index into a reduction's output that the element of its input at loop indices `idx` goes to."""
    x, out = e.inputs[0], e.out
    if e.prim == "sum_to":
        lead = len(x.shape) - len(out.shape)
        return ["0" if d == 1 and x.shape[lead + j] != 1 else idx[lead + j] for j, d in enumerate(out.shape)]
    axes = e.params.get("axes")
    return [idx[i] for i in range(len(x.shape)) if i not in axes]


def _elementwise(fmt):
    def gen(s: Source, e):
        out = e.out
        if not out.shape:
            name = s.define(out)
            s.line(f"{name} = " + fmt.format(*[s.elem(a, [], ()) for a in e.inputs]))
            return
        name = s.buffer(out)
        idx = s.loops(out.shape)
        s.line(f"{name}[{', '.join(idx)}] = " + fmt.format(*[s.elem(a, idx, out.shape) for a in e.inputs]))
        s.end(len(out.shape))
    return gen


def _accumulate(s: Source, e, init, update):
    """out[kept] (op)= x[...] over all of x; `update(acc_ref, value)` gives the statement."""
    x, out = e.inputs[0], e.out
    scalar = not out.shape
    name = s.define(out) if scalar else s.buffer(out)
    if scalar:
        s.line(f"{name} = {init}")
    else:
        s.line(f"{name}.fill({init})")
    idx = s.loops(x.shape)
    acc = name if scalar else f"{name}[{', '.join(_kept(e, idx))}]"
    for stmt in update(acc, s.elem(x, idx, x.shape)):
        s.line(stmt)
    s.end(len(x.shape))
    return name


def _sum(s, e):
    _accumulate(s, e, "0.0", lambda acc, v: [f"{acc} += {v}"])


def _max(s, e):
    _accumulate(s, e, "-math.inf", lambda acc, v: [f"u = {v}", f"if u > {acc} or u != u:", f"    {acc} = u"])


def _min(s, e):
    _accumulate(s, e, "math.inf", lambda acc, v: [f"u = {v}", f"if u < {acc} or u != u:", f"    {acc} = u"])


def _logsumexp(s, e):
    x, out = e.inputs[0], e.out
    m = _accumulate(s, e, "-math.inf", lambda acc, v: [f"u = {v}", f"if u > {acc} or u != u:", f"    {acc} = u"])
    del s.names[out]
    shift = s.define(Var(out.shape), "m") if not out.shape else None
    if shift:
        s.line(f"{shift} = {m} if {m} - {m} == 0.0 else 0.0")
        total = s.define(Var(()), "acc")
        s.line(f"{total} = 0.0")
        idx = s.loops(x.shape)
        s.line(f"{total} += math.exp({s.elem(x, idx, x.shape)} - {shift})")
        s.end(len(x.shape))
        s.names[out] = s.fresh("v")
        s.line(f"{s.names[out]} = math.log({total}) + {shift}")
        return
    ms = s.fresh("m")
    s.prologue.append(f"    {ms} = np.empty({tuple(out.shape)!r})")
    oi = s.loops(out.shape)
    s.line(f"{ms}[{', '.join(oi)}] = {m}[{', '.join(oi)}] if {m}[{', '.join(oi)}] - {m}[{', '.join(oi)}] == 0.0 else 0.0")
    s.end(len(out.shape))
    res = s.buffer(out)
    s.line(f"{res}.fill(0.0)")
    idx = s.loops(x.shape)
    o = ", ".join(_kept(e, idx))
    s.line(f"{res}[{o}] += math.exp({s.elem(x, idx, x.shape)} - {ms}[{o}])")
    s.end(len(x.shape))
    oi = s.loops(out.shape)
    s.line(f"{res}[{', '.join(oi)}] = math.log({res}[{', '.join(oi)}]) + {ms}[{', '.join(oi)}]")
    s.end(len(out.shape))


def _einsum(s, e):
    if e in s.joined:
        return
    partner = s.pairs.get(e)
    if partner is not None:
        s.joined.add(partner)
        return _shared_pass(s, (e, partner))
    a, b = e.inputs
    spec = e.params["spec"]
    ins, out_letters = spec.split("->")
    la, lb = ins.split(",")
    dims = {c: d for term, x in ((la, a), (lb, b)) for c, d in zip(term, x.shape)}
    big, other = (la, lb) if math.prod(a.shape) >= math.prod(b.shape) else (lb, la)
    order = list(big) + [c for c in other + out_letters if c not in big]
    order = list(dict.fromkeys(order))
    out = e.out
    scalar = not out.shape
    name = s.define(out) if scalar else s.buffer(out)
    s.line(f"{name} = 0.0" if scalar else f"{name}.fill(0.0)")
    idx = dict(zip(order, s.loops([dims[c] for c in order])))

    def at(x, term):
        return s.ref(x) if not term else (f"{s.ref(x)}[{', '.join(idx[c] for c in term)}]"
                                          if isinstance(x, Var) or x.fill is None else num(x.fill))
    target = name if scalar else f"{name}[{', '.join(idx[c] for c in out_letters)}]"
    s.line(f"{target} += {at(a, la)} * {at(b, lb)}")
    s.end(len(order))


def _shared_pass(s, eqns):
    """Contractions over one large operand in one loop nest over it: each element is read once. Written so
    the innermost loop vectorises: what does not move along it (a sum over it, an operand entry) is a local."""
    shared = big_operand(eqns[0])
    terms = []
    for e in eqns:
        a, b = e.inputs
        (ta, tb), out = (t.split(",") if i == 0 else t for i, t in enumerate(e.params["spec"].split("->")))
        term, other, other_term = (ta, b, tb) if a is shared else (tb, a, ta)
        name = s.define(e.out) if not e.out.shape else s.buffer(e.out)
        s.line(f"{name} = 0.0" if not e.out.shape else f"{name}.fill(0.0)")
        terms.append((e, term, other, other_term, out, name))
    s.line(f"# one pass over {s.ref(shared)}: {len(eqns)} contractions")
    idx = s.loops(shared.shape[:-1])
    inner = s.fresh("i")
    last = []  # lines after the innermost loop
    body = []
    for e, term, other, other_term, out, name in terms:
        at = dict(zip(term, idx + [inner]))
        moves = term[-1]  # the innermost loop's letter
        if not other_term or isinstance(other, Lit) and other.fill is not None:
            value = s.ref(other) if isinstance(other, Var) or other.fill is None else num(other.fill)
        else:
            value = f"{s.ref(other)}[{', '.join(at[c] for c in other_term)}]"
            if moves not in other_term:
                local = s.fresh("w")
                s.line(f"{local} = {value}")
                value = local
        target = f"{name}[{', '.join(at[c] for c in out)}]" if out else name
        loc = f"  # {_loc_text(e.loc)}" if e.loc else ""
        if moves in out:
            body.append(f"{target} += ELEM * {value}{loc}")
        else:
            acc = s.fresh("acc")
            s.line(f"{acc} = 0.0")
            body.append(f"{acc} += ELEM * {value}{loc}")
            last.append(f"{target} += {acc}")
    s.line(f"for {inner} in range({shared.shape[-1]}):")
    s.depth += 1
    elem = s.fresh("a")
    s.line(f"{elem} = {s.ref(shared)}[{', '.join(idx + [inner])}]")
    for line in body:
        s.line(line.replace("ELEM", elem, 1))
    s.depth -= 1
    for line in last:
        s.line(line)
    s.end(len(shared.shape) - 1)


def _index_text(index):
    parts = []
    for e in index:
        if isinstance(e, int):
            parts.append(str(e))
        else:
            start, length, step = e
            stop = start + length * step
            if step == 1:  # no step written: numba types the view contiguous, so loops over it vectorise
                parts.append(f"{start}:{stop}")
            else:
                parts.append(f"{start}:{'' if stop < 0 else stop}:{step}")
    return ", ".join(parts)


def _slice(s, e):
    x = e.inputs[0]
    name = s.define(e.out)
    src = s.ref(x)
    if isinstance(x, Lit) and x.fill is not None:
        s.line(f"{name} = {num(x.fill)}" if not e.out.shape else f"{name} = np.full({tuple(e.out.shape)!r}, {num(x.fill)})")
        return
    s.line(f"{name} = {src}[{_index_text(e.params['index'])}]")


def _update_slice(s, e):
    x, v = e.inputs
    if e in s.landed:
        return
    if not x.shape:
        s.line(f"{s.define(e.out)} = {s.elem(v, [], ())}")
        return
    name = _updated(s, e, x, v)
    s.line(f"{name}[{_index_text(e.params['index'])}] = {s.ref(v) if isinstance(v, Var) or v.shape else num(v.fill)}")


def _updated(s, e, x, v) -> str:
    """The buffer an update of `x` writes: x's own when nothing reads x later (see `Frame`), else a copy."""
    if s.frame is not None and s.frame.in_place(s, x, v):
        name = s.names[e.out] = s.names[x]
        s.owner[name] = e.out
        return name
    name = s.buffer(e.out)
    s.copy(name, x, x.shape)
    return name


def _dyn_index(s, e, i_atom, length):
    """Bounds-check a run-time index; a bad one sets `err` (reported after the point) and reads entry 0."""
    size = e.params["size"]
    hi = length - (1 if size is None else size)
    k = s.fresh("k")
    i = s.ref(i_atom) if isinstance(i_atom, Var) else num(i_atom.fill)
    code = s.error(f"index out of range 0..{hi} or not an integer at {_loc_text(e.loc)}")
    s.line(f"{k} = int({i}) if {i} == {i} else -1")
    s.line(f"if {k} != {i} or {k} < 0 or {k} > {hi}:")
    s.line(f"    err = {code}")
    s.line(f"    {k} = 0")
    axis = e.params["axis"]
    sel = f"{k}" if size is None else f"{k}:{k} + {size}"
    return ", ".join([":"] * axis + [sel])


def _dyn_slice(s, e):
    x, i = e.inputs
    sel = _dyn_index(s, e, i, x.shape[e.params["axis"]])
    name = s.define(e.out)
    s.line(f"{name} = {s.ref(x)}[{sel}]")


def _dyn_update(s, e):
    x, v, i = e.inputs
    sel = _dyn_index(s, e, i, x.shape[e.params["axis"]])
    name = _updated(s, e, x, v)
    s.line(f"{name}[{sel}] = {s.ref(v) if isinstance(v, Var) or v.shape else num(v.fill)}")


def _transpose(s, e):
    name = s.define(e.out)
    s.line(f"{name} = np.transpose({s.ref(e.inputs[0])}, {tuple(e.params['perm'])!r})")


def _reshape(s, e):
    x, out = e.inputs[0], e.out
    if not out.shape:
        name = s.define(out)
        s.line(f"{name} = {s.elem(x, ['0'] * len(x.shape), x.shape)}")
    elif isinstance(x, Lit) and x.fill is not None or not x.shape:
        name = s.buffer(out)
        s.line(f"{name}.fill({s.elem(x, [], ())})")
    else:
        name = s.define(out)
        s.line(f"{name} = np.ascontiguousarray({s.ref(x)}).reshape({tuple(out.shape)!r})")


def _concatenate(s, e):
    axis = e.params["axis"]
    name = s.buffer(e.out)
    start = 0
    for x in e.inputs:
        n = x.shape[axis]
        sel = ", ".join([":"] * axis + [f"{start}:{start + n}"])
        s.line(f"{name}[{sel}] = {s.ref(x) if isinstance(x, Var) or x.fill is None else num(x.fill)}")
        start += n


def _bind(s: Source, var: Var, expr: str):
    s.names[var] = s.fresh("b")
    s.line(f"{s.names[var]} = {expr}")


def _loop(s, e):
    p = e.params
    body, length, nc, ncar = p["body"], p["length"], p["n_consts"], p["n_carry"]
    consts, inits, xs = e.inputs[:nc], e.inputs[nc:nc + ncar], e.inputs[nc + ncar:]
    carries = []
    for init in inits:
        c = s.buffer(Var(init.shape), "c") if init.shape else s.fresh("c")
        s.copy(c, init, init.shape)
        carries.append(c)
    ybufs = []
    for y in body.outputs[ncar:]:
        yb = s.fresh("ys")
        s.prologue.append(f"    {yb} = np.empty({(length, *y.shape)!r})")
        ybufs.append(yb)
    k = s.fresh("k")
    rng = f"range({length} - 1, -1, -1)" if p["reverse"] else f"range({length})"
    s.line(f"for {k} in {rng}:")
    s.depth += 1
    ins = body.inputs
    _bind(s, ins[0], f"float({k})")
    for v, a in zip(ins[1:1 + nc], consts):
        s.names[v] = s.ref(a) if isinstance(a, Var) or a.shape else num(a.fill)
    for v, c in zip(ins[1 + nc:1 + nc + ncar], carries):
        s.names[v] = c
    for v, x in zip(ins[1 + nc + ncar:], xs):
        _bind(s, v, f"{s.ref(x)}[{k}]")
    s.graph(body)
    for yb, y in zip(ybufs, body.outputs[ncar:]):
        s.line(f"{yb}[{k}] = {s.ref(y) if isinstance(y, Var) or y.shape else num(y.fill)}")
    # new carries are staged first: one may read another's old value (a, b = b, a)
    new = body.outputs[:ncar]
    aliased = any(isinstance(a, Var) and a.shape and (a in ins or _is_view(body, a)) for a in new)
    assign = []
    for a, c in zip(new, carries):
        if not a.shape:
            t = s.fresh("n")
            s.line(f"{t} = {s.elem(a, [], ())}")
            assign.append(f"{c} = {t}")
        elif aliased:
            t = s.buffer(Var(a.shape), "stage")
            s.copy(t, a, a.shape)
            assign.append(f"{c}[...] = {t}")
        else:
            assign.append((c, a))
    for item in assign:
        if isinstance(item, str):
            s.line(item)
        else:
            s.copy(item[0], item[1], item[1].shape)
    s.depth -= 1
    for o, c in zip(e.outputs[:ncar], carries):
        s.names[o] = c
        if o.shape:
            s.owner[c] = o
    for o, yb in zip(e.outputs[ncar:], ybufs):
        s.names[o] = yb
        s.owner[yb] = o


def _is_view(g: Graph, a: Var) -> bool:
    return any(a in e.outputs and e.prim in _VIEWS for e in g.eqns)


def _cond(s, e):
    pred, ops = e.inputs[0], e.inputs[1:]
    outs = []
    for o in e.outputs:
        outs.append(s.buffer(o) if o.shape else s.define(o))
    s.line(f"if {s.ref(pred) if isinstance(pred, Var) else num(pred.fill)} != 0.0:")
    for branch, first in ((e.params["true_body"], True), (e.params["false_body"], False)):
        if not first:
            s.line("else:")
        s.depth += 1
        for v, a in zip(branch.inputs, ops):
            s.names[v] = s.ref(a) if isinstance(a, Var) or a.shape else num(a.fill)
        s.graph(branch)
        for name, a, o in zip(outs, branch.outputs, e.outputs):
            if o.shape:
                s.copy(name, a, o.shape)
            else:
                s.line(f"{name} = {s.ref(a) if isinstance(a, Var) else num(a.fill)}")
        s.line("pass")
        s.depth -= 1


FORMATS = {name: (f"({fmt})" if name in BINARY else fmt) for name, fmt in {**UNARY, **BINARY}.items()}
FORMATS["broadcast_to"] = "{0}"
GENERATORS = {name: _elementwise(fmt) for name, fmt in FORMATS.items()}
GENERATORS.update({
    "reduce_sum": _sum, "sum_to": _sum, "reduce_max": _max, "reduce_min": _min, "logsumexp": _logsumexp,
    "einsum": _einsum, "slice": _slice, "update_slice": _update_slice,
    "dyn_slice": _dyn_slice, "dyn_update": _dyn_update, "transpose": _transpose, "reshape": _reshape,
    "concatenate": _concatenate, "loop": _loop, "cond": _cond,
})
assert set(GENERATORS) >= set(PRIMS), f"primitives without a code template: {set(PRIMS) - set(GENERATORS)}"


def _loc_text(loc) -> str:
    """A location for a comment or message in generated code. Node ids are the client's text: escaped to one
    line of printable ASCII (a newline in a comment would end it, and what followed would be code)."""
    if isinstance(loc, dict) and "line" in loc:
        return f"line {int(loc['line'])}, column {int(loc.get('column', 0))}"
    if isinstance(loc, dict) and "node" in loc:
        node = ascii(str(loc["node"]))[1:-1]
        return f"node {node[:60]}{'...' if len(node) > 60 else ''}"
    return ascii(str(loc))[1:-1][:60]
