"""The front ends as one table: source text in, IR text (or an error code and its location) out.

Each row is what a user writes in one of the three forms (`expr`, `program`,
`graph`) and what the engine builds from it, printed as `Function.text()`: the
canonical IR that the function's id hashes. Read top to bottom, it is a map of
the language: precedence, folding, hash-consing, helpers inlined, closures,
derivative operators lowered to IR at build time, loops and branches as
structured nodes. Errors are checked by code and location (line and column, or
the graph node), the two things a client's editor needs to point at the fault.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from adserve.engine import Engine
from adserve.engine.errors import EngineError


@dataclass(frozen=True)
class Err:
    code: str
    location: dict | None


@dataclass(frozen=True)
class Case:
    form: str
    inputs: dict
    source: object
    want: object  # IR text, or Err
    entry: str | None = None

    def definition(self) -> dict:
        specs = [{"name": n, **(s if isinstance(s, dict) else {"shape": s})} for n, s in self.inputs.items()]
        d = {"inputs": specs, self.form: self.source}
        if self.entry is not None:
            d["entry"] = self.entry
        return d

    def __str__(self):
        return f"{self.form}: {str(self.source)[:60]!r}"


EXPR = [
    # precedence; integer powers of literals fold
    Case('expr', {"x": [], "y": []}, 'x - y * 2 ** 3', """
inputs x,y
in (v0:[], v1:[])
v2 = mul(v1, 8.0)
v3 = sub(v0, v2)
out (v3)"""),
    # ** binds tighter than unary minus; x**2 becomes a multiplication
    Case('expr', {"x": []}, '-x ** 2', """
inputs x
in (v0:[])
v1 = mul(v0, v0)
v2 = neg(v1)
out (v2)"""),
    # left to right
    Case('expr', {"x": [], "y": []}, 'x / y / 2', """
inputs x,y
in (v0:[], v1:[])
v2 = div(v0, v1)
v3 = div(v2, 2.0)
out (v3)"""),
    # a reduction over every axis, a static index
    Case('expr', {"x": [3]}, 'sum(exp(x)) + x[1]', """
inputs x
in (v0:[3])
v1 = exp(v0)
v2 = reduce_sum(v1) axes=(0)
v3 = slice(v0) index=(1)
v4 = add(v2, v3)
out (v4)"""),
    # slices as (start, length, step)
    Case('expr', {"x": [4]}, 'x[1:3] * x[::2]', """
inputs x
in (v0:[4])
v1 = slice(v0) index=((1,2,1))
v2 = slice(v0) index=((0,2,2))
v3 = mul(v1, v2)
out (v3)"""),
    # comparisons are 0/1 values
    Case('expr', {"x": [], "y": []}, 'where(x > y, x, y)', """
inputs x,y
in (v0:[], v1:[])
v2 = gt(v0, v1)
v3 = where(v2, v0, v1)
out (v3)"""),
    # keyword arguments
    Case('expr', {"x": [2, 3]}, 'sum(x, axis=1)', """
inputs x
in (v0:[2, 3])
v1 = reduce_sum(v0) axes=(1)
out (v1)"""),
    # matmul lowers to einsum
    Case('expr', {"a": [2, 3], "b": [3]}, 'a @ b', """
inputs a,b
in (v0:[2, 3], v1:[3])
v2 = einsum(v0, v1) spec=az,z->a
out (v2)"""),
    # a unit factor is dropped (exact for every x, -0.0 and NaN included)
    Case('expr', {"x": []}, 'x * 1', """
inputs x
in (v0:[])
out (v0)"""),
    # hash-consing: one sin
    Case('expr', {"x": []}, 'sin(x) + sin(x)', """
