"""The Tesseract runtime API end to end: `Tesseract.from_url` and tesseract-jax's `apply_tesseract` against a
real server (see conftest.py), every answer compared with JAX (x64) on a JAX copy of the function; every bad
request a 4xx in the form a Tesseract's own server answers (`{"detail": ...}`), never a 500."""

import base64

import httpx
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
tesseract_core = pytest.importorskip("tesseract_core")
tesseract_jax = pytest.importorskip("tesseract_jax")
from pydantic import ValidationError  # noqa: E402  (after the skips: pydantic comes with tesseract-core)

DEFINITION = {"inputs": [{"name": "a", "shape": [2, 2]}, {"name": "s", "shape": []}],
              "expr": "stack([sin(a[0, 0]) * s**2, a[0, 1] * a[1, 0] * exp(s), log(a[1, 1]) + a[0, 0] * a[1, 1]])"}


def f_jax(a, s):
    return jnp.stack([jnp.sin(a[0, 0]) * s**2, a[0, 1] * a[1, 0] * jnp.exp(s), jnp.log(a[1, 1]) + a[0, 0] * a[1, 1]])


A = np.array([[0.7, -1.3], [0.4, 2.1]])
S = np.float64(0.6)
INPUTS = {"a": A, "s": S}


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def function_id(client):
    r = client.post("/v1/functions", json=DEFINITION)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def url(server, function_id):
    return f"{server.url}/tesseract/{function_id}"


@pytest.fixture(scope="module")
def tess(url):
    return tesseract_core.Tesseract.from_url(url)


def test_health_and_endpoints(tess):
    assert tess.health() == {"status": "ok"}
    assert {"apply", "abstract_eval", "jacobian", "jacobian_vector_product",
            "vector_jacobian_product"} <= set(tess.available_endpoints)


def test_openapi_names_inputs_and_the_output(tess):
    schemas = tess.openapi_schema["components"]["schemas"]
    assert list(schemas["Apply_InputSchema"]["properties"]) == ["a", "s"]
    assert list(schemas["Apply_OutputSchema"]["properties"]) == ["value"]
    assert schemas["ApplyInputSchema"]["differentiable_arrays"] == {"a": {"dtype": "float64", "shape": [2, 2]},
                                                                    "s": {"dtype": "float64", "shape": []}}
    assert schemas["ApplyOutputSchema"]["differentiable_arrays"] == {"value": {"dtype": "float64", "shape": [3]}}


def test_input_and_output_schemas(url):
    inputs = httpx.get(url + "/input_schema").json()
    assert inputs["required"] == ["a", "s"] and "$defs" in inputs
    assert list(httpx.get(url + "/output_schema").json()["properties"]) == ["value"]


def test_apply(tess):
    close(tess.apply(INPUTS)["value"], f_jax(A, S))


def test_abstract_eval(tess):
    avals = {"a": {"shape": [2, 2], "dtype": "float64"}, "s": {"shape": [], "dtype": "float64"}}
    assert tess.abstract_eval(avals) == {"value": {"shape": [3], "dtype": "float64"}}


def test_jacobian(tess):
    want = jax.jacrev(f_jax, argnums=(0, 1))(jnp.asarray(A), jnp.asarray(S))
    jac = tess.jacobian(INPUTS, ["a", "s"], ["value"])["value"]
    close(jac["a"], want[0])
    close(jac["s"], want[1])
    assert set(tess.jacobian(INPUTS, ["s"], ["value"])["value"]) == {"s"}


def test_jacobian_vector_product(tess):
    ta, ts = np.array([[0.5, -0.2], [1.5, 0.9]]), np.float64(-0.7)
    _, want = jax.jvp(f_jax, (jnp.asarray(A), jnp.asarray(S)), (jnp.asarray(ta), jnp.asarray(ts)))
    close(tess.jacobian_vector_product(INPUTS, ["a", "s"], ["value"], {"a": ta, "s": ts})["value"], want)
    _, only_s = jax.jvp(f_jax, (jnp.asarray(A), jnp.asarray(S)), (jnp.zeros((2, 2)), jnp.asarray(ts)))
    close(tess.jacobian_vector_product(INPUTS, ["s"], ["value"], {"s": ts})["value"], only_s)


def test_vector_jacobian_product(tess):
    ct = np.array([0.3, -1.1, 2.0])
    _, pullback = jax.vjp(f_jax, jnp.asarray(A), jnp.asarray(S))
    want = pullback(jnp.asarray(ct))
    got = tess.vector_jacobian_product(INPUTS, ["a", "s"], ["value"], {"value": ct})
    close(got["a"], want[0])
    close(got["s"], want[1])


