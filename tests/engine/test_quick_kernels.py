"""A large LLVM kernel answers quickly, then optimised (llvm_kernel.QUICK_LINES, backend/store.py).

Its first compile is quick (level 0's machine code); that kernel answers at once, and the optimised compile that
follows in the background takes its place: the same bits, the timing policy's choices made afresh, an LLVM parallel
variant made again around it. When the optimised compile fails, the quick kernel stays. A restart loads the
optimised kernel from disk. Every kernel here is made "large" (QUICK_LINES 0): a small plan's compiles are quick.
"""

import glob
import os
import threading

import numpy as np
import pytest
from engine_helpers import run
from test_codegen import run_kernel
from test_tier_consistency import same

from adserve.engine import Engine, backend, main_plan
from adserve.engine.codegen import llvm_kernel

pytestmark = pytest.mark.compiled

engine = Engine()


@pytest.fixture
def plan(monkeypatch):
    monkeypatch.setattr(llvm_kernel, "QUICK_LINES", 0)
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(sin(x) * x) + prod(x)"})
    return main_plan(fn, frozenset({"value", "gradient"}))[0]


def held(store, monkeypatch):
    """Hold `store`'s optimised compiles until the returned event is set."""
    gate, optimise = threading.Event(), store._optimise
    monkeypatch.setattr(store, "_optimise", lambda key: (gate.wait(120), optimise(key)))
    return gate


def test_a_large_kernel_answers_quickly_then_optimised(plan, tmp_path, monkeypatch):
    x = np.array([[0.5, -1.0, 2.0]])
    want = run(plan, [x])
    t = backend.Tiered(str(tmp_path), python=False)
    try:
        gate = held(t.store, monkeypatch)
        t.kernel(plan)
        assert t.wait(plan, 600)
        quick = t.module(plan, backend.NUMBA)
        assert isinstance(quick, llvm_kernel.LlvmModule) and quick.quick
        key = next(iter(t.store.optimising))
        assert not glob.glob(os.path.join(t.store.dir, "*.quick-*"))  # read, then removed: no cache entry
        assert not os.path.exists(llvm_kernel.object_path(t.store.path(key)))
        chunks = t.store.parallel_kernel(plan)  # None on one core
        for _ in range(20):  # the policy times the tiers and chooses
            for got, w in zip(t.run(plan, [x]), want):
                same(got, w, False, "quick kernel, tiered")
        meta = {}
        t.run_on(backend.NUMBA, quick, plan, backend.plan_meta(plan), 1, [x], meta)
        assert meta["kernel"] == "quick" and meta["compile"] == "optimising"  # what Server-Timing says
        choices = [c for which, c in t.policy.choices.items() if which[0] == key]
        assert choices and all(c.on is not None for c in choices)

        gate.set()
        assert t.settle(600) and not t.store.optimising
        optimised = t.module(plan, backend.NUMBA)
        assert isinstance(optimised, llvm_kernel.LlvmModule) and not optimised.quick
        assert t.stats.optimised == 1 and t.stats.optimise_failures == 0
        assert t.stats.compiles == t.stats.llvm_compiles == 2
        assert os.path.exists(llvm_kernel.object_path(t.store.path(key)))  # the cache's entry
        assert not glob.glob(os.path.join(t.store.dir, "*.quick-*"))
        for a, b in zip(run_kernel(quick, plan, [x]), run_kernel(optimised, plan, [x])):
            assert np.array_equal(a, b) and a.tobytes() == b.tobytes()
        # the choices start afresh, without the quick kernel's timings, and settle on the optimised kernel
        assert all(c.on is None and backend.NUMBA not in c.times for c in choices)
        for _ in range(20):
            for got, w in zip(t.run(plan, [x]), want):
                same(got, w, False, "optimised kernel, tiered")
        meta = {}
        t.run_on(backend.NUMBA, optimised, plan, backend.plan_meta(plan), 1, [x], meta)
        assert meta["backend"] == backend.NUMBA and "kernel" not in meta and "compile" not in meta
        assert all(c.on is None or c.on[0] != backend.NUMBA or c.on[1] is optimised for c in choices)
        if chunks is not None:
            assert chunks.serial is quick and t.store.parallel_kernel(plan).serial is optimised
    finally:
        t.shutdown()

    again = backend.Tiered(str(tmp_path), python=False)  # a restart: the optimised kernel, from disk
    try:
        again.kernel(plan)
        assert again.wait(plan, 600)
        assert not again.module(plan, backend.NUMBA).quick
        assert again.stats.disk_loads == 1 and again.stats.compiles == 0
    finally:
        again.shutdown()


