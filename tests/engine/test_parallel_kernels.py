"""Parallel batch kernels (`kernel_module(parallel=True)`): chunks of a batch in a numba prange.

They answer as the interpreter does, and bit for bit as the serial kernel (the same body lines); a bad index in
one point of a batch gives the serial kernel's error (the first failing point's); threads may call them at once.
On the compiled tier, a parallel variant is compiled only for batches long enough, and a failed one leaves its
plan on the serial kernel. Kernels are cached under ~/.cache as in test_codegen, so reruns skip numba's compile.
"""

import concurrent.futures
import os

import numpy as np
import pytest
from engine_helpers import TEST_CACHE, Builder, inline, jvp_graph, make_graph, no_stop, op, run, vjp_graph
from hypothesis import given, settings
from test_codegen import PROGRAMS, compile_kernel, groups, program_case, run_kernel, spec_graph
from test_primitives import SPECS
from test_property_graphs import engine_graph, programs

from adserve.engine import Engine, backend, main_plan
from adserve.engine.errors import EvaluationError
from adserve.engine.codegen.module import CHUNKS_PER_THREAD, kernel_module

pytestmark = pytest.mark.compiled  # numba compiles (minutes on a machine whose kernel cache is cold)

B = 37  # not a multiple of the chunk count: uneven chunks, some of one point
reference = Engine()  # the interpreter


@pytest.fixture(scope="module", autouse=True)
def layer():
    preset = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    name = backend.parallel_layer()
    if name is None:
        pytest.skip(f"no thread-safe numba threading layer: {backend.threads.layer_reason()}")
    if name == "omp" and not preset:
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # threads sleep between kernels, never spin
    return name


def both(graph, title):
    return compile_kernel(graph, title), compile_kernel(graph, title, parallel=True)


def assert_parallel_same(graph, args, title):
    """The parallel kernel equals the interpreter, and the serial kernel bit for bit."""
    serial, par = both(graph, title)
    want = run(graph, args)
    got = run_kernel(par, graph, args)
    ref = run_kernel(serial, graph, args)
    for j, (w, g, r) in enumerate(zip(want, got, ref)):
        np.testing.assert_allclose(g, np.broadcast_to(w, g.shape), rtol=1e-9, atol=1e-11, equal_nan=True,
                                   err_msg=f"{title}: output {j}")
        np.testing.assert_array_equal(g, r, err_msg=f"{title}: output {j} differs from the serial kernel's")


# a spec or two per kind of code template (test_codegen compiles them all, serially)
SOME = ["sigmoid[2, 3]", "pow[3, 1][4]", "where[3][2,3][]", "logsumexp[2, 3]-axes(0,)", "einsum-ij,jk->ik",
        "dyn_update[4, 5]-axis1-size2", "scan-cond-inside", "cond-nested"]


def test_primitives_in_parallel_equal_interpreted():
    """The value, JVP and VJP of a few primitive specs (loops and branches among them), in a few kernels."""
    rng = np.random.default_rng(1)
    specs = [s for s in SPECS if s.id in SOME]
    assert len(specs) == len(SOME)
    for group in groups(specs):
        args = []
        for s in group:
            g = make_graph(s.f, s.shapes)
            n = len(g.inputs)
            points = [s.draw(rng, k % 3) for k in range(B)]
            args += [np.stack([p[j] for p in points]) if j else points[0][j][None] for j in range(n)]
            args += [rng.standard_normal((B, *v.shape)) for v in g.inputs]
            args += [rng.standard_normal((B, *a.shape)) for a in g.outputs]
        assert_parallel_same(spec_graph(group), args, " ".join(s.id for s in group))


def _function_text(module_text, name):
    """The decorator line and the lines of function `name` in a generated module, through its `return 0`."""
    lines = module_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    end = next(i for i in range(start, len(lines)) if lines[i] == "    return 0")
    return lines[start - 1:end + 1]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_programs_parallel_chunk_is_its_serial_kernel(name):
    """A parallel variant's `chunk` is the serial kernel's code line for line, with the same numba options: only
    its points (lo..hi, not 0..B) and signature differ. So it computes what the serial kernel computes, which
    test_codegen compiles and checks for every program; the chunking around it is compiled and checked above
    and below (primitives of every code template, random programs with loops and branches). Compiling these
    programs' parallel variants again (145 s of CPU) tested numba's compiler, not adserve's code."""
    graph, _ = program_case(name, points=B)
    serial = _function_text(kernel_module(graph, name), "kernel")
    chunk = _function_text(kernel_module(graph, name, parallel=True), "chunk")
    assert serial[0] == chunk[0].replace("CHUNK_SIGNATURE", "SIGNATURE")
    assert serial[1].replace("kernel(B, stop,", "chunk(lo, hi, stop,") == chunk[1]
    assert [line.replace("range(B)", "range(lo, hi)") for line in serial[2:]] == chunk[2:]
    assert sum("for p in range(lo, hi):" in line for line in chunk) == 1


