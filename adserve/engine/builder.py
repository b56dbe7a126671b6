"""Building graphs: the one place equations are created.

`Builder.emit` checks shapes with the primitive's shape rule (naming the source
location on failure), folds constants, applies a few identities that derivative
rules rely on (x*1, x+0), and hash-conses equations so equal subexpressions are
one variable (CSE for free, as in tinygrad). `V` wraps a value with Python
operators so derivative rules read like the math: `g * ans * (1 - ans)`.

Nested builders make loop and branch bodies; reading an outer value from a body
captures it as an explicit body input (`capture`), so sub-graphs stay closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import powers
from .folding import fold
from .errors import DefinitionError, EngineError, ShapeError
from .ir import Eqn, Graph, Lit, Var


@dataclass(frozen=True)
class Linear:
    """A primitive linear in some of its arguments (JAX's `deflinear` and transpose rule, as one declaration).

    `transpose(g, primals, **params)` gives the cotangent of each argument from the output's (None for the
    arguments it is not linear in, such as a run-time index); both derivative rules follow from it. The JVP
    is the primitive itself applied to the tangents of `args` (all arguments when None), a zero tangent
    instantiated as zeros and the other arguments as they are. With `signs`, the primitive is the sum of its
    arguments times those signs (add, sub): a zero tangent then drops out of the sum instead."""

    transpose: Callable
    args: Optional[tuple] = None
    signs: Optional[tuple] = None


@dataclass
class Prim:
    """A row of the primitive table (filled in by primitives.py and control.py).

    Besides the math (shape rule, NumPy implementation, derivative rules), a row says how the op is spelled
    everywhere else: the function names of the expression and program languages (`lang`), the parameters
    of its graph-JSON node (`params`: name and kind), the numba source of one element for element-wise ops
    (`template`, calling `helper` by name when `math` has no twin) and a line of user documentation."""

    name: str
    shape: Callable  # (*input shapes, **params) -> output shape, or list of shapes if multi
    impl: Callable  # NumPy, batched: (*arrays with a leading batch axis, **params) -> array(s)
    jvp: Optional[Callable] = None  # (tangents, primals, ans, **params) -> tangent(s); None entries are zero
    vjp: Optional[Callable] = None  # (g, primals, ans, **params) -> cotangent per input (None = zero)
    normalize: Optional[Callable] = None  # (input shapes, params) -> canonical params
    multiple_results: bool = False
    nondiff: bool = False  # output is piecewise constant: zero derivative (comparisons)
    doc: str = ""  # for users: what it computes and its derivative where that is a convention (kinks, ties)
    arity: Optional[int] = None  # None: variadic
    extra: dict = field(default_factory=dict)
    linear: Optional[Linear] = None  # gives jvp and vjp
    lang: tuple = ()  # expression/program function names that lower to this op (none: an operator, or internal)
    signature: str = ""  # how users call it, for the docs: "clip(x, lo, hi)"; default name(x) / name(a, b)
    params: tuple = ()  # ((name, kind), ...) as a graph-JSON node spells them (kinds: frontends/graph_json.py)
    template: Optional[str] = None  # element-wise: numba source of one element, "math.sin({0})"
    helper: Optional[Callable] = None  # plain-Python scalar function `template` calls by its __name__
    # element-wise: the same element as LLVM IR (codegen/llvm_ir.py), the operations numba emits for `template`;
    # a row without one keeps its plans on numba
    ir: Optional[str] = None

    def __post_init__(self):
        if self.linear is not None:
            self.jvp, self.vjp = _linear_rules(self.name, self.linear)


def _linear_rules(name, lin: Linear):
    def jvp(ts, xs, ans, **params):
        args = range(len(xs)) if lin.args is None else lin.args
        if all(ts[i] is None for i in args):
            return None
        if lin.signs is not None:
            out = None
            for t, sign in zip(ts, lin.signs):
                if t is not None:
                    t = t if sign > 0 else -t
                    out = t if out is None else out + t
            return out
        return emit(name, *[(zeros(x.shape) if t is None else t) if i in args else x
                            for i, (t, x) in enumerate(zip(ts, xs))], **params)

    def vjp(g, xs, ans, **params):
        return lin.transpose(g, xs, **params)

    return jvp, vjp


PRIMS: dict[str, Prim] = {}


def register(p: Prim) -> Prim:
    PRIMS[p.name] = p
    return p


class Budget:
    """How many more equations a front end may emit (shared with its loop and branch bodies),
    so an oversized definition is refused while it is being built, not after."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit

    def spend(self, loc):
        self.left -= 1
        if self.left < 0:
            from .errors import LimitError
            raise LimitError(f"the definition has more than {self.limit:,} operations, the limit", loc,
                             code="limit_exceeded")


