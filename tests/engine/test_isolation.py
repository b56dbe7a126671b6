"""Isolation workers (engine/isolation.py): long evaluations in worker processes, in process with the pool.

* Results from a worker equal the in-process answer (value, gradient, a batch, a jacobian, int inputs), and
  errors come back as the engine's own (class, code, location).
* A loop past its deadline: Stopped deadline_exceeded naming the function; the worker stops by itself and
  is kept (same process), or, given no grace, is killed at the deadline and replaced (the old process is
  gone); a cancelled evaluation kills its worker. No thread is left behind.
* A request needing more memory than the worker's limit is refused (too_large, naming the limit) and the
  worker replaced; the same request answers in process.
* The cost model decides: a short request stays in process, a long one goes to a worker.
* A compile worker under a tiny memory limit fails with reason "memory"; the plan stays on the interpreter.
"""

import os
import threading
import time

import numpy as np
import pytest
from test_allocator import GLIBC

from adserve.engine import Engine
from adserve.engine.backend import Tiered
from adserve.engine.deadline import Deadline, Stopped
from adserve.engine.errors import EvaluationError, LimitError
from adserve.engine.isolation import WorkerPool, WorkerSpec, request_cost
from adserve.engine.limits import Limits

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
          "expr": "log(x1) + x1*x2 - sin(x2)"}


def loop(n):
    return {"inputs": [{"name": "x", "shape": []}],
            "program": f"def f(x):\n    for i in range({n}):\n        x = x * 0.999999 + 0.000001 * sin(x)\n    return x\n"}


def spec(**fields) -> WorkerSpec:
    """Workers on the interpreter, at the tests' own priority (a worker a test waits on must not starve)."""
    return WorkerSpec(cache_dir=None, nice=0, **fields)


@pytest.fixture
def pool():
    """Every evaluation isolated (threshold 0), on the interpreter, 1 GiB per worker."""
    p = WorkerPool(spec(memory_bytes=1 << 30), size=1, threshold=0)
    yield p
    p.close()


def same(got, want):
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for k in want:
            same(got[k], want[k])
    else:
        np.testing.assert_array_equal(got, want)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_results_equal_the_in_process_answer(pool):
    iso, plain = Engine(isolation=pool), Engine()
    cases = [
        (SURVEY, {"x1": 2.0, "x2": 5.0}, ["value", "gradient"], {}),
        (SURVEY, {"x1": [1.0, 2.0, 3.0], "x2": [5.0, 6.0, 7.0]}, ["value", "gradient", "hessian"], {"batch": True}),
        ({"inputs": [{"name": "x", "shape": [3]}], "expr": "sin(x) * x[0]"}, {"x": [0.1, 0.2, 0.3]},
         ["value", "jacobian"], {}),
        ({"inputs": [{"name": "x", "shape": [3]}, {"name": "k", "shape": [], "dtype": "int64"}], "expr": "sum(x) * k"},
         {"x": [1.0, 2.0, 3.0], "k": 4}, ["value", "gradient"], {}),
        (loop(100), {"x": 0.5}, ["value", "hvp"], {"tangent": {"x": 1.0}}),
    ]
    for defn, inputs, compute, kw in cases:
        meta = {}
        got = iso.evaluate(iso.compile_definition(defn), inputs, compute, meta=meta, **kw)
        want = plain.evaluate(plain.compile_definition(defn), inputs, compute, **kw)
        assert meta["isolated"] is True and meta["backend"] == "interpreter"
        same(got, want)
    assert pool.stats()["evaluations"] == len(cases) and pool.stats()["started"] == 1


def test_errors_come_back_as_the_engines_own(pool):
    iso = Engine(isolation=pool)
    fn = iso.compile_definition(SURVEY)
    with pytest.raises(EvaluationError) as e:
        iso.evaluate(fn, {"x1": 2.0}, ["value"])
    assert e.value.code == "missing_input" and "x2" in e.value.message
    with pytest.raises(EvaluationError) as e:
        iso.evaluate(fn, {"x1": 2.0, "x2": [1.0, 2.0]}, ["value"])
    assert e.value.code == "shape_mismatch"
    assert iso.evaluate(fn, {"x1": 2.0, "x2": 5.0})["value"] == pytest.approx(np.log(2) + 10 - np.sin(5))
    assert pool.stats()["started"] == 1  # errors keep the worker