@settings(max_examples=2, deadline=None, derandomize=True, database=None)
@given(programs(control_flow=True, max_len=5))
def test_random_programs_in_parallel_equal_interpreted(case):
    prog, seed = case
    graph = engine_graph(prog)
    rng = np.random.default_rng(seed)
    assert_parallel_same(graph, [rng.standard_normal((B, *v.shape)) for v in graph.inputs], f"random {prog}")


def _two_indices():
    b = Builder()
    x, i, j = b.input((4,)), b.input(()), b.input(())
    return b.build([op.dyn_slice(x, i, axis=0, size=None), op.dyn_slice(x, j, axis=0, size=None)])


@pytest.mark.parametrize("bad", [[7], [30, 7, 35], [0], [B - 1], [3, 4]], ids=str)
def test_a_bad_index_gives_the_serial_kernels_error(bad):
    """Points fail on one index or the other: both kernels report the first failing point's error."""
    g = _two_indices()
    serial, par = both(g, "two indices")
    assert len(serial.ERRORS) == 2
    x = np.arange(4.0)[None]
    i, j = np.full(B, 1.0), np.full(B, 2.0)
    for k, p in enumerate(bad):  # the points fail alternately on i and on j
        (j if k % 2 == 0 else i)[p] = 4.0 if k % 3 else np.nan
    codes = []
    for mod in (serial, par):
        out = [np.empty(B), np.empty(B)]
        codes.append(mod.kernel(B, no_stop(), x, i, j, *out))
    first = min(bad)
    assert codes[0] == codes[1] == (2 if bad.index(first) % 2 == 0 else 1)


def test_a_bad_index_on_the_compiled_tier_is_the_serial_error(tmp_path):
    """Through `Tiered`: the parallel tier's error is the serial tier's, message and code."""
    g = _two_indices()
    serial, par = both(g, "two indices")
    t = backend.Tiered(str(tmp_path), compile=False)
    plan = backend.plan_meta(g)
    x, i, j = np.arange(4.0)[None], np.full(B, 1.0), np.full(B, 2.0)
    j[20], i[9] = 7.0, -1.0
    errors = []
    for tier, mod in ((backend.NUMBA, serial), (backend.PARALLEL, par)):
        with pytest.raises(EvaluationError) as e:
            t.run_on(tier, mod, g, plan, B, [x, i, j], {})
        errors.append((e.value.code, str(e.value)))
    assert errors[0] == errors[1] and errors[0][0] == "index_out_of_range"
    t.shutdown()


def test_threads_may_call_parallel_kernels_at_once():
    fn = reference.compile_definition(PROGRAMS["matrices"][0])
    graph, _ = main_plan(fn, {"value", "gradient"})
    serial, par = both(graph, "matrices")
    rng = np.random.default_rng(2)
    batches = []
    for k in range(16):
        n = [1, 5, B, 200][k % 4]
        batches.append([rng.standard_normal((n, *v.shape)) for v in graph.inputs])
    want = [run_kernel(serial, graph, a) for a in batches]

    def call(k):
        return [run_kernel(par, graph, batches[k]) for _ in range(5)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for k, got in enumerate(pool.map(call, range(len(batches)))):
            for g in got:
                for a, b in zip(g, want[k]):
                    np.testing.assert_array_equal(a, b)


def test_chunks_per_thread_is_in_the_source():
    g = make_graph(lambda x: x, [()])
    text = compile_kernel(g, "identity", parallel=True).__file__
    with open(text) as f:
        src = f.read()
    assert "prange" in src and f"CHUNKS = {CHUNKS_PER_THREAD} * config.NUMBA_NUM_THREADS" in src
    assert "def chunk(lo, hi, stop, a0, o0):" in src and "for p in range(lo, hi):" in src
    assert src.count("if stop_flag(stop) != 0:") == 1  # every chunk checks the stop flag at each point


# -- on the compiled tier -------------------------------------------------------------
CACHE = os.path.join(TEST_CACHE, "adserve-test-tiered")
SUM = {"inputs": [{"name": "x", "shape": [3]}, {"name": "A", "shape": [3, 3]}], "expr": "dot(x, A @ x) + sum(sin(x))"}


def _evaluate(t, fn, inputs, n):
    """`n` value-and-gradient requests on tier `t`: the backends that ran them, each answer checked."""
    want = reference.evaluate(fn, inputs, ["value", "gradient"], batch=True)
    compiled = Engine(t)
    seen = []
    for _ in range(n):
        meta = {}
        got = compiled.evaluate(fn, inputs, ["value", "gradient"], batch=True, meta=meta)
        seen.append(meta["backend"])
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-10)
        np.testing.assert_allclose(got["gradient"]["x"], want["gradient"]["x"], rtol=1e-10, atol=1e-12)
    return seen


