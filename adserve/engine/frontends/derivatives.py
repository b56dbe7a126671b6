"""Derivative operators inside programs, with JAX's names and conventions.

`grad(f, argnums=0, has_aux=False)`, `value_and_grad(f, ...)`, `jvp(f, primals, tangents)`,
`vjp(f, *primals)`, `jacfwd(f, argnums=0)`, `jacrev(f, argnums=0)`, `hessian(f, argnums=0)`,
where `f` is a function of the program (a closure or a lambda included), a built-in function, or
another derivative: they nest.

How: `trace` lowers `f` once into a closed sub-graph whose inputs are the differentiated
arguments, then every value of the caller that the body reads (closed-over variables, the other
arguments), captured as explicit inputs exactly as a loop body captures what it reads. The
engine's own transforms (`jvp_inline`, `vjp_inline`) differentiate that graph with respect to the
first inputs only, holding the captured ones constant, and emit the result into the caller's
builder bound to the caller's values. The result is ordinary IR in the caller's values: an outer
derivative (another operator, or any `compute` kind of the service) flows through the captured
values too, so d/dx of x * (d/dy of x*y) is 2x, and each transform makes fresh variables, so there
are no perturbation tags to confuse (Siskind and Pearlmutter's concern).

Jacobians take one sweep per input element (jacfwd) or output element (jacrev). More than one
sweep is a `loop` whose body seeds a one-hot vector from the counter: the graph holds one sweep
however large the Jacobian is, and stays differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..builder import Builder, V, inline
from ..ir import Graph
from ..jvp import jvp_inline
from ..vjp import vjp_inline
from .functions_def import Callable


def _flatten(x, leaves):
    """The structure of a (nested) tuple of arrays, None for a leaf; leaves appended in order."""
    if isinstance(x, tuple):
        return tuple(_flatten(e, leaves) for e in x)
    leaves.append(x)
    return None


def _unflatten(tree, it):
    return next(it) if tree is None else tuple(_unflatten(t, it) for t in tree)


def _array(low, x, what, node) -> V:
    """`x` as a value of the current builder: derivative rules emit into the builder of their first
    argument, so a value of an enclosing loop or branch body is captured here first."""
    if isinstance(x, (Callable, tuple, list)):
        low.fail(f"{what} must be an array", node, "bad_arguments")
    return low.b.capture(low.value(x, node))


def trace(low, f, args, active, node, what):
    """`f(*args)` as a closed graph: (graph, primals, tree).

    The graph's inputs are the arguments at the `active` positions, then the caller's values the body
    reads; `primals` are the caller's values for them; `tree` is the structure of f's result."""
    outer = low.b
    xs = [_array(low, args[i], f"argument {i} of {what}", node) for i in active]
    sb = Builder(parent=outer)
    call_args, ins = list(args), []
    for i, x in zip(active, xs):
        v = sb.input(x.shape)
        call_args[i] = v
        ins.append(v.atom)
    low.b = sb
    try:
        leaves = []
        tree = _flatten(low.result(f.call(low, call_args, {}, node), node), leaves)
        g = sb.build(leaves)
    finally:
        low.b = outer
    graph = Graph((*ins, *[sb._capture_map[a] for a in sb.captured]), g.eqns, g.outputs)
    return graph, xs + [V(outer, a) for a in sb.captured], tree


def _zeros_for(b, ds, shapes):
    return [d if d is not None else b.lit(0.0, s) for d, s in zip(ds, shapes)]


def _argnums(low, argnums, n, node, what):
    """Normalised argument positions, and whether the user gave a tuple (then results are tuples)."""
    many = isinstance(argnums, tuple)
    nums = argnums if many else (argnums,)
    out = []
    for a in nums:
        if isinstance(a, bool) or not isinstance(a, int):
            low.fail(f"{what}: argnums must be an integer or a tuple of integers", node, "bad_arguments")
        if not -n <= a < n:
            low.fail(f"{what}: argnums {a} is out of range for a call with {n} argument(s)", node, "bad_arguments")
        out.append(a % n)
    if len(set(out)) != len(out):
        low.fail(f"{what}: argnums lists an argument twice", node, "bad_arguments")
    if not out:
        low.fail(f"{what}: argnums is empty", node, "bad_arguments")
    return tuple(out), many


@dataclass(eq=False)
class Transformed(Callable):
    """`grad(f)`, `jacfwd(f)`, ...: a function of the program, called like one."""

    kind: str
    f: Callable
    argnums: object = 0
    has_aux: bool = False

    @property
    def name(self):
        return f"{self.kind}({self.f.name})"

    def call(self, low, args, kwargs, node):
        if kwargs:
            low.fail(f"{self.name}() takes positional arguments only", node, "bad_arguments")
        nums, many = _argnums(low, self.argnums, len(args), node, self.name)
        if self.kind in ("grad", "value_and_grad"):
            return _value_and_grad(low, self, args, nums, many, node)
        return _jacobian(low, self, args, nums, many, node, forward=self.kind == "jacfwd")


def _value_and_grad(low, t, args, nums, many, node):
    graph, primals, tree = trace(low, t.f, args, nums, node, t.name)
    if t.has_aux:
        if not (isinstance(tree, tuple) and len(tree) == 2 and tree[0] is None):
            low.fail(f"{t.name}: with has_aux=True, '{t.f.name}' must return a pair (output, aux)", node,
                     "bad_arguments")
    elif tree is not None:
        low.fail(f"{t.name}: '{t.f.name}' must return one scalar, not a tuple (has_aux=True returns extra values)",
                 node, "not_scalar")
    out_shape = graph.outputs[0].shape
    if out_shape != ():
        low.fail(f"{t.name}: '{t.f.name}' must return a scalar, but its output has shape {list(out_shape)} "
                 f"(use jacrev or vjp)", node, "not_scalar")
    b = low.b
    if len(nums) == 1 and math.prod(primals[0].shape) == 1:
        # one number in: forward mode is the same derivative in one pass, keeping no tape (through a loop,
        # reverse mode keeps its iterations); a gradient descent in one variable (GradBench's particle) is this
        ts = [b.lit(1.0, primals[0].shape)] + [None] * (len(primals) - 1)
        outs, touts = jvp_inline(b, graph, primals, ts)
        grads = [b.emit("reshape", [t], {"shape": primals[0].shape}) if t is not None
                 else b.lit(0.0, primals[0].shape) for t in touts[:1]]
    else:
        wrt = [True] * len(nums) + [False] * (len(primals) - len(nums))
        cts = [b.lit(1.0)] + [None] * (len(graph.outputs) - 1)
        outs, grads = vjp_inline(b, graph, primals, wrt, cts)
        grads = _zeros_for(b, grads[:len(nums)], [p.shape for p in primals])
    g = tuple(grads) if many else grads[0]
    value = _unflatten(tree, iter(outs))
    if t.kind == "grad":
        return (g, value[1]) if t.has_aux else g
    return value, g


def _sweeps(low, graph, primals, n_active, seed, forward):
    """Derivatives along every basis vector of one seed, stacked on a leading axis.

    Forward: the seed is active input `seed`; one tangent per output. Reverse: the seed is output
    `seed`; one cotangent per active input. Each result has shape (size of the seed, *its shape)."""
    seed_shape = graph.inputs[seed].shape if forward else graph.outputs[seed].shape
    shapes = [a.shape for a in graph.outputs] if forward else [p.shape for p in primals[:n_active]]
    n = math.prod(seed_shape)
    b = low.b
    if n == 0:
        return [b.lit(0.0, (0, *s)) for s in shapes]

    def sweep(b, ps, basis):
        if forward:
            _, touts = jvp_inline(b, graph, ps, [basis if i == seed else None for i in range(len(ps))])
            return _zeros_for(b, touts, shapes)
        cts = [basis if i == seed else None for i in range(len(graph.outputs))]
        _, cts_in = vjp_inline(b, graph, ps, [True] * n_active + [False] * (len(ps) - n_active), cts)
        return _zeros_for(b, cts_in[:n_active], shapes)

    if n == 1:
        return [b.emit("reshape", [r], {"shape": (1, *s)}) for r, s in zip(sweep(b, primals, b.lit(1.0, seed_shape)), shapes)]
    nb = Builder()
    k = nb.input(())
    ps = [nb.input(p.shape) for p in primals]
    hot = nb.emit("dyn_update", [nb.lit(0.0, (n,)), nb.lit(1.0), k], {"axis": 0, "size": None})
    basis = nb.emit("reshape", [hot], {"shape": seed_shape})
    body = nb.build(sweep(nb, ps, basis))
    res = b.emit("loop", primals, {"body": body, "length": n, "n_consts": len(primals), "n_carry": 0,
                                   "reverse": False})
    return list(res)


def _jacobian(low, t, args, nums, many, node, forward):
    graph, primals, tree = trace(low, t.f, args, nums, node, t.name)
    b = low.b
    n_active = len(nums)
    ins = [p.shape for p in primals[:n_active]]
    outs = [a.shape for a in graph.outputs]
    jac = [[None] * n_active for _ in outs]  # jac[o][j]: d output o / d argument j, shape outs[o] + ins[j]
    if forward:
        for j in range(n_active):
            for o, r in enumerate(_sweeps(low, graph, primals, n_active, j, True)):  # r: (size of input j, *outs[o])
                n, m = math.prod(ins[j]), math.prod(outs[o])
                r = b.emit("reshape", [r], {"shape": (n, m)})
                r = b.emit("transpose", [r], {"perm": (1, 0)})
                jac[o][j] = b.emit("reshape", [r], {"shape": (*outs[o], *ins[j])})
    else:
        for o in range(len(outs)):
            for j, r in enumerate(_sweeps(low, graph, primals, n_active, o, False)):  # r: (size of output o, *ins[j])
                jac[o][j] = b.emit("reshape", [r], {"shape": (*outs[o], *ins[j])})
    return _unflatten(tree, iter(tuple(row) if many else row[0] for row in jac))


@dataclass(eq=False)
class Pullback(Callable):
    """The function `vjp(f, *primals)` returns: cotangent of f's output -> cotangents of the primals."""

    graph: Graph
    primals: list
    tree: object
    n_active: int
    name: str = "vjp function"

    def call(self, low, args, kwargs, node):
        if kwargs or len(args) != 1:
            low.fail("the function vjp returns takes one argument: a cotangent shaped like f's output", node,
                     "bad_arguments")
        leaves = []
        tree = _flatten(args[0], leaves)
        if tree != self.tree:
            low.fail("the cotangent must have the structure of f's output", node, "bad_arguments")
        cts = []
        for c, a in zip(leaves, self.graph.outputs):
            c = _array(low, c, "a cotangent", node)
            if c.shape != a.shape:
                low.fail(f"a cotangent has shape {list(c.shape)}; f's output has shape {list(a.shape)}", node,
                         "shape_mismatch")
            cts.append(c)
        wrt = [True] * self.n_active + [False] * (len(self.primals) - self.n_active)
        primals = [low.b.capture(p) for p in self.primals]  # it may be called inside a later loop or branch
        _, grads = vjp_inline(low.b, self.graph, primals, wrt, cts)
        return tuple(_zeros_for(low.b, grads[:self.n_active], [p.shape for p in primals]))


