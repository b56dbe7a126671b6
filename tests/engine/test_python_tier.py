"""The python tier (a plan's generated kernel run by CPython) answers as the NumPy interpreter does.

Every primitive spec (value, JVP and VJP), the survey's example and programs with loops and branches, and
random programs: the python kernel's outputs equal the interpreter's, or it declines (`Unsupported`) and
then only where the interpreter's answer left the reals (NaN or infinity: a domain error in Python's
`math`). Then the backend: it runs a new scalar-heavy plan on this tier while numba has not delivered,
keeps array-heavy plans on the interpreter, and falls back to the interpreter where the tier declines.
"""

import numpy as np
import pytest
from engine_helpers import Builder, inline, jvp_graph, make_graph, no_stop, run, vjp_graph
from hypothesis import given, settings
from test_codegen import PROGRAMS, _hvp_graph, program_case
from test_primitives import SPECS
from test_property_graphs import engine_graph, programs

from adserve.engine import Engine, backend, main_plan
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.python import PythonKernel, Unsupported

B = 3


def python_or_declined(graph, args, title) -> bool:
    """Check the python kernel against the interpreter; False if it declined (legitimately)."""
    want = run(graph, args)
    k = PythonKernel(kernel_module(graph, title, python=True), title)
    n = max(a.shape[0] for a in args)
    outs = [np.empty((n, *a.shape)) for a in graph.outputs]
    try:
        status = k.run(n, no_stop(), *[np.ascontiguousarray(a, dtype=np.float64) for a in args], *outs)
    except Unsupported as e:
        assert any(not np.all(np.isfinite(w)) for w in want), f"{title}: declined ({e}) with finite answers"
        return False
    assert status == 0, k.ERRORS[status - 1]
    for j, (w, g) in enumerate(zip(want, outs)):
        np.testing.assert_allclose(g, np.broadcast_to(w, g.shape), rtol=1e-9, atol=1e-11, equal_nan=True,
                                   err_msg=f"{title}: output {j}")
    return True


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_every_primitive_python_equals_interpreted(spec):
    rng = np.random.default_rng(7)
    g = make_graph(spec.f, spec.shapes)
    n, m = len(g.inputs), len(g.outputs)
    b = Builder()
    xs = [b.input(v.shape) for v in g.inputs]
    ts = [b.input(v.shape) for v in g.inputs]
    cts = [b.input(a.shape) for a in g.outputs]
    jg, _ = jvp_graph(g, [True] * n)
    vg = vjp_graph(g, [True] * n, [True] * m)
    graph = b.build(inline(b, jg, xs + ts) + inline(b, vg, xs + cts)[m:])
    points = [spec.draw(rng, k) for k in range(B)]
    args = [np.stack([p[j] for p in points]) if j else points[0][j][None] for j in range(n)]
    args += [rng.standard_normal((B, *v.shape)) for v in g.inputs]
    args += [rng.standard_normal((B, *a.shape)) for a in g.outputs]
    python_or_declined(graph, args, spec.id)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_python_equals_interpreted(name):
    assert python_or_declined(*program_case(name), name)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(programs(control_flow=True, max_len=6))
def test_random_programs_python_equals_interpreted(case):
    prog, seed = case
    graph = _hvp_graph(engine_graph(prog))
    rng = np.random.default_rng(seed)
    python_or_declined(graph, [rng.standard_normal((B, *v.shape)) for v in graph.inputs], f"random program {prog}")


def test_a_domain_error_is_declined_not_answered_wrongly():
    fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": []}], "expr": "sqrt(x) + x ** 0.5"})
    graph, _ = main_plan(fn, {"value", "gradient"})
    assert not python_or_declined(graph, [np.array([-1.0])], "sqrt of a negative number")
    assert python_or_declined(graph, [np.array([2.0])], "sqrt of a positive number")


def test_exp_and_log_answer_outside_pythons_domain():
    # mathlib's exp and log (every tier's) follow NumPy's error model where Python's math raised: answered
    fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": []}], "expr": "log(x) + exp(-x * 1000)"})
    graph, _ = main_plan(fn, {"value", "gradient"})
    for x in (-1.0, 0.0, -0.0, 2.0, np.inf, np.nan):
        assert python_or_declined(graph, [np.array([x])], f"log and exp at {x}")


# -- the backend -------------------------------------------------------------------------------------------
SCALAR_HEAVY = {"inputs": [{"name": "x", "shape": [4]}],  # 60 scalar terms: the interpreter's dispatch dominates
                "expr": " + ".join(f"sin({0.5 + k / 60!r} * x[{k % 4}]) * x[{(k + 1) % 4}]" for k in range(60))}
