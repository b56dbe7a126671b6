"""Deadlines stop every tier: the interpreter between equations and loop iterations, generated kernels (numba's,
its parallel batch variant, the python tier's) at the top of every batch point and loop iteration, at the
time limit or when another thread cancels; the error says which function and how far the work got. No
wall-clock assertion: what is checked is that the work stopped short, and where, and that nothing is left
computing.
"""

import os
import threading
import time
import types

import numpy as np
import pytest
from engine_helpers import TEST_CACHE

from adserve.engine import Engine, backend, main_plan
from adserve.engine.backend import plan as plan_module
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.python import PythonKernel
from adserve.engine.deadline import _WATCHDOG, Deadline, Stopped
from adserve.engine.limits import Limits

N = 1_000_000
LOOP = {"inputs": [{"name": "x", "shape": []}],
        "program": f"def f(x):\n    for i in range({N}):\n        x = x * 0.999999 + 0.000001 * sin(x)\n    return x\n"}


@pytest.fixture(scope="module")
def engine():
    return Engine()  # the NumPy interpreter


@pytest.fixture(scope="module")
def long_loop(engine):
    return engine.compile_definition(LOOP)


def _loops(err: Stopped) -> list:
    """The loops the stop passed through, innermost first."""
    return [w for w in err.progress if w[0] == "loop"]


def _loop_progress(err: Stopped):
    """(iterations done, length) of the outermost loop the stop passed through."""
    loops = _loops(err)
    return loops[-1][1], loops[-1][2]


def _stopped_in_a_loop(engine, fn, inputs, compute, tries=3) -> Stopped:
    """The Stopped of an evaluation under a 0.2 s deadline that stopped inside a loop. A machine busy enough to
    hold this thread for 0.2 s before it reaches the loop (seen once beside other test runs) stops it before
    the loop has anything to say; every attempt must stop at the deadline, and one of `tries` inside a loop."""
    for _ in range(tries):
        with Deadline(0.2, "timeout_ms 200") as d, pytest.raises(Stopped) as stopped:
            engine.evaluate(fn, inputs, compute, tangent={n: np.ones_like(v) for n, v in inputs.items()},
                            deadline=d)
        assert stopped.value.code == "deadline_exceeded"
        if _loops(stopped.value):
            break
    return stopped.value


@pytest.mark.parametrize("compute", [["value"], ["hvp"]])
def test_a_long_loop_stops_at_its_deadline_and_says_how_far_it_got(engine, long_loop, compute):
    err = _stopped_in_a_loop(engine, long_loop, {"x": np.array(0.5)}, compute)
    done, length = _loop_progress(err)
    assert err.code == "deadline_exceeded" and length == N and done < N
    assert long_loop.id in err.message and f"of {N:,} loop iterations" in err.message
    assert "line 2" in err.message and "timeout_ms 200" in err.message


@pytest.mark.parametrize("compute", [["value"], ["gradient"]])
def test_a_while_loop_stops_at_its_deadline_and_says_how_far_it_got(engine, compute):
    """A while loop whose condition stays true for long (under its iteration bound) stops at the deadline,
    before the bound's while_limit, forward and on the taped pass of reverse mode. Its state is an array of
    1,000, so its 100,000 iterations take seconds on every tier that may run it (a scalar loop is handed to
    generated code past 2,000 iterations, which could reach the bound within the deadline)."""
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [1000]}], "program":
                                    "def f(x):\n    y = x\n    while sum(y) > -1.0:\n"
                                    "        y = y * 0.999999 + sin(y) * 1e-9\n    return sum(y)\n"})
    err = _stopped_in_a_loop(engine, fn, {"x": np.full(1000, 0.5)}, compute)
    done, length = _loop_progress(err)
    assert err.code == "deadline_exceeded" and length is None and done > 0
    assert fn.id in err.message and f"after {done:,} loop iterations" in err.message and "line 3" in err.message


def test_cancelling_from_another_thread_stops_the_work(engine, long_loop):
    d = Deadline()  # no time limit: only a cancel stops it
    outcome = {}

    def work():
        try:
            engine.evaluate(long_loop, {"x": 0.5}, ["value", "gradient"], deadline=d)
        except Stopped as e:
            outcome["error"] = e

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.2)  # let it get into the loop (not a timing assertion)
    d.cancel("cancelled", "was cancelled: the client went away")
    worker.join(20)
    assert not worker.is_alive()
    err = outcome["error"]
    assert err.code == "cancelled" and "client went away" in err.message
    assert _loop_progress(err)[0] < N