inputs x
in (v0:[])
v1 = sin(v0)
v2 = add(v1, v1)
out (v2)"""),
    # the column after the text's end
    Case('expr', {"x": []}, 'x +', Err('syntax_error', {'line': 1, 'column': 4})),
    Case('expr', {"x": []}, 'foo(x)', Err('unknown_function', {'line': 1, 'column': 1})),
    Case('expr', {"x": []}, 'x + z', Err('undefined_name', {'line': 1, 'column': 5})),
    Case('expr', {"x": [3]}, 'x[5]', Err('index_out_of_range', {'line': 1, 'column': 3})),
    Case('expr', {"x": []}, 'x + 99999999999999999999999', Err('integer_overflow', {'line': 1, 'column': 5})),
    # a function is not a value: it is called, or given to a derivative operator
    Case('expr', {"x": []}, 'lambda: x', Err('bad_value', {'line': 1, 'column': 1})),
    # derivative operators work in an expression too
    Case('expr', {"x": []}, 'grad(lambda t: t * sin(t))(x)', """
inputs x
in (v0:[])
v1 = sin(v0)
v2 = cos(v0)
v3 = mul(v2, v0)
v4 = add(v1, v3)
out (v4)"""),
    Case('expr', {"x": []}, 'sin(x, x)', Err('bad_arguments', {'line': 1, 'column': 1})),
    Case('expr', {"x": [2], "y": [3]}, 'x + y', Err('shape_mismatch', {'line': 1, 'column': 1})),
    Case('expr', {"x": []}, 'x.real', Err('forbidden_attribute', {'line': 1, 'column': 1})),
    Case('expr', {"x": []}, "'a'", Err('bad_constant', {'line': 1, 'column': 1})),
    # norm is safe at 0: its derivative there is 0, not NaN
    Case('expr', {"x": []}, 'clip(x, 0, 1) + norm(x)', """
inputs x
in (v0:[])
v1 = clip(v0, 0.0, 1.0)
v2 = mul(v0, v0)
v3 = reduce_sum(v2) axes=()
v4 = eq(v3, 0.0)
v5 = where(v4, 1.0, v3)
v6 = sqrt(v5)
v7 = where(v4, 0.0, v6)
v8 = add(v1, v7)
out (v8)"""),
]

PROGRAM = [
    # a for loop is one structured node: carries in, the body a sub-graph (not unrolled)
    Case('program', {"x": [3]}, 'def f(x):\n    s = 0.0\n    for i in range(3):\n        s += x[i] ** 2\n    return s\n', """
inputs x
in (v0:[3])
v1 = loop(v0, 0.0) length=3 n_carry=1 n_consts=1 reverse=False {
  body:
    in (v2:[], v3:[3], v4:[])
    v5 = dyn_slice(v3, v2) axis=0 size=None
    v6 = mul(v5, v5)
    v7 = add(v4, v6)
    out (v7)
}
out (v1)"""),
    # an if on run-time data becomes a cond whose outputs are what either branch assigns
    Case('program', {"x": []}, 'def f(x):\n    if x > 0:\n        y = x\n    else:\n        y = -x\n    return y\n', """
inputs x
in (v0:[])
v1 = gt(v0, 0.0)
v2 = cond(v1, v0) {
  false_body:
    in (v3:[])
    v4 = neg(v3)
    out (v4)
  true_body:
    in (v5:[])
    out (v5)
}
out (v2)"""),
    # a while loop: condition and body sub-graphs, bounded by max_iter
    Case('program', {"x": []}, 'def f(x):\n    while x > 1:\n        x = x / 2\n    return x\n', """
inputs x
in (v0:[])
v1 = while(v0) max_iter=100000 n_consts=0 tape=False {
  body:
    in (v2:[])
    v3 = div(v2, 2.0)
    out (v3)
  cond:
    in (v4:[])
    v5 = gt(v4, 1.0)
    out (v5)
}
out (v1)"""),
    # helper functions are inlined at each call
    Case('program', {"x": []}, 'def sq(t):\n    return t * t\n\ndef f(x):\n    return sq(x) + sq(2 * x)\n', """
inputs x
in (v0:[])
v1 = mul(v0, v0)
v2 = mul(2.0, v0)
v3 = mul(v2, v2)
v4 = add(v1, v3)
out (v4)"""),
    # a closure reads the enclosing x
    Case('program', {"x": []}, 'def f(x):\n    def g(t):\n        return t * x\n    return g(3.0)\n', """
