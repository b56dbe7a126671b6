"""The interpreter's fast paths for a `while` loop answer exactly what the plain ones do.

Three fast paths: programs run often become straight-line Python (straight.py; a condition ending in a
comparison, a variant answering booleans), steps are fitted when a Program is made (interpreter.RANK_FITTED:
element-wise ones to their arguments' ranks, slices to their index), and a while loop runs lean while every
point of its batch runs (whileloop.every_point). The reference turns all three off: each
program walked step by step, every while run by the masked loop from its first iteration. Compared bit for
bit: values and every derivative (single points, batches whose points stop at different iterations, tapes
kept every k-th iteration), the while_limit and fixed-point errors with their iteration counts and line, a
stop at a deadline (made to stop at the same check in both: a deadline that stops after n reads) with the
message saying how far it got. Compiled programs on their own: test_straight.py.

The reference is the masked loop with one fix: it wrote each new carry back in place, one after another, so
a carry given another's old array (a swap) or a view of it read the already updated one; it now takes new
arrays while every point runs, as the lean loop does (tested against Python below).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest

from adserve.engine import Engine, Limits, control, interpreter, straight, whileloop, whiles
from adserve.engine.codegen import while_kernel
from adserve.engine.deadline import Deadline, Stopped
from adserve.engine.errors import EngineError, EvaluationError
from test_counted_while import WHILE as SCALAR
from test_straight import Countdown, fast
from test_straight import plain as straight_plain

ALL = ["value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian"]
ARRAY = """
def f(x, r):
    y = x
    z = r * 0.5
    while y[0] < 40.0 + r:
        y = y * 1.05 + 0.1 * sin(y) + z
        z = z * 0.99
    return sum(y * y) + z
"""
# a body whose new carries are not all arrays of their own of the carries' shape: a view (y), a literal (d),
# one array for two carries (w and v)
ODD = """
def f(x, r):
    y = x
    w = x * 2.0
    v = w
    c = 0.0
    d = r
    while c < 12.0 + r:
        y = w[::-1]
        w = y * 0.5 + c * v
        v = w
        c = c + 1.0
        d = 3.0
    return sum(y * w + v) + c * d