def test_errors_from_a_worker_name_the_programs_line(pool):
    """A function reaches its worker in graph form, which has node ids and no lines: the lines go beside it, so a
    run-time error there names the program's line as it would in the server (bench/hostile.py's never-ending
    while over 1,000 elements, and a gather out of range, answered `line: None` through a real server)."""
    iso, plain = Engine(isolation=pool), Engine()
    never = {"inputs": [{"name": "x", "shape": [1000]}],
             "program": "def f(x):\n    y = x\n    while y[0] > -1.0:\n        y = y + 1.0\n    return sum(y)"}
    gather = {"inputs": [{"name": "x", "shape": [4]}, {"name": "i", "shape": [2], "dtype": "int64"}],
              "program": "def f(x, i):\n    y = 2.0 * x\n    return sum(y[i])"}
    for defn, inputs, compute, line in [(never, {"x": np.zeros(1000)}, ["value"], 3),
                                        (never, {"x": np.zeros(1000)}, ["value", "gradient"], 3),
                                        (gather, {"x": np.arange(4.0), "i": np.array([1, 7])}, ["value"], 3)]:
        errors = []
        for engine in (iso, plain):
            with pytest.raises(EvaluationError) as e:
                engine.evaluate(engine.compile_definition(defn), inputs, compute)
            errors.append(e.value)
        isolated, alone = errors
        assert isolated.location == alone.location and isolated.location.get("line") == line, isolated.location
        assert isolated.message == alone.message and f"line {line}" in isolated.message
    assert pool.stats()["evaluations"] == 3


def test_a_loop_past_its_deadline_stops_in_its_worker_which_is_kept(pool):
    iso = Engine(isolation=pool)
    fn = iso.compile_definition(loop(1_000_000))
    iso.evaluate(iso.compile_definition(SURVEY), {"x1": 2.0, "x2": 5.0})  # the worker is up
    (pid,) = pool.pids()
    with pytest.raises(Stopped) as e, Deadline(0.5, "test limit") as d:
        iso.evaluate(fn, {"x": 0.5}, ["value"], deadline=d)
    assert e.value.code == "deadline_exceeded"
    assert fn.id in e.value.message and "test limit" in e.value.message and "loop iterations" in e.value.message
    assert pool.pids() == [pid] and pool.stats()["replaced"] == {}
    assert iso.evaluate(iso.compile_definition(SURVEY), {"x1": 2.0, "x2": 5.0})["value"] == pytest.approx(
        np.log(2) + 10 - np.sin(5))


def test_without_grace_a_worker_is_killed_at_the_deadline_and_replaced():
    pool = WorkerPool(spec(), size=1, threshold=0, grace=0.0)
    try:
        iso = Engine(isolation=pool)
        fn = iso.compile_definition(loop(1_000_000))
        iso.evaluate(iso.compile_definition(SURVEY), {"x1": 2.0, "x2": 5.0})
        (pid,) = pool.pids()
        threads = {t.ident for t in threading.enumerate()}
        with pytest.raises(Stopped) as e, Deadline(0.3, "test limit") as d:
            iso.evaluate(fn, {"x": 0.5}, ["hvp"], tangent={"x": 1.0}, deadline=d)
        assert e.value.code == "deadline_exceeded" and fn.id in e.value.message
        assert gone(pid)
        assert pool.stats()["replaced"] == {"deadline": 1}
        (new,) = pool.pids()
        assert new != pid
        left = {t.name for t in threading.enumerate() if t.ident not in threads}
        assert left <= {"adserve-deadlines"}  # nothing left computing here (the watchdog starts with a deadline)
        assert iso.evaluate(iso.compile_definition(SURVEY), {"x1": 2.0, "x2": 5.0})["value"] == pytest.approx(
            np.log(2) + 10 - np.sin(5))
        assert pool.pids() == [new]
    finally:
        pool.close()


