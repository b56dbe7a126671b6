"""UM-Bridge 1.0 end to end: the real `umbridge` client against a real server (see conftest.py), every
answer compared with JAX (x64) on a JAX copy of the function; every bad request a 4xx in UM-Bridge's form."""

import httpx
import numpy as np
import pytest

umbridge = pytest.importorskip("umbridge")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

# two inputs (a matrix and a scalar), a vector output: flattening, order and the weighted Hessian all show
DEFINITION = {"inputs": [{"name": "a", "shape": [2, 2]}, {"name": "s", "shape": []}],
              "expr": "stack([sin(a[0, 0]) * s**2, a[0, 1] * a[1, 0] * exp(s), log(a[1, 1]) + a[0, 0] * a[1, 1]])"}


def f_jax(a, s):
    return jnp.stack([jnp.sin(a[0, 0]) * s**2, a[0, 1] * a[1, 0] * jnp.exp(s), jnp.log(a[1, 1]) + a[0, 0] * a[1, 1]])


A = np.array([[0.7, -1.3], [0.4, 2.1]])
S = 0.6
PARAMS = [A.ravel().tolist(), [S]]
SENS = [0.3, -1.1, 2.0]


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float).ravel(),
                               rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def base(server):
    return server.url + "/umbridge"


@pytest.fixture(scope="module")
def function_id(client):
    r = client.post("/v1/functions", json=DEFINITION)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def model(base, function_id):
    return umbridge.HTTPModel(base, function_id)


def test_info_lists_the_function(base, function_id):
    assert umbridge.supported_models(base).count(function_id) == 1


def test_sizes_and_support(model):
    assert model.get_input_sizes() == [4, 1]
    assert model.get_output_sizes() == [3]
    assert model.supports_evaluate() and model.supports_gradient()
    assert model.supports_apply_jacobian() and model.supports_apply_hessian()


def test_evaluate(model):
    (out,) = model(PARAMS)
    close(out, f_jax(A, S))
    (out,) = model(PARAMS, {})  # an empty config is no config
    close(out, f_jax(A, S))


@pytest.mark.parametrize("in_wrt", [0, 1])
def test_gradient_is_the_vjp_of_sens(model, in_wrt):
    _, pullback = jax.vjp(f_jax, jnp.asarray(A), jnp.asarray(S))
    close(model.gradient(0, in_wrt, PARAMS, SENS), pullback(jnp.asarray(SENS))[in_wrt])


@pytest.mark.parametrize("in_wrt", [0, 1])
def test_apply_jacobian_is_the_jvp(model, in_wrt):
    vec = [0.5, -0.2, 1.5, 0.9] if in_wrt == 0 else [-0.7]
    tangents = [jnp.zeros((2, 2)), jnp.zeros(())]
    tangents[in_wrt] = jnp.asarray(vec).reshape(tangents[in_wrt].shape)
    _, want = jax.jvp(f_jax, (jnp.asarray(A), jnp.asarray(S)), tuple(tangents))
    close(model.apply_jacobian(0, in_wrt, PARAMS, vec), want)


