"""A run on a lower tier gives way to its plan's kernel when the kernel arrives mid-run (backend/give_way.py), the
compile worker is started with the backend (backend/compile_workers.py `spare`), and a plan asked for again is
introduced without waiting for a quiet moment (backend/tiered.py).

The slow run is simulated: the interpreter is replaced by one that, like the real one between its equations,
reads its check object until it is stopped; so "the kernel arrived mid-run" does not depend on how long a real
run takes. That the real interpreter and kernels stop at a stopped check object is test_deadline.py's.
"""

import threading
import time

import numpy as np
import pytest

from adserve.engine import Engine, backend, main_plan
from adserve.engine.backend import compile_workers, give_way
from adserve.engine.backend import interpreter as interpreter_tier
from adserve.engine.backend.compile_workers import Workers
from adserve.engine.backend.plan import known_meta
from adserve.engine.deadline import _WATCHDOG, DEADLINE_EXCEEDED, Deadline, Stopped

pytestmark = pytest.mark.timeout(300)

VECTOR = {"inputs": [{"name": "x", "shape": [2]}, {"name": "M", "shape": [3, 2]}], "expr": "sin(M @ x) * x[0]"}
ARGS = {"x": np.array([0.3, -0.2]), "M": np.arange(6.0).reshape(3, 2) / 7}
reference = Engine()  # the interpreter


def held_compiles(monkeypatch) -> threading.Event:
    """Hold every compile worker's compile until the returned event is set."""
    gate, real_compile = threading.Event(), compile_workers.Worker.compile

    def held(self, path, timeout, quick=None):
        gate.wait(60)
        return real_compile(self, path, timeout, quick)
    monkeypatch.setattr(compile_workers.Worker, "compile", held)
    return gate


class SlowInterpreter:
    """The interpreter's stand-in: waits, reading its check object as the interpreter does between equations,
    until it is stopped (then raises its error, as the interpreter does) or `release` is set (then answers, as
    it does after 60 s without either)."""

    def __init__(self, monkeypatch, before=None):
        self.real = interpreter_tier.interpret
        self.checks, self.release, self.before = [], threading.Event(), before
        monkeypatch.setattr(interpreter_tier, "interpret", self)

    def __call__(self, graph, args, deadline=None):
        if deadline is None:  # a run that cannot give way: answers at once
            return self.real(graph, args)
        self.checks.append(deadline)
        if self.before is not None:
            self.before(deadline)
        give_up = time.monotonic() + 60  # a bound, not a measurement: then it answers (and the test fails)
        while not deadline.stopped and not self.release.wait(0.001) and time.monotonic() < give_up:
            pass
        if deadline.stopped:
            raise deadline.error()
        return self.real(graph, args, deadline)


def test_a_first_run_on_the_interpreter_returns_the_kernels_answer_once_the_kernel_arrives(tmp_path, monkeypatch):
    t = backend.Tiered(str(tmp_path), workers=1, python=False)
    try:
        engine = Engine(t)
        other = engine.compile_definition({**VECTOR, "expr": "cos(M @ x)"})
        engine.evaluate(other, ARGS, ["value"])
        assert t.settle(120)  # the backend's threads (its pools, the worker's output reader) are running now
        baseline = set(threading.enumerate())
        slow = SlowInterpreter(monkeypatch)
        fn = engine.compile_definition(VECTOR)
        meta = {}
        got = engine.evaluate(fn, ARGS, ["value", "vjp"], cotangent=np.ones(3), meta=meta)
        assert meta["backend"] == "numba"  # the rerun's: on the kernel that arrived
        assert len(slow.checks) == 1 and slow.checks[0].code == give_way.SUPERSEDED
        # nothing left behind: no thread, and the run's check object closed (off the deadline watchdog) and
        # unregistered
        assert t.settle(120) and set(threading.enumerate()) <= baseline | {_WATCHDOG._thread}
        assert slow.checks[0]._closed and not t.waiting._runs
        want = reference.evaluate(fn, ARGS, ["value", "vjp"], cotangent=np.ones(3))
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
        np.testing.assert_allclose(got["vjp"]["M"], want["vjp"]["M"], rtol=1e-12)
        again = engine.evaluate(fn, ARGS, ["value", "vjp"], cotangent=np.ones(3), meta=meta)
        assert meta["backend"] == "numba"
        assert again["value"].tobytes() == got["value"].tobytes()
    finally:
        t.shutdown()


