"""Choosing a plan's tier by timing, deterministically: fake kernels and interpreter advance a fake clock.

A choice made on noisy first timings corrects itself (another tier is re-timed now and then, at growing
intervals), long runs are all timed so a tier that turns slow is left at once, and a parallel variant that
loads later is tried. No wall clock is read.
"""

import os
import types

import numpy as np
import pytest

from adserve.engine import Engine, backend, main_plan

INTERP, NUMBA, PAR = backend.INTERPRETER, backend.NUMBA, backend.PARALLEL


class World:
    """A `Tiered` whose kernels and interpreter only advance a fake clock, by what `cost[tier]` says."""

    def __init__(self, tmp_path, monkeypatch, parallel=False):
        self.now = 0.0
        self.cost = {INTERP: 1e-3, NUMBA: 1e-3, PAR: 1e-3}
        fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(sin(x) * x)"})
        self.graph = main_plan(fn, {"value", "gradient"})[0]
        self.plan = backend.plan_meta(self.graph)
        # lower tier: the fake interpreter
        self.t = backend.Tiered(str(tmp_path), compile=False, python=False, clock=lambda: self.now)
        self.t.store.add(self.plan.key, self._module(NUMBA))
        if parallel:
            self.t.store.add(self.plan.parallel_key, self._module(PAR))
        monkeypatch.setattr(backend.interpreter, "interpret", self._interpret)

    def _advance(self, tier):
        self.now += self.cost[tier]

    def _module(self, tier):
        def kernel(B, *arrays):
            self._advance(tier)
            return 0
        return types.SimpleNamespace(kernel=kernel, ERRORS=[])

    def _interpret(self, graph, args):
        self._advance(INTERP)
        return [np.zeros((args[0].shape[0], *a.shape)) for a in graph.outputs]

    def runs(self, n, B=1):
        """Run the plan n times on a batch of B; the tiers that ran, in order."""
        x = np.zeros((B, 3))
        seen = []
        for _ in range(n):
            meta = {}
            self.t.run(self.graph, [x], meta)
            seen.append(meta["backend"])
        return seen


@pytest.fixture
def world(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch)
    yield w
    w.t.shutdown()


def test_a_choice_made_on_noisy_timings_corrects_itself(world):
    """llsq in a busy benchmark run: the kernel's first runs were slow, so the interpreter was chosen."""
    world.cost.update({NUMBA: 60e-6, INTERP: 43.5e-6})
    first = world.runs(7)  # three trials each; the seventh run chooses
    assert first == [NUMBA] * 3 + [INTERP] * 4 and world.t.choice(world.graph) == INTERP
    world.cost[NUMBA] = 9.2e-6  # the machine calms down
    later = world.runs(100)
    # the kernel's first probe waits while its estimate says a probe costs over 1% (60 us against 43.5 us); as
    # its runs beat the interpreter's, it is probed again 16 runs later, and the third probe brings the median of
    # its last five runs down: the plan switches
    first = int((60 / 43.5 - 1) / world.t.policy.PROBE_BUDGET)
    kernel = [i for i, b in enumerate(later) if b == NUMBA]
    assert kernel[:3] == [first - 1 + k * (world.t.policy.PROBE_FIRST + 1) for k in range(3)]
    assert set(later[kernel[2] + 2:]) == {NUMBA}
    assert world.t.choice(world.graph) == NUMBA and world.t.stats.switches == 1
    assert world.runs(2000).count(INTERP) == 0  # now its floor loses to 9.2 us: never probed
    assert world.t.stats.chosen == {INTERP: 1, NUMBA: 0, PAR: 0}  # first choices; the switch is counted apart


def test_probes_grow_rarer_while_they_confirm_the_choice(world):
    world.cost.update({NUMBA: 40e-6, INTERP: 100e-6})
    seen = world.runs(20_000)
    assert world.t.choice(world.graph) == NUMBA and world.t.stats.switches == 0
    probes = seen[10:].count(INTERP)
    assert probes == world.t.stats.probes
    # the first after 150 runs (a probe of a tier 2.5x slower costs 1% of 150 runs), then gaps double up to
    # PROBE_MAX: a handful, then one in PROBE_MAX runs
    assert seen.index(INTERP, 10) >= 150
    assert 8 <= probes <= 7 + 20_000 // world.t.policy.PROBE_MAX


def test_a_hopeless_interpreter_is_never_tried(world):
    world.cost.update({NUMBA: 2e-6, INTERP: 1.0})  # its floor (1.5 us an equation) already loses to 2 us
    assert INTERP not in world.runs(5000)
    assert world.t.stats.probes == 0


def test_the_interpreter_plainly_slower_is_run_once(world):
    world.cost.update({NUMBA: 100e-6, INTERP: 1e-3})
    seen = world.runs(20)
    assert seen[:4] == [NUMBA] * 3 + [INTERP] and seen[4:world.t.policy.PROBE_FIRST].count(INTERP) == 0
    assert world.t.choice(world.graph) == NUMBA