@pytest.mark.parametrize("grace", [0.5, 0.0])
def test_a_cancelled_evaluation_stops_in_its_worker_or_kills_it_without_grace(grace):
    pool = WorkerPool(spec(), size=1, threshold=0, grace=grace)
    try:
        iso = Engine(isolation=pool)
        fn = iso.compile_definition(loop(1_000_000))
        iso.evaluate(iso.compile_definition(SURVEY), {"x1": 2.0, "x2": 5.0})
        (pid,) = pool.pids()
        token = Deadline(None)
        threading.Timer(0.3, token.cancel, ("client_gone", "was cancelled: the client left")).start()
        with pytest.raises(Stopped) as e:
            iso.evaluate(fn, {"x": 0.5}, ["value"], deadline=token)
        assert e.value.code == "client_gone" and fn.id in e.value.message
        if grace:  # it stopped at the cancel, said how far it got, and is kept
            assert "loop iterations" in e.value.message
            assert pool.pids() == [pid] and pool.stats()["replaced"] == {}
        else:
            assert gone(pid) and pool.stats()["replaced"] == {"cancelled": 1} and len(pool.pids()) == 1
    finally:
        pool.close()


def test_a_request_over_the_workers_memory_limit_is_refused_naming_it():
    # the request-bytes estimate would refuse it before it runs: raised, so the worker's own limit is met
    roomy = Limits().updated(max_request_bytes=16 << 30)
    pool = WorkerPool(spec(limits=roomy, memory_bytes=400 << 20), size=1, threshold=0)
    try:
        iso, plain = Engine(isolation=pool, limits=roomy), Engine(limits=roomy)
        defn = {"inputs": [{"name": "x", "shape": [9_000_000]}], "expr": "sum(sin(x) * cos(x) * exp(x))"}
        x = {"x": np.full(9_000_000, 0.1)}
        iso.evaluate(iso.compile_definition(SURVEY), {"x1": 2.0, "x2": 5.0})
        (pid,) = pool.pids()
        with pytest.raises(LimitError) as e:
            iso.evaluate(iso.compile_definition(defn), x, ["value", "gradient"])
        assert e.value.code == "too_large"
        assert "ADSERVE_WORKER_MEMORY_BYTES" in e.value.message and "400 MiB" in e.value.message
        assert pool.stats()["replaced"] == {"memory": 1} and gone(pid) and len(pool.pids()) == 1
        want = plain.evaluate(plain.compile_definition(defn), x, ["value"])["value"]  # no limit in process
        assert want == pytest.approx(9_000_000 * np.sin(0.1) * np.cos(0.1) * np.exp(0.1))
    finally:
        pool.close()


def test_the_cost_model_decides_what_is_isolated():
    pool = WorkerPool(spec(), size=1, threshold=1e8)
    try:
        iso = Engine(isolation=pool)
        survey, long = iso.compile_definition(SURVEY), iso.compile_definition(loop(100_000))
        assert request_cost(survey, ["value", "gradient"], 1) < 1e8 <= request_cost(long, ["value"], 1)
        meta = {}
        iso.evaluate(survey, {"x1": 2.0, "x2": 5.0}, ["value", "gradient"], meta=meta)
        assert "isolated" not in meta and pool.pids() == []
        iso.evaluate(long, {"x": 0.5}, ["value"], meta=meta)
        assert meta["isolated"] is True and len(pool.pids()) == 1
        assert iso.stats()["isolation"]["evaluations"] == 1
    finally:
        pool.close()
    assert pool.pids() == []


def test_a_compile_worker_out_of_memory_leaves_the_plan_on_the_interpreter(tmp_path):
    backend = Tiered(str(tmp_path), compile_memory=200 << 20, python=False)
    engine = Engine(backend)
    try:
        fn = engine.compile_definition(SURVEY)
        meta = {}
        out = engine.evaluate(fn, {"x1": 2.0, "x2": 5.0}, ["value", "gradient"], meta=meta)
        assert engine.settle(300)
        for _ in range(3):
            out = engine.evaluate(fn, {"x1": 2.0, "x2": 5.0}, ["value", "gradient"], meta=meta)
            assert meta["backend"] == "interpreter"
        assert out["value"] == pytest.approx(np.log(2) + 10 - np.sin(5))
        stats = engine.stats()
        assert stats["compile_failure_reasons"] == {"memory": 1} and stats["compiles"] == 0
        assert any("memory" in why for why in backend.store.failed.values())
    finally:
        engine.close()