inputs x
in (v0:[])
v1 = mul(3.0, v0)
out (v1)"""),
    # grad is applied when the function is built: only its result is in the IR (t**3 is (t*t)*t, as JAX's
    # integer powers; the grad of one number is taken in forward mode: the tangent of t*t is t + t, and of
    # (t*t)*t is (t + t)*t + t*t)
    Case('program', {"x": []}, 'def f(x):\n    return grad(lambda t: t ** 3)(x)\n', """
inputs x
in (v0:[])
v1 = mul(v0, v0)
v2 = add(v0, v0)
v3 = mul(v2, v0)
v4 = add(v1, v3)
out (v4)"""),
    # grad of a named helper
    Case('program', {"x": []}, 'def cube(t):\n    return t ** 3\n\ndef f(x):\n    return grad(cube)(x)\n', """
inputs x
in (v0:[])
v1 = mul(v0, v0)
v2 = add(v0, v0)
v3 = mul(v2, v0)
v4 = add(v1, v3)
out (v4)"""),
    # recursion is refused where the call is
    Case('program', {"x": []}, 'def f(x):\n    return f(x)\n', Err('recursion', {'line': 2, 'column': 12})),
    # statements outside the language name themselves
    Case('program', {"x": []}, 'def f(x):\n    import os\n    return x\n', Err('unsupported', {'line': 2, 'column': 5})),
    # a function must return
    Case('program', {"x": []}, 'def f(x):\n    y = x\n', Err('bad_program', {'line': 2, 'column': 5})),
    Case('program', {"x": []}, 'def f(x):\n    return y\n', Err('undefined_name', {'line': 2, 'column': 12})),
    # integers are bounded at parse time
    Case('program', {"x": []}, 'def f(x):\n    for i in range(99999999999999999999):\n        x = x\n    return x\n', Err('integer_overflow', {'line': 2, 'column': 20})),
    # an int64 input indexes: a gather
    Case('program', {"x": [5], "i": {'shape': [2], 'dtype': 'int64'}}, 'def f(x, i):\n    return sum(x[i])\n', """
inputs x,i:int64
in (v0:[5], v1:[2])
v2 = gather(v0, v1) axis=0
v3 = reduce_sum(v2) axes=(0)
out (v3)"""),
    # entry picks the function (default: the last one)
    Case('program', {"x": []}, 'def g(x):\n    return x + 1\n\ndef f(x):\n    return x * 2\n', """
inputs x
in (v0:[])
v1 = add(v0, 1.0)
out (v1)""", entry='g'),
    # break: a flag carried through the loop and tested by its condition
    Case('program', {"x": []}, 'def f(x):\n    while x > 1:\n        if x > 10:\n            break\n        x = x - 1\n    return x\n', """
inputs x
in (v0:[])
v1, v2 = while(0.0, v0) max_iter=100000 n_consts=0 tape=False {
  body:
    in (v3:[], v4:[])
    v5 = gt(v4, 10.0)
    v6 = cond(v5, v3) {
      false_body:
        in (v7:[])
        out (v7)
      true_body:
        in (v8:[])
        out (1.0)
    }
    v9 = eq(v6, 0.0)
    v10 = cond(v9, v4) {
      false_body:
        in (v11:[])
        out (v11)
      true_body:
        in (v12:[])
        v13 = sub(v12, 1.0)
        out (v13)
    }
    out (v6, v10)
  cond:
    in (v14:[], v15:[])
    v16 = eq(v14, 0.0)
    v17 = gt(v15, 1.0)
    v18 = ne(v16, 0.0)
    v19 = ne(v17, 0.0)
    v20 = mul(v18, v19)
    out (v20)
}
out (v2)"""),
    Case('program', {"x": []}, 'def f(x):\n    try:\n        y = x\n    except Exception:\n        y = 0\n    return y\n', Err('unsupported', {'line': 2, 'column': 5})),
    # the entry's arguments are the inputs, in order
    Case('program', {"x": []}, 'def f(x, y):\n    return x\n', Err('bad_program', {'line': 1, 'column': 1})),
    # a program is definitions only
    Case('program', {"x": []}, 'x = 1\n', Err('bad_program', {'line': 1, 'column': 1})),
    # assignment into an array is a functional update
    Case('program', {"x": [3]}, 'def f(x):\n    x[0] = 2.0\n    return sum(x)\n', """