def test_a_passed_deadline_stops_before_any_work(engine, long_loop):
    d = Deadline(0.0)
    with pytest.raises(Stopped) as stopped:
        engine.evaluate(long_loop, {"x": 0.5}, ["value"], deadline=d)
    assert stopped.value.code == "deadline_exceeded" and stopped.value.progress == []


def test_work_within_its_deadline_is_unchanged(engine):
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}],
                                 "program": "def f(x):\n    s = 0.0\n    for i in range(5):\n"
                                            "        if s < 2.0:\n            s = s + sum(x * x)\n"
                                            "    return s\n"})
    x = np.array([0.5, 0.25, 1.0])
    with Deadline(600) as d:
        got = engine.evaluate(fn, {"x": x}, ["value", "gradient", "hvp"], tangent={"x": x}, deadline=d)
    want = engine.evaluate(fn, {"x": x}, ["value", "gradient", "hvp"], tangent={"x": x})
    for k in want:
        np.testing.assert_array_equal(got[k] if k == "value" else got[k]["x"], want[k] if k == "value" else want[k]["x"])


def test_a_child_stops_with_its_parent_and_never_outlives_it():
    parent = Deadline(3600, "the gRPC deadline")
    child = Deadline(7200, "ADSERVE_MAX_EVAL_SECONDS", parent=parent)
    assert child.expires == parent.expires and child.label == "the gRPC deadline"
    parent.cancel("shutting_down", "was stopped: the server is shutting down")
    assert child.stopped and child.error().code == "shutting_down"
    late = Deadline(10, parent=parent)  # made after the parent stopped
    assert late.stopped
    for d in (parent, child, late):
        d.close()


def test_the_watchdog_stops_deadlines_in_time_order():
    ds = [Deadline(s) for s in (0.3, 0.1, 3600)]
    assert all(_eventually(lambda: d.stopped) for d in ds[:2]) and not ds[2].stopped
    assert ds[0].error().code == "deadline_exceeded" and "0.3 s" in ds[0].error().message
    for d in ds:
        d.close()


def test_closed_deadlines_do_not_pile_up():
    before = len(_WATCHDOG._heap)
    for _ in range(2000):
        Deadline(3600).close()
    assert len(_WATCHDOG._heap) < before + 200


def _eventually(condition, seconds=20.0):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


# -- the tiered backend ------------------------------------------------------------------------------
@pytest.fixture
def tiered(tmp_path, long_loop, monkeypatch):
    """A `Tiered` whose plan for the long loop has a (fake) loaded kernel that records its calls."""
    graph = main_plan(long_loop, {"value"})[0]
    plan = backend.plan_meta(graph)
    t = backend.Tiered(str(tmp_path), compile=False, python=False)
    calls = []

    def kernel(B, *arrays):
        calls.append(B)
        return 0
    t.store.add(plan.key, types.SimpleNamespace(kernel=kernel, ERRORS=[]))
    yield t, graph, calls
    t.shutdown()


def test_a_kernel_gets_its_deadlines_stop_array(tiered):
    """A compiled run is no longer sent to the interpreter for fear of overrunning: the kernel takes the
    deadline's flag (it stops itself); a run without a deadline gets an array whose flag is never set."""
    t, graph, calls = tiered
    seen = []
    t.store.ready[backend.plan_meta(graph).key].kernel = lambda B, stop, *arrays: seen.append(stop) or 0
    with Deadline(0.05) as d:
        t.run(graph, [np.array([0.5])], {}, deadline=d)
        assert seen[-1] is d.flag
    t.run(graph, [np.array([0.5])], {})
    assert seen[-1] is plan_module._NO_STOP and not seen[-1].any()
    assert t.stats.runs[backend.NUMBA] == 2 and t.stats.runs[backend.INTERPRETER] == 0


