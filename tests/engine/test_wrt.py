"""`wrt`: derivatives for some inputs only, the rest held constant (JAX's argnums)."""

import numpy as np
import pytest

from adserve.engine import Engine
from adserve.engine.errors import EvaluationError

engine = Engine()

QUAD = {"inputs": [{"name": "x", "shape": [3]}, {"name": "A", "shape": [3, 3]}], "expr": "dot(x, A @ x)"}
A = np.arange(9.0).reshape(3, 3)
X = np.array([1.0, -2.0, 0.5])


def test_derivatives_only_for_wrt():
    fn = engine.compile_definition(QUAD)
    v = np.array([0.3, 1.0, -1.0])
    r = engine.evaluate(fn, {"x": X, "A": A}, ["gradient", "hvp", "hessian", "jvp", "jacobian", "vjp"],
                     tangent={"x": v}, cotangent=np.array(2.0), wrt=["x"])
    for kind in ("gradient", "hvp", "hessian", "jacobian", "vjp"):
        assert list(r[kind]) == ["x"], kind
    np.testing.assert_allclose(r["gradient"]["x"], (A + A.T) @ X)
    np.testing.assert_allclose(r["hvp"]["x"], (A + A.T) @ v)
    np.testing.assert_allclose(r["hessian"]["x"]["x"], A + A.T)
    np.testing.assert_allclose(r["jvp"], X @ (A + A.T) @ v)
    np.testing.assert_allclose(r["vjp"]["x"], 2.0 * (A + A.T) @ X)


def test_wrt_the_other_input():
    fn = engine.compile_definition(QUAD)
    r = engine.evaluate(fn, {"x": X, "A": A}, ["gradient"], wrt=["A"])
    np.testing.assert_allclose(r["gradient"]["A"], np.outer(X, X))


@pytest.mark.parametrize("wrt, words", [(["z"], "not an input"), ([], "non-empty"), ("x", "non-empty"),
                                        (["x", "x"], "twice")])
def test_bad_wrt_is_refused_with_a_reason(wrt, words):
    fn = engine.compile_definition(QUAD)
    with pytest.raises(EvaluationError, match=words):
        engine.evaluate(fn, {"x": X, "A": A}, ["gradient"], wrt=wrt)


def test_tangent_only_for_wrt_inputs():
    fn = engine.compile_definition(QUAD)
    with pytest.raises(EvaluationError, match="not in 'wrt'"):
        engine.evaluate(fn, {"x": X, "A": A}, ["jvp"], tangent={"x": X, "A": A}, wrt=["x"])


def test_wrt_over_rest(client):
    body = {"function": QUAD, "inputs": {"x": X.tolist(), "A": A.tolist()}, "compute": ["gradient"], "wrt": ["x"]}
    r = client.post("/v1/evaluate", json=body)
    assert r.status_code == 200, r.text
    assert list(r.json()["gradient"]) == ["x"]
    full = client.post("/v1/evaluate", json={**body, "wrt": None}).json()
    assert sorted(full["gradient"]) == ["A", "x"] and not full["cached"]
    bad = client.post("/v1/evaluate", json={**body, "wrt": "x"})
    assert bad.status_code == 422 and "wrt" in bad.json()["error"]["message"]