inputs x
in (v0:[3])
v1 = update_slice(v0, 2.0) index=(0)
v2 = reduce_sum(v1) axes=(0)
out (v2)"""),
    Case('program', {"x": []}, 'def f(x):\n    a, b = x, 2 * x\n    return a * b\n', """
inputs x
in (v0:[])
v1 = mul(2.0, v0)
v2 = mul(v0, v1)
out (v2)"""),
    # continue: the rest of the body runs under the flag; a branch known when built is taken
    Case('program', {"x": []}, 'def f(x):\n    for i in range(3):\n        if i == 1:\n            continue\n        x = x * 2\n    return x\n', """
inputs x
in (v0:[])
v1 = loop(v0) length=3 n_carry=1 n_consts=0 reverse=False {
  body:
    in (v2:[], v3:[])
    v4 = eq(v2, 1.0)
    v5 = cond(v4) {
      false_body:
        in ()
        out (0.0)
      true_body:
        in ()
        out (1.0)
    }
    v6 = eq(v5, 0.0)
    v7 = cond(v6, v3) {
      false_body:
        in (v8:[])
        out (v8)
      true_body:
        in (v9:[])
        v10 = mul(v9, 2.0)
        out (v10)
    }
    out (v7)
}
out (v1)"""),
    # an if on a constant keeps one branch
    Case('program', {"x": []}, 'def f(x):\n    if 2 > 1:\n        y = x\n    else:\n        y = -x\n    return y\n', """
inputs x
in (v0:[])
out (v0)"""),
    Case('program', {"x": []}, 'def f(x):\n    global q\n    return x\n', Err('unsupported', {'line': 2, 'column': 5})),
    Case('program', {"x": []}, "def f(x):\n    with open('a') as h:\n        y = x\n    return x\n", Err('unsupported', {'line': 2, 'column': 5})),
    # an entry the program does not define
    Case('program', {"x": []}, 'def f(x):\n    return x\n', Err('bad_program', None), entry='g'),
    # only range loops
    Case('program', {"x": []}, 'def f(x):\n    for t in [1, 2]:\n        x = x + t\n    return x\n', Err('unsupported', {'line': 2, 'column': 14})),
    Case('program', {"x": []}, 'def f(x):\n    while x > 1:\n        x = x / 2\n    else:\n        x = 0\n    return x\n', Err('unsupported', {'line': 2, 'column': 5})),
    # mutual recursion through nested helpers, refused at the call that closes the cycle
    Case('program', {"x": []}, 'def f(x):\n    def g(t):\n        return h(t)\n    def h(t):\n        return g(t)\n    return g(x)\n', Err('recursion', {'line': 5, 'column': 16})),
    # a syntax error points where Python's parser stopped
    Case('program', {"x": []}, 'def f(x):\n    return x +\n', Err('syntax_error', {'line': 2, 'column': 15})),
    # argnums: the derivative in b (2ab)
    Case('program', {"x": [], "y": []}, 'def f(x, y):\n    return grad(lambda a, b: a * b * b, argnums=1)(x, y)\n', """
inputs x,y
in (v0:[], v1:[])
v2 = mul(v0, v1)
v3 = add(v2, v2)
out (v3)"""),
    # jvp returns (value, tangent)
    Case('program', {"x": []}, 'def f(x):\n    return jvp(lambda t: sin(t), (x,), (1.0,))[1]\n', """
inputs x
in (v0:[])
v1 = cos(v0)
out (v1)"""),
    # arange gives indices known when built
    Case('program', {"x": [4]}, 'def f(x):\n    return sum(x[arange(2)])\n', """
inputs x
in (v0:[4])
v1 = gather(v0, const([2];0.0,1.0)) axis=0
v2 = reduce_sum(v1) axes=(0)
out (v2)"""),
    # perturbation confusion (Siskind and Pearlmutter): d/dt (t x) at t = x is x, not 2x
    Case('program', {"x": []}, 'def f(x):\n    return grad(lambda t: t * x)(x)\n', """
