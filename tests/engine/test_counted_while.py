"""Counted `while` loops (counted.py) and the interpreter's kept literals: the fast paths answer exactly what the
generic ones do.

Reverse mode's own loops (a `for` differentiated as a while, a checkpointed segment's recompute, a reverse
sweep) are recognised as counted and run without their condition; every answer is compared bit for bit with
the same evaluation with the recognition turned off. Loops that only look counted (a counter that is not an
integer, points of a batch with different trip counts, a limit that changes) take the generic path; a counted
loop still stops at its deadline and at the iteration limit. Literals kept across runs keep 0.0 and -0.0 apart;
a graph that lists an input twice reads the last argument given for it, as before programs.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from adserve.engine import Engine, Limits, control, counted, interpreter, main_plan, whiles
from adserve.engine.builder import Builder
from adserve.engine.deadline import Deadline, Stopped
from adserve.engine.errors import EvaluationError
from adserve.engine.ir import Graph

ALL = ["value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian"]
FOR = "def f(x, r):\n    y = x\n    for k in range({n}):\n        y = y * r + 0.001 * sin(y) + k * 1e-4\n    return y\n"
WHILE = """
def f(x, r):
    y = x
    k = 0
    while y < 3.0 + r:
        y = y * 1.1 + 0.01 * sin(y * r)
        k += 1
    return y * r + k
"""
COUNTER = "def f(x, r):\n    i = {start}\n    y = x\n    while i < {stop}:\n        y = y * r + 0.5\n        i += 1\n    return y\n"


def _defn(program):
    return {"inputs": [{"name": "x", "shape": []}, {"name": "r", "shape": []}], "program": program}


def stride(k):
    """Reverse mode checkpoints every k iterations, for `while` and for long `for` loops alike."""
    return [mock.patch.object(m, "checkpoint_every", lambda max_iter, elements: k) for m in (whiles, control)]


def _evaluate(program, inputs, k, batch, counted_on=True, eng=None):
    eng = eng or Engine()
    patches = stride(k) + ([] if counted_on else [mock.patch.object(whiles, "trip_count", lambda *a: None)])
    for p in patches:
        p.start()
    try:
        fn = eng.compile_definition(_defn(program))
        rng = np.random.default_rng(3)
        lead = (len(inputs["x"]),) if batch else ()
        t = {n: rng.standard_normal(lead) for n in inputs}
        return eng.evaluate(fn, inputs, ALL, tangent=t, cotangent=rng.standard_normal(lead), batch=batch)
    finally:
        for p in patches:
            p.stop()


def _bits(a):
    return np.atleast_1d(np.asarray(a, dtype=np.float64)).view(np.int64)


def _same_bits(got, want):
    assert got.keys() == want.keys()
    for key in got:
        if isinstance(got[key], dict):
            _same_bits(got[key], want[key])
        else:
            np.testing.assert_array_equal(_bits(got[key]), _bits(want[key]), err_msg=key)


@pytest.mark.parametrize("program", [FOR.format(n=40), WHILE], ids=["for", "while"])
@pytest.mark.parametrize("k", [4, 7])
@pytest.mark.parametrize("batch", [False, True])
def test_counted_loops_answer_bit_for_bit_what_the_generic_loop_does(program, k, batch):
    x = {"x": np.array([0.5, 1.5, 2.9]), "r": np.array([0.9, 1.2, 0.7])} if batch else {"x": 0.5, "r": 0.9}
    with mock.patch.object(whiles, "_counted_run", wraps=whiles._counted_run) as spy:
        got = _evaluate(program, x, k, batch)
    assert spy.called
    _same_bits(got, _evaluate(program, x, k, batch, counted_on=False))


def test_reverse_modes_loops_are_recognised_as_counted():
    """The forward while of a for loop, each segment's recompute and each reverse sweep: all counted."""
    eng = Engine()
    with stride(7)[0], stride(7)[1]:
        fn = eng.compile_definition(_defn(FOR.format(n=40)))
        graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    found = []

    def walk(g):
        for e in g.eqns:
            if e.prim == "while":
                found.append(counted.pattern(e.params["cond"], e.params["body"], e.params["n_consts"]))
            for sub in (v for v in e.params.values() if hasattr(v, "eqns")):
                walk(sub)
    walk(graph)
    assert len(found) == 4 and all(p is not None for p in found)  # forward, segments, recompute, sweep
    assert sorted(p[2] for p in found) == [False, False, True, True]  # two count up, two count down


