"""Maxima and minima in numba's kernels (codegen/templates.ACCUMULATORS): one compare-and-select per element,
no branch on zeros, and still the interpreter's answer bit for bit: a NaN as it comes, min(-0.0, 0.0) = -0.0 and
max(-0.0, 0.0) = 0.0 in any order."""

import numpy as np
from engine_helpers import run
from test_codegen import compile_kernel, run_kernel

from adserve.engine import Engine, main_plan
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.python import PythonKernel

engine = Engine()
NZ, NAN, INF = -0.0, float("nan"), float("inf")
ROWS = {"inputs": [{"name": "X", "shape": [6, 5]}], "program": """
def f(X):
    return sum(min(X, axis=1) * 2.0) + sum(max(X * 1.0, axis=1))"""}


def test_the_accumulator_is_a_select():
    text = engine.source(engine.compile_definition(ROWS), "primal")
    assert "if u" not in text and "elif" not in text, text


def test_zeros_and_nans_as_the_interpreter():
    X = np.array([[NZ, 0.0, NZ, 0.0, 1.0], [0.0, NZ, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0],
                  [NAN, 1.0, -1.0, NZ, 0.0], [-INF, INF, 3.0, -3.0, 0.0], [NZ, NZ, NZ, NZ, NZ]])
    rows = {"inputs": [{"name": "X", "shape": [6, 5]}], "program": "def f(X):\n    return min(X, axis=1)"}
    for defn in (rows, {**rows, "program": rows["program"].replace("min", "max")}):
        g, _ = main_plan(engine.compile_definition(defn), frozenset({"value"}))
        want = np.asarray(run(g, [X[None]])[0])
        for got in (run_kernel(compile_kernel(g, "extremes", llvm=False), g, [X[None]])[0],
                    run_kernel(PythonKernel(kernel_module(g, "extremes", python=True), "extremes"), g, [X[None]])[0]):
            np.testing.assert_array_equal(got, want)
            assert (np.signbit(got) == np.signbit(want)).all(), (got, want)