inputs x
in (v0:[])
out (v0)"""),
    # grad inside a loop body, closing over the loop counter
    Case('program', {"x": []}, 'def f(x):\n    y = 0.0\n    for i in range(2):\n        y = y + grad(lambda t: t * x * i)(x)\n    return y\n', """
inputs x
in (v0:[])
v1 = loop(v0, 0.0) length=2 n_carry=1 n_consts=1 reverse=False {
  body:
    in (v2:[], v3:[], v4:[])
    v5 = mul(v3, v2)
    v6 = add(v4, v5)
    out (v6)
}
out (v1)"""),
]

GRAPH = [
    # the survey's example, node for node (Baydin et al., Table 2)
    Case('graph', {"x1": [], "x2": []}, {"nodes": [{"id": "v0", "op": "log", "args": ["x1"]}, {"id": "v1", "op": "mul", "args": ["x1", "x2"]}, {"id": "v2", "op": "add", "args": ["v0", "v1"]}, {"id": "v3", "op": "sin", "args": ["x2"]}, {"id": "v4", "op": "sub", "args": ["v2", "v3"]}], "outputs": ["v4"]}, """
inputs x1,x2
in (v0:[], v1:[])
v2 = log(v0)
v3 = mul(v0, v1)
v4 = add(v2, v3)
v5 = sin(v1)
v6 = sub(v4, v5)
out (v6)"""),
    # params and literal objects
    Case('graph', {"x": [2, 3]}, {"nodes": [{"id": "s", "op": "reduce_sum", "args": ["x"], "params": {"axes": [1]}}, {"id": "t", "op": "mul", "args": ["s", {"value": 0.5, "shape": [2]}]}], "outputs": ["t"]}, """
inputs x
in (v0:[2, 3])
v1 = reduce_sum(v0) axes=(1)
v2 = mul(v1, full(0.5,[2]))
out (v2)"""),
    # graph errors name the node
    Case('graph', {"x": []}, {"nodes": [{"id": "a", "op": "frobnicate", "args": ["x"]}], "outputs": ["a"]}, Err('unknown_op', {'node': 'a'})),
    # nodes read only earlier nodes: no cycles
    Case('graph', {"x": []}, {"nodes": [{"id": "a", "op": "sin", "args": ["b"]}, {"id": "b", "op": "cos", "args": ["x"]}], "outputs": ["a"]}, Err('cycle', {'node': 'a'})),
    Case('graph', {"x": []}, {"nodes": [{"id": "a", "op": "sin", "args": ["nope"]}], "outputs": ["a"]}, Err('unknown_reference', {'node': 'a'})),
    # parameters are checked against the op's row
    Case('graph', {"x": [2, 3]}, {"nodes": [{"id": "s", "op": "reduce_sum", "args": ["x"], "params": {"axes": "one"}}], "outputs": ["s"]}, Err('bad_graph', {'node': 's'})),
    Case('graph', {"x": [3]}, {"nodes": [{"id": "m", "op": "mul", "args": ["x", {"value": 1.0, "shape": [4]}]}], "outputs": ["m"]}, Err('shape_mismatch', {'node': 'm'})),
    Case('graph', {"x": []}, {"nodes": [{"id": "a", "op": "sin", "args": ["x", "x"]}], "outputs": ["a"]}, Err('bad_arguments', {'node': 'a'})),
]


ENGINE = Engine()


@pytest.mark.parametrize("case", EXPR + PROGRAM + GRAPH, ids=str)
def test_source_to_ir(case):
    if isinstance(case.want, Err):
        with pytest.raises(EngineError) as err:
            ENGINE.compile_definition(case.definition())
        assert (err.value.code, err.value.location) == (case.want.code, case.want.location), err.value.message
    else:
        assert ENGINE.compile_definition(case.definition()).text() == case.want.strip()


def test_every_form_has_successes_and_errors():
    for form, cases in (("expr", EXPR), ("program", PROGRAM), ("graph", GRAPH)):
        assert all(c.form == form for c in cases)
        kinds = {isinstance(c.want, Err) for c in cases}
        assert kinds == {True, False}, f"{form} needs both built and refused rows"
