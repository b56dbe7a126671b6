"""The direct-LLVM back end's concatenations read in place and carries written in place (codegen/llvm_pieces.py).

A concatenation (or a one-axis update, or a slice of either) read by element-wise runs is not copied: the run
is written as one loop nest per stretch of its axis, each reading its piece; a value shifted by one along the
last axis is the previous iteration's element (a phi), in the run computing it; a value's next element (an
update of `v[1:]` into the first n - 1 elements) is the previous iteration's of a descending run (llvm_next.py);
a loop's new carry computed by an element-wise run is written into the carry. Checked here: the kernels no
longer hold the copies (their workspace), and the bits stay numba's source's (the python tier) and the
interpreter's on shapes that stress the pieces: a piece of length 1, empty pieces, a second axis, broadcast
operands, sums over a concatenation, slices across pieces, a concatenation as an output and as a carry's new
value beside a swap, next-element reads at lengths 1 and 2.
"""

import numpy as np
import pytest
from test_codegen import B
from engine_helpers import run
from test_codegen import compile_kernel, run_kernel
from test_llvm_kernels import both
from test_tier_consistency import same

from adserve.engine import Engine, main_plan
from adserve.engine.codegen import llvm_ir, llvm_kernel
from bench.gradbench.evals import _ode_program

pytestmark = pytest.mark.compiled

engine = Engine()


def _plan(inputs, body, kinds=("value",)):
    """The plan of a program (`body`: the lines of f) over float inputs {name: shape}, and points for it."""
    names = ", ".join(inputs)
    defn = {"inputs": [{"name": n, "shape": list(s)} for n, s in inputs.items()],
            "program": f"def f({names}):\n" + "\n".join("    " + line for line in body.strip().split("\n"))}
    fn = engine.compile_definition(defn)
    graph, _ = main_plan(fn, frozenset(kinds))
    rng = np.random.default_rng(5)
    return graph, [rng.standard_normal((B, *v.shape)) for v in graph.inputs]


def _workspace(graph) -> int:
    """Doubles of workspace the LLVM kernel of `graph` takes."""
    w = llvm_ir.Writer(graph)
    w.write()
    return w.ws


def test_a_shifted_concatenation_is_not_copied():
    """x * [1, x0, x1, ...] is one run in two stretches (the first position, then the rest), written straight
    into the output: no buffer for the concatenation (there was one of n doubles)."""
    graph, args = _plan({"x": (7,)}, "return x * concatenate([ones(1), x[:-1]]) + 1.0")
    assert any(e.prim == "concatenate" for e in graph.eqns)
    assert _workspace(graph) == 0
    both(graph, args, "pieces shifted", exact_interp=True, against="python")


def test_a_carry_computed_element_wise_is_written_in_place():
    """y = y * 0.5 + x in a loop: the new y is written into the carry (the output's row), no buffer copied into
    it after each iteration; a run reading the old y's next element keeps its buffer (it would read what it
    wrote)."""
    graph, args = _plan({"x": (6,)}, """
y = x
for i in range(4):
    y = y * 0.5 + x
return y""")
    assert _workspace(graph) == 0
    both(graph, args, "pieces in place", exact_interp=True, against="python")
    graph, args = _plan({"x": (6,)}, """
y = x
for i in range(4):
    y = y * 0.5 + x * concatenate([y[1:], ones(1)])
return y""")
    assert _workspace(graph) == 6
    both(graph, args, "pieces not in place", exact_interp=True, against="python")


def test_a_shift_reads_the_previous_iterations_element():
    """ode's step (four stages, each reading the one before shifted by one) is one loop: each shifted value is
    a phi of the previous iteration's element, nothing is stored but the new state, in place (the workspace
    held the four concatenations, then the stages' values)."""
    defn = {"inputs": [{"name": "x", "shape": [50]}], "program": _ode_program(3, last=False)}
    graph, _ = main_plan(engine.compile_definition(defn), frozenset({"value"}))
    assert _workspace(graph) == 0
    text = llvm_kernel.module_text(graph, "k", "ode")
    assert text.count("= phi double") == 4
    graph, args = _plan({"x": (2, 5)}, """
y = x
for i in range(3):
    y = y * 0.5 + x * concatenate([ones((2, 1)), y[:, :-1]], axis=1)
return y""")
    assert _workspace(graph) == 0
    both(graph, args, "pieces shift along a second axis", exact_interp=True, against="python")


