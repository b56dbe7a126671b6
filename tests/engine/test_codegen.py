"""Compiled equals interpreted: the numba kernels against the NumPy reference.

The survey's example and programs with nested loops, branches and element
assignment are compiled with value, gradient and HVP plans, and so are random
graphs drawn by test_property_graphs' strategy. Every primitive spec of
test_primitives (value, JVP and VJP of each, loops and branches included) is
grouped into kernels here (`GROUPS`, `spec_graph`) and checked against the
interpreter and the python tier, on a batch of points with per-point and shared
(broadcast) inputs, in test_tier_consistency. Kernels are cached under ~/.cache
so reruns on a machine skip numba's compile.
"""

import ast
import fcntl
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from engine_helpers import TEST_CACHE, Builder, identical, inline, jvp_graph, make_graph, no_stop, op, run, vjp_graph
from hypothesis import given, settings
from test_primitives import SPECS
from test_property_graphs import engine_graph, programs

from adserve.engine import Engine, main_plan
from adserve.engine.codegen import llvm_ir, llvm_kernel, schedule
from adserve.engine.codegen.module import kernel_module
from adserve.engine.ir import Lit
from adserve.engine.codegen.worker import NICE, load

pytestmark = pytest.mark.compiled  # numba compiles (minutes on a machine whose kernel cache is cold)

engine = Engine()  # the interpreter, default limits

CACHE = os.path.join(TEST_CACHE, "adserve-test-kernels")
B = 3


def spec_graph(specs):
    """One graph computing the JVP and the VJP of every spec in `specs`, on inputs of their own."""
    b, outs = Builder(), []
    for s in specs:
        g = make_graph(s.f, s.shapes)
        n, m = len(g.inputs), len(g.outputs)
        jg, _ = jvp_graph(g, [True] * n)
        vg = vjp_graph(g, [True] * n, [True] * m)
        xs = [b.input(v.shape) for v in g.inputs]
        ts = [b.input(v.shape) for v in g.inputs]
        cts = [b.input(a.shape) for a in g.outputs]
        outs += inline(b, jg, xs + ts) + inline(b, vg, xs + cts)[m:]
    return b.build(outs)


def groups(specs, max_specs=14, max_loops=24):
    """Specs in kernels of a few each. numba's compile time grows faster than the number of loops in a
    kernel (one of 177 loops took 80 s, the same specs as kernels of a few loops each 24 s), so a group is
    closed at `max_loops` loops of generated code (element-wise specs fuse into few: 14 share a kernel)."""
    groups, loops = [[]], 0
    for s in specs:
        n = kernel_module(spec_graph([s]), s.id).count(" for ")
        if groups[-1] and (loops + n > max_loops or len(groups[-1]) == max_specs):
            groups.append([])
            loops = 0
        groups[-1].append(s)
        loops += n
    return groups


GROUPS = groups(SPECS)


# the compiled tier as the server builds it: plans in the direct-LLVM back end's scope by it (ADSERVE_LLVM_KERNELS=0:
# every plan by numba, as before)
LLVM = os.environ.get("ADSERVE_LLVM_KERNELS", "1").lower() not in ("0", "false", "no", "off")


def compile_kernel(graph, title, parallel=False, llvm=None, quick=False):
    """The kernel module of `graph` (`parallel`: its batch variant), compiled once per machine into CACHE: by the
    direct-LLVM back end when the plan is in its scope (`llvm` None: as the server chooses; `quick`: its quick
    kernel, llvm_kernel.QUICK_LINES), else numba.
    Test files run in processes of their own at once (test_tier_consistency compiles test_codegen's groups):
    a lock per kernel makes the second wait for the first's compile and load numba's cache, not compile again."""
    os.makedirs(CACHE, exist_ok=True)
    src = kernel_module(graph, title, parallel=parallel)
    key = hashlib.sha256(src.encode()).hexdigest()[:24]
    if llvm is None:
        llvm = LLVM and not parallel and not llvm_ir.declined(graph)
    if llvm:
        return compile_llvm(graph, title, key, quick)
    path = os.path.join(CACHE, f"gen_{key}.py")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.write(src)
            os.replace(path + ".tmp", path)
        return load(path, f"gen_{key}")