ARRAY_HEAVY = {"inputs": [{"name": "x", "shape": [2000]}], "expr": "sum(100 * (x[1:] - x[:-1] ** 2) ** 2)"}
# square roots of negative numbers: a domain error for Python's math (mathlib's log answers NaN, as NumPy)
ROOTS = {"inputs": [{"name": "x", "shape": [2]}], "expr": " + ".join(f"sqrt(x[0] * {k + 1}) * x[1]" for k in range(40))}


@pytest.fixture
def lower(tmp_path):
    """An engine whose numba compiles never come (compile off): its plans stay on the lower tiers."""
    t = backend.Tiered(str(tmp_path), compile=False)
    yield Engine(t)
    t.shutdown()


def _ask(engine, fn, x, kinds=("value", "gradient")):
    meta = {}
    out = engine.evaluate(fn, {"x": x}, list(kinds), meta=meta)
    return out, meta["backend"]


def _introduced(engine):
    assert engine.settle(30)  # the plans' introductions are done (compile off: nothing else runs)


def test_a_scalar_heavy_plan_runs_on_the_python_tier_from_its_third_run(lower):
    fn = lower.compile_definition(SCALAR_HEAVY)
    x = np.array([0.3, -1.1, 0.7, 2.0])
    # a plan's first run: nothing built (a new function may be asked once)
    assert _ask(lower, fn, x)[1] == "interpreter"
    _introduced(lower)
    assert lower.stats()["python_kernels"] == 0
    assert _ask(lower, fn, x * 1.02)[1] == "interpreter"  # asked again: its Python code is built in the background
    _introduced(lower)
    again, tier = _ask(lower, fn, x * 1.01)
    assert tier == "python" and lower.stats()["runs"]["python"] == 1 and lower.stats()["python_kernels"] == 1
    want, _ = _ask(Engine(), fn, x * 1.01)
    np.testing.assert_allclose(again["value"], want["value"], rtol=1e-12)
    np.testing.assert_allclose(again["gradient"]["x"], want["gradient"]["x"], rtol=1e-12)


def test_an_array_heavy_plan_stays_on_the_interpreter(lower):
    fn = lower.compile_definition(ARRAY_HEAVY)
    x = np.linspace(-1, 1, 2000)
    for k in range(3):
        assert _ask(lower, fn, x + 0.1 * k)[1] == "interpreter"
        _introduced(lower)
    assert lower.stats()["python_kernels"] == 0


def test_a_long_batch_goes_back_to_the_interpreter(lower):
    fn = lower.compile_definition(SCALAR_HEAVY)
    for k in range(2):
        _ask(lower, fn, np.ones(4) * (1 + k))
        _introduced(lower)
    assert _ask(lower, fn, np.ones(4) * 3)[1] == "python"
    meta = {}
    lower.evaluate(fn, {"x": np.ones((5000, 4))}, ["value", "gradient"], batch=True, meta=meta)
    assert meta["backend"] == "interpreter"  # NumPy over 5,000 points beats a Python loop over them


def test_domain_errors_are_answered_by_the_interpreter_and_soon_leave_it_there(lower):
    fn = lower.compile_definition(ROOTS)
    for k in range(2):
        _ask(lower, fn, np.array([1.0 + k, 2.0]))
        _introduced(lower)
    assert _ask(lower, fn, np.array([1.5, 2.0]))[1] == "python"
    for k in range(lower.backend.python.PYTHON_DECLINES + 2):
        out, tier = _ask(lower, fn, np.array([-1.0 - k, 2.0]))
        assert tier == "interpreter" and np.isnan(out["value"])
    assert lower.stats()["python_declined"] == lower.backend.python.PYTHON_DECLINES
    assert _ask(lower, fn, np.array([1.5, 3.0]))[1] == "interpreter"  # declined too often: the interpreter from now on


@pytest.mark.parametrize("expr", ["sum(sin(x) * 2)", "sum(x * x)", "sum(matmul(transpose(x), x))"])
def test_an_empty_axis_beside_a_long_one_runs_no_loop(expr):
    """A [50,000,000 x 0] input has no elements: its kernel loops over none (it used to run the long axis with
    an empty loop inside: about 15 s in the python tier), on the python tier and in numba's source alike, and
    answers as the interpreter: a zero value and an empty gradient."""
    n = 50_000_000
    fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": [n, 0]}], "expr": expr})
    graph, _ = main_plan(fn, {"value", "gradient"})
    source = kernel_module(graph, "empty axis", python=True)
    assert f"range({n})" not in source
    assert python_or_declined(graph, [np.zeros((1, n, 0))], "empty axis")