"""
NEVER = "def f(x):\n    y = x\n    while y[0] > -1.0:\n        y = y + 1.000000001\n    return sum(y)\n"
STUCK = "def f(x):\n    y = x\n    while y[0] > -1.0:\n        y = minimum(y + 1.0, 7.0)\n    return sum(y)\n"


@contextlib.contextmanager
def plain():
    """The reference: no fast path at all (programs made anew, so none is fitted or compiled)."""
    def masked_from_the_start(consts, carry, B, rows, *rest):
        return "some", carry, 0, while_kernel.ESCALATE_AFTER

    with straight_plain(), mock.patch.object(whiles, "every_point", masked_from_the_start):
        yield


def stride(k):
    return [mock.patch.object(m, "checkpoint_every", lambda max_iter, elements: k) for m in (whiles, control)]


def _inputs(n, batch, rng):
    if n == 1:
        x = {"x": np.array([0.5, 1.5, 2.9]), "r": np.array([0.9, 1.2, 0.7])} if batch else {"x": 0.5, "r": 0.9}
    else:
        lead = (3,) if batch else ()
        x = {"x": rng.uniform(0.5, 3.0, (*lead, n)), "r": np.array([0.9, 1.2, 0.7])[:3 if batch else 1].reshape(lead)}
    return x


def _evaluate(program, n, batch, k, mode, limits=None, deadline=None, compute=ALL):
    rng = np.random.default_rng(5)
    inputs = _inputs(n, batch, rng)
    with contextlib.ExitStack() as stack:
        for p in [*stride(k), mode()]:
            stack.enter_context(p)
        eng = Engine(limits=limits) if limits else Engine()
        fn = eng.compile_definition({"inputs": [{"name": "x", "shape": [] if n == 1 else [n]},
                                                {"name": "r", "shape": []}], "program": program})
        lead = (3,) if batch else ()
        t = {name: rng.standard_normal(np.shape(v)) for name, v in inputs.items()}
        cot = rng.standard_normal(lead)
        try:
            return eng.evaluate(fn, inputs, compute, tangent=t, cotangent=cot, batch=batch, deadline=deadline)
        except EngineError as err:
            return err


def _bits(a):
    return np.atleast_1d(np.asarray(a, dtype=np.float64)).view(np.int64)


def _same(got, want):
    if isinstance(want, Exception):
        assert type(got) is type(want) and got.code == want.code and got.message == want.message
        assert got.location == want.location
        return
    assert got.keys() == want.keys()
    for key in got:
        if isinstance(got[key], dict):
            _same(got[key], want[key])
        else:
            np.testing.assert_array_equal(_bits(got[key]), _bits(want[key]), err_msg=key)


@pytest.fixture(scope="module", autouse=True)
def generator():
    while_kernel.generator_loaded(None)  # escalation to generated code looks the same in both runs


@pytest.mark.parametrize("program,n", [(SCALAR, 1), (ARRAY, 5), (ODD, 4)], ids=["scalar", "array", "odd"])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("k", [1, 4])
def test_every_derivative_is_bit_for_bit_the_plain_loops(program, n, batch, k):
    limits = Limits().updated(max_while_iterations=3000)  # the tapes' bound: within the memory limit
    want = _evaluate(program, n, batch, k, plain, limits)
    assert not isinstance(want, Exception), want
    _same(_evaluate(program, n, batch, k, fast, limits), want)


def test_a_long_scalar_loop_is_handed_to_generated_code_at_the_same_iteration():
    program = SCALAR.replace("3.0 + r", "3e4 + r").replace("1.1", "1.002")
    for batch in (False, True):
        want = _evaluate(program, 1, batch, 7, plain, compute=["value", "gradient"])
        _same(_evaluate(program, 1, batch, 7, fast, compute=["value", "gradient"]), want)


@pytest.mark.parametrize("program", [NEVER, STUCK], ids=["never", "stuck"])
@pytest.mark.parametrize("compute", [["value"], ["value", "gradient"]])
@pytest.mark.parametrize("batch", [False, True])
def test_a_loop_that_never_ends_is_the_same_while_limit_naming_its_line(program, compute, batch):
    limits = Limits().updated(max_while_iterations=500)
    defn = program.replace("def f(x):", "def f(x, r):")
    want = _evaluate(defn, 6, batch, 1, plain, limits, compute=compute)
    got = _evaluate(defn, 6, batch, 1, fast, limits, compute=compute)
    assert isinstance(want, EvaluationError) and want.code == "while_limit" and "line 3" in want.message
    assert ("stopped changing" in want.message) == (program is STUCK)
    _same(got, want)


def test_the_hostile_loop_at_the_default_limit_is_while_limit_naming_its_line():
    eng = Engine()
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": [1000]}], "program": NEVER})
    for compute in (["value"], ["value", "gradient"]):
        with pytest.raises(EvaluationError) as err:
            eng.evaluate(fn, {"x": np.zeros(1000)}, compute)
        assert err.value.code == "while_limit" and "line 3" in err.value.message
        assert "100,000 iterations" in err.value.message


@pytest.mark.parametrize("reads", [7, 2_000, 13_579])
@pytest.mark.parametrize("compute", [["value"], ["value", "gradient"]])
def test_a_stop_at_a_deadline_is_the_same_stop(reads, compute):
    defn = NEVER.replace("def f(x):", "def f(x, r):")
    want = _evaluate(defn, 6, True, 1, plain, deadline=Countdown(reads), compute=compute)
    got = _evaluate(defn, 6, True, 1, fast, deadline=Countdown(reads), compute=compute)
    assert isinstance(want, Stopped) and "loop iterations" in want.message and "line 3" in want.message
    assert got.progress == want.progress
    _same(got, want)


def test_a_real_deadline_stops_the_hostile_loop():
    eng = Engine()
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": [1000]}], "program": NEVER})
    with Deadline(None) as d:
        d.cancel("cancelled", "was cancelled")
        with pytest.raises(Stopped):
            eng.evaluate(fn, {"x": np.zeros(1000)}, ["value"], deadline=d)
    stop_after = Countdown(50_000)  # the loop would reach its limit (100,000 iterations) only much later
    with pytest.raises(Stopped) as err:
        eng.evaluate(fn, {"x": np.zeros(1000)}, ["value", "gradient"], deadline=stop_after)
    assert "line 3" in err.value.message and "loop iterations" in err.value.message


def test_a_carry_that_is_not_an_array_of_its_own_is_copied():
    """The lean loop keeps the body's arrays only where copying them would change nothing."""
    seen = []
    real = whileloop.every_point

    def spy(consts, carry, *rest):
        out = real(consts, carry, *rest)
        seen.append(out)
        return out
    with mock.patch.object(whiles, "every_point", spy):
        got = _evaluate(ODD, 4, False, 1, fast, compute=["value"])
    assert seen and seen[0][0] == "done"
    assert all(c.base is None and c.flags.writeable and c.flags.c_contiguous for c in seen[0][1])
    _same(got, _evaluate(ODD, 4, False, 1, plain, compute=["value"]))


SWAP = """
def f(x, y):
    a = x
    b = y
    k = 0.5
    while k < 3.0 * x:
        t = a
        a = b
        b = t
        k = k + 1.0
    return a * 10.0 + b
"""


@pytest.mark.parametrize("mode", [plain, fast])
def test_carries_that_swap_or_view_each_other_answer_as_python_does(mode):
    """A body may give one carry's old array as another's new value (a swap) or a view of it (`w[::-1]`):
    each new value is the old carries', never one already updated (the loop wrote carries back in place,
    one after the other, and answered 22 here before)."""
    with mode():
        eng = Engine()
        fn = eng.compile_definition({"inputs": [{"name": "x", "shape": []}, {"name": "y", "shape": []}],
                                     "program": SWAP})
        assert eng.evaluate(fn, {"x": 1.0, "y": 2.0})["value"] == 21.0
        got = eng.evaluate(fn, {"x": [1.0, 2.0], "y": [2.0, 3.0]}, batch=True)["value"]
    np.testing.assert_array_equal(got, [21.0, 23.0])  # 3 and 6 swaps
    rng = np.random.default_rng(5)
    x, r = rng.uniform(0.5, 3.0, 4), 0.9
    y, w, c, d = x, x * 2.0, 0.0, r
    v = w
    while c < 12.0 + r:
        y = w[::-1]
        w = y * 0.5 + c * v
        v = w
        c, d = c + 1.0, 3.0
    want = _evaluate(ODD, 4, False, 1, mode, compute=["value"])["value"]
    np.testing.assert_allclose(want, np.sum(y * w + v) + c * d, rtol=1e-13)