@pytest.mark.parametrize("in_wrt1, in_wrt2", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_apply_hessian_is_the_weighted_second_derivative(model, in_wrt1, in_wrt2):
    vecs = {0: [0.5, -0.2, 1.5, 0.9], 1: [-0.7]}
    shapes = {0: (2, 2), 1: ()}

    def weighted(a, s):
        return jnp.dot(jnp.asarray(SENS), f_jax(a, s))

    # d/d(in_wrt2) of the gradient for in_wrt1, along vec: forward over reverse in JAX too
    def grad_part(a, s):
        return jax.grad(weighted, argnums=in_wrt1)(a, s)

    tangents = [jnp.zeros((2, 2)), jnp.zeros(())]
    tangents[in_wrt2] = jnp.asarray(vecs[in_wrt2]).reshape(shapes[in_wrt2])
    _, want = jax.jvp(grad_part, (jnp.asarray(A), jnp.asarray(S)), tuple(tangents))
    close(model.apply_hessian(0, in_wrt1, in_wrt2, PARAMS, SENS, vecs[in_wrt2]), want)


def test_a_scalar_function_by_umbridge(client, base):
    r = client.post("/v1/functions", json={"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(x**3)"})
    m = umbridge.HTTPModel(base, r.json()["id"])
    assert m.get_output_sizes() == [1]
    x = [1.0, -2.0, 0.5]
    close(m([x])[0], [sum(v**3 for v in x)])
    close(m.apply_hessian(0, 0, 0, [x], [2.0], [1.0, 1.0, 1.0]), [2.0 * 6 * v for v in x])


def test_errors_raise_the_clients_exception_with_adserves_message(model, base):
    with pytest.raises(Exception, match=r"InvalidInput: .*input\[0\].*4 numbers"):
        model([[1.0, 2.0], [S]])
    with pytest.raises(Exception, match=r"InvalidInput: .*inWrt"):
        model.gradient(0, 2, PARAMS, SENS)
    with pytest.raises(Exception, match=r"InvalidInput: .*sens.*3 numbers"):
        model.gradient(0, 0, PARAMS, [1.0])
    with pytest.raises(Exception, match=r"InvalidInput: .*config"):
        model(PARAMS, {"fidelity": 2})
    with pytest.raises(Exception, match="not supported by server"):
        umbridge.HTTPModel(base, "no-such-model")


def bad_requests(function_id):
    """(path, body) pairs that a UM-Bridge server must refuse; body None sends no JSON at all."""
    good = {"name": function_id, "input": PARAMS}
    return [
        ("/Evaluate", {"name": "no-such-model", "input": PARAMS}),
        ("/InputSizes", {"name": "no-such-model"}),
        ("/OutputSizes", {"name": "no-such-model"}),
        ("/ModelInfo", {"name": "no-such-model"}),
        ("/ModelInfo", {}),
        ("/Evaluate", {"name": 7, "input": PARAMS}),
        ("/Evaluate", {"name": function_id}),
        ("/Evaluate", {"name": function_id, "input": [A.ravel().tolist()]}),
        ("/Evaluate", {"name": function_id, "input": [A.ravel().tolist(), [S, S]]}),
        ("/Evaluate", {"name": function_id, "input": [A.tolist(), [S]]}),
        ("/Evaluate", {"name": function_id, "input": [["x", 1, 2, 3], [S]]}),
        ("/Evaluate", {"name": function_id, "input": [[1, 2, 3, 4], S]}),
        ("/Evaluate", {"name": function_id, "input": "no"}),
        ("/Evaluate", {**good, "config": {"x": 1}}),
        ("/Evaluate", {**good, "config": 3}),
        ("/Evaluate", [1, 2]),
        ("/Evaluate", None),
        ("/Gradient", {**good, "outWrt": 0, "inWrt": 5, "sens": SENS}),
        ("/Gradient", {**good, "outWrt": 0, "inWrt": -1, "sens": SENS}),
        ("/Gradient", {**good, "outWrt": 0, "inWrt": True, "sens": SENS}),
        ("/Gradient", {**good, "outWrt": 1, "inWrt": 0, "sens": SENS}),
        ("/Gradient", {**good, "outWrt": 0, "inWrt": 0}),
        ("/Gradient", {**good, "outWrt": 0, "inWrt": 0, "sens": [1.0, 2.0]}),
        ("/Gradient", {**good, "inWrt": 0, "sens": SENS}),
        ("/ApplyJacobian", {**good, "outWrt": 0, "inWrt": 1, "vec": [1.0, 2.0]}),
        ("/ApplyJacobian", {**good, "outWrt": 0, "inWrt": "a", "vec": [1.0]}),
        ("/ApplyJacobian", {**good, "outWrt": 0, "inWrt": 0, "vec": None}),
        ("/ApplyHessian", {**good, "outWrt": 0, "inWrt1": 0, "inWrt2": 3, "sens": SENS, "vec": [1.0]}),
        ("/ApplyHessian", {**good, "outWrt": 0, "inWrt1": 0, "inWrt2": 1, "sens": SENS, "vec": [1.0, 2.0]}),
        ("/ApplyHessian", {**good, "outWrt": 0, "inWrt1": 0, "inWrt2": 1, "sens": [1.0], "vec": [1.0]}),
        ("/ApplyHessian", {**good, "outWrt": 0, "inWrt1": 9, "inWrt2": 1, "sens": SENS, "vec": [1.0]}),
        ("/NoSuchCall", good),
    ]


def test_every_bad_request_is_a_4xx_in_umbridge_form(base, function_id):
    with httpx.Client(timeout=60) as http:
        for path, body in bad_requests(function_id):
            r = http.post(base + path, content=b"{not json" if body is None else None,
                          json=None if body is None else body)
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
            err = r.json()["error"]
            assert err["type"] in ("ModelNotFound", "InvalidInput", "UnsupportedFeature"), (path, body, err)
            assert isinstance(err["message"], str) and len(err["message"]) > 10, (path, body, err)
        assert http.get(base + "/Evaluate").json()["error"]["type"] == "UnsupportedFeature"


def test_unknown_model_is_model_not_found(base):
    r = httpx.post(base + "/Evaluate", json={"name": "no-such-model", "input": PARAMS}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "ModelNotFound"
    assert "no-such-model" in r.json()["error"]["message"]


def test_r_sends_an_empty_config_as_a_list(base, function_id):
    r = httpx.post(base + "/Evaluate", json={"name": function_id, "input": PARAMS, "config": []}, timeout=60)
    assert r.status_code == 200, r.text
    close(r.json()["output"][0], f_jax(A, S))