def compile_llvm(graph, title, key, quick=False):
    """The LLVM back end's kernel of `graph` (`quick`: its quick kernel), compiled in this process (llvmlite alone)
    once per machine."""
    ll = llvm_kernel.paths(CACHE, key)[0]
    with open(ll + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(ll):
            with open(ll + ".tmp", "w") as f:
                f.write(llvm_kernel.module_text(graph, key, title))
            os.replace(ll + ".tmp", ll)
        obj = ll[:-3] + ".quick.o" if quick else None  # (the server's quick objects are files of one load)
        if not os.path.exists(obj or llvm_kernel.object_path(ll)):
            llvm_kernel.compile_file(ll, obj)
        return llvm_kernel.LlvmModule(ll, obj)


def run_kernel(mod, graph, args):
    n = max(a.shape[0] for a in args)
    outs = [np.empty((n, *a.shape)) for a in graph.outputs]
    status = mod.kernel(n, no_stop(), *[np.ascontiguousarray(a, dtype=np.float64) for a in args], *outs)
    assert status == 0, mod.ERRORS[status - 1]
    return outs


def assert_same(graph, args, title):
    """The compiled kernel (as the server picks it) against the interpreter; an LLVM kernel against the python
    tier's bits too (numba's source run by CPython: the same operations in the same order), where it runs."""
    from adserve.engine.codegen.python import PythonKernel, Unsupported
    want = run(graph, args)
    mod = compile_kernel(graph, title)
    got = run_kernel(mod, graph, args)
    for j, (w, g) in enumerate(zip(want, got)):
        w = np.broadcast_to(w, g.shape)
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, equal_nan=True, err_msg=f"{title}: output {j}")
    if isinstance(mod, llvm_kernel.LlvmModule):
        try:
            theirs = run_kernel(PythonKernel(kernel_module(graph, title, python=True), title), graph, args)
        except Unsupported:
            return
        for j, (g, p) in enumerate(zip(got, theirs)):
            identical(g, p, f"{title}: output {j} against the python tier")


PROGRAMS = {
    "survey": ({"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
                "expr": "log(x1) + x1*x2 - sin(x2)"}, {"x1": 2.0, "x2": 5.0}),
    "loops-branches-assignment": ({"inputs": [{"name": "x", "shape": [5]}, {"name": "w", "shape": []}], "program": """
def f(x, w):
    n = len(x)
    acc = 0.0
    for i in range(n - 1):
        for j in range(2):
            acc = acc + w * x[i] * x[i + 1] ** (j + 1)
        if x[i] > 0.5:
            acc = acc + sin(x[i])
        else:
            acc = acc - x[i] * x[i]
    y = zeros(5)
    for i in range(5):
        y[i] = x[i] * w
    a, b = x[0], x[1]
    for k in range(3):
        a, b = b, a + b
    return acc + logsumexp(y) + max(x) + prod(x) + a
"""}, {"x": [0.3, 0.9, 0.2, 0.7, 1.1], "w": 1.3}),
    # a sum read by the element-wise work it sums over: the fused loop must not read it while it is partial
    "sum-in-its-own-loop": ({"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(x * sum(exp(x))) + x[0] * sum(x)"},
                            {"x": [0.3, -1.2, 0.8]}),
    # sums over some axes accumulate inside the loop computing what they sum (sum_to: reverse mode's broadcasts);
    # a later member reading one (the softmax's normaliser) closes that loop
    "partial-sums": ({"inputs": [{"name": "X", "shape": [4, 3]}, {"name": "m", "shape": [1, 3]}], "expr":
                      "sum(exp(sum((X - m) ** 2, axis=1)) * sum(X * m, axis=1))"
                      " + sum(exp(X) / reshape(sum(exp(X), axis=1), (4, 1)) * X) + sum(sum(X, axis=0) * m)"},
                     {"X": np.linspace(-1, 1, 12).reshape(4, 3), "m": [[0.3, -0.2, 0.5]]}),
    "matrices": ({"inputs": [{"name": "A", "shape": [3, 4]}, {"name": "v", "shape": [4]}],
                  "expr": "sum(tanh(A @ v) * softplus(transpose(A) @ A @ v)[0:3]) + sum(concatenate([v, A[1]])**2)"},
                 {"A": np.linspace(-1, 1, 12).reshape(3, 4), "v": [0.5, -1.0, 2.0, 0.1]}),
}


def program_case(name, points=B):
    """PROGRAMS[name]'s value, gradient and HVP plan, and `points` points near its point with tangents."""
    defn, point = PROGRAMS[name]
    fn = engine.compile_definition(defn)
    graph, _ = main_plan(fn, frozenset({"value", "gradient", "hvp"}))
    rng = np.random.default_rng(0)
    xs = [np.asarray(point[n], dtype=np.float64) for n in fn.input_names]
    args = [x[None] + 0.01 * rng.standard_normal((points, *x.shape)) for x in xs]
    args += [rng.standard_normal((points, *x.shape)) for x in xs]
    return graph, args


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_compiled_equal_interpreted(name):
    assert_same(*program_case(name), name)