def test_batch_size_classes_choose_apart(world):
    world.cost.update({NUMBA: 50e-6, INTERP: 20e-6})
    world.runs(10, B=1)
    world.cost.update({NUMBA: 20e-6, INTERP: 50e-6})
    world.runs(10, B=100)
    assert world.t.choice(world.graph, 1) == INTERP and world.t.choice(world.graph, 100) == NUMBA
    assert world.t.choice(world.graph, 1000) is None


@pytest.fixture
def parallel_world(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, parallel=True)
    yield w
    w.t.shutdown()


def test_long_batches_try_the_parallel_kernel_and_leave_it_when_it_turns_slow(parallel_world):
    w = parallel_world
    w.cost.update({NUMBA: 2.5e-3, PAR: 1.3e-3, INTERP: 0.26})  # rosenbrock, 10,000 points; interpreter hopeless
    seen = w.runs(10, B=10_000)
    # five trials of the parallel kernel, the interpreter once: plainly slower
    assert seen == [NUMBA] * 3 + [PAR] * 5 + [INTERP, PAR] and w.t.choice(w.graph, 10_000) == PAR
    w.cost[PAR] = 20e-3  # another process takes a core: the threads wait on each other
    seen = w.runs(10, B=10_000)
    # every long run is timed: left once most of its recent runs are slow
    slow = w.t.policy.WINDOW // 2 + 1
    assert seen == [PAR] * slow + [NUMBA] * (10 - slow) and w.t.choice(w.graph, 10_000) == NUMBA
    w.cost[PAR] = 1.3e-3  # idle again: probes find it (three, 16 runs apart while it beats the serial kernel)
    seen = w.runs(800, B=10_000)
    # a kernel's first probe after a choice comes within FIRST_LOOK runs, however slow it looked
    assert seen.index(PAR) < w.t.policy.FIRST_LOOK
    assert w.t.choice(w.graph, 10_000) == PAR and seen[-50:] == [PAR] * 50
    assert INTERP not in seen  # 100 times slower: its probes would come once in 10,000 runs
    assert w.t.stats.switches == 2


def test_short_batches_never_ask_for_the_parallel_kernel(parallel_world):
    w = parallel_world
    w.cost.update({NUMBA: 20e-6, PAR: 5e-6, INTERP: 100e-6})
    assert PAR not in w.runs(3000, B=100)  # below PARALLEL_SECONDS on the serial kernel


def test_one_long_point_never_asks_for_the_parallel_kernel(tmp_path, monkeypatch):
    """The parallel variant runs points in parallel: for a single point (gmm's gradient, ~0.5 ms) it is one chunk,
    a compile of seconds for nothing, and its arrival would reopen a settled choice."""
    w = World(tmp_path, monkeypatch)
    try:
        w.cost.update({NUMBA: 2.5e-3, PAR: 1.3e-3, INTERP: 0.26})
        asked = []
        w.t.store.request = lambda key, graph, parallel: asked.append((key, parallel))
        assert PAR not in w.runs(300, B=1) and not asked
        assert w.t.choice(w.graph, 1) == NUMBA
        assert w.runs(10, B=2)[:3] == [NUMBA] * 3 and asked[0] == (w.plan.parallel_key, True)  # two points may pay
    finally:
        w.t.shutdown()


def test_a_parallel_variant_loaded_later_is_tried(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch)
    try:
        w.cost.update({NUMBA: 2.5e-3, PAR: 1.3e-3, INTERP: 0.26})
        asked = []
        w.t.store.request = lambda key, graph, parallel: asked.append((key, parallel))  # no compile in this test
        assert w.runs(10, B=10_000)[:4] == [NUMBA] * 3 + [INTERP]
        assert asked and asked[0] == (w.plan.parallel_key, True)  # asked for once the serial runs were long
        assert w.t.choice(w.graph, 10_000) == NUMBA
        w.t.store.add(w.plan.parallel_key, w._module(PAR))  # what a load does once compiled
        seen = w.runs(10, B=10_000)
        assert seen[:4] == [PAR] * 3 + [PAR] and w.t.choice(w.graph, 10_000) == PAR
        assert w.t.stats.switches == 1
    finally:
        w.t.shutdown()


def test_compiles_leave_a_core_to_requests(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert backend.usable_cores(str(tmp_path)) == 8  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert backend.usable_cores(str(tmp_path)) == 8
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a CPU limit of 1.5
    assert backend.usable_cores(str(tmp_path)) == 2
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1, a limit of 1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert backend.usable_cores(str(tmp_path)) == 1
    monkeypatch.setattr(backend.threads, "usable_cores", lambda: 3)
    t = backend.Tiered(str(tmp_path / "cache"), compile=False)
    assert t.workers == 2 and backend.Tiered(str(tmp_path / "cache"), workers=3).workers == 3
