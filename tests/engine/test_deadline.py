"""Deadlines stop the interpreter: between equations and loop iterations, at the time limit or when another
thread cancels; the error says which function and how far the work got. A tiered backend given a deadline
runs a plan on the interpreter when its compiled run could overrun. No wall-clock assertion: what is checked
is that the work stopped short, and where.
"""

import threading
import time
import types

import numpy as np
import pytest

from adserve.engine import Engine, backend, main_plan
from adserve.engine.deadline import _WATCHDOG, Deadline, Stopped

N = 1_000_000
LOOP = {"inputs": [{"name": "x", "shape": []}],
        "program": f"def f(x):\n    for i in range({N}):\n        x = x * 0.999999 + 0.000001 * sin(x)\n    return x\n"}


@pytest.fixture(scope="module")
def engine():
    return Engine()  # the NumPy interpreter


@pytest.fixture(scope="module")
def long_loop(engine):
    return engine.compile_definition(LOOP)


def _loop_progress(err: Stopped):
    """(iterations done, length) of the outermost loop the stop passed through."""
    loops = [w for w in err.progress if w[0] == "loop"]
    return loops[-1][1], loops[-1][2]


@pytest.mark.parametrize("compute", [["value"], ["hvp"]])
def test_a_long_loop_stops_at_its_deadline_and_says_how_far_it_got(engine, long_loop, compute):
    with Deadline(0.2, "timeout_ms 200") as d, pytest.raises(Stopped) as stopped:
        engine.evaluate(long_loop, {"x": 0.5}, compute, tangent={"x": 1.0}, deadline=d)
    err = stopped.value
    done, length = _loop_progress(err)
    assert err.code == "deadline_exceeded" and length == N and done < N
    assert long_loop.id in err.message and f"of {N:,} loop iterations" in err.message
    assert "line 2" in err.message and "timeout_ms 200" in err.message


@pytest.mark.parametrize("compute", [["value"], ["gradient"]])
def test_a_while_loop_stops_at_its_deadline_and_says_how_far_it_got(engine, compute):
    """A while loop whose condition stays true for long (under its iteration bound) stops at the deadline,
    before the bound's while_limit, forward and on the taped pass of reverse mode."""
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "program":
                                    "def f(x):\n    y = x\n    while y > -1.0:\n        y = y * 0.999999 + sin(y) * 1e-9\n"
                                    "    return y\n"})
    with Deadline(0.2, "timeout_ms 200") as d, pytest.raises(Stopped) as stopped:
        engine.evaluate(fn, {"x": 0.5}, compute, deadline=d)
    err = stopped.value
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


def test_a_compiled_run_that_could_overrun_goes_to_the_interpreter(tiered):
    t, graph, calls = tiered
    # the static estimate of the loop's kernel (2M equation runs) is far over a 50 ms budget
    with Deadline(0.05) as d, pytest.raises(Stopped):
        t.run(graph, [np.array([0.5])], {}, deadline=d)
    assert calls == [] and t.stats.runs[backend.INTERPRETER] == 1


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
        with Deadline(0.05) as d, pytest.raises(Stopped) as stopped:
            t.run(graph, [np.array([0.5])], {}, deadline=d)
        assert _loop_progress(stopped.value)[0] < N and t.stats.runs[backend.INTERPRETER] == 1
    finally:
        t.shutdown()