def test_every_spec_has_kernel_code_so_no_plan_is_declined():
    from adserve.engine.codegen.templates import interpreter_only
    for s in SPECS:
        assert interpreter_only(make_graph(s.f, s.shapes)) == set(), s.id


def test_a_while_past_its_limit_is_a_status_not_a_hang():
    from test_primitives import while_
    b = Builder()
    x = b.input(())
    (y,) = while_([], [x], lambda c, v: op.gt(v[0], -1.0), lambda c, v: [v[0] + 1.0], max_iter=50)
    g = b.build([y])
    mod = compile_kernel(g, "while forever")
    out = np.empty((1,))
    status = mod.kernel(1, no_stop(), np.array([0.0]), out)
    assert status > 0 and "ADSERVE_MAX_WHILE_ITERATIONS" in mod.ERRORS[status - 1]
    b = Builder()
    x = b.input(())
    (y,) = while_([], [x], lambda c, v: op.lt(v[0], 3.0), lambda c, v: [v[0] + 1.0], max_iter=50)
    mod = compile_kernel(b.build([y]), "while to 3")
    assert mod.kernel(1, no_stop(), np.array([-5.5]), out) == 0 and out[0] == 3.5


def test_index_out_of_range_is_an_error_not_a_crash():
    b = Builder()
    x, i = b.input((4,)), b.input(())
    from engine_helpers import op
    g = b.build([op.dyn_slice(x, i, axis=0, size=None)])
    mod = compile_kernel(g, "dyn index")
    out = np.empty((1,))
    for bad in (4.0, -1.0, 1.5, float("nan")):
        assert mod.kernel(1, no_stop(), np.zeros((1, 4)), np.array([bad]), out) > 0
    assert mod.kernel(1, no_stop(), np.arange(4.0)[None], np.array([2.0]), out) == 0 and out[0] == 2.0


def test_generated_source_is_readable():
    fn = engine.compile_definition(PROGRAMS["survey"][0])
    text = engine.source(fn, "gradient")
    assert "def kernel(" in text and "log(x0)" in text and "line 1, column" in text
    g = make_graph(lambda x: x, [()])
    assert "kernel" in kernel_module(g, "identity")


def _hvp_graph(g):
    """x, v -> (f, gradient, jvp, hvp): the plan shape the server compiles for an HVP request."""
    b = Builder()
    xs = [b.input(v.shape) for v in g.inputs]
    gg = b.build(inline(b, vjp_graph(g, [True] * len(xs), [True]), [*xs, 1.0]))
    return jvp_graph(gg, [True] * len(g.inputs))[0]


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(programs(control_flow=True, max_len=6))
def test_random_programs_compiled_equal_interpreted(case):
    """Random graphs of element-wise ops, reductions, loops and branches (test_property_graphs' strategy)."""
    prog, seed = case
    graph = _hvp_graph(engine_graph(prog))
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((B, *v.shape)) for v in graph.inputs]
    assert_same(graph, args, f"random program {prog}")


def test_the_compile_worker_runs_at_a_lower_priority(tmp_path):
    """A background compile must not take CPU from requests: the worker lowers its own priority first."""
    path = tmp_path / "gen_niceness.py"
    path.write_text("import os\nprint('niceness', os.nice(0))\n")
    env = {k: v for k, v in os.environ.items() if k != "ADSERVE_COMPILE_NICE"}  # the default (conftest sets 0)
    for setting, want in ((None, NICE), ("3", 3)):
        out = subprocess.run([sys.executable, "-m", "adserve.engine.codegen.worker", str(path)], capture_output=True,
                             text=True, check=True, timeout=120,
                             env=env if setting is None else {**env, "ADSERVE_COMPILE_NICE": setting}).stdout
        assert f"niceness {min(19, os.nice(0) + want)}" in out


ROSENBROCK = {"inputs": [{"name": "x", "shape": [6]}], "expr": "sum(100*(x[1:]-x[:-1]**2)**2 + (1-x[:-1])**2)"}
# dst[i] = src[i]: a copy of a buffer (a concatenation's first operand is written so too, and says so)
COPY = re.compile(r"^\s*(\w+)\[(i\d+)\] = (\w+)\[\2\]\s*(#(?! concatenate$).*)?$", re.MULTILINE)


