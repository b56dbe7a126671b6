"""Integer data: definition validation (dtype, unknown keys), int64 inputs, gathers and scatters.

Derivatives are checked against JAX (x64) at 1e-10; every refusal is a 422 naming where it went wrong.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from adserve.engine import Engine
from adserve.engine.errors import EvaluationError
from adserve.server.service import Service, ServiceError
from adserve.server.status import http

jax.config.update("jax_enable_x64", True)
TOL = dict(rtol=1e-10, atol=1e-10)


def refused(service, definition, body=None):
    """The ServiceError registering `definition` (and evaluating `body` on it, if given) raises."""
    with pytest.raises(ServiceError) as e:
        fid = service.register(definition)[0]["id"]
        if body is not None:
            service.evaluate(fid, body)
    return e.value


@pytest.fixture(scope="module")
def service():
    s = Service(Engine())
    yield s
    s.close()


# -- (1) definition validation ------------------------------------------------------------------------
@pytest.mark.parametrize("definition, code, words", [
    ({"inputs": [{"name": "x", "shape": []}], "expr": "x", "colour": "red"}, "unknown_key", "'colour'"),
    ({"inputs": [{"name": "x", "shape": [], "kind": 1}], "expr": "x"}, "unknown_key", "inputs[0]"),
    ({"inputs": [{"name": "x", "shape": [], "dtype": "float32"}], "expr": "x"}, "bad_dtype", "inputs[0].dtype"),
    ({"inputs": [{"name": "x", "shape": [], "dtype": 64}], "expr": "x"}, "bad_dtype", "int64"),
])
def test_bad_definitions_are_422_naming_the_key_and_where(service, definition, code, words):
    e = refused(service, definition)
    assert http(e) == 422 and e.code == code and words in e.message


def test_name_entry_and_dtypes_are_accepted_and_kept(service):
    d = {"name": "gather-demo", "inputs": [{"name": "x", "shape": [3]}, {"name": "i", "shape": [], "dtype": "int64"}],
         "expr": "sum(x) * i"}
    info, _ = service.register(d)
    assert info["inputs"][1] == {"name": "i", "shape": [], "dtype": "int64"}
    assert info["inputs"][0] == {"name": "x", "shape": [3]}
    again, _ = service.register(service.graph(info["id"]))
    assert again["id"] == info["id"]
    as_float = {**d, "inputs": [d["inputs"][0], {"name": "i", "shape": []}]}
    assert service.register(as_float)[0]["id"] != info["id"]  # the dtype is part of the function


# -- (2) int64 inputs and gathers, against JAX --------------------------------------------------------------
GATHERS = {"inputs": [{"name": "x", "shape": [5, 3]}, {"name": "w", "shape": [5]},
                      {"name": "idx", "shape": [4], "dtype": "int64"},
                      {"name": "pairs", "shape": [4, 2], "dtype": "int64"}],
           "program": """
def f(x, w, idx, pairs):
    s = 0.0
    for k in range(4):
        s = s + w[idx[k]] * x[idx[k], 1] * x[pairs[k, 0], 0] - sin(x[pairs[k, 1], 2])
    return s + sum(take(x, idx, axis=0) ** 2) + sum(take(x, pairs[1], axis=1) * w[pairs[1, 1]])