def test_a_compiled_run_well_within_the_deadline_stays_compiled(tiered):
    t, graph, calls = tiered
    meta = {}
    with Deadline(600) as d:
        t.run(graph, [np.array([0.5])], meta, deadline=d)
    assert calls == [1] and meta == {"backend": backend.NUMBA}  # the deadline went as an argument, not in meta


def test_the_timing_policy_passes_the_deadline_to_its_interpreter_runs(tmp_path, long_loop):
    """No kernel, so no compiled run to fear: the plan goes through the timing policy, whose interpreter
    run still stops at the deadline."""
    graph = main_plan(long_loop, {"value"})[0]
    backend.plan_meta(graph)
    t = backend.Tiered(str(tmp_path), compile=False, python=False)
    try:
        for attempt in range(1, 4):  # a busy machine may hold this thread past the deadline before the loop starts
            with Deadline(0.05) as d, pytest.raises(Stopped) as stopped:
                t.run(graph, [np.array([0.5])], {}, deadline=d)
            assert t.stats.runs[backend.INTERPRETER] == attempt
            if _loops(stopped.value):
                break
        assert _loop_progress(stopped.value)[0] < N
    finally:
        t.shutdown()


def test_the_stop_flag_follows_the_deadline():
    d = Deadline()
    assert d.flag[0] == 0 and d.flag is d.flag
    d.cancel()
    assert d.flag[0] == 1
    late = Deadline()
    late.cancel()
    assert late.flag[0] == 1  # made after the stop
    parent = Deadline()
    child = Deadline(parent=parent)
    flag = child.flag
    parent.cancel("shutting_down", "was stopped")
    assert flag[0] == 1
    timed = Deadline(0.05)
    flag = timed.flag
    assert _eventually(lambda: flag[0] == 1)  # the watchdog sets it
    for x in (d, late, parent, child, timed):
        x.close()


# -- compiled kernels stop too ------------------------------------------------------------------------
KERNELS = os.path.join(TEST_CACHE, "adserve-test-deadline")
POINTS = 400  # the loop's HVP on numba: tens of ms a point, so the batch is many seconds of work


@pytest.fixture(scope="module")
def compiled(long_loop):
    """A `Tiered` with the long loop's HVP plan compiled: its numba kernel and its parallel variant (None
    where parallel kernels are off: no thread-safe threading layer)."""
    graph = main_plan(long_loop, {"hvp"})[0]
    t = backend.Tiered(KERNELS, python=False)
    t.kernel(graph)
    assert t.wait(graph, 900), t.store.failed
    t.parallel_kernel(graph)
    t.wait(graph, 900, parallel=True)
    yield t, graph
    t.shutdown()


def _kernel_engine(t):
    """An engine on `t` whose memory limit admits the long batches here: their HVP tapes would take ~12 GB were
    the interpreter to run them (the estimate is the interpreter's), and the kernel keeps one point's at a time."""
    return Engine(t, limits=Limits(max_request_bytes=32 << 30))


def _hvp_args(points):
    return [np.full(points, 0.5), np.ones(points)]


def _stopped_inside(err, tier, points):
    done, length = _loop_progress(err)
    point = next(w for w in err.progress if w[0] == "point")
    assert ("compiled", tier) in err.progress and f"inside compiled code ({tier})" in err.message
    assert length == N and 0 <= done < N and point[2] == points and point[1] < points
    assert "line 2" in err.message


@pytest.mark.compiled
@pytest.mark.timeout(1200)
def test_a_numba_kernel_stops_at_its_deadline(compiled, long_loop):
    t, graph = compiled
    baseline = set(threading.enumerate())
    engine = _kernel_engine(t)
    x, v = _hvp_args(POINTS)
    meta = {}
    with Deadline(0.3, "timeout_ms 300") as d, pytest.raises(Stopped) as stopped:
        engine.evaluate(long_loop, {"x": x}, ["hvp"], tangent={"x": v}, batch=True, meta=meta, deadline=d)
    err = stopped.value
    assert err.code == "deadline_exceeded" and long_loop.id in err.message and "timeout_ms 300" in err.message
    _stopped_inside(err, backend.NUMBA, POINTS)
    assert t.in_flight.count == 0 and set(threading.enumerate()) <= baseline | {_WATCHDOG._thread}


