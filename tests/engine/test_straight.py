"""The interpreter's programs as straight-line code (straight.py), and steps fitted to their arguments' ranks
(interpreter.RANK_FITTED): the same answers, errors and stops as the step-by-step walk.

The reference is the walk of a Program made with neither (`plain`); the fast run compiles every program at
its first run (`fast`). Answers are compared bit for bit, on every element-wise op of two arguments with
literals of lower rank (which a fitted step reshapes once when the Program is made) and on slices (a fitted
one keeps its index); an error is located at
the same equation with the same message; a stop (a deadline that stops at its n-th read, so both stop at the
same check) reports the same operation.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest

from adserve.engine import interpreter, straight
from adserve.engine.builder import PRIMS, Builder, op
from adserve.engine.deadline import Deadline, Stopped
from adserve.engine.errors import EngineError
from adserve.engine.ir import Graph, Lit


@contextlib.contextmanager
def plain():
    with mock.patch.object(straight, "COMPILE_AFTER", None), mock.patch.object(interpreter, "RANK_FITTED", False), \
            mock.patch.object(interpreter, "_PROGRAMS", type(interpreter._PROGRAMS)()):
        yield


@contextlib.contextmanager
def fast():
    """The fast paths, compiling every program at its first run (so the compiled code runs nearly always)."""
    with mock.patch.object(straight, "COMPILE_AFTER", 1), mock.patch.object(interpreter, "_PROGRAMS",
                                                                            type(interpreter._PROGRAMS)()):
        yield


class Countdown(Deadline):
    """A deadline that stops at its n-th read of `stopped`: the same check in both runs."""

    def __init__(self, reads):
        self._left = reads
        super().__init__(None)

    @property
    def stopped(self):
        self._left -= 1
        return self._left < 0 or self._stopped

    @stopped.setter
    def stopped(self, value):
        self._stopped = value


def _bits(a):
    return np.atleast_1d(np.asarray(a, dtype=np.float64)).view(np.int64)


def _run(g, args, deadline=None):
    try:
        return interpreter.run(g, args, deadline)
    except EngineError as err:
        return err


def _both(g, args, deadline=None):
    """(walked, compiled): the compiled run is the second (the first compiles)."""
    with plain():
        want = _run(g, args, deadline() if deadline else None)
    with fast():
        _run(g, args, deadline() if deadline else None)
        assert interpreter.program(g).fast[deadline is None]
        got = _run(g, args, deadline() if deadline else None)
    return got, want


def _same(got, want):
    if isinstance(want, Exception):
        assert type(got) is type(want) and got.code == want.code and got.message == want.message
        assert got.location == want.location and getattr(got, "progress", None) == getattr(want, "progress", None)
        return
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(_bits(a), _bits(b))


TWO = sorted(name for name, p in PRIMS.items() if p.extra.get("aligns"))


@pytest.mark.parametrize("name", TWO)
def test_element_wise_ops_beside_literals_of_lower_rank_answer_bit_for_bit(name):
    b = Builder()
    x, s = b.input((3, 4)), b.input(())
    row = Lit((4,), (0.5, -1.5, 2.0, -0.0))
    outs = [b.emit(name, [x, Lit.scalar(0.75)]), b.emit(name, [Lit.scalar(-2.5), x]), b.emit(name, [row, x]),
            b.emit(name, [x, s]), b.emit(name, [s, Lit.scalar(3.0)])]
    if name != "pow":  # the builder's x ** literal reads the literal's one value (a row of them: no language makes)
        outs.append(b.emit(name, [x, row]))
    g = b.build(outs)
    rng = np.random.default_rng(11)
    args = [rng.uniform(-3, 3, (2, 3, 4)), np.array([0.5, -2.0])]
    args[0][0, 0, :2] = [0.0, np.nan]
    _same(*_both(g, args))


def _program():
    b = Builder()
    x, i = b.input((4,)), b.input(())
    y = op.dyn_slice(x * 2.0, i, axis=0, size=None)
    return b.build([y + 1.0, x, y * y, Lit.scalar(4.0), op.slice(x, index=((3, 2, -1),)) - y])


@pytest.mark.parametrize("index", [1.0, 9.0, 2.5])
def test_a_compiled_program_answers_and_fails_as_the_walk(index):
    got, want = _both(_program(), [np.arange(8.0).reshape(2, 4), np.array([index])])
    if isinstance(want, Exception):
        assert want.code == "index_out_of_range"
    _same(got, want)


@pytest.mark.parametrize("reads", range(6))
def test_a_compiled_program_stops_where_the_walk_does(reads):
    g = _program()
    got, want = _both(g, [np.arange(8.0).reshape(2, 4), np.array([1.0])], lambda: Countdown(reads))
    if reads < len(g.eqns):  # a read before each equation
        assert isinstance(want, Stopped) and want.progress == [("plan", reads, len(g.eqns))]
    else:
        assert not isinstance(want, Exception)
    _same(got, want)


def test_a_graph_listing_an_input_twice_reads_the_last_argument_for_it():
    b = Builder()
    x = b.input(())
    g = b.build([x * 2.0 + 1.0])
    twice = Graph((g.inputs[0], g.inputs[0]), g.eqns, g.outputs)
    got, want = _both(twice, [np.array([1.0]), np.array([5.0])])
    assert want[0].tolist() == [11.0]
    _same(got, want)
    with fast():
        interpreter.run(twice, [np.array([1.0]), np.array([5.0])])
        with pytest.raises(ValueError, match="a graph of 2 inputs given 1 arguments"):
            interpreter.run_program(interpreter.program(twice), [np.array([1.0])])


def test_a_program_is_compiled_after_it_has_run_a_few_times():
    b = Builder()
    x = b.input(())
    g = b.build([op.sin(x) * 3.0])
    with mock.patch.object(interpreter, "_PROGRAMS", type(interpreter._PROGRAMS)()):
        for _ in range(straight.COMPILE_AFTER - 1):
            interpreter.run(g, [np.array([1.0])])
        assert interpreter.program(g).fast == [None] * 4
        interpreter.run(g, [np.array([1.0])])
        assert interpreter.program(g).fast[True] and interpreter.program(g).fast[False] is None


@pytest.mark.parametrize("name", ["lt", "le", "gt", "ge", "eq", "ne"])
def test_a_condition_s_boolean_variant_tests_as_its_numbers_do(name):
    b = Builder()
    x = b.input((3,))
    y = op.slice(x, index=(1,)) * 2.0
    g = b.build([b.emit(name, [y, Lit.scalar(1.0)])])
    args = [np.array([[0.0, 0.5, 1.0], [0.0, 0.25, 1.0], [0.0, np.nan, 1.0], [0.0, 0.75, 1.0]])]
    with plain():
        want = interpreter.run(g, args)[0]
    with fast():
        tested = straight.compiled(interpreter.program(g), False, truth=True)
        got = tested(args, None)[0]
    assert got.dtype == bool and want.dtype == np.float64
    np.testing.assert_array_equal(got != 0, want != 0)
    np.testing.assert_array_equal([v.item() == 0 for v in got], [v.item() == 0 for v in want])


def test_only_a_comparison_that_is_the_one_output_and_read_by_no_other_step_answers_booleans():
    b = Builder()
    x = b.input(())
    c = op.lt(x, 1.0)
    for outs in ([c + 1.0], [c, x], [op.sin(x)]):
        with fast():
            assert straight.compiled(interpreter.program(b.build(outs)), False, truth=True) is None
    with fast():
        assert straight.compiled(interpreter.program(b.build([c])), False, truth=True) is not None
