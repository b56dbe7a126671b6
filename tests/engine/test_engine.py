"""Engines are values: each owns its backend, limits and counters, and two in one process share nothing."""

import json

import numpy as np
import pytest

from adserve.engine import Engine, Limits
from adserve.engine.backend import Interpreter, Tiered
from adserve.engine.errors import LimitError

LONG = {"inputs": [{"name": "x", "shape": []}], "expr": " + ".join(f"sin({k} * x)" for k in range(40))}
MAP = {"inputs": [{"name": "x", "shape": [3]}], "expr": "sin(x) * x"}


def test_two_engines_keep_their_own_limits_backends_and_counts(tmp_path):
    small = Engine(limits=Limits(max_nodes=50, max_sweep_rows=4))
    tier = Tiered(str(tmp_path), compile=False, python=False)
    big = Engine(tier)
    try:
        with pytest.raises(LimitError, match="more than 50 operations"):
            small.compile_definition(LONG)
        assert float(big.evaluate(big.compile_definition(LONG), {"x": 0.5})["value"]) == pytest.approx(
            sum(np.sin(k * 0.5) for k in range(40)))

        fn = small.compile_definition(MAP)
        xs = {"x": np.ones((2, 3))}  # a Jacobian of two points: 2 x 3 sweeps
        with pytest.raises(LimitError) as err:
            small.evaluate(fn, xs, ["jacobian"], batch=True)
        assert err.value.code == "too_many_sweeps"
        assert big.evaluate(fn, xs, ["jacobian"], batch=True)["jacobian"]["x"].shape == (2, 3, 3)

        assert isinstance(small.backend, Interpreter) and big.backend is tier
        assert small.stats()["runs"]["interpreter"] == 0  # refused before running: nothing counted here...
        assert big.stats()["runs"]["interpreter"] == 2    # ...and the other engine's runs are its own
        assert Engine().backend is not Engine().backend
    finally:
        big.close()


def test_stats_are_one_plain_dict():
    engine = Engine(limits=Limits(max_nodes=1234))
    engine.evaluate(engine.compile_definition(MAP), {"x": np.ones(3)}, ["value", "jvp"], tangent={"x": np.ones(3)})
    stats = engine.stats()
    assert json.loads(json.dumps(stats)) == stats  # plain data: no objects to probe
    assert stats["runs"]["interpreter"] == 1 and stats["limits"]["max_nodes"] == 1234
    stats["runs"]["interpreter"] = 99  # a copy: the engine's counters are not the caller's to change
    assert engine.stats()["runs"]["interpreter"] == 1


class _Settings:
    """What `Engine.from_settings` reads of the server's settings."""
    compile_timeout_seconds, python_tier = 300.0, True
    max_nodes = max_elements = max_trip_count = max_steps = max_work = max_request_work = max_sweep_rows = None
    max_while_iterations = None
    max_expr_depth = 400
    compile_memory_bytes, isolate_workers, isolate_work, worker_memory_bytes = 1 << 30, 0, 1e8, 2 << 30
    isolate_nice = 5
    llvm_kernels = True
    malloc_keep_bytes = 256 << 20

    def __init__(self, compile, cache_dir, **limits):
        self.compile, self.cache_dir = compile, cache_dir
        for k, v in limits.items():
            setattr(self, k, v)


def test_from_settings_builds_the_backend_and_limits_the_settings_ask_for(tmp_path):
    plain = Engine.from_settings(_Settings(False, tmp_path, max_nodes=77))
    assert isinstance(plain.backend, Interpreter) and plain.limits.max_nodes == 77
    assert plain.limits.max_work == Limits().max_work and plain.preload() is None
    compiled = Engine.from_settings(_Settings(True, tmp_path, max_sweep_rows=10))
    try:
        assert isinstance(compiled.backend, Tiered) and compiled.limits.max_sweep_rows == 10
        assert (tmp_path / "kernels").is_dir()
    finally:
        compiled.close()


def test_from_settings_gives_the_isolation_workers_their_settings(tmp_path):
    engine = Engine.from_settings(_Settings(False, tmp_path, isolate_workers=2, isolate_work=5e7,
                                            worker_memory_bytes=700 << 20, max_nodes=99, isolate_nice=0,
                                            llvm_kernels=False, malloc_keep_bytes=64 << 20))
    try:
        pool = engine.isolation
        assert pool.size == 2 and pool.threshold == 5e7 and pool.pids() == []
        assert pool.spec.memory_bytes == 700 << 20 and pool.spec.limits.max_nodes == 99 and pool.spec.nice == 0
        assert pool.spec.llvm is False and pool.spec.malloc_keep_bytes == 64 << 20
        assert pool.spec.cache_dir is None  # compile off: the workers run the interpreter too
        engine.preload()  # a server's start: the workers start
        assert len(pool.pids()) == 2 and engine.wait_ready(60)
    finally:
        engine.close()
    assert pool.pids() == []