def test_cotangent_accumulation_updates_in_place():
    """Reverse mode accumulates a slice's cotangent as update(a, a[at] + v, at): with nothing reading `a` after
    it, the kernel writes the slice into a's buffer instead of copying `a` first."""
    fn = engine.compile_definition(ROSENBROCK)
    text = engine.source(fn, "gradient")
    assert "update" not in text and not COPY.findall(text), text
    # the gradient is computed in its output row: no buffer of its shape, no copy into o1 at the end
    assert "np.empty((6,))" not in text and "o1[p] = o1[p]" not in text and re.search(r"= o1\[p\]\n", text), text
    assert not re.search(r"^\s*o1\[p\] = ", text, re.MULTILINE), text
    # the slice-add of the reverse sweep is one loop writing into the gradient's slice: no buffer of (5,) for it
    assert text.count("np.empty((5,))") == 1, text
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    rng = np.random.default_rng(1)
    assert_same(graph, [rng.standard_normal((B, 6))], "rosenbrock gradient")


def test_partial_sums_accumulate_in_the_loop_of_what_they_sum():
    """sum(f(X), axis) and reverse mode's sum_to of a broadcast operand's cotangent need no buffer for f(X): one
    loop nest computes the elements and adds them up (gmm's gradient: 434 -> 275 us)."""
    fn = engine.compile_definition({"inputs": [{"name": "X", "shape": [50, 7]}, {"name": "m", "shape": [1, 7]}],
                                 "expr": "sum(log(sum((X - m) ** 2, axis=1)))"})
    primal = engine.source(fn, "primal")
    assert "np.empty((50, 7))" not in primal and primal.count("# fused") == 2, primal
    gradient = engine.source(fn, "gradient")
    assert "sum_to" in gradient and re.search(r"^ +v\d+\[0, i\d+\] \+= u\d+", gradient, re.MULTILINE), gradient
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    rng = np.random.default_rng(3)
    assert_same(graph, [rng.standard_normal((B, 50, 7)), rng.standard_normal((B, 1, 7))], "partial sums")


QUADRATIC = {"inputs": [{"name": "A", "shape": [5, 5]}, {"name": "x", "shape": [5]}, {"name": "b", "shape": [5]}],
             "expr": "dot(x, dot(A, x)) * log(1 + dot(b, x) ** 2) + sum(sin(x))"}
COUPLED = {"inputs": [{"name": "A", "shape": [5, 5]}, {"name": "x", "shape": [5]}],
           "expr": "sum(tanh(A @ x)) + dot(x, A @ x)"}


@pytest.mark.parametrize("defn, shared", [(QUADRATIC, True), (COUPLED, False)], ids=["quadratic form", "coupled"])
def test_contractions_over_one_matrix_share_one_pass_when_independent(defn, shared, monkeypatch):
    """x·Ax's gradient needs Ax and Aᵀ(c x): with c independent of Ax (the survey's Helmholtz energy), one loop
    over A computes both (Helmholtz n=1000: gradient kernel 573 -> 287 us, the primal's time). Where the
    backward product needs the forward one (tanh(Ax)), they stay two passes. Small matrices pair here too."""
    monkeypatch.setattr(schedule, "SHARED_MIN", 1)
    fn = engine.compile_definition(defn)
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    text = kernel_module(graph, "pairing")
    assert ("# one pass over x0:" in text) is shared, text  # x0: A (other vectors may pair too, here)
    rng = np.random.default_rng(4)
    args = [rng.standard_normal((B, *v.shape)) for v in graph.inputs]
    args[0][:, :, 0] *= -1  # A not symmetric: Ax and Aᵀw differ
    assert_same(graph, args, "pairing gradient")
    hvp, _ = main_plan(fn, frozenset({"value", "gradient", "hvp"}))
    args += [rng.standard_normal((B, *v.shape)) for v in graph.inputs]
    assert_same(hvp, args, "pairing hvp")


def test_pairing_keeps_the_graph_in_dependency_order(monkeypatch):
    """The second product and what it needs move up next to the first; everything still follows its inputs."""
    monkeypatch.setattr(schedule, "SHARED_MIN", 1)
    fn = engine.compile_definition(QUADRATIC)
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    order, pairs = schedule.pair_contractions(graph)
    assert len(pairs) == 1 and sorted(map(id, order.eqns)) == sorted(map(id, graph.eqns))
    seen = set(order.inputs)
    for e in order.eqns:
        assert all(a in seen for a in e.inputs if not isinstance(a, Lit)), e
        seen.update(e.outputs)
    (first, second), = pairs.items()
    assert order.eqns.index(second) == order.eqns.index(first) + 1