@pytest.mark.timeout(600)
def test_the_parallel_variant_is_compiled_for_long_batches_only():
    fn = reference.compile_definition(SUM)
    graph = main_plan(fn, {"value", "gradient"})[0]
    plan = backend.plan_meta(graph)
    rng = np.random.default_rng(3)
    small = {"x": rng.standard_normal((4, 3)), "A": rng.standard_normal((4, 3, 3))}
    long = {"x": rng.standard_normal((300, 3)), "A": rng.standard_normal((300, 3, 3))}
    t = backend.Tiered(CACHE, llvm=False)  # numba's parallel variant (an LLVM plan's runs chunks on threads)
    try:
        t.kernel(graph)
        assert t.wait(graph, 300)
        _evaluate(t, fn, small, 12)
        assert t.choice(graph, 4) is not None
        assert plan.parallel_key not in t.store.pending and plan.parallel_key not in t.store.ready  # never asked for
        t.policy.PARALLEL_SECONDS = 0.0  # any batch is long enough now
        _evaluate(t, fn, long, 8)
        assert t.wait(graph, 300, parallel=True), t.store.failed
        seen = _evaluate(t, fn, long, 40)
        assert backend.PARALLEL in seen  # tried once loaded
        assert t.choice(graph, 300) is not None and not t.store.failed
        assert t.stats.parallel_failures == 0 and t.stats.runs[backend.PARALLEL] > 0

        # request threads at once, while the tiers of new batch sizes are being timed and chosen
        t.policy.PROBE_FIRST = 2
        sizes = [{"x": rng.standard_normal((n, 3)), "A": rng.standard_normal((n, 3, 3))} for n in (150, 600, 1200)]
        wants = [reference.evaluate(fn, x, ["value", "gradient"], batch=True) for x in sizes]

        def requests(k):
            seen = []
            for _ in range(25):
                meta = {}
                got = compiled.evaluate(fn, sizes[k % 3], ["value", "gradient"], batch=True, meta=meta)
                seen.append(meta["backend"])
                np.testing.assert_allclose(got["value"], wants[k % 3]["value"], rtol=1e-10)
                np.testing.assert_allclose(got["gradient"]["x"], wants[k % 3]["gradient"]["x"], rtol=1e-10, atol=1e-12)
            return seen

        compiled = Engine(t)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            seen = [b for r in pool.map(requests, range(6)) for b in r]
        assert backend.NUMBA in seen and set(seen) <= {backend.NUMBA, backend.PARALLEL, backend.INTERPRETER}
        assert all(t.choice(graph, len(x["x"])) is not None for x in sizes)
    finally:
        t.shutdown()


def _broken(source):
    def make(graph, title, parallel=False):
        text = source(graph, title, parallel=parallel)
        return text + "\nraise RuntimeError('broken on purpose')\n" if parallel else text
    return make


@pytest.mark.timeout(600)
def test_a_failed_parallel_variant_leaves_the_plan_serial(tmp_path):
    fn = reference.compile_definition({"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(x * x)"})
    graph = main_plan(fn, {"value", "gradient"})[0]
    t = backend.Tiered(str(tmp_path), llvm=False)  # numba's parallel variant (an LLVM plan's compiles nothing)
    t.policy.PARALLEL_SECONDS = 0.0
    t.store.source = _broken(t.store.source)
    x = {"x": np.ones((64, 2))}
    try:
        t.kernel(graph)
        assert t.wait(graph, 300)
        _evaluate(t, fn, x, 8)
        assert not t.wait(graph, 300, parallel=True)
        assert t.stats.parallel_failures == 1 and t.stats.compile_failures == 1
        assert "broken on purpose" in t.store.failed[backend.plan_meta(graph).parallel_key]
        seen = _evaluate(t, fn, x, 40)
        assert backend.PARALLEL not in seen and backend.NUMBA in seen
    finally:
        t.shutdown()


def test_without_a_thread_safe_layer_plans_stay_serial(tmp_path, monkeypatch):
    fn = reference.compile_definition(SUM)
    graph = main_plan(fn, {"value", "gradient"})[0]
    monkeypatch.setattr(backend.threads, "parallel_layer", lambda: None)
    monkeypatch.setattr(backend.threads, "layer_reason", lambda: "numba's threading layer is 'workqueue'")
    t = backend.Tiered(CACHE, llvm=False)  # numba's threading layer (an LLVM plan's chunks run on Python's threads)
    t.policy.PARALLEL_SECONDS = 0.0
    try:
        t.kernel(graph)
        assert t.wait(graph, 300)
        rng = np.random.default_rng(4)
        long = {"x": rng.standard_normal((300, 3)), "A": rng.standard_normal((300, 3, 3))}
        seen = _evaluate(t, fn, long, 12)
        assert not t.wait(graph, 60, parallel=True)
        assert backend.PARALLEL not in seen and "workqueue" in t.stats.parallel_disabled
        assert t.stats.parallel_failures == 0 and t.stats.parallel_compiles == 0  # nothing compiled or failed
    finally:
        t.shutdown()