def test_a_later_run_on_the_interpreter_gives_way_too(tmp_path, monkeypatch):
    """A run after the plan's introduction, while its kernel compiles, goes through the timing policy to the
    interpreter: it gives way as the first run does."""
    t = backend.Tiered(str(tmp_path), workers=1, python=False)
    slow = SlowInterpreter(monkeypatch)
    slow.release.set()  # the first run answers at once
    try:
        engine = Engine(t)
        fn = engine.compile_definition(VECTOR)
        graph, _ = main_plan(fn, {"value"})
        gate = held_compiles(monkeypatch)  # the kernel is not compiled before the second run is on the interpreter
        meta = {}
        engine.evaluate(fn, ARGS, ["value"], meta=meta)
        assert meta["backend"] == "interpreter"
        t._introducer.submit(lambda: None).result(60)  # introduced: its key is known, its compile pending
        assert known_meta(graph).key in t.store.pending
        slow.release.clear()
        slow.before = lambda check: gate.set()  # the compile goes on once this run is on the interpreter
        got = engine.evaluate(fn, ARGS, ["value"], meta=meta)
        assert meta["backend"] == "numba" and slow.checks[-1].code == give_way.SUPERSEDED
        np.testing.assert_allclose(got["value"], reference.evaluate(fn, ARGS, ["value"])["value"], rtol=1e-12)
        assert not t.waiting._runs
    finally:
        t.shutdown()


@pytest.mark.parametrize("how", ["cancel", "expire"])
def test_a_run_that_would_give_way_still_stops_at_its_deadline(tmp_path, monkeypatch, how):
    """The caller's deadline passing (or its cancel) while the run waits for a kernel stops it with the
    deadline's code: no rerun."""
    t = backend.Tiered(str(tmp_path), workers=1, python=False, compile=False)  # no kernel comes
    d = Deadline(None if how == "cancel" else 0.05, "the test's limit")
    SlowInterpreter(monkeypatch, before=lambda check: d.cancel() if how == "cancel" else None)
    try:
        engine = Engine(t)
        fn = engine.compile_definition(VECTOR)
        with pytest.raises(Stopped) as err:
            engine.evaluate(fn, ARGS, ["value"], deadline=d)
        assert err.value.code == ("cancelled" if how == "cancel" else DEADLINE_EXCEEDED)
        if how == "expire":
            assert "the test's limit" in str(err.value)
        assert not t.waiting._runs
    finally:
        d.close()
        t.shutdown()


def test_the_compile_worker_is_up_before_the_first_compile_is_asked(tmp_path, monkeypatch):
    t = backend.Tiered(str(tmp_path), workers=1, python=False)
    try:
        pids = t.store._now.workers.pids()
        assert len(pids) == 1  # started with the backend, before any plan ran
        used = []
        real = compile_workers.Worker.compile

        def spy(self, path, timeout, quick=False):
            used.append(self.pid)
            return real(self, path, timeout, quick)

        monkeypatch.setattr(compile_workers.Worker, "compile", spy)
        engine = Engine(t)
        fn = engine.compile_definition(VECTOR)
        engine.evaluate(fn, ARGS, ["value"])
        assert t.settle(120) and used == pids
    finally:
        t.shutdown()


def test_a_spare_worker_sets_up_its_back_end_before_it_is_ready(tmp_path):
    """A worker told to prepare the LLVM back end has llvmlite loaded by the time it says it is ready."""
    workers = Workers(memory=0, spare=1, prepare="llvm")
    try:
        workers.ready()
        (w,) = workers._idle
        line = w._lines.get(timeout=120)
        assert line.startswith("@@adserve-compiled@@")
        w._lines.put(line)  # given back: its first compile reads it as the ready line
        w._started = False
        with open(f"/proc/{w.pid}/maps") as f:
            assert "llvmlite" in f.read()
    finally:
        workers.shutdown()