@pytest.mark.parametrize("start,stop", [(0.5, 7.0), (0.0, 6.5), (0.0, 1e300)])
def test_a_counter_that_is_not_an_exact_integer_takes_the_generic_path(start, stop):
    eng = Engine(limits=Limits().updated(max_while_iterations=50))
    fn = eng.compile_definition(_defn(COUNTER.format(start=start, stop=stop)))
    with mock.patch.object(whiles, "_counted_run", wraps=whiles._counted_run) as spy:
        if stop > 1e100:
            with pytest.raises(EvaluationError) as err:
                eng.evaluate(fn, {"x": 1.0, "r": 0.5})
            assert err.value.code == "while_limit"
        else:
            got = eng.evaluate(fn, {"x": 1.0, "r": 0.5})["value"]
            y = 1.0
            i = start
            while i < stop:
                y, i = y * 0.5 + 0.5, i + 1
            assert got == y
    assert not spy.called


def test_points_with_different_trip_counts_take_the_generic_path_and_each_runs_its_own():
    program = "def f(x, n):\n    i = 0\n    y = x\n    while i < n:\n        y = y * 2.0\n        i += 1\n    return y\n"
    eng = Engine()
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": []}, {"name": "n", "shape": []}],
                                 "program": program})
    with mock.patch.object(whiles, "_counted_run", wraps=whiles._counted_run) as spy:
        got = eng.evaluate(fn, {"x": [1.0, 1.0, 3.0], "n": [2.0, 5.0, 0.0]}, batch=True)["value"]
    np.testing.assert_array_equal(got, [4.0, 32.0, 3.0])
    assert not spy.called
    with mock.patch.object(whiles, "_counted_run", wraps=whiles._counted_run) as spy:
        got = eng.evaluate(fn, {"x": [1.0, 3.0], "n": [3.0, 3.0]}, batch=True)["value"]
    np.testing.assert_array_equal(got, [8.0, 24.0])
    assert spy.called


def test_a_counted_loop_past_the_iteration_limit_is_while_limit():
    eng = Engine(limits=Limits().updated(max_while_iterations=100))
    fn = eng.compile_definition(_defn(COUNTER.format(start=0, stop=500)))
    with mock.patch.object(whiles, "_counted_run", wraps=whiles._counted_run) as spy:
        with pytest.raises(EvaluationError) as err:
            eng.evaluate(fn, {"x": 1.0, "r": 0.5})
    assert spy.called and err.value.code == "while_limit" and "line 4" in err.value.message


def test_a_counted_reverse_sweep_stops_at_its_deadline_saying_how_far_it_got():
    eng = Engine()
    fn = eng.compile_definition(_defn(FOR.format(n=90_000)))
    deadline = Deadline(10.0)
    calls = [0]
    real = whiles._counted_run

    def stop_in_the_sweep(*args):
        calls[0] += 1
        if calls[0] == 3:  # the forward loop, the segment loop's first recompute, then its first reverse sweep
            deadline.cancel()
        return real(*args)
    with mock.patch.object(whiles, "_counted_run", stop_in_the_sweep):
        with pytest.raises(Stopped) as err:
            eng.evaluate(fn, {"x": 0.5, "r": 0.9}, ["value", "gradient"], deadline=deadline)
    assert "of 90,000 loop iterations" in str(err.value)


def test_kept_literals_keep_the_sign_of_zero():
    eng = Engine()
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": []}],
                                 "program": "def f(x):\n    s = 0.0\n    for i in range(3):\n"
                                            "        s = s + 1.0 / (x * 0.0) - 1.0 / (x * -0.0)\n    return s\n"})
    for _ in range(2):  # the second run reads the literals the first one made
        assert eng.evaluate(fn, {"x": 2.0})["value"] == np.inf


def test_a_graph_listing_an_input_twice_reads_the_last_argument_for_it():
    b = Builder()
    x = b.input(())
    g = b.build([x * 2.0 + 1.0])
    twice = Graph((g.inputs[0], g.inputs[0]), g.eqns, g.outputs)
    assert interpreter.run(twice, [np.array([1.0]), np.array([5.0])])[0].tolist() == [11.0]
    assert interpreter.run(g, [np.array([1.0])])[0].tolist() == [3.0]