@dataclass(eq=False)
class Operator(Callable):
    """A derivative operator itself: `grad`, `jvp`, ..."""

    name: str

    def call(self, low, args, kwargs, node):
        if not args or not isinstance(args[0], Callable):
            low.fail(f"{self.name}() takes a function as its first argument", node, "bad_arguments")
        f = args[0]
        if self.name == "jvp":
            return _jvp(low, f, args, kwargs, node)
        if self.name == "vjp":
            if kwargs:
                low.fail("vjp(f, *primals) takes no keyword arguments", node, "bad_arguments")
            primals = args[1:]
            graph, ps, tree = trace(low, f, primals, range(len(primals)), node, "vjp")
            outs = inline(low.b, graph, ps)
            return _unflatten(tree, iter(outs)), Pullback(graph, ps, tree, len(primals))
        allowed = ("argnums", "has_aux") if self.name in ("grad", "value_and_grad") else ("argnums",)
        bad = [k for k in kwargs if k not in allowed]
        if bad:
            low.fail(f"{self.name}() got an unexpected keyword argument '{bad[0]}'", node, "bad_arguments")
        if len(args) > 2 or (len(args) == 2 and "argnums" in kwargs):
            low.fail(f"{self.name}(f, argnums) takes at most two arguments", node, "bad_arguments")
        argnums = args[1] if len(args) == 2 else kwargs.get("argnums", 0)
        has_aux = kwargs.get("has_aux", False)
        if not isinstance(has_aux, bool):
            low.fail(f"{self.name}(): has_aux must be True or False", node, "bad_arguments")
        if self.name == "hessian":
            return Transformed("jacfwd", Transformed("jacrev", f, argnums), argnums)
        return Transformed(self.name, f, argnums, has_aux)


