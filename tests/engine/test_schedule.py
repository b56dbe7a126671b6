"""The order the code writers take a plan's equations in (codegen/schedule.py): a reduction of an element-wise
value joins the loop computing that value, and an equation that reads nothing of an open run of element-wise
equations goes ahead of it, so big intermediates are computed and used in one loop, not stored and read back."""

import re

import numpy as np
from test_codegen import B, assert_same

from adserve.engine import Engine, main_plan

engine = Engine()  # the interpreter; sources are numba's

# GradBench's k-means cost, small: reverse mode's column sum of the nearest-centre mask comes after the
# contraction that reads the same cotangent
KMEANS = {"inputs": [{"name": "P", "shape": [30, 3]}, {"name": "C", "shape": [5, 3]}],
          "expr": "sum(min(reshape(sum(P * P, axis=1), (30, 1)) + reshape(sum(C * C, axis=1), (1, 5)) "
                  "- 2 * dot(P, C.T), axis=1))"}
# a small element-wise equation between the two halves of a run over X's shape (GradBench gmm's alpha + sum(q))
BETWEEN = {"inputs": [{"name": "X", "shape": [5, 7]}, {"name": "a", "shape": [5]}], "program": """
def f(X, a):
    Y = X * 2.0 + X
    c = a + 1.0
    return sum(c * sum(Y * Y, axis=1))"""}
# a sum standing alone: its loop reads a stored array
SUM_LOOP = re.compile(r"^ +v\d+\[0, i\d+\] \+= v\d+\[i\d+, i\d+\]", re.MULTILINE)


def test_a_column_sum_accumulates_in_the_loop_of_what_it_sums():
    fn = engine.compile_definition(KMEANS)
    text = engine.source(fn, "gradient")
    assert not SUM_LOOP.search(text), text
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    rng = np.random.default_rng(5)
    assert_same(graph, [rng.random((B, 30, 3)), rng.random((B, 5, 3))], "k-means gradient")


def test_a_small_equation_does_not_split_a_run():
    fn = engine.compile_definition(BETWEEN)
    text = engine.source(fn, "primal")
    assert "np.empty((5, 7))" not in text and "# fused: mul, add, mul, reduce_sum" in text, text
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    rng = np.random.default_rng(6)
    assert_same(graph, [rng.standard_normal((B, 5, 7)), rng.standard_normal((B, 5))], "between")