"""}


def j_gathers(x, w, idx, pairs):
    s = 0.0
    for k in range(4):
        s = s + w[idx[k]] * x[idx[k], 1] * x[pairs[k, 0], 0] - jnp.sin(x[pairs[k, 1], 2])
    return s + jnp.sum(jnp.take(x, idx, axis=0) ** 2) + jnp.sum(jnp.take(x, pairs[1], axis=1) * w[pairs[1, 1]])


VECTOR = {"inputs": [{"name": "x", "shape": [5, 3]}, {"name": "idx", "shape": [4], "dtype": "int64"}],
          "expr": "x[idx, 1] * x[idx, 2] + sin(take(x, idx, axis=0)[:, 0])"}


def j_vector(x, idx):
    return x[idx, 1] * x[idx, 2] + jnp.sin(jnp.take(x, idx, axis=0)[:, 0])


def b64_int(a):
    a = np.asarray(a, dtype="<i8")
    return {"dtype": "int64", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


@pytest.fixture()
def data():
    rng = np.random.default_rng(7)
    return {"x": rng.standard_normal((5, 3)), "w": rng.standard_normal(5),
            "idx": np.array([4, 0, 4, 2]), "pairs": np.array([[1, 3], [0, 0], [4, 2], [3, 3]])}


def test_gathers_value_and_every_derivative_match_jax(service, data):
    fid = service.register(GATHERS)[0]["id"]
    rng = np.random.default_rng(1)
    t = {"x": rng.standard_normal((5, 3)), "w": rng.standard_normal(5)}
    body = {"inputs": {"x": data["x"].tolist(), "w": data["w"].tolist(), "idx": data["idx"].tolist(),
                       "pairs": b64_int(data["pairs"])},
            "compute": ["value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian"],
            "tangent": {k: v.tolist() for k, v in t.items()}, "cotangent": 1.5}
    r = service.evaluate(fid, body)
    ints = (jnp.asarray(data["idx"]), jnp.asarray(data["pairs"]))

    def f(x, w):
        return j_gathers(x, w, *ints)

    x, w = jnp.asarray(data["x"]), jnp.asarray(data["w"])
    np.testing.assert_allclose(r["value"], f(x, w), **TOL)
    gx, gw = jax.grad(f, (0, 1))(x, w)
    assert set(r["gradient"]) == {"x", "w"}  # int64 inputs are never differentiated
    np.testing.assert_allclose(r["gradient"]["x"], gx, **TOL)
    np.testing.assert_allclose(r["gradient"]["w"], gw, **TOL)
    np.testing.assert_allclose(r["vjp"]["x"], 1.5 * gx, **TOL)
    np.testing.assert_allclose(r["jacobian"]["w"], gw, **TOL)
    _, jv = jax.jvp(f, (x, w), (t["x"], t["w"]))
    np.testing.assert_allclose(r["jvp"], jv, **TOL)
    _, hv = jax.jvp(jax.grad(f, (0, 1)), (x, w), (t["x"], t["w"]))
    np.testing.assert_allclose(r["hvp"]["x"], hv[0], **TOL)
    np.testing.assert_allclose(r["hvp"]["w"], hv[1], **TOL)
    h = jax.hessian(f, (0, 1))(x, w)
    np.testing.assert_allclose(r["hessian"]["x"]["w"], h[0][1], **TOL)
    assert set(r["hessian"]) == {"x", "w"}


def test_gather_jacobian_and_vjp_of_a_vector_output_match_jax(service, data):
    fid = service.register(VECTOR)[0]["id"]
    ct = np.arange(4.0) - 1.5
    r = service.evaluate(fid, {"inputs": {"x": data["x"].tolist(), "idx": data["idx"].tolist()},
                               "compute": ["value", "jacobian", "vjp"], "cotangent": ct.tolist()})
    idx, x = jnp.asarray(data["idx"]), jnp.asarray(data["x"])
    np.testing.assert_allclose(r["value"], j_vector(x, idx), **TOL)
    np.testing.assert_allclose(r["jacobian"]["x"], jax.jacobian(j_vector)(x, idx), **TOL)
    np.testing.assert_allclose(r["vjp"]["x"], jax.vjp(lambda x: j_vector(x, idx), x)[1](ct)[0], **TOL)


@pytest.mark.parametrize("bad", [[0, 5, 1, 1], [0, -1, 1, 1], [0, 1.5, 1, 1]])
def test_index_out_of_range_at_run_time_is_422_naming_the_line(service, data, bad):
    e = refused(service, VECTOR, {"inputs": {"x": data["x"].tolist(), "idx": bad}})
    if bad[1] == 1.5:  # not an integer: the int64 input itself is refused
        assert (http(e), e.code) == (422, "bad_integer") and "inputs.idx" in e.message
        return
    assert (http(e), e.code) == (422, "index_out_of_range")
    assert e.location == {"line": 1, "column": 1}


def test_huge_and_non_integer_int64_inputs_are_422_naming_the_input(service, data):
    for bad in ([0, 1, 2, 2 ** 62], b64_int([0, 1, 2, 2 ** 62])):
        e = refused(service, VECTOR, {"inputs": {"x": data["x"].tolist(), "idx": bad}})
        assert (http(e), e.code) == (422, "bad_integer") and "inputs.idx" in e.message


def test_int64_inputs_sent_as_integer_arrays_are_checked_as_floats_are(data):
    """In process, an int64 input may be an integer array (int64, int32, uint64: the plain path converts it; its
    check reads its extremes): the answer of the same values sent as floats; a value past 2**53 is refused."""
    from adserve.engine.evaluation import EvaluationError
    engine = Engine()
    fn = engine.compile_definition(VECTOR)
    want = engine.evaluate(fn, {"x": data["x"], "idx": data["idx"].astype(float)}, ["value", "jacobian"])
    for idx in (data["idx"].astype(np.int64), data["idx"].astype(np.int32), data["idx"].astype(np.uint64)):
        got = engine.evaluate(fn, {"x": data["x"], "idx": idx}, ["value", "jacobian"])
        np.testing.assert_array_equal(got["value"], want["value"])
        np.testing.assert_array_equal(got["jacobian"]["x"], want["jacobian"]["x"])
    for bad in (np.array([0, 1, 2, 2 ** 62]), np.array([0, 1, 2, -2 ** 62]),
                np.array([0, 1, 2, 2 ** 63 + 2], np.uint64), np.array([0, 1, 2, 2 ** 53 + 1], np.uint64)):
        with pytest.raises(EvaluationError) as e:
            engine.evaluate(fn, {"x": data["x"], "idx": bad})
        assert e.value.code == "bad_integer" and "inputs.idx" in str(e.value)
    # an int64 input beside a uint64 one: each checked as the integers it holds (together, as floats, 2**53 + 1
    # would round to 2**53)
    two = engine.compile_definition({"inputs": [{"name": "x", "shape": [5]},
                                                {"name": "i", "shape": [2], "dtype": "int64"},
                                                {"name": "j", "shape": [2], "dtype": "int64"}],
                                     "expr": "sum(x[i]) + sum(x[j])"})
    with pytest.raises(EvaluationError) as e:
        engine.evaluate(two, {"x": data["w"], "i": np.array([0, 1]), "j": np.array([1, 2 ** 53 + 1], np.uint64)})
    assert e.value.code == "bad_integer" and "inputs.j" in str(e.value) and str(2 ** 53 + 1) in str(e.value)


def test_int64_arrays_take_the_engines_plain_path_and_are_checked_as_integers(data):
    """Engine.evaluate with int64 ndarrays for int64 inputs (ba's cam_idx, pt_idx): the same answer as their
    float64 values, batched or not; a value past 2**53 is refused as given (as a float it would round to 2**53
    and pass), a float64 array holding a non-integer too."""
    engine = Engine()
    fn = engine.compile_definition(VECTOR)
    want = engine.evaluate(fn, {"x": data["x"], "idx": data["idx"].astype(np.float64)})["value"]
    got = engine.evaluate(fn, {"x": data["x"], "idx": data["idx"].astype(np.int64)})["value"]
    np.testing.assert_array_equal(got, want)
    rows = engine.evaluate(fn, {"x": np.stack([data["x"]] * 2), "idx": np.stack([data["idx"].astype(np.int64)] * 2)},
                           batch=True)["value"]
    np.testing.assert_array_equal(rows, [want, want])
    for bad in (np.array([0, 1, 2, 2 ** 53 + 1], dtype=np.int64), np.array([0, 1, 2, -2 ** 53 - 1], dtype=np.int64),
                np.array([0, 1.5, 2, 3])):
        with pytest.raises(Exception) as e:
            engine.evaluate(fn, {"x": data["x"], "idx": bad})
        assert getattr(e.value, "code", None) == "bad_integer" and "inputs.idx" in str(e.value)
        with pytest.raises(Exception) as e:  # and the checked path (a list, not an array)
            engine.evaluate(fn, {"x": data["x"].tolist(), "idx": bad.tolist()})
        assert getattr(e.value, "code", None) == "bad_integer"


def test_int64_inputs_take_no_tangent_and_cannot_be_in_wrt(service, data):
    fid = service.register(VECTOR)[0]["id"]
    r = service.evaluate(fid, {"inputs": {"x": data["x"].tolist(), "idx": data["idx"].tolist()},
                               "compute": ["jvp"], "tangent": {"x": np.ones((5, 3)).tolist()}})
    assert r["jvp"].shape == (4,)
    e = refused(service, VECTOR, {"inputs": {"x": data["x"].tolist(), "idx": data["idx"].tolist()},
                                  "compute": ["jacobian"], "wrt": ["idx"]})
    assert http(e) == 422 and "int64" in e.message


def test_assignment_through_an_index_array_is_refused_with_its_line(service):
    e = refused(service, {"inputs": [{"name": "x", "shape": [3]}, {"name": "i", "shape": [2], "dtype": "int64"}],
                          "program": "def f(x, i):\n    y = zeros(3)\n    y[i] = 1.0\n    return sum(y * x)"})
    assert http(e) == 422 and e.location["line"] == 3


def test_compiled_gather_and_scatter_return_a_status_for_a_bad_index_never_read_out_of_bounds(tmp_path, data):
    """On the numba tier too, a bad index is a 422 index_out_of_range (the kernel's status), not a crash."""
    from adserve.engine.backend import Tiered
    from adserve.engine.errors import EvaluationError

    engine = Engine(Tiered(str(tmp_path)))
    try:
        fn = engine.compile_definition(VECTOR)
        good = {"x": data["x"], "idx": data["idx"].astype(float)}
        want = engine.evaluate(fn, good, ["value", "vjp"], cotangent=np.ones(4))
        assert engine.settle(900)
        meta = {}
        got = engine.evaluate(fn, good, ["value", "vjp"], cotangent=np.ones(4), meta=meta)
        assert meta["backend"] != "interpreter"
        np.testing.assert_allclose(got["value"], want["value"], **TOL)
        np.testing.assert_allclose(got["vjp"]["x"], want["vjp"]["x"], **TOL)
        for bad in ([0, 5, 1, 1], [0, -1, 1, 1]):
            meta = {}
            with pytest.raises(EvaluationError) as e:
                engine.evaluate(fn, {"x": data["x"], "idx": np.array(bad, float)}, ["value", "vjp"],
                                cotangent=np.ones(4), meta=meta)
            assert e.value.code == "index_out_of_range"
    finally:
        engine.close()


def test_several_int64_arrays_are_converted_together_each_at_its_own_input(data):
    """The plain path converts the integer arrays of several int64 inputs at once (inputs.joined): each input gets
    its own values, batched or not, whatever integer dtype each is sent as; an array holding 2**53 or -2**53
    exactly (at the float64 check's edge) is still accepted, one holding 2**53 + 1 beside them still refused."""
    engine = Engine()
    fn = engine.compile_definition({"inputs": [{"name": "i", "shape": [2], "dtype": "int64"},
                                               {"name": "x", "shape": [5]},
                                               {"name": "j", "shape": [3, 1], "dtype": "int64"},
                                               {"name": "k", "shape": [], "dtype": "int64"}],
                                    "expr": "sum(x[i] * i) + 10 * sum(x[j[:, 0]] * j[:, 0]) + 100 * x[k] * k"})
    x = data["w"]
    i, j, k = np.array([4, 1]), np.array([[0], [3], [2]]), np.array(3)
    want = float(np.sum(x[i] * i) + 10 * np.sum(x[j[:, 0]] * j[:, 0]) + 100 * x[k] * k)
    for dt in (np.int64, np.int32, np.uint64):
        got = engine.evaluate(fn, {"i": i.astype(dt), "x": x, "j": j.astype(dt), "k": k.astype(dt)},
                              ["value", "gradient"])
        assert got["value"] == want
        floats = engine.evaluate(fn, {"i": i * 1.0, "x": x, "j": j * 1.0, "k": k * 1.0}, ["value", "gradient"])
        np.testing.assert_array_equal(got["gradient"]["x"], floats["gradient"]["x"])
    rows = engine.evaluate(fn, {"i": np.stack([i, i[::-1]]), "x": np.stack([x, x]), "j": np.stack([j, j]),
                                "k": np.stack([k, k])}, batch=True)["value"]
    np.testing.assert_array_equal(rows, [want, want])
    edge = engine.compile_definition({"inputs": [{"name": "x", "shape": [2]},
                                                 {"name": "a", "shape": [2], "dtype": "int64"},
                                                 {"name": "b", "shape": [1], "dtype": "int64"}],
                                      "expr": "sum(x * a) + x[0] * b[0]"})
    for a in (np.array([2 ** 53, 1]), np.array([-2 ** 53, 1])):
        got = engine.evaluate(edge, {"x": np.ones(2), "a": a, "b": np.array([1])})["value"]
        assert got == engine.evaluate(edge, {"x": np.ones(2), "a": a * 1.0, "b": np.array([1.0])})["value"]
    with pytest.raises(EvaluationError) as e:
        engine.evaluate(edge, {"x": np.ones(2), "a": np.array([1, 2]), "b": np.array([2 ** 53 + 1])})
    assert e.value.code == "bad_integer" and "inputs.b" in str(e.value) and str(2 ** 53 + 1) in str(e.value)
    # each in range, but together their squares reach 2**106 (the joined check's bound): looked at one by one,
    # and accepted
    big = np.array([2 ** 53 - 1, -(2 ** 53 - 1)])
    got = engine.evaluate(edge, {"x": np.ones(2), "a": big, "b": np.array([2 ** 52])})["value"]
    assert got == engine.evaluate(edge, {"x": np.ones(2), "a": big * 1.0, "b": np.array([2.0 ** 52])})["value"]