def _updates_graph(case):
    """a = concatenate([x, x]) (a buffer of the kernel's own), then an update of `a` by v and what `case` reads;
    the graph and how many copies of a buffer its kernel makes."""
    b = Builder()
    x, v, i = b.input((4,)), b.input((2,)), b.input(())
    a = op.concatenate(x, x, axis=0)
    if case == "last use":
        return b.build([op.sin(op.update_slice(a, v, index=((1, 2, 1),)))]), 0
    if case == "dyn last use":
        return b.build([op.dyn_update(op.update_slice(a, v, index=((1, 2, 1),)), v * 2.0, i, axis=0, size=2)]), 0
    if case == "read after":
        u = op.update_slice(a, v, index=((1, 2, 1),))
        return b.build([u * op.sin(a)]), 1
    if case == "view read after":
        w = op.slice(a, index=((0, 4, 2),))
        u = op.update_slice(a, v, index=((2, 2, 1),))
        return b.build([op.reduce_sum(u, axes=(0,)) + op.reduce_sum(op.exp(w), axes=(0,))]), 1
    if case == "value is a view":
        return b.build([op.update_slice(a, op.slice(a, index=((0, 2, 1),)), index=((1, 2, 1),)) * 2.0]), 1
    if case == "read by an open fused run":
        # c = 3a opens a fused run; the update reads nothing the run computes, so it is emitted before the run's
        # loop, which reads `a` after it: `a` must be copied although the update is its last use in graph order
        c = a * 3.0
        u = op.update_slice(a, v, index=((1, 2, 1),))
        return b.build([op.sin(c) + 1.0, u]), 1
    if case == "run lands in place":  # the value's loop reads a[1:3] and writes a[1:3]: one loop, no buffer
        u = op.update_slice(a, op.slice(a, index=((1, 2, 1),)) * 3.0 + op.sin(v), index=((1, 2, 1),))
        return b.build([op.sin(u)]), 0
    if case == "run reads another slice":  # writing a[1:3] while reading a[0:2] in place would read a[1] written
        u = op.update_slice(a, op.slice(a, index=((0, 2, 1),)) * 3.0 + op.sin(v), index=((1, 2, 1),))
        return b.build([op.sin(u)]), 0
    if case == "run lands in a copy":  # `a` is read after the update: the loop writes into a copy of `a`
        u = op.update_slice(a, op.sin(v) + 1.0, index=((1, 2, 1),))
        return b.build([u * op.sin(a)]), 1
    if case == "outputs along an update chain":  # a, its update, and that again: three rows, no aliasing
        u = op.update_slice(a, op.sin(v) + 1.0, index=((1, 2, 1),))
        w = op.update_slice(u, op.cos(v) * 2.0, index=((2, 2, 1),))
        return b.build([w, a, u, w]), None
    if case == "a chain that must copy ends in an output":
        c = a * 3.0  # an open fused run reads `a` after its update: the update copies, then lands in o1
        u = op.update_slice(a, v, index=((1, 2, 1),))
        w = op.update_slice(u, op.exp(v) - 1.0, index=((0, 2, 1),))
        return b.build([op.sin(c) + 1.0, w]), None
    raise ValueError(case)


UPDATE_CASES = ["last use", "dyn last use", "read after", "view read after", "value is a view",
                "read by an open fused run", "run lands in place", "run reads another slice", "run lands in a copy",
                "outputs along an update chain", "a chain that must copy ends in an output"]


@pytest.mark.parametrize("case", UPDATE_CASES)
def test_updates_copy_only_when_their_operand_is_read_later(case):
    graph, copies = _updates_graph(case)
    text = kernel_module(graph, case)
    if copies is not None:
        assert len(COPY.findall(text)) == copies, text
    if case == "run lands in place":
        assert text.count("# fused") == 1 and "np.empty((2,))" not in text, text
    rng = np.random.default_rng(2)
    args = [rng.standard_normal((B, 4)), rng.standard_normal((B, 2)), np.array([0.0, 3.0, 6.0])]
    assert_same(graph, args, case)


def test_client_text_in_generated_code_stays_inside_its_comment():
    """A graph node's id is the client's text and the generated code quotes it in comments: a newline there
    would end the comment and make the rest code, run when the kernel module is imported (or by the python
    tier). Ids are escaped to one line."""
    evil = 'a\n        import os; os.system("touch /tmp/adserve-pwned")\n        #\u2028x'
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": []}],
                                 "graph": {"nodes": [{"id": evil, "op": "sin", "args": ["x"]},
                                                     {"id": "b", "op": "log", "args": [evil]}], "outputs": ["b"]}})
    for transform in ("primal", "gradient", "hvp"):
        text = engine.source(fn, transform)
        tree = ast.parse(text)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "system"]
        assert not calls and "import os" not in [line.strip() for line in text.splitlines()], text
        assert "node a\\n        import os" in text