class V:
    """A value inside a builder, with operators that emit equations."""

    __slots__ = ("b", "atom")
    __array_priority__ = 1000

    def __init__(self, b, atom):
        self.b, self.atom = b, atom

    @property
    def shape(self):
        return self.atom.shape

    @property
    def size(self):
        return math.prod(self.atom.shape)

    def __add__(self, o): return emit("add", self, o)
    def __radd__(self, o): return emit("add", o, self)
    def __sub__(self, o): return emit("sub", self, o)
    def __rsub__(self, o): return emit("sub", o, self)
    def __mul__(self, o): return emit("mul", self, o)
    def __rmul__(self, o): return emit("mul", o, self)
    def __truediv__(self, o): return emit("div", self, o)
    def __rtruediv__(self, o): return emit("div", o, self)
    def __pow__(self, o): return emit("pow", self, o)
    def __rpow__(self, o): return emit("pow", o, self)
    def __neg__(self): return emit("neg", self)

    def is_lit(self, value=None):
        a = self.atom
        return isinstance(a, Lit) and (value is None or a.fill == value)

    def __repr__(self):
        return f"V({self.atom!r})"


def _atom(x):
    if isinstance(x, V):
        return x.atom
    if isinstance(x, (Var, Lit)):
        return x
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
        return Lit.scalar(float(x))
    raise TypeError(f"not a value: {x!r}")


_SCATTERS = ("update_slice", "dyn_update", "scatter_add")  # x with a part replaced (added): on a zero x, a scatter


class _At:
    __slots__ = ("b", "loc", "old")

    def __init__(self, b, loc):
        self.b, self.loc = b, loc

    def __enter__(self):
        self.old, self.b.loc = self.b.loc, self.loc

    def __exit__(self, *exc):
        self.b.loc = self.old


