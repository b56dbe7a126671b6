"""Integer powers with an array exponent (powers.py): x ** n for n known to hold small integers is built as
multiplications by squaring and selects, not libm's pow, with the literal exponents' products."""

import numpy as np
import pytest

from adserve.engine import Engine


def _prims(fn):
    return [e.prim for e in fn.graph.eqns]


def _fn(expr, shape=(5, 1)):
    return Engine().compile_definition({"inputs": [{"name": "x", "shape": list(shape)}], "expr": expr})


POWERS = "x ** reshape(arange(40), (1, 40))"  # GradBench llsq's t ** j


def test_arange_exponent_has_no_pow():
    assert "pow" not in _prims(_fn(POWERS))
    assert "pow" not in _prims(_fn("x ** (reshape(arange(6), (1, 6)) + 2)"))  # integer arithmetic keeps it known


@pytest.mark.parametrize("expr", ["x ** reshape(arange(6) * 0.5, (1, 6))",  # halves: pow
                                  "x ** reshape(arange(6) - 1, (1, 6))",    # a negative power: pow
                                  "x ** reshape(arange(300), (1, 300))"])   # past MAX_ARRAY_POWER: pow
def test_other_exponents_keep_pow(expr):
    assert "pow" in _prims(_fn(expr))


def test_values_are_the_literal_powers_bit_for_bit():
    """Column j is x ** j as the builder writes a literal j (the same products in the same order), and within
    a few ulps of libm's pow."""
    x = np.array([[0.3], [-1.7], [2.5], [0.0], [-0.0]])
    got = Engine().evaluate(_fn(POWERS), {"x": x}, ["value"])["value"]
    for j in range(40):
        lit = Engine().evaluate(_fn(f"x ** {j}.0" if j <= 32 else f"x ** reshape(arange({j + 1}), (1, {j + 1}))"),
                                {"x": x}, ["value"])["value"]
        np.testing.assert_array_equal(got[:, j], lit[:, j if j > 32 else 0])
    np.testing.assert_allclose(got, np.power(x, np.arange(40.0)), rtol=1e-14, atol=0)
    assert np.signbit(got[4, 1]) and not np.signbit(got[4, 2])  # (-0.0) ** 1 is -0.0, ** 2 is +0.0


def test_special_values_as_pow():
    x = np.array([[np.nan], [np.inf], [-np.inf], [0.0]])
    got = Engine().evaluate(_fn("x ** reshape(arange(4), (1, 4))", (4, 1)), {"x": x}, ["value"])["value"]
    np.testing.assert_array_equal(got, np.power(x, np.arange(4.0)))


def test_gradient_through_the_selects():
    x = np.array([[0.3], [-1.7], [2.5]])
    fn = _fn("sum(x ** reshape(arange(9), (1, 9)))", (3, 1))
    g = Engine().evaluate(fn, {"x": x}, ["gradient"])["gradient"]["x"]
    want = sum(j * x ** (j - 1) for j in range(1, 9))
    np.testing.assert_allclose(g, want, rtol=1e-13)
