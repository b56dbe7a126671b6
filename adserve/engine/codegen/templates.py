"""Code templates: how each primitive's equation becomes numba source.

Element-wise primitives are one expression per element (`FORMATS`, fused into
loop nests by fusion.py); the others have a generator `gen(source, eqn)` that
emits lines: reductions accumulate, shape ops are views or copies, indexing
bounds-checks run-time indices. Contractions are in contraction.py, loops and
branches in structured.py. `GENERATORS` maps every primitive to its generator.
"""

from __future__ import annotations

from ..builder import PRIMS
from ..ir import Lit, Var
from .contraction import einsum
from .emit import Emitter, loc_text, num
from .memory import updated
from .structured import cond, loop, while_

# an element-wise row's `template` is its whole generator: fused into loop nests (fusion.py) or a loop of its own
FORMATS = {name: (f"({p.template})" if p.arity != 1 else p.template) for name, p in PRIMS.items() if p.template}


def kept(e, idx) -> list[str]:
    """The index into a reduction's output that the element of its input at loop indices `idx` goes to."""
    x, out = e.inputs[0], e.out
    if e.prim == "sum_to":
        lead = len(x.shape) - len(out.shape)
        return ["0" if d == 1 and x.shape[lead + j] != 1 else idx[lead + j] for j, d in enumerate(out.shape)]
    axes = e.params.get("axes")
    return [idx[i] for i in range(len(x.shape)) if i not in axes]


def _elementwise(fmt):
    def gen(s: Emitter, e):
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


def _accumulate(s: Emitter, e, init, update):
    """out[kept] (op)= x[...] over all of x; `update(acc_ref, value)` gives the statement."""
    x, out = e.inputs[0], e.out
    scalar = not out.shape
    name = s.define(out) if scalar else s.buffer(out)
    if scalar:
        s.line(f"{name} = {init}")
    else:
        s.line(f"{name}[:] = {init}")
    idx = s.loops(x.shape)
    acc = name if scalar else f"{name}[{', '.join(kept(e, idx))}]"
    for stmt in update(acc, s.elem(x, idx, x.shape)):
        s.line(stmt)
    s.end(len(x.shape))
    return name


def _extreme(acc, v, better):
    return [f"u = {v}", f"{acc} = u if (u {better} {acc}) | (u != u) | "
                        f"((u == {acc}) & (math.copysign(1.0, u) {better} 0.0)) else {acc}"]


# a reduction's accumulator: its start and its update `(acc, value) -> lines` (fusion.py accumulates them in the
# loop computing what they reduce). max/min take a NaN as it comes; of the zeros -0.0 and 0.0, max is 0.0 and min
# -0.0 in any order (the interpreter's rule, arrays._zero_tie). One select: a value equal to the accumulator is
# taken when its sign says so (equal nonzero values have the same bits), so the loop carries one compare-and-select
# from element to element, not a branch on zeros (k-means' nearest-centre minimum: 2.0 -> 1.6 ms, 10^6 elements)
ACCUMULATORS = {
    "reduce_sum": ("0.0", lambda acc, v: [f"{acc} += {v}"]),
    "reduce_max": ("-math.inf", lambda acc, v: _extreme(acc, v, ">")),
    "reduce_min": ("math.inf", lambda acc, v: _extreme(acc, v, "<")),
}
ACCUMULATORS["sum_to"] = ACCUMULATORS["reduce_sum"]


def _reduce(s, e):
    _accumulate(s, e, *ACCUMULATORS[e.prim])


def _logsumexp(s, e):
    x, out = e.inputs[0], e.out
    m = _accumulate(s, e, "-math.inf", lambda acc, v: [f"u = {v}", f"{acc} = u if (u > {acc}) | (u != u) else {acc}"])
    del s.names[out]
    shift = s.define(Var(out.shape), "m") if not out.shape else None
    if shift:
        s.line(f"{shift} = {m} if {m} - {m} == 0.0 else 0.0")
        total = s.define(Var(()), "acc")
        s.line(f"{total} = 0.0")
        idx = s.loops(x.shape)
        s.line(f"{total} += exp({s.elem(x, idx, x.shape)} - {shift})")
        s.end(len(x.shape))
        s.names[out] = s.fresh("v")
        s.line(f"{s.names[out]} = log({total}) + {shift}")
        return
    ms = s.fresh("m")
    s.prologue.append(f"    {ms} = np.empty({tuple(out.shape)!r})")
    oi = s.loops(out.shape)
    s.line(f"{ms}[{', '.join(oi)}] = {m}[{', '.join(oi)}] if {m}[{', '.join(oi)}] - {m}[{', '.join(oi)}] == 0.0 else 0.0")
    s.end(len(out.shape))
    res = s.buffer(out)
    s.line(f"{res}[:] = 0.0")
    idx = s.loops(x.shape)
    o = ", ".join(kept(e, idx))
    s.line(f"{res}[{o}] += exp({s.elem(x, idx, x.shape)} - {ms}[{o}])")
    s.end(len(x.shape))
    oi = s.loops(out.shape)
    s.line(f"{res}[{', '.join(oi)}] = log({res}[{', '.join(oi)}]) + {ms}[{', '.join(oi)}]")
    s.end(len(out.shape))