class Builder:
    def __init__(self, parent: Optional["Builder"] = None, budget: Optional["Budget"] = None):
        self.parent = parent
        self.budget = parent.budget if parent is not None else budget
        self.inputs: list[Var] = []
        self.eqns: list[Eqn] = []
        self._cse: dict = {}
        self._defined: set = set()
        self.captured: list = []  # outer atoms, in the order their body inputs were made
        self._capture_map: dict = {}
        self._ints: dict = {}  # var -> (lo, hi): it holds integers in that range (powers.py)
        self._scatters: dict = {}  # var -> (prim, atoms, params) of an update of a zero array (see _scatter_add)
        self.loc = parent.loc if parent else None

    # -- values -----------------------------------------------------------
    def input(self, shape) -> V:
        v = Var(tuple(shape))
        self.inputs.append(v)
        self._defined.add(v)
        return V(self, v)

    def lit(self, value, shape=()) -> V:
        return V(self, Lit.scalar(value, shape))

    def owns(self, atom) -> bool:
        return isinstance(atom, Lit) or atom in self._defined

    def capture(self, v: V) -> V:
        """Make an outer value readable here (as a new body input) and return it."""
        if v.b is self or self.owns(v.atom):
            return V(self, v.atom)
        if self.parent is None:
            raise EngineError("internal: value from an unrelated graph")
        outer = self.parent.capture(v)
        if outer.atom not in self._capture_map:
            inner = Var(outer.shape)
            self._defined.add(inner)
            self._capture_map[outer.atom] = inner
            self.captured.append(outer.atom)
            self.inputs.append(inner)
        return V(self, self._capture_map[outer.atom])

    def at(self, loc) -> "_At":
        """`with b.at(loc):` equations emitted inside carry `loc` (a class, not a generator: it is hot)."""
        return _At(self, loc)

    # -- equations --------------------------------------------------------
    def emit(self, prim: str, args, params=None):
        p = PRIMS.get(prim)
        if p is None:
            raise DefinitionError(f"unknown operation '{prim}'", self.loc, code="unknown_op")
        atoms = []
        ids = []  # the atoms' part of the hash-consing key
        consts = 0  # literal arguments: all of them, and the equation may fold
        for a in args:
            t = type(a)
            if t is V:
                a = a.atom if a.b is self else self.capture(a).atom
            elif t is float:
                a = Lit((), (a,))
            else:
                a = _atom(a)
            if type(a) is Lit:
                consts += 1
                ids.append(_lit_key(a))
            else:
                ids.append(a.id)
            atoms.append(a)
        if p.arity is not None and len(atoms) != p.arity:
            raise DefinitionError(f"'{prim}' takes {p.arity} argument(s), got {len(atoms)}", self.loc, code="bad_arguments")
        shapes = [a.shape for a in atoms]
        if params is None:
            params = {}
        try:
            if p.normalize:
                params = p.normalize(shapes, dict(params))
            out_shapes = p.shape(*shapes, **params)
        except EngineError as e:
            raise e.at(self.loc)
        except (ValueError, TypeError, IndexError) as e:
            raise ShapeError(f"{prim}: {e}", self.loc) from None
        multi = p.multiple_results
        if prim == "cond" and type(atoms[0]) is Lit:  # a branch known when built (break/continue flags): take it
            body = params["true_body"] if atoms[0].fill != 0 else params["false_body"]
            return tuple(inline(self, body, [V(self, a) for a in atoms[1:]]))
        if not multi:
            out_shape = tuple(out_shapes)
            if consts and prim in _UNITS or prim in _SAME_SHAPE:
                simplified = _simplify(prim, atoms, out_shape)
                if simplified is not None:
                    return V(self, simplified)
            if prim == "pow":
                power = powers.power(self, atoms, out_shape)
                if power is not None:
                    return power
            if consts == len(atoms):
                folded = fold(p, atoms, params, out_shape)
                if folded is not None:
                    return V(self, folded)
            if prim == "add" and self._scatters:
                scattered = self._scatter_add(atoms, out_shape)
                if scattered is not None:
                    return scattered
        if self is _orphan:
            raise EngineError(f"internal: '{prim}' of constants could not be folded")

        key = (prim, tuple(ids), _params_key(params) if params else ())
        hit = self._cse.get(key)
        if hit is None:
            if self.budget is not None:
                self.budget.spend(self.loc)
            if multi:
                hit = tuple(Var(tuple(s)) for s in out_shapes)
                self._defined.update(hit)
            else:
                hit = Var(out_shape)
                self._defined.add(hit)
                if prim in powers.NOTED:
                    powers.note(self._ints, prim, atoms, params, hit)
                if prim in _SCATTERS and type(atoms[0]) is Lit and atoms[0].fill == 0.0:
                    self._scatters[hit] = (prim, atoms, params)
            self.eqns.append(Eqn(prim, tuple(atoms), hit if multi else (hit,), params, self.loc))
            self._cse[key] = hit
        return tuple(V(self, o) for o in hit) if multi else V(self, hit)

    def _scatter_add(self, atoms, out_shape):
        """`a + update(zeros, v, at)` as `update(a, a[at] + v, at)`: one pass over `a` instead of three
        (fill zeros, write v, add). Reverse mode accumulates every slice's cotangent this way."""
        for acc, sc in ((atoms[0], atoms[1]), (atoms[1], atoms[0])):
            found = self._scatters.get(sc) if type(sc) is Var else None
            if found is None or acc.shape != out_shape or sc.shape != out_shape:
                continue
            prim, (_, v, *rest), params = found
            if prim == "scatter_add":  # a + scatter_add(0, v, idx) is scatter_add(a, v, idx)
                return self.emit(prim, [acc, v, *rest], params)
            if prim == "update_slice":
                current = self.emit("slice", [acc], params)
            else:
                current = self.emit("dyn_slice", [acc, *rest], params)
            if current.shape != v.shape:
                continue
            return self.emit(prim, [acc, self.emit("add", [current, v]), *rest], params)
        return None

    def replay(self, e: Eqn, args):
        """Re-emit equation `e` of another graph with its inputs bound to `args`.

        Where every argument is a variable of this builder with the shape `e` was checked for
        (the common case when a transform copies a graph), the shape rule, folding and identities
        cannot change anything, so only hash-consing runs; otherwise this is `emit`."""
        p = PRIMS[e.prim]
        if p.multiple_results:
            return self.emit(e.prim, args, e.params)
        atoms = []
        ids = []
        defined = self._defined
        for a, orig in zip(args, e.inputs):
            atom = a.atom if type(a) is V and a.b is self else None
            if type(atom) is Var and type(orig) is Var and atom.shape == orig.shape and atom in defined:
                ids.append(atom.id)
            elif type(orig) is Lit and atom is orig:
                ids.append(_lit_key(atom))
            else:
                return self.emit(e.prim, args, e.params)
            atoms.append(atom)
        key = (e.prim, tuple(ids), _params_key(e.params) if e.params else ())
        hit = self._cse.get(key)
        if hit is None:
            if self.budget is not None:
                self.budget.spend(self.loc)
            hit = Var(e.outputs[0].shape)
            self._defined.add(hit)
            self.eqns.append(Eqn(e.prim, tuple(atoms), (hit,), e.params, self.loc))
            self._cse[key] = hit
        return V(self, hit)

    def build(self, outputs) -> Graph:
        atoms = tuple(self.capture(o).atom if isinstance(o, V) else _atom(o) for o in outputs)
        return dce(Graph(tuple(self.inputs), tuple(self.eqns), atoms))