def test_json_encoding_both_ways(url):
    body = {"inputs": {"a": {"object_type": "array", "shape": [2, 2], "dtype": "float64",
                             "data": {"buffer": A.tolist(), "encoding": "json"}},
                       "s": {"object_type": "array", "shape": [], "dtype": "float64",
                             "data": {"buffer": float(S), "encoding": "json"}}}}
    value = httpx.post(url + "/apply", json=body).json()["value"]
    assert value["data"]["encoding"] == "json" and value["shape"] == [3]
    close(value["data"]["buffer"], f_jax(A, S))
    b64 = httpx.post(url + "/apply", json=body, headers={"Accept": "application/json+base64"}).json()["value"]
    assert b64["data"]["encoding"] == "base64"
    close(np.frombuffer(base64.b64decode(b64["data"]["buffer"]), "<f8"), f_jax(A, S))
    plain = httpx.post(url + "/apply", json={"inputs": {"a": A.tolist(), "s": float(S)}}).json()["value"]
    close(plain["data"]["buffer"], f_jax(A, S))


def jax_and_tesseract(tess):
    """(a JAX function, the same function computed by the Tesseract): a scalar of both inputs."""
    weights = jnp.array([0.3, -1.1, 2.0])

    def through_jax(a, s):
        return jnp.dot(weights, jnp.tanh(f_jax(a, s))) * s

    def through_tesseract(a, s):
        return jnp.dot(weights, jnp.tanh(tesseract_jax.apply_tesseract(tess, {"a": a, "s": s})["value"])) * s

    return through_jax, through_tesseract


@pytest.mark.parametrize("jit", [False, True])
def test_jax_grad_through_apply_tesseract(tess, jit):
    want_f, got_f = jax_and_tesseract(tess)
    grad = jax.grad(got_f, argnums=(0, 1))
    got = (jax.jit(grad) if jit else grad)(jnp.asarray(A), jnp.asarray(S))
    want = jax.grad(want_f, argnums=(0, 1))(jnp.asarray(A), jnp.asarray(S))
    close(got[0], want[0])
    close(got[1], want[1])


@pytest.mark.parametrize("jit", [False, True])
def test_jax_jvp_through_apply_tesseract(tess, jit):
    want_f, got_f = jax_and_tesseract(tess)
    primals = (jnp.asarray(A), jnp.asarray(S))
    tangents = (jnp.asarray([[0.5, -0.2], [1.5, 0.9]]), jnp.asarray(-0.7))

    def jvp(f):
        return lambda p, t: jax.jvp(f, p, t)

    got = (jax.jit(jvp(got_f)) if jit else jvp(got_f))(primals, tangents)
    want = jvp(want_f)(primals, tangents)
    close(got[0], want[0])
    close(got[1], want[1])


def test_jit_of_apply_tesseract(tess):
    got = jax.jit(lambda a, s: tesseract_jax.apply_tesseract(tess, {"a": a, "s": s})["value"])(
        jnp.asarray(A), jnp.asarray(S))
    close(got, f_jax(A, S))


def test_a_wrong_input_raises_the_sdks_validation_error_with_adserves_message(tess):
    with pytest.raises(ValidationError, match=r"shape"):
        tess.apply({"a": np.ones(3), "s": S})
    with pytest.raises(ValidationError, match=r"'b' is not an input"):
        tess.apply({**INPUTS, "b": S})


def test_an_unknown_function_is_a_404_error_from_the_sdk(server):
    with pytest.raises(RuntimeError, match=r"Error 404 .*no-such-function"):
        tesseract_core.Tesseract.from_url(server.url + "/tesseract/no-such-function").apply(INPUTS)


def array(value, encoding="json", **overrides):
    a = np.asarray(value, dtype=np.float64)
    buffer = base64.b64encode(a.astype("<f8").tobytes()).decode() if encoding == "base64" else a.tolist()
    return {"object_type": "array", "shape": list(a.shape), "dtype": "float64",
            "data": {"buffer": buffer, "encoding": encoding}, **overrides}