def test_spare_workers_are_replaced_after_retiring_and_kept_while_unused(tmp_path, monkeypatch):
    module = tmp_path / "m.py"
    module.write_text("X = 1\n")
    workers = Workers(memory=0, idle_seconds=0.05, spare=1)
    try:
        workers.ready()
        spare = workers._idle[0]
        workers._expire()  # idle past its time but never used: kept
        assert workers._idle == [spare]
        w = workers.take()
        assert w is spare and workers._idle == []  # no second process starts beside a compile
        monkeypatch.setattr(compile_workers, "MAX_COMPILES", 1)  # it retires after this compile
        assert w.compile(str(module), 60)[1:] == (None, None)
        workers.give(w)
        (fresh,) = workers._idle
        assert fresh is not w and fresh.compiles == 0
        monkeypatch.setattr(compile_workers, "MAX_COMPILES", 64)
        w = workers.take()
        w.compile(str(module), 60)
        workers.give(w)
        assert workers._idle == [w]
        w.idle_since -= 1.0
        workers._expire()  # a worker that compiled, idle past its time: closed, a fresh spare in its place
        (spare,) = workers._idle
        assert spare is not w and spare.compiles == 0
    finally:
        workers.shutdown()


def test_a_plan_asked_for_again_is_introduced_without_a_quiet_moment(tmp_path):
    t = backend.Tiered(str(tmp_path), workers=1, python=False, compile=False)
    t.INTRODUCE_WAIT_SECONDS = 600.0
    t.INTRODUCE_LONG_SECONDS = 600.0
    try:
        engine = Engine(t)
        fn = engine.compile_definition(VECTOR)
        graph, _ = main_plan(fn, {"value"})
        t.in_flight.enter()  # a request in progress all along: no quiet moment comes
        try:
            engine.evaluate(fn, ARGS, ["value"])
            engine.evaluate(fn, ARGS, ["value"])
            t._introducer.submit(lambda: None).result(120)  # the introduction did not wait its 600 s
            assert known_meta(graph) is not None
        finally:
            t.in_flight.exit()
    finally:
        t.shutdown()


def test_a_plan_called_back_to_back_wants_its_kernel_between_calls(monkeypatch):
    """A plan run on a lower tier within Waiting.RECENT_SECONDS wants its kernel (its load takes no quiet moment)
    even between two runs; it does not once the kernel arrived, nor when its last run is older than that."""
    fn = reference.compile_definition(VECTOR)
    graph, _ = main_plan(fn, {"value"})
    key = backend.plan_key(graph)
    waiting = give_way.Waiting()
    assert not waiting.wanted(key)
    with waiting.run(graph, None, lambda: False):
        assert waiting.wanted(key)
    assert waiting.wanted(key)  # between two calls
    waiting.arrived(key)
    assert not waiting.wanted(key)
    with waiting.run(graph, None, lambda: False):
        pass
    monkeypatch.setattr(give_way.Waiting, "RECENT_SECONDS", 0.0)
    assert not waiting.wanted(key)


def test_runs_while_the_kernel_is_on_its_way_leave_the_interpreters_lock_free_first(tmp_path, monkeypatch):
    """A plan's first run, and every later run on a lower tier while its kernel is on its way, first sleeps
    MAKE_WAY_SECONDS: the threads bringing the kernel need the interpreter's lock, which a thread running NumPy
    retakes at once after each release (the convoy effect). Once the kernel is loaded, runs do not sleep."""
    from adserve.engine.backend import tiered
    t = backend.Tiered(str(tmp_path), workers=1, python=False)
    sleeps = []
    real_sleep = time.sleep

    def sleep(seconds):  # (time.sleep itself is patched: the store's waits sleep too, for other lengths)
        if threading.current_thread() is threading.main_thread() and seconds == t.MAKE_WAY_SECONDS:
            sleeps.append(seconds)
        real_sleep(seconds)
    try:
        gate = held_compiles(monkeypatch)
        monkeypatch.setattr(tiered.time, "sleep", sleep)
        engine = Engine(t)
        fn = engine.compile_definition(VECTOR)
        graph, _ = main_plan(fn, {"value"})
        meta = {}
        engine.evaluate(fn, ARGS, ["value"], meta=meta)  # the first run
        assert meta["backend"] == "interpreter" and sleeps == [t.MAKE_WAY_SECONDS]
        t._introducer.submit(lambda: None).result(60)
        assert known_meta(graph).key in t.store.pending
        for k in range(3):
            engine.evaluate(fn, {**ARGS, "x": ARGS["x"] + k + 1}, ["value"], meta=meta)
            assert meta["backend"] == "interpreter"
        assert sleeps == [t.MAKE_WAY_SECONDS] * 4
        gate.set()
        assert t.wait(graph, 120)
        for k in range(5):
            engine.evaluate(fn, {**ARGS, "x": ARGS["x"] - k - 1}, ["value"], meta=meta)
        assert meta["backend"] == "numba" and sleeps == [t.MAKE_WAY_SECONDS] * 4
    finally:
        t.shutdown()