def _lit_key(a: Lit):
    """Literals equal bit for bit: 0.0 and -0.0 differ (1/x tells them apart), as do NaN payloads."""
    data = a.data
    if len(data) == 1 and type(data[0]) is float:  # the common case, hot in `emit`
        return a.shape, (data[0].hex(),)
    return a.shape, tuple(float(x).hex() for x in data)


# x op unit == x for every x, bit for bit: the unit of addition is -0.0 (x + 0.0 is +0.0 at x = -0.0, so
# 1 / (x + 0.0) is +inf there, not -inf), and x - 0.0 is x + (-0.0)
_UNITS = {"add": "-0x0.0p+0", "sub": "0x0.0p+0", "mul": "0x1.0000000000000p+0", "div": "0x1.0000000000000p+0"}


_SAME_SHAPE = {"broadcast_to", "sum_to", "reshape"}  # the identity when the shape does not change


def _params_key(params):
    return tuple(sorted((k, id(v) if isinstance(v, Graph) else v) for k, v in params.items()))


def _simplify(prim, atoms, out_shape):
    """Identities used by derivative rules; only where the shape is unchanged."""
    if prim in _SAME_SHAPE and atoms[0].shape == tuple(out_shape):  # matmul's broadcasts of equal batches
        return atoms[0]
    if prim in _UNITS and len(atoms) == 2:
        a, b = atoms
        unit = _UNITS[prim]
        if _is_unit(b, unit) and a.shape == out_shape:
            return a
        if prim in ("add", "mul") and _is_unit(a, unit) and b.shape == out_shape:
            return b
    return None


def _is_unit(a, unit: str) -> bool:
    return isinstance(a, Lit) and a.fill is not None and float(a.fill).hex() == unit


def emit(prim: str, *args, **params):
    """Emit into the builder of the first value argument."""
    for a in args:
        if type(a) is V and a.b is not None:
            return a.b.emit(prim, args, params)
    return _orphan.emit(prim, args, params)


class _Ops:
    """`op.sin(x)` == `emit('sin', x)`: derivative rules and front ends call ops by name."""

    def __getattr__(self, name):
        def call(*args, **params):
            return emit(name, *args, **params)

        call.__name__ = name
        return call


op = _Ops()
_orphan = Builder()  # folds all-literal expressions that have no builder yet


def inline(b: Builder, graph: Graph, args) -> list:
    """Emit `graph`'s equations into `b` with its inputs bound to `args`; return its outputs."""
    env = {}
    for v, a in zip(graph.inputs, args, strict=True):
        env[v] = a if isinstance(a, V) else V(b, _atom(a))

    def read(atom):
        return env[atom] if isinstance(atom, Var) else V(b, atom)

    for e in graph.eqns:
        with b.at(e.loc or b.loc):
            res = b.replay(e, [read(a) for a in e.inputs])
        res = res if isinstance(res, tuple) else (res,)
        env.update(zip(e.outputs, res))
    return [read(a) for a in graph.outputs]


def dce(graph: Graph) -> Graph:
    """Drop equations whose outputs nothing reads."""
    live = {a for a in graph.outputs if isinstance(a, Var)}
    kept = []
    for e in reversed(graph.eqns):
        outs = e.outputs
        if outs[0] in live if len(outs) == 1 else any(o in live for o in outs):
            kept.append(e)
            for a in e.inputs:
                if type(a) is Var:
                    live.add(a)
    if len(kept) == len(graph.eqns):
        return graph
    return Graph(graph.inputs, tuple(reversed(kept)), graph.outputs)


def zeros(shape) -> V:
    """A zero literal of `shape`, usable in any builder."""
    return V(None, Lit.scalar(0.0, tuple(shape)))