def index_text(index):
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
    s.line(f"{name} = {src}[{index_text(e.params['index'])}]")


def _update_slice(s, e):
    x, v = e.inputs
    if e in s.landed:
        return
    if not x.shape:
        s.line(f"{s.define(e.out)} = {s.elem(v, [], ())}")
        return
    name = updated(s, e, x, v)
    index = e.params["index"]
    if isinstance(v, Lit) and not v.shape:
        s.line(f"{name}[{index_text(index)}] = {num(v.fill)}")
        return
    region = tuple(length for _, length, _ in (i for i in index if not isinstance(i, int)))
    s.store(name, [i if isinstance(i, int) else (i[0], i[2]) for i in index], v, region)


def _dyn_index(s, e, i_atom, length):
    """Bounds-check a run-time index; a bad one sets `err` (reported after the point) and reads entry 0.
    (the selection along `axis`, the checked index's name)"""
    size = e.params["size"]
    hi = length - (1 if size is None else size)
    k = s.fresh("k")
    i = s.ref(i_atom) if isinstance(i_atom, Var) else num(i_atom.fill)
    code = s.error(f"index out of range 0..{hi} or not an integer at {loc_text(e.loc)}")
    s.line(f"{k} = int({i}) if {i} == {i} else -1")
    s.line(f"if {k} != {i} or {k} < 0 or {k} > {hi}:")
    s.line(f"    err = {code}")
    s.line(f"    {k} = 0")
    axis = e.params["axis"]
    sel = f"{k}" if size is None else f"{k}:{k} + {size}"
    return ", ".join([":"] * axis + [sel]), k


def _dyn_slice(s, e):
    x, i = e.inputs
    sel, _ = _dyn_index(s, e, i, x.shape[e.params["axis"]])
    name = s.define(e.out)
    s.line(f"{name} = {s.ref(x)}[{sel}]")


def _dyn_update(s, e):
    x, v, i = e.inputs
    sel, k = _dyn_index(s, e, i, x.shape[e.params["axis"]])
    name = updated(s, e, x, v)
    if isinstance(v, Lit) and not v.shape:
        s.line(f"{name}[{sel}] = {num(v.fill)}")
        return
    axis, size = e.params["axis"], e.params["size"]
    at = [(0, 1)] * len(x.shape)
    at[axis] = k if size is None else (k, 1)
    region = x.shape[:axis] + (() if size is None else (size,)) + x.shape[axis + 1:]
    s.store(name, at, v, region)


def _transpose(s, e):
    name = s.define(e.out)
    if isinstance(e.inputs[0], Var):
        s.transposed[e.out] = (e.inputs[0], tuple(e.params["perm"]))
    if tuple(e.params["perm"]) == (1, 0):  # numba types a C array's .T as F-contiguous (BLAS takes it as it is)
        s.line(f"{name} = {s.ref(e.inputs[0])}.T")
        return
    s.line(f"{name} = transposed({s.ref(e.inputs[0])}, {tuple(e.params['perm'])!r})")


def _reshape(s, e):
    x, out = e.inputs[0], e.out
    if not out.shape:
        name = s.define(out)
        s.line(f"{name} = {s.elem(x, ['0'] * len(x.shape), x.shape)}")
    elif isinstance(x, Lit) and x.fill is not None or not x.shape:
        name = s.buffer(out)
        s.line(f"{name}[:] = {s.elem(x, [], ())}")
    else:
        name = s.define(out)
        s.line(f"{name} = reshaped({s.ref(x)}, {tuple(out.shape)!r})")


def _concatenate(s, e):
    axis = e.params["axis"]
    name = s.buffer(e.out)
    start = 0
    for x in e.inputs:
        n = x.shape[axis]
        if isinstance(x, Lit) and x.fill is not None:
            sel = ", ".join([":"] * axis + [f"{start}:{start + n}"])
            s.line(f"{name}[{sel}] = {num(x.fill)}")
        else:
            s.store(name, [(0, 1)] * axis + [(start, 1)] + [(0, 1)] * (len(x.shape) - axis - 1), x, x.shape,
                    "concatenate")
        start += n