@pytest.mark.compiled
@pytest.mark.timeout(1200)
def test_a_numba_kernel_stops_when_cancelled_from_another_thread(compiled, long_loop):
    t, graph = compiled
    engine = _kernel_engine(t)
    x, v = _hvp_args(POINTS)
    d = Deadline()  # no time limit: only a cancel stops it
    outcome = {}

    def work():
        try:
            engine.evaluate(long_loop, {"x": x}, ["hvp"], tangent={"x": v}, batch=True, meta=outcome, deadline=d)
        except Stopped as e:
            outcome["error"] = e

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.2)  # let it get into the kernel (not a timing assertion)
    d.cancel("cancelled", "was cancelled: the client went away")
    worker.join(120)  # an anti-hang bound: the whole batch would take many seconds more
    assert not worker.is_alive()
    err = outcome["error"]
    assert err.code == "cancelled" and "client went away" in err.message
    _stopped_inside(err, backend.NUMBA, POINTS)
    assert t.in_flight.count == 0


@pytest.mark.compiled
@pytest.mark.timeout(1200)
def test_the_parallel_variant_stops_at_its_deadline(compiled):
    t, graph = compiled
    module = t.module(graph, backend.PARALLEL)
    if module is None:
        pytest.skip(f"no parallel variant here: {t.store.failed or backend.threads.layer_reason()}")
    plan = backend.plan_meta(graph)
    with Deadline(0.3, "timeout_ms 300") as d, pytest.raises(Stopped) as stopped:
        t.run_on(backend.PARALLEL, module, graph, plan, POINTS, _hvp_args(POINTS), {}, d)
    assert stopped.value.code == "deadline_exceeded"
    _stopped_inside(stopped.value, backend.PARALLEL, POINTS)
    # every chunk stopped: the kernel returned (numba's prange joins its threads) and runs again
    small = t.run_on(backend.PARALLEL, module, graph, plan, 2, [np.full(2, 0.5), np.ones(2)], {})
    assert np.all(np.isfinite(small[0])) and np.all(np.isfinite(small[1]))


def test_the_python_tier_stops_at_its_deadline(tmp_path, long_loop):
    graph = main_plan(long_loop, {"hvp"})[0]
    plan = backend.plan_meta(graph)
    t = backend.Tiered(str(tmp_path), compile=False)
    try:
        t.python._kernels[plan.key] = PythonKernel(kernel_module(graph, "long loop", python=True), plan.key)
        assert t.python.kernel(graph, plan, 2) is not None  # the tier this plan runs on (it pays)
        with Deadline(0.3, "timeout_ms 300") as d, pytest.raises(Stopped) as stopped:
            Engine(t).evaluate(long_loop, {"x": np.full(2, 0.5)}, ["hvp"], tangent={"x": np.ones(2)}, batch=True,
                               deadline=d)
        assert stopped.value.code == "deadline_exceeded" and long_loop.id in stopped.value.message
        _stopped_inside(stopped.value, backend.PYTHON, 2)
        assert t.in_flight.count == 0 and t.stats.runs[backend.INTERPRETER] == 0
    finally:
        t.shutdown()


def test_generated_kernels_check_the_flag_per_point_and_in_long_loops(engine, long_loop):
    """Every point checks; a long `for` loop and every `while` check per iteration; a short loop nest (its whole
    run a few thousand operations) leaves it to the check around it."""
    def checks(definition, compute):
        fn = definition if not isinstance(definition, dict) else engine.compile_definition(definition)
        return kernel_module(main_plan(fn, compute)[0], "t").count("if stop_flag(stop) != 0:")

    # value: the point and the loop; hvp: the point, the forward loop keeping checkpoints, and the reverse sweep's
    # loop over segments with its two inner loops (recomputing a segment, going back through it)
    assert checks(long_loop, {"value"}) == 2 and checks(long_loop, {"hvp"}) == 5
    nested = ("def f(x):\n    s = 0.0\n    for i in range(40):\n        for j in range(40):\n"
              "            s = s + x * i - j\n    return s\n")
    assert checks({"inputs": [{"name": "x", "shape": []}], "program": nested}, {"value", "gradient"}) == 1
    short_while = "def f(x):\n    while x < 3.0:\n        x = x + 1.0\n    return x\n"
    assert checks({"inputs": [{"name": "x", "shape": []}], "program": short_while}, {"value"}) == 2