def test_a_worker_killed_from_outside_while_idle_is_replaced_before_the_next_request(pool):
    iso = Engine(isolation=pool)
    fn = iso.compile_definition(SURVEY)
    iso.evaluate(fn, {"x1": 2.0, "x2": 5.0})
    (pid,) = pool.pids()
    os.kill(pid, 9)
    assert wait_for(lambda: gone_or_zombie(pid))
    assert iso.evaluate(fn, {"x1": 2.0, "x2": 5.0})["value"] == pytest.approx(np.log(2) + 10 - np.sin(5))
    assert pool.stats()["replaced"] == {"died": 1} and pool.pids() != [pid]


def wait_for(condition, seconds=10.0):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def gone_or_zombie(pid):
    """Dead and waiting for its parent to reap it: a zombie whose threads have all ended (until they have, the
    kernel reports the process a zombie, but its parent cannot reap it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        return zombie and os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except OSError:
        return True


def test_workers_run_at_the_priority_the_settings_give():
    """ADSERVE_ISOLATE_NICE (5 unless set) reaches the worker processes: their nice value is the server's plus it."""
    from adserve.server.settings import Settings
    assert Settings.model_fields["isolate_nice"].default == 5  # the tests run with 0 (conftest)
    engine = Engine.from_settings(Settings(isolate_workers=1, isolate_nice=7, compile=False))
    try:
        assert engine.isolation.spec.nice == 7
        engine.isolation.start()
        assert engine.isolation.wait_ready(120)
        (pid,) = engine.isolation.pids()
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    finally:
        engine.close()


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc")
def test_a_worker_keeps_freed_memory_so_large_evaluations_reuse_their_pages():
    """WorkerSpec.malloc_keep_bytes (allocator.py): a worker evaluating on arrays of 8 MB frees several together
    each call; with freed memory kept, later calls reuse those pages instead of faulting new ones in. The same
    workers with glibc's defaults (0) fault them in on every call: the check can tell the two apart."""
    x = np.linspace(0.0, 1.0, 1 << 20)
    defn = {"inputs": [{"name": "x", "shape": [1 << 20]}], "expr": "sum(exp(x) * x + sin(x) * x)"}
    faults = {}
    for keep in (256 << 20, 0):
        p = WorkerPool(spec(memory_bytes=1 << 30, malloc_keep_bytes=keep), size=1, threshold=0)
        try:
            iso = Engine(isolation=p)
            fn = iso.compile_definition(defn)
            for _ in range(3):  # glibc's own thresholds move after the first frees: past that
                iso.evaluate(fn, {"x": x}, ["value"])
            (pid,) = p.pids()
            start = _minor_faults(pid)
            for _ in range(10):
                iso.evaluate(fn, {"x": x}, ["value"])
            faults[keep] = _minor_faults(pid) - start
        finally:
            p.close()
    pages = (8 << 20) // os.sysconf("SC_PAGE_SIZE")  # one array's
    assert faults[256 << 20] < pages and faults[0] > 5 * pages, faults


def test_a_message_that_cannot_be_held_is_dropped_whole(monkeypatch):
    """The worker's receive: messages as Connection.send_bytes frames them, read one after another; one whose
    buffer cannot be had is read and dropped, and the next is read from its start (recv_bytes had taken the
    rest of a message it failed in for the next one)."""
    import builtins
    from multiprocessing.connection import Connection

    from adserve.engine import isolation_worker

    def small_only(n=0):
        if isinstance(n, int) and n > 100_000:
            raise MemoryError
        return builtins.bytearray(n)
    monkeypatch.setattr(isolation_worker, "bytearray", small_only, raising=False)
    r, w = os.pipe()
    sender = Connection(w, readable=False)
    messages = [b"first", bytes(range(256)) * 1000, b"after the big one", b""]
    writer = threading.Thread(target=lambda: [sender.send_bytes(m) for m in messages])
    writer.start()
    try:
        assert isolation_worker.receive(r) == b"first"
        assert isolation_worker.receive(r) is None
        assert isolation_worker.receive(r) == b"after the big one"
        assert isolation_worker.receive(r) == b""
        writer.join()
        sender.close()
        with pytest.raises(EOFError):
            isolation_worker.receive(r)
    finally:
        os.close(r)