def _gathered_index(s, e, idx, at, n):
    """The integer index idx[at] as a local, bounds-checked: a bad one sets `err` and reads entry 0."""
    t, k = s.fresh("q"), s.fresh("k")
    code = s.error(f"index out of range 0..{n - 1} or not an integer at {loc_text(e.loc)}")
    s.line(f"{t} = {s.elem(idx, at, idx.shape)}")
    s.line(f"if {t} >= 0.0 and {t} <= {float(n - 1)!r} and {t} == math.floor({t}):")
    s.line(f"    {k} = int({t})")
    s.line("else:")
    s.line(f"    err = {code}")
    s.line(f"    {k} = 0")
    return k


def _gather(s, e):
    x, idx = e.inputs
    axis, ni, out = e.params["axis"], len(idx.shape), e.out
    name = s.define(out) if not out.shape else s.buffer(out)
    loop = s.loops(out.shape)
    k = _gathered_index(s, e, idx, loop[axis:axis + ni], x.shape[axis])
    src = f"{s.ref(x)}[{', '.join([*loop[:axis], k, *loop[axis + ni:]])}]"
    s.line(f"{name}{'[' + ', '.join(loop) + ']' if loop else ''} = {src}")
    s.end(len(loop))


def _scatter_add(s, e):
    x, v, idx = e.inputs
    axis, ni = e.params["axis"], len(idx.shape)
    name = updated(s, e, x, v)
    loop = s.loops(v.shape)
    k = _gathered_index(s, e, idx, loop[axis:axis + ni], x.shape[axis])
    s.line(f"{name}[{', '.join([*loop[:axis], k, *loop[axis + ni:]])}] += {s.elem(v, loop, v.shape)}")
    s.end(len(loop))


def _arg(better):
    """argmax/argmin: the first best position, NaN counting as best (numpy's rule)."""
    def gen(s, e):
        x, axis, out = e.inputs[0], e.params["axis"], e.out
        if axis is None:
            s.line(f"{s.define(out)} = float(np.{e.prim}({s.ref(x)}))")
            return
        name = s.define(out) if not out.shape else s.buffer(out)
        idx = s.loops(out.shape)
        bi, bv, j, v = s.fresh("bi"), s.fresh("bv"), s.fresh("j"), s.fresh("w")
        at = lambda k: ", ".join([*idx[:axis], k, *idx[axis:]])  # noqa: E731
        s.line(f"{bi} = 0")
        s.line(f"{bv} = {s.ref(x)}[{at('0')}]")
        s.line(f"for {j} in range(1, {x.shape[axis]}):")
        s.line(f"    {v} = {s.ref(x)}[{at(j)}]")
        s.line(f"    if {bv} == {bv} and ({v} != {v} or {v} {better} {bv}):")
        s.line(f"        {bv} = {v}")
        s.line(f"        {bi} = {j}")
        s.line(f"{name}{'[' + ', '.join(idx) + ']' if idx else ''} = float({bi})")
        s.end(len(idx))
    return gen


def _arange(s, e):
    name, i = s.buffer(e.out), s.fresh("i")
    s.line(f"for {i} in range({e.params['n']}):")
    s.line(f"    {name}[{i}] = float({i})")


GENERATORS = {name: _elementwise(fmt) for name, fmt in FORMATS.items()}
GENERATORS.update({
    **{name: _reduce for name in ACCUMULATORS}, "logsumexp": _logsumexp,
    "einsum": einsum, "slice": _slice, "update_slice": _update_slice,
    "dyn_slice": _dyn_slice, "dyn_update": _dyn_update, "transpose": _transpose, "reshape": _reshape,
    "concatenate": _concatenate, "loop": loop, "cond": cond, "gather": _gather, "scatter_add": _scatter_add,
    "argmax": _arg(">"), "argmin": _arg("<"), "arange": _arange, "while": while_,
})


def interpreter_only(graph) -> set:
    """The primitives of `graph` (bodies included) that no kernel template covers (none today; a row added
    without one): a plan holding one stays on the interpreter, declined before any code is written."""
    from ..ir import sub_graphs
    missing = set()
    for e in graph.eqns:
        if e.prim not in GENERATORS:
            missing.add(e.prim)
        for g in sub_graphs(e):
            missing |= interpreter_only(g)
    return missing
