"""The direct-LLVM back end's loops, branches and run-time indexing (codegen/llvm_control.py, llvm_ops.dyn_*):
numba's kernel's bits, its statuses and its stop protocol.

Plans with `loop` (forward and reverse: consts, carries, xs rows, stacked ys and the VJP's tape), `while` (its
limit, its tape, every k-th iteration when it checkpoints), `cond`, `dyn_slice` and `dyn_update` compile by LLVM;
each is checked here against numba's kernel bit for bit (test_llvm_kernels.both) and the interpreter: spec groups
of the primitive table, fixed programs, random control-flow programs (test_property_graphs' strategy) and a random
while program (test_while_checkpoint's). A while past its limit and a bad run-time index are numba's statuses and
messages, its LOOPS the same; a set stop flag stops a long loop where numba's would, saying where.
"""

import ast
import threading

import numpy as np
import pytest
from engine_helpers import Builder, no_stop, op
from hypothesis import given, settings
from test_codegen import B, GROUPS, compile_kernel, spec_graph
from test_llvm_kernels import both, group_args
from test_property_graphs import engine_graph, programs

from adserve.engine import Engine, main_plan
from adserve.engine.codegen import llvm_ir, llvm_kernel
from adserve.engine.codegen.module import kernel_module

pytestmark = pytest.mark.compiled

engine = Engine()


def _group(first):
    return next(i for i, g in enumerate(GROUPS) if g[0].id == first)


# test_codegen's groups with loops, branches and run-time indexing (test_tier_consistency checks every group
# against the interpreter on the tier the server picks, LLVM for these): numba's compiles are the cost here
SPEC_GROUPS = ["scan-reverse", "scan-nested", "scan-cond-inside", "scan-writes-buffer-at-counter", "scan-length0",
               "while-shrink", "cond-nested", "dyn_update[5]-axis0-size3", "gather[5, 3]-axis0-idx[4]",
               "scatter_add[3, 4, 2]-axis2-idx[3]", "argmax[2, 3, 4]-axis0"]


@pytest.mark.parametrize("first", SPEC_GROUPS)
def test_spec_groups_give_numbas_bits(first):
    specs = GROUPS[_group(first)]
    both(spec_graph(specs), group_args(specs, np.random.default_rng(7)), f"llvm spec group {first}")


def _program(name):
    """A program's value-and-gradient plan (numba's compile of its HVP plan is a minute or more here) and points."""
    from test_codegen import PROGRAMS
    from test_while_checkpoint import CONFUSION, NESTED, _fixed_random_programs, _random_case
    from test_while_compiled import _plan_and_args
    kinds = ("value", "gradient")
    if name == "loops-branches-assignment":
        defn, point = PROGRAMS[name]
        fn = engine.compile_definition(defn)
        graph, _ = main_plan(fn, frozenset(kinds))
        rng = np.random.default_rng(0)
        return graph, [np.asarray(point[n])[None] + 0.01 * rng.standard_normal((B, *fn.input_shapes[n]))
                       for n in fn.input_names]
    if name == "contractions in bodies":  # BLAS products (70 x 70) and loop nests in a for, a while and a cond
        # (x.x about 1: points on either branch)
        fn = engine.compile_definition(CONTRACTING)
        graph, _ = main_plan(fn, frozenset(kinds))
        rng = np.random.default_rng(1)
        return graph, [0.12 * rng.standard_normal((B, *fn.input_shapes[n])) for n in fn.input_names]
    if name == "random while program 3":  # a while nested in a while of a three-part condition
        return _plan_and_args(*_random_case(_fixed_random_programs(12)[3], 11), 2, kinds=kinds)
    case, point, k = {"nested while, tape every 3rd": (NESTED, {"x": np.array([0.3, 0.9, -0.2]),
                                                                "w": np.array(0.8)}, 3),
                      "confusion through a loop": (CONFUSION, {"x": np.array(1.3)}, 2)}[name]
    return _plan_and_args(case, point, k, kinds=kinds if case is NESTED else ("value", "gradient", "hvp"))


CONTRACTING = {"inputs": [{"name": "A", "shape": [70, 70]}, {"name": "x", "shape": [70]},
                          {"name": "C", "shape": [3, 4]}], "program": """
def f(A, x, C):
    y = x
    for i in range(3):
        y = tanh(A @ y) + 0.5 * x
    z = x
    n = 0.0
    while n < 2.0:
        z = z + 0.1 * (transpose(A) @ z) + sum(C @ transpose(C)) * 0.01
        n = n + 1.0
    if dot(x, x) > 1.0:
        s = dot(y, A @ z)
    else:
        s = sum(transpose(A) @ x)
    return s + sum(z) + sum(C @ transpose(C) @ C)
"""}


@pytest.mark.parametrize("name", ["loops-branches-assignment", "nested while, tape every 3rd",
                                  "confusion through a loop", "random while program 3", "contractions in bodies"])
def test_programs(name):
    """Fixed programs (for loops with branches and run-time indices; nested while loops with break and continue,
    checkpointed every 3rd iteration; perturbation confusion through a loop, its HVP too; contractions inside
    loop, while and cond bodies) and test_while_compiled's small random while program."""
    graph, args = _program(name)
    both(graph, args[:len(graph.inputs)], f"llvm program {name}")  # (a plan without tangents: points alone)