def bad_requests():
    """(endpoint, body or raw bytes) that a Tesseract must refuse with a 4xx."""
    good = {"a": array(A), "s": array(S)}
    return [
        ("apply", b"{not json"),
        ("apply", b"[1, 2]"),
        ("apply", {}),
        ("apply", {"inputs": good, "extra": 1}),
        ("apply", {"inputs": "no"}),
        ("apply", {"inputs": {"a": array(A)}}),
        ("apply", {"inputs": {**good, "b": array(S)}}),
        ("apply", {"inputs": {**good, "a": array(np.ones(3))}}),
        ("apply", {"inputs": {**good, "a": array(A, shape=[4])}}),
        ("apply", {"inputs": {**good, "a": array(A, shape=[2, -2])}}),
        ("apply", {"inputs": {**good, "a": array(A, dtype="complex128")}}),
        ("apply", {"inputs": {**good, "a": array(A, object_type="tensor")}}),
        ("apply", {"inputs": {**good, "a": array(A, extra=1)}}),
        ("apply", {"inputs": {**good, "a": array(A, data={"buffer": "AAAA", "encoding": "base64"})}}),
        ("apply", {"inputs": {**good, "a": array(A, data={"buffer": "not base64!", "encoding": "base64"})}}),
        ("apply", {"inputs": {**good, "a": array(A, data={"buffer": "x.bin", "encoding": "binref"})}}),
        ("apply", {"inputs": {**good, "a": array(A, data={"buffer": [[1, "x"], [3, 4]], "encoding": "json"})}}),
        ("apply", {"inputs": {**good, "a": array(A, data={"buffer": A.tolist(), "encoding": "json",
                                                          "compression": "lz4"})}}),
        ("apply", {"inputs": {**good, "a": array(A, data="flat")}}),
        ("apply", {"inputs": {**good, "s": "x"}}),
        ("abstract_eval", {"inputs": {"a": {"shape": [3], "dtype": "float64"},
                                      "s": {"shape": [], "dtype": "float64"}}}),
        ("abstract_eval", {"inputs": {"a": {"shape": [2, 2], "dtype": "float64"}}}),
        ("abstract_eval", {"inputs": {"a": [2, 2], "s": {"shape": [], "dtype": "float64"}}}),
        ("jacobian", {"inputs": good, "jac_inputs": ["z"], "jac_outputs": ["value"]}),
        ("jacobian", {"inputs": good, "jac_inputs": [], "jac_outputs": ["value"]}),
        ("jacobian", {"inputs": good, "jac_inputs": ["a", "a"], "jac_outputs": ["value"]}),
        ("jacobian", {"inputs": good, "jac_inputs": ["a"], "jac_outputs": ["result"]}),
        ("jacobian", {"inputs": good, "jac_inputs": "a", "jac_outputs": ["value"]}),
        ("jacobian", {"inputs": good, "jac_inputs": ["a"]}),
        ("jacobian_vector_product", {"inputs": good, "jvp_inputs": ["a"], "jvp_outputs": ["value"],
                                     "tangent_vector": {"s": array(1.0)}}),
        ("jacobian_vector_product", {"inputs": good, "jvp_inputs": ["a"], "jvp_outputs": ["value"],
                                     "tangent_vector": {"a": array(np.ones(3))}}),
        ("jacobian_vector_product", {"inputs": good, "jvp_inputs": ["a"], "jvp_outputs": ["value"],
                                     "tangent_vector": []}),
        ("vector_jacobian_product", {"inputs": good, "vjp_inputs": ["a"], "vjp_outputs": ["value"],
                                     "cotangent_vector": {"value": array(np.ones(2))}}),
        ("vector_jacobian_product", {"inputs": good, "vjp_inputs": ["a"], "vjp_outputs": ["value"],
                                     "cotangent_vector": {"other": array(np.ones(3))}}),
        ("vector_jacobian_product", {"inputs": good, "vjp_inputs": ["q"], "vjp_outputs": ["value"],
                                     "cotangent_vector": {"value": array(np.ones(3))}}),
    ]


def test_every_bad_request_is_a_4xx_in_the_tesseract_form(url, server):
    with httpx.Client(timeout=60) as http:
        for endpoint, body in bad_requests():
            r = http.post(f"{url}/{endpoint}", **({"content": body} if isinstance(body, bytes) else {"json": body}))
            assert 400 <= r.status_code < 500, (endpoint, body, r.status_code, r.text)
            detail = r.json()["detail"]
            if r.status_code == 422:  # the list the SDK turns into pydantic's ValidationError
                assert detail and all({"type", "loc", "msg"} <= set(d) for d in detail), (endpoint, body, detail)
            else:
                assert isinstance(detail, str) and detail, (endpoint, body, detail)
        good = {"inputs": {"a": array(A), "s": array(S)}}
        r = http.post(f"{url}/apply", json=good, headers={"Accept": "application/json+binref"})
        assert r.status_code == 406 and "json+base64" in r.json()["detail"]
        r = http.post(f"{server.url}/tesseract/no-such-function/apply", json=good)
        assert r.status_code == 404 and "no-such-function" in r.json()["detail"]
        assert http.get(f"{server.url}/tesseract/no-such-function/openapi.json").status_code == 404
        r = http.post(f"{url}/no_such_endpoint", json=good)
        assert r.status_code == 404 and isinstance(r.json()["detail"], str)
        assert http.get(f"{url}/apply").status_code == 404