def _jvp(low, f, args, kwargs, node):
    if kwargs:
        low.fail("jvp(f, primals, tangents) takes no keyword arguments", node, "bad_arguments")
    if len(args) != 3 or not all(isinstance(a, (tuple, list)) for a in args[1:]):
        low.fail("jvp(f, primals, tangents) takes a function and two tuples, e.g. jvp(f, (x,), (t,))", node,
                 "bad_arguments")
    primals, tangents = list(args[1]), list(args[2])
    if len(primals) != len(tangents):
        low.fail(f"jvp: {len(primals)} primal(s) but {len(tangents)} tangent(s)", node, "bad_arguments")
    graph, ps, tree = trace(low, f, primals, range(len(primals)), node, "jvp")
    ts = []
    for i, (t, p) in enumerate(zip(tangents, ps)):
        t = _array(low, t, f"tangent {i}", node)
        if t.shape != p.shape:
            low.fail(f"jvp: tangent {i} has shape {list(t.shape)}, its primal {list(p.shape)}", node,
                     "shape_mismatch")
        ts.append(t)
    outs, touts = jvp_inline(low.b, graph, ps, ts + [None] * (len(ps) - len(ts)))
    touts = _zeros_for(low.b, touts, [a.shape for a in graph.outputs])
    return _unflatten(tree, iter(outs)), _unflatten(tree, iter(touts))


OPERATORS = {name: Operator(name) for name in
             ("grad", "value_and_grad", "jvp", "vjp", "jacfwd", "jacrev", "hessian")}