@settings(max_examples=5, deadline=None, derandomize=True, database=None)
@given(programs(control_flow=True, max_len=6))
def test_random_control_flow_programs(case):
    """test_property_graphs' random programs with scans and branches: value, gradient, JVP and HVP, against the
    python tier's bits (numba's are checked on the spec groups and fixed programs above)."""
    from test_codegen import _hvp_graph
    prog, seed = case
    graph = _hvp_graph(engine_graph(prog))
    rng = np.random.default_rng(seed)
    both(graph, [rng.standard_normal((B, *v.shape)) for v in graph.inputs], f"llvm random {prog}", against="python")


def _module_lists(graph):
    """numba's module's ERRORS and LOOPS, read from its text (no compile)."""
    text = kernel_module(graph, "lists")
    get = {line.split(" = ", 1)[0]: ast.literal_eval(line.split(" = ", 1)[1])
           for line in text.splitlines() if line.startswith(("ERRORS = ", "LOOPS = "))}
    return get["ERRORS"], get["LOOPS"]


def test_statuses_are_numbas():
    """A while past its limit and a bad run-time index: numba's status numbers and messages."""
    from test_primitives import while_
    b = Builder()
    x, v, i = b.input(()), b.input((4,)), b.input(())
    (y,) = while_([], [x], lambda c, s: op.gt(s[0], -1.0), lambda c, s: [s[0] + 1.0], max_iter=50)
    graph = b.build([y, op.dyn_slice(v, i, axis=0, size=None) * y])
    errors, loops = _module_lists(graph)
    mine = compile_kernel(graph, "llvm statuses", llvm=True)
    assert isinstance(mine, llvm_kernel.LlvmModule) and mine.ERRORS[:len(errors)] == errors
    assert mine.LOOPS == loops
    outs = [np.empty((1,)), np.empty((1,))]
    for x0, i0, want in ((0.0, 1.0, 1), (-5.0, 7.0, 2), (0.0, 2.5, 2), (-5.0, 3.0, 0), (-5.0, float("nan"), 2)):
        status = mine.kernel(1, no_stop(), np.array([x0]), np.arange(4.0)[None], np.array([i0]), *outs)
        assert status == want, (x0, i0, status)
        assert want or (outs[0][0], outs[1][0]) == (-5.0, -15.0)
    b = Builder()
    v, i = b.input((4,)), b.input((2,))
    graph = b.build([op.gather(v, i, axis=0), op.scatter_add(v, op.slice(v, index=((0, 2, 1),)), i, axis=0)])
    errors, _ = _module_lists(graph)
    mine = compile_kernel(graph, "llvm gather statuses", llvm=True)
    assert mine.ERRORS[:len(errors)] == errors and len(errors) == 2
    outs = [np.empty((1, 2)), np.empty((1, 4))]
    for i0, want in (([1.0, 3.0], 0), ([1.0, 4.0], 2), ([-0.5, 1.0], 2), ([float("nan"), 0.0], 2)):
        assert mine.kernel(1, no_stop(), np.arange(4.0)[None], np.array([i0]), *outs) == want, i0
        assert want or (outs[0].tolist(), outs[1].tolist()) == ([[1.0, 3.0]], [[0.0, 1.0, 2.0, 4.0]])


LONG_LOOP = {"inputs": [{"name": "x", "shape": [50]}], "program": """
def f(x):
    acc = x
    for i in range(1000000):
        acc = sin(acc) * 0.5 + x
    return sum(acc)
"""}
LONG_WHILE = {"inputs": [{"name": "x", "shape": [4000]}], "program": """
def f(x):
    y = x
    n = 0.0
    while n < 90000.0:
        y = sin(y) + 0.25
        n = n + 1.0
    return sum(y)
"""}


@pytest.mark.parametrize("defn", [LONG_LOOP, LONG_WHILE], ids=["for", "while"])
def test_the_stop_flag_stops_a_long_loop(defn):
    """A set flag at the start: no point runs (the point's check). Set while a long loop runs: the loop's check
    stops it, recording the point, the loop (1, the module's first LOOPS entry) and its iterations done."""
    fn = engine.compile_definition(defn)
    graph, _ = main_plan(fn, frozenset({"value"}))
    assert not llvm_ir.declined(graph)
    mod = compile_kernel(graph, "llvm long loop", llvm=True)
    assert isinstance(mod, llvm_kernel.LlvmModule) and mod.LOOPS == _module_lists(graph)[1]
    x = np.full((1, *fn.input_shapes["x"]), 0.3)
    out = np.empty((1,))
    stop = no_stop()
    stop[0] = 1
    assert mod.kernel(1, stop, x, out) == llvm_kernel.STOPPED and list(stop[1:4]) == [0, 0, 0]
    stop = no_stop()
    timer = threading.Timer(0.02, stop.__setitem__, (0, 1))
    timer.start()
    status = mod.kernel(1, stop, x, out)
    timer.join()
    length = mod.LOOPS[0][0]
    assert status == llvm_kernel.STOPPED and stop[1] == 0 and stop[2] == 1, (status, stop)
    assert 0 < stop[3] < (length or 90000), stop