def test_when_the_optimised_compile_fails_the_quick_kernel_stays(plan, tmp_path, monkeypatch, caplog):
    x = np.array([[0.25, 3.0, -2.0]])
    t = backend.Tiered(str(tmp_path), python=False)
    try:
        run_worker = t.store._run_worker

        def broken_optimised_compile(path, fresh=False, quick=None, later=False):
            # the worker is given a module that is not there: it fails, as a compile that crashed would
            return run_worker(path if quick else path + ".missing.ll", fresh, quick, later)
        monkeypatch.setattr(t.store, "_run_worker", broken_optimised_compile)
        t.kernel(plan)
        assert t.wait(plan, 600) and t.settle(600)
        module = t.module(plan, backend.NUMBA)
        assert module.quick
        assert t.stats.optimise_failures == 1 and t.stats.optimised == 0 and t.stats.compile_failures == 0
        meta = {}
        t.run_on(backend.NUMBA, module, plan, backend.plan_meta(plan), 1, [x], meta)
        assert meta["kernel"] == "quick" and "compile" not in meta  # no optimised kernel is coming
        assert "optimised compile failed" in caplog.text and "the quick kernel stays" in caplog.text
        for got, w in zip(t.run(plan, [x]), run(plan, [x])):
            same(got, w, False, "quick kernel after a failed optimised compile")
    finally:
        t.shutdown()


def test_a_first_compile_runs_at_full_priority_and_never_waits_behind_an_optimised_one(plan, tmp_path,
                                                                                         monkeypatch):
    """Compiles go in two lanes (store.py): a plan's first kernel, which callers wait for, at the server's own CPU
    priority; a large kernel's optimised compile in the background at ADSERVE_COMPILE_NICE. With the background
    lane held, another plan's first kernel still arrives."""
    from adserve.engine.backend import compile_workers
    monkeypatch.setenv("ADSERVE_COMPILE_NICE", "4")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    niceness = {}  # path compiled -> the priority of the worker that compiled it
    real = compile_workers.Worker.compile

    def spy(self, path, timeout, quick=None):
        answer = real(self, path, timeout, quick)
        niceness.setdefault(path + (" quick" if quick else ""), os.getpriority(os.PRIO_PROCESS, self.pid))
        return answer

    monkeypatch.setattr(compile_workers.Worker, "compile", spy)
    other = main_plan(engine.compile_definition({"inputs": [{"name": "y", "shape": [2]}], "expr": "sum(exp(y))"}),
                      frozenset({"value"}))[0]
    t = backend.Tiered(str(tmp_path), workers=1, python=False)
    try:
        gate = held(t.store, monkeypatch)
        t.kernel(plan)
        assert t.wait(plan, 600) and t.store.optimising  # its optimised compile waits at the gate
        t.kernel(other)
        assert t.wait(other, 600), t.store.failed  # not behind it
        assert t.module(other, backend.NUMBA).quick and t.store.optimising
        gate.set()
        assert t.settle(600) and t.stats.optimised == 2 and t.stats.optimise_failures == 0
    finally:
        gate.set()
        t.shutdown()
    quick = {p: n for p, n in niceness.items() if p.endswith(" quick")}
    optimised = {p: n for p, n in niceness.items() if not p.endswith(" quick")}
    assert len(quick) == len(optimised) == 2, niceness
    assert set(quick.values()) == {base} and set(optimised.values()) == {min(19, base + 4)}, niceness