@pytest.mark.parametrize("n", [1, 2, 9])
@pytest.mark.parametrize("kinds", [("value",), ("value", "gradient")])
def test_ode_gives_numbas_bits(n, kinds):
    """GradBench's ode (its value, and the gradient of its last entry: updates of shifted slices in the reverse
    loop) at lengths where the shifted slice is empty (1) or one element (2)."""
    program = _ode_program(3, last=len(kinds) > 1)
    defn = {"inputs": [{"name": "x", "shape": [n]}], "program": program}
    fn = engine.compile_definition(defn)
    graph, _ = main_plan(fn, frozenset(kinds))
    rng = np.random.default_rng(n)
    both(graph, [rng.random((B, n))], f"pieces ode n={n} {kinds}", exact_interp=True, against="python")


PROGRAMS = {  # name -> (inputs, body, kinds)
    "second axis, broadcast operands": ({"a": (3, 4), "v": (4,), "c": (3, 1)}, """
z = concatenate([a[:, 1:], c], axis=1)
return z * v + a * 2.0 + c - concatenate([c, a[:, 2:], c], axis=1)""", ("value",)),
    "second axis, gradient": ({"a": (3, 4), "v": (4,), "c": (3, 1)}, """
z = concatenate([a[:, 1:], c], axis=1)
return sum(z * v + a * 2.0) + sum(concatenate([a, a * v], axis=0) * v)""", ("value", "gradient")),
    "sums over a concatenation": ({"a": (3, 4), "b": (2, 4)}, """
z = concatenate([a, b * 3.0], axis=0)
return sum(z * z) + sum(sum(concatenate([a, a], axis=1) * 2.0, axis=1) * 1.5)""", ("value", "gradient")),
    "slices across pieces": ({"x": (5,), "y": (3,)}, """
z = concatenate([x, y * 2.0, x[1:3]])
w = z[3:7] * 2.0 + z[0:4]
return sum(w * z[6:10]) + z[5] + sum(z[1:9:2])""", ("value", "gradient")),
    "empty pieces": ({"x": (4,)}, """
z = concatenate([x[0:0], x * 2.0, x[4:4], ones(1)])
return sum(z * z)""", ("value", "gradient")),
    "updates": ({"x": (6,), "v": (2,)}, """
y = x * 1.0
y[1:3] = v * 2.0
z = y * x
z[0:2] = y[4:6]
return sum(z * y) + sum(y[2:5] * 3.0)""", ("value", "gradient")),
    "a shift across stretches": ({"x": (6,)}, """
z = concatenate([x[2:], ones(2)])
w = x * 2.0
return z * concatenate([ones(1), w[:-1]]) + w""", ("value",)),
    "a shift across stretches, gradient": ({"x": (6,)}, """
z = concatenate([x[2:], ones(2)])
w = x * 2.0
return sum(z * concatenate([ones(1), w[:-1]]) + w)""", ("value", "gradient")),
    "a shift beside a concatenation, two axes": ({"a": (3, 5)}, """
z = concatenate([a[:, 2:], ones((3, 2))], axis=1)
w = a * 2.0
return z * concatenate([zeros((3, 1)), w[:, :-1]], axis=1) + w * concatenate([a[1:], a[:1]])""", ("value",)),
    "an output and a swap of carries": ({"x": (4,)}, """
a = x
b = x * 2.0
for i in range(3):
    a, b = b, concatenate([a[1:], b[:1]])
    b = b + concatenate([ones(1), a[:-1]])
return sum(a * b)""", ("value", "gradient")),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_give_numbas_bits(name):
    inputs, body, kinds = PROGRAMS[name]
    graph, args = _plan(inputs, body, kinds)
    both(graph, args, f"pieces {name}", against="python")


def test_a_concatenation_as_the_output():
    graph, args = _plan({"x": (3,), "y": (2,)}, "return concatenate([x * 2.0, y, x])")
    both(graph, args, "pieces output", exact_interp=True, against="python")


# -- the next element (codegen/llvm_next.py) -------------------------------------------------------------------
NEXT_BODY = """
y = x * 2.0
z = zeros(len(x))
z[:-1] = y[1:]
g = x * 3.0
g[:-1] = g[:-1] + y[1:] * x[:-1]
h = w * 1.5
h[:, :-1] = h[:, :-1] - w[:, 1:]
return sum(z * x) + sum(g * g) + sum(h * w)"""


def test_ode_gradients_reverse_step_is_one_descending_loop():
    """ode's reverse step reads the next element of four values it computes (updates of `v[1:]` into the first
    n - 1 elements): after the step's first loop (its shifts, ascending), the rest is one loop with its axis
    descending, each next element the previous iteration's (a phi); no [1:] slice or update is left, and the
    new cotangent is written into its carry (eleven loops and a copy into the carry before). The step's
    cotangent times constants, computed after its last shift, are computed in the descending loop (`tail`)."""
    defn = {"inputs": [{"name": "x", "shape": [50]}], "program": _ode_program(3, last=True)}
    graph, _ = main_plan(engine.compile_definition(defn), frozenset({"gradient"}))
    w = llvm_ir.Writer(graph)
    w.write()
    reverse = next(e for e in graph.eqns if e.prim == "loop" and e.params["reverse"])
    body = w.rewritten[reverse.params["body"]]
    assert not any(e.prim == "update_slice" for e in body.eqns)
    assert all(e.prim == "slice" and e.params["index"] == ((0, 49, 1),) for e in body.eqns
               if "slice" in e.prim)  # the four shifts' [:-1] (llvm_pieces.shifted's), no [1:]
    assert sum(e.prim == "next" for e in body.eqns) >= 4 and sum(e.prim == "patch" for e in body.eqns) == 4
    text = llvm_kernel.module_text(graph, "k", "ode")
    assert text.count(".d = sub nuw nsw i64 49, ") == 1
    # the tape (3 rows), the state and its new value, the cotangent, the four shifts the descending loop reads
    # (1146 doubles before: each stage's values, the [n - 1] sums, the shifts, the cotangent times constants)
    assert w.ws == 50 * (3 + 2 + 1 + 4)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_next_element_reads_give_numbas_bits(n):
    """Next-element shifts, updates of the first n - 1 elements (along a second axis too), and sums of them, at
    lengths where the [n - 1] values are empty (1) or one element (2); signed zeros, infinities and NaN among the
    inputs (a PATCH keeps the base's element at the end, an element computed from NEXT's fill there is dropped).
    The value is a sum (the interpreter's NumPy sums pairwise: within 1e-12); the gradients are element-wise:
    the interpreter's bits."""
    graph, args = _plan({"x": (n,), "w": (3, n)}, NEXT_BODY, ("value", "gradient"))
    if n > 1:
        assert any(e.prim == "next" for e in llvm_ir.Writer(graph).nexted(graph).eqns)
    edges = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, 1.5, -2.25, 0.75])
    args[0][0] = edges[:n] if n <= len(edges) else args[0][0]
    args[1][1, 0] = np.resize(edges[::-1], n)
    with np.errstate(invalid="ignore"):  # the python tier's NumPy scalars meet inf - inf and 0 * inf, as meant
        both(graph, args, f"pieces next n={n}", against="python")
    got = run_kernel(compile_kernel(graph, f"pieces next n={n}", llvm=True), graph, args)
    for j, (g, w) in enumerate(zip(got[1:], run(graph, args)[1:])):  # the gradients: no sum, the same bits
        same(g, w, True, f"pieces next n={n}: gradient {j} against the interpreter")


def test_a_next_read_of_a_carry_in_a_loop():
    """A loop's carry updated from its own next element and a value computed in the body: the run reading the
    old carry's next element writes the new one (descending: the old element i + 1 is read before i is
    written)."""
    for shape in [(1,), (2,), (7,), (2, 6)]:
        cut = ":-1" if len(shape) == 1 else ":, :-1"
        nxt = "1:" if len(shape) == 1 else ":, 1:"
        graph, args = _plan({"x": shape}, f"""
y = x * 1.0
for i in range(3):
    t = y * 0.5
    t[{cut}] = t[{cut}] + y[{nxt}] * x[{nxt}]
    y = t
return y""")
        both(graph, args, f"pieces next carry {shape}", exact_interp=True, against="python")
