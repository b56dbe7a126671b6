"""Warm compile workers (backend/compile_workers.py): one process compiles kernel after kernel, and is closed when
it failed, timed out, holds too much memory or has been idle; the kernel store retries a memory failure of a
worker that had compiled before in a new one.

The "kernels" here are small modules whose import does what a kernel's compile would (or sleeps, or fails): the
worker's contract is "import this path", so no numba compile is needed to test it.
"""

import os
import time

import pytest
from server_process import wait_until

from adserve.engine.backend import Tiered, compile_workers
from adserve.engine.backend.compile_workers import Workers

pytestmark = pytest.mark.timeout(120)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def module(tmp_path, name, body="X = 1\n"):
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return str(path)


def test_one_worker_compiles_one_module_after_another(tmp_path):
    workers = Workers(memory=0)
    try:
        w = workers.take()
        assert w.compile(module(tmp_path, "gen_a"), timeout=60)[1:] == (None, None)
        workers.give(w)
        again = workers.take()
        out, why, code = again.compile(module(tmp_path, "gen_b"), timeout=60)
        assert again is w and (why, code) == (None, None) and "compiled gen_b" in out
        assert w.compiles == 2 and w.address_space > 0
        workers.give(again)
        assert workers.pids() == [w.pid]
    finally:
        workers.shutdown()
    assert not alive(w.pid)


def test_a_failed_compile_ends_its_worker_and_the_next_gets_a_new_one(tmp_path):
    workers = Workers(memory=0)
    try:
        w = workers.take()
        out, why, code = w.compile(module(tmp_path, "gen_bad", "raise ValueError('no kernel here')\n"), timeout=60)
        assert why is None and code == 1 and "ValueError: no kernel here" in out
        workers.give(w)
        fresh = workers.take()
        assert fresh is not w and fresh.compile(module(tmp_path, "gen_ok"), timeout=60)[1:] == (None, None)
        workers.give(fresh)
    finally:
        workers.shutdown()


def test_a_compile_past_its_time_limit_is_killed(tmp_path):
    workers = Workers(memory=0)
    try:
        w = workers.take()
        out, why, code = w.compile(module(tmp_path, "gen_slow", "import time\ntime.sleep(60)\n"), timeout=2)
        assert why == "timeout" and code == -9 and not alive(w.pid)
        workers.give(w)
        assert workers.pids() == []
    finally:
        workers.shutdown()


def test_a_worker_holding_much_memory_or_many_compiles_retires(tmp_path, monkeypatch):
    workers = Workers(memory=1 << 40)
    try:
        w = workers.take()
        w.compile(module(tmp_path, "gen_big", "X = bytearray(1)\n"), timeout=60)
        w.address_space = (1 << 40) // 2 + 1  # past RETIRE_FRACTION of its limit
        workers.give(w)
        assert wait_until(lambda: not alive(w.pid), 10) and workers.pids() == []
        monkeypatch.setattr(compile_workers, "MAX_COMPILES", 1)
        w = workers.take()
        w.compile(module(tmp_path, "gen_one"), timeout=60)
        workers.give(w)
        assert wait_until(lambda: not alive(w.pid), 10) and workers.pids() == []
    finally:
        workers.shutdown()


def test_idle_workers_are_closed(tmp_path):
    workers = Workers(memory=0, idle_seconds=0.3)
    try:
        w = workers.take()
        w.compile(module(tmp_path, "gen_idle"), timeout=60)
        workers.give(w)
        assert workers.pids() == [w.pid]
        assert wait_until(lambda: not alive(w.pid), 10), "an idle worker stayed"
        assert workers.pids() == []
    finally:
        workers.shutdown()


def test_shutdown_kills_busy_and_idle_workers(tmp_path):
    import threading
    workers = Workers(memory=0)
    idle = workers.take()
    idle.compile(module(tmp_path, "gen_x"), timeout=60)
    workers.give(idle)
    busy = workers.take(fresh=True)
    t = threading.Thread(target=busy.compile, args=(module(tmp_path, "gen_y", "import time\ntime.sleep(60)\n"), 90))
    t.start()
    assert wait_until(lambda: len(workers.pids()) == 2, 10)
    workers.shutdown()
    t.join(10)
    assert not t.is_alive() and not alive(idle.pid) and not alive(busy.pid)
    with pytest.raises(RuntimeError):
        workers.take()


class FakeWorker:
    def __init__(self, compiles, answer):
        self.compiles, self.answer, self.proc = compiles, answer, None

    def compile(self, path, timeout, quick=False):
        return self.answer


class FakeWorkers:
    """A warm worker that runs out of memory, then (fresh) one that compiles."""

    def __init__(self):
        from adserve.engine.codegen.worker import MEMORY_EXIT
        self.taken = []
        self.warm = FakeWorker(3, ("MemoryError: out of memory compiling", None, MEMORY_EXIT))
        self.fresh = FakeWorker(0, ("compiled", None, None))

    def take(self, fresh=False):
        self.taken.append(fresh)
        return self.fresh if fresh else self.warm

    def give(self, worker):
        pass

    def shutdown(self):
        pass


def test_a_memory_failure_in_a_warm_worker_is_tried_again_in_a_new_one(tmp_path, monkeypatch):
    t = Tiered(str(tmp_path), workers=1, python=False)
    try:
        store = t.store
        fake = FakeWorkers()
        store._now.workers = fake
        loaded = []
        monkeypatch.setattr(store, "_load", lambda key, quick=False: loaded.append(key))
        path = store.path("k1")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write("X = 1\n")  # on disk already: no source is written
        store._compile("k1", None)
        assert fake.taken == [False, True] and loaded == ["k1"]
        assert t.stats.compile_failures == 0 and "k1" not in store.failed
        # a fresh worker running out of memory is a failure
        fake.taken.clear()
        fake.warm = FakeWorker(0, fake.warm.answer)
        path = store.path("k2")
        open(path, "w").write("X = 1\n")
        store._compile("k2", None)
        assert fake.taken == [False] and "out of memory" in store.failed["k2"]
        assert t.stats.compile_failure_reasons == {"memory": 1}
    finally:
        t.shutdown()


def test_the_store_keeps_its_worker_between_compiles(tmp_path):
    """Two plans compiled one after the other by one store: the same worker process compiled both."""
    from adserve.engine import Engine, main_plan
    t = Tiered(str(tmp_path), workers=1, python=False)
    pids = []
    real = compile_workers.Worker.compile

    def spy(self, path, timeout, quick=False):
        pids.append(self.pid)
        return real(self, path, timeout, quick)

    compile_workers.Worker.compile = spy
    try:
        for c in (2.0, 3.0):
            fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": f"sum(sin(x) * {c})"})
            graph, _ = main_plan(fn, frozenset({"value"}))
            t.store.kernel(graph)
            assert t.store.wait(graph, timeout=100), t.store.failed
        assert len(pids) == 2 and pids[0] == pids[1]
        assert t.stats.compiles == 2
    finally:
        compile_workers.Worker.compile = real
        t.shutdown()
    time.sleep(0.1)
    assert not alive(pids[0])
