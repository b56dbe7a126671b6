"""The REST contract end to end, against a real server process (see conftest.py)."""

import base64
import math
import threading

import httpx
import numpy as np
import pytest

from server_process import TEST_MAX_BODY_BYTES

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
          "expr": "log(x1) + x1*x2 - sin(x2)"}
LOOP = {"inputs": [{"name": "x", "shape": []}],
        "program": "def f(x):\n    l = x\n    for i in range(4):\n        l = 4.0 * l * (1.0 - l)\n    return l\n"}
VECTOR_OUT = {"inputs": [{"name": "x", "shape": [3]}, {"name": "s", "shape": []}], "expr": "x * s"}


def b64(a):
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "float64", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def from_b64(t):
    return np.frombuffer(base64.b64decode(t["b64"]), "<f8").reshape(t["shape"])


def ok(response: httpx.Response, status=200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def error(response: httpx.Response, status: int) -> dict:
    """The contract's error body: a snake_case code and a message for a person."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = response.json()["error"]
    assert err["code"] and err["code"] == err["code"].lower() and " " not in err["code"]
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    return err


def evaluate(client, function, **evaluation):
    return client.post("/v1/evaluate", json={"function": function, **evaluation})


def test_health_and_readiness(client):
    assert ok(client.get("/healthz"))
    assert ok(client.get("/readyz"))


def test_survey_function_every_kind(client):
    r = ok(evaluate(client, SURVEY, inputs={"x1": 2.0, "x2": 5.0}, tangent={"x1": 1.0, "x2": 0.0},
                    compute=["value", "gradient", "jvp", "hvp", "hessian", "jacobian"]))
    assert r["value"] == pytest.approx(math.log(2) + 10 - math.sin(5), rel=1e-12)
    assert r["gradient"]["x1"] == pytest.approx(5.5) and r["gradient"]["x2"] == pytest.approx(2 - math.cos(5))
    assert r["jvp"] == pytest.approx(5.5)
    assert r["hvp"] == pytest.approx({"x1": -0.25, "x2": 1.0})
    assert r["hessian"]["x1"] == pytest.approx({"x1": -0.25, "x2": 1.0})
    assert r["hessian"]["x2"] == pytest.approx({"x1": 1.0, "x2": math.sin(5)})
    assert r["jacobian"] == pytest.approx({"x1": 5.5, "x2": 2 - math.cos(5)})
    assert set(r) == {"value", "gradient", "jvp", "hvp", "hessian", "jacobian", "cached"}


def test_only_what_was_asked_and_value_by_default(client):
    r = ok(evaluate(client, SURVEY, inputs={"x1": 3.0, "x2": 1.0}))
    assert set(r) == {"value", "cached"}
    r = ok(evaluate(client, SURVEY, inputs={"x1": 3.0, "x2": 1.0}, compute=["gradient"]))
    assert set(r) == {"gradient", "cached"}


def test_vector_output_vjp_jvp_jacobian(client):
    x, s, c = np.array([1.0, 2.0, 3.0]), 1.5, np.array([0.5, -1.0, 2.0])
    r = ok(evaluate(client, VECTOR_OUT, inputs={"x": x.tolist(), "s": s}, cotangent=c.tolist(),
                    tangent={"x": [1.0, 0.0, 0.0], "s": 1.0}, compute=["value", "jacobian", "vjp", "jvp"]))
    np.testing.assert_allclose(r["value"], x * s)
    np.testing.assert_allclose(r["jacobian"]["x"], s * np.eye(3))
    np.testing.assert_allclose(r["jacobian"]["s"], x)
    np.testing.assert_allclose(r["vjp"]["x"], s * c)
    assert r["vjp"]["s"] == pytest.approx(c @ x)
    np.testing.assert_allclose(r["jvp"], [s, 0, 0] + x)


def test_trace_rows_keep_their_names_and_encode_their_values(client):
    body = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["trace"]}
    rows = ok(evaluate(client, SURVEY, **body))["trace"]
    assert [r["name"] for r in rows[:2]] == ["x1", "x2"] and all(isinstance(r["expr"], str) for r in rows)
    assert rows[-1]["value"] == pytest.approx(math.log(2) + 10 - math.sin(5))
    again = ok(evaluate(client, SURVEY, **body))
    assert again["cached"] and again["trace"] == rows
    as_b64 = ok(evaluate(client, SURVEY, inputs={"x1": b64(2.0), "x2": 5.0}, compute=["trace"]))["trace"]
    assert as_b64[0]["name"] == "x1" and from_b64(as_b64[-1]["value"]) == pytest.approx(rows[-1]["value"])


def test_register_201_then_200_and_metadata(client):
    definition = {"inputs": [{"name": "a", "shape": [2]}], "expr": "sum(a * a) + 41.0"}
    first = ok(client.post("/v1/functions", json=definition), 201)
    assert set(first) == {"id", "inputs", "output_shape", "n_nodes"}
    assert first["inputs"] == [{"name": "a", "shape": [2]}] and first["output_shape"] == []
    assert ok(client.post("/v1/functions", json=definition), 200) == first
    assert ok(client.get(f"/v1/functions/{first['id']}")) == first


def test_graph_export_reimports_to_the_same_id(client):
    r = client.post("/v1/functions", json=LOOP)
    assert r.status_code in (200, 201), r.text
    info = r.json()
    exported = ok(client.get(f"/v1/functions/{info['id']}/graph"))
    assert set(exported) == {"inputs", "graph"}
    assert ok(client.post("/v1/functions", json=exported), 200)["id"] == info["id"]


def test_evaluate_by_id_then_cached(client):
    info = client.post("/v1/functions", json=LOOP).json()
    body = {"inputs": {"x": 0.3}, "compute": ["value", "gradient"]}
    r1 = client.post(f"/v1/functions/{info['id']}/evaluate", json=body)
    r2 = client.post(f"/v1/functions/{info['id']}/evaluate", json=body)
    first, second = ok(r1), ok(r2)
    # the cached answer names the tier that computed it, and says it is a cache hit
    assert r1.headers["x-adserve-backend"] in ("interpreter", "numba")
    assert r2.headers["x-adserve-backend"] == r1.headers["x-adserve-backend"]
    assert r1.headers["server-timing"].startswith("compute;dur=")
    assert r2.headers["server-timing"].startswith("cache;desc=hit") and "compute" not in r2.headers["server-timing"]
    l, d = 0.3, 1.0
    for _ in range(4):
        l, d = 4 * l * (1 - l), d * 4 * (1 - 2 * l)
    assert first["value"] == pytest.approx(l) and first["gradient"]["x"] == pytest.approx(d)
    assert second == {**first, "cached": True}
    # the same evaluation through /v1/evaluate hits the same cache entry
    assert ok(evaluate(client, LOOP, **body))["cached"] is True


def test_batch(client):
    x1, x2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    r = ok(evaluate(client, SURVEY, inputs={"x1": x1.tolist(), "x2": x2.tolist()}, batch=True,
                    compute=["value", "gradient", "hessian"]))
    np.testing.assert_allclose(r["value"], np.log(x1) + x1 * x2 - np.sin(x2))
    np.testing.assert_allclose(r["gradient"]["x1"], 1 / x1 + x2)
    np.testing.assert_allclose(r["gradient"]["x2"], x1 - np.cos(x2))
    np.testing.assert_allclose(r["hessian"]["x1"]["x1"], -1 / x1 ** 2)


def test_b64_in_b64_out(client):
    x = np.linspace(0.1, 2.0, 1000)
    r = ok(evaluate(client, {"inputs": [{"name": "x", "shape": [1000]}], "expr": "sum(exp(-x) * x)"},
                    inputs={"x": b64(x)}, compute=["value", "gradient"]))
    assert r["gradient"]["x"]["dtype"] == "float64" and r["gradient"]["x"]["shape"] == [1000]
    np.testing.assert_allclose(from_b64(r["gradient"]["x"]), np.exp(-x) * (1 - x), rtol=1e-12)
    assert r["value"]["shape"] == [] and from_b64(r["value"]) == pytest.approx(np.sum(np.exp(-x) * x))


def test_lists_in_lists_out(client):
    r = ok(evaluate(client, {"inputs": [{"name": "x", "shape": [2, 2]}], "expr": "x * 2.0"},
                    inputs={"x": [[1, 2], [3, 4]]}))
    assert r["value"] == [[2.0, 4.0], [6.0, 8.0]]


def test_non_finite_values_as_strings(client):
    fn = {"inputs": [{"name": "x", "shape": [4]}], "expr": "x * 2.0"}
    r = ok(evaluate(client, fn, inputs={"x": ["NaN", "Infinity", "-Infinity", 1.5]}))
    assert r["value"] == ["NaN", "Infinity", "-Infinity", 3.0]
    r = ok(evaluate(client, {"inputs": [{"name": "x", "shape": []}], "expr": "log(x)"}, inputs={"x": 0.0}))
    assert r["value"] == "-Infinity"


def test_schema_docs_page_and_metrics(client):
    assert isinstance(ok(client.get("/v1/schema/graph")), dict)
    assert client.get("/docs").status_code == 200
    spec = ok(client.get("/openapi.json"))
    body = spec["paths"]["/v1/evaluate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["allOf"][0]["$ref"].split("/")[-1] in spec["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/demo/main.js"' in page.text and 'href="docs"' in page.text  # the demo (test_demo_browser.py)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    for name in ("adserve_http_requests_total", "adserve_http_request_duration_seconds_bucket",
                 "adserve_functions_registered", "adserve_result_cache_hits_total",
                 "adserve_result_cache_misses_total"):
        assert name in metrics.text
    assert 'route="/v1/functions/{function_id}/evaluate"' in metrics.text


# -- errors -----------------------------------------------------------------------------------

def test_malformed_json_is_400(client):
    for raw in (b"{not json", b"", b'{"inputs": NaN}'):
        err = error(client.post("/v1/evaluate", content=raw), 400)
        assert err["code"] == "malformed_json"
    error(client.post("/v1/functions", content=b"[1,"), 400)


def test_unknown_function_is_404(client):
    for r in (client.get("/v1/functions/does-not-exist"), client.get("/v1/functions/does-not-exist/graph"),
              client.post("/v1/functions/does-not-exist/evaluate", json={"inputs": {}})):
        assert "does-not-exist" in error(r, 404)["message"]


def test_unknown_route_and_method_use_the_error_body(client):
    error(client.get("/v9/nothing"), 404)
    err = error(client.delete("/v1/functions"), 405)
    assert err["code"] == "method_not_allowed"


def test_over_the_body_limit_is_413(client):
    big = b'{"inputs": {"x": [' + b"1.0," * (TEST_MAX_BODY_BYTES // 4) + b'1.0]}}'
    assert error(client.post("/v1/evaluate", content=big), 413)["code"] == "body_too_large"

    def chunks():  # no Content-Length: the bytes actually read are counted
        for _ in range(4):
            yield b" " * (TEST_MAX_BODY_BYTES // 2)
    error(client.post("/v1/evaluate", content=chunks()), 413)
    assert ok(client.get("/healthz"))


@pytest.mark.parametrize("what, body", [
    ("unknown op", {"function": {"inputs": [{"name": "x", "shape": []}], "expr": "frobnicate(x)"},
                    "inputs": {"x": 1.0}}),
    ("shape mismatch", {"function": {"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(x)"},
                        "inputs": {"x": [1.0, 2.0]}}),
    ("shape mismatch in the definition", {"function": {"inputs": [{"name": "x", "shape": [3]},
                                                                  {"name": "y", "shape": [2]}], "expr": "x + y"},
                                          "inputs": {"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0]}}),
    ("missing input", {"function": SURVEY, "inputs": {"x1": 1.0}}),
    ("gradient of a vector output", {"function": VECTOR_OUT, "inputs": {"x": [1.0, 2.0, 3.0], "s": 2.0},
                                     "compute": ["gradient"]}),
    ("hessian of a vector output", {"function": VECTOR_OUT, "inputs": {"x": [1.0, 2.0, 3.0], "s": 2.0},
                                    "compute": ["hessian"]}),
    ("bad compute kind", {"function": SURVEY, "inputs": {"x1": 1.0, "x2": 2.0}, "compute": ["value", "grad"]}),
    ("jvp without tangent", {"function": SURVEY, "inputs": {"x1": 1.0, "x2": 2.0}, "compute": ["jvp"]}),
    ("ragged list", {"function": SURVEY, "inputs": {"x1": [[1.0], [2.0, 3.0]], "x2": 2.0}}),
    ("bad base64", {"function": SURVEY, "inputs": {"x1": {"dtype": "float64", "shape": [], "b64": "@@"}, "x2": 2}}),
    ("boolean", {"function": SURVEY, "inputs": {"x1": True, "x2": 2.0}}),
    ("batch not a boolean", {"function": SURVEY, "inputs": {"x1": 1.0, "x2": 2.0}, "batch": "yes"}),
    ("unknown field", {"function": SURVEY, "inputs": {"x1": 1.0, "x2": 2.0}, "computes": ["value"]}),
    ("no function", {"inputs": {"x1": 1.0, "x2": 2.0}}),
    ("definition not an object", {"function": [1, 2], "inputs": {}}),
    ("evaluation not an object", [1, 2]),
])
def test_wrong_but_well_formed_is_422(client, what, body):
    error(client.post("/v1/evaluate", json=body), 422)


@pytest.mark.parametrize("expr", ["x +* 2", "__import__('os').getpid()", "x.__class__", "(lambda: x.__class__)()",
                                  "(lambda: __import__('os'))()"])
def test_syntax_errors_and_escapes_are_refused(client, expr):
    r = evaluate(client, {"inputs": [{"name": "x", "shape": []}], "expr": expr}, inputs={"x": 1.0})
    assert r.status_code in (400, 422), r.text
    error(r, r.status_code)


def test_errors_say_where(client):
    err = error(evaluate(client, SURVEY, inputs={"x1": [[1.0], [2.0, 3.0]], "x2": 2.0}), 422)
    assert "inputs.x1[1]" in err["message"]
    err = error(evaluate(client, SURVEY, inputs={"x1": 1.0, "x2": 2.0}, compute=["value", "grad"]), 422)
    assert "compute[1]" in err["message"]
    err = error(evaluate(client, {"inputs": [{"name": "x", "shape": []}], "expr": "x + frobnicate(x)"},
                         inputs={"x": 1.0}), 422)
    assert "frobnicate" in err["message"]


def test_a_bad_request_does_not_change_what_a_good_one_gets(client):
    good = {"function": SURVEY, "inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}
    want = ok(client.post("/v1/evaluate", json=good))
    bad = [{"function": SURVEY, "inputs": {"x1": 2.0}, "compute": ["value", "gradient"]},
           {"function": SURVEY, "inputs": {"x1": [2.0, 1.0], "x2": 5.0}, "compute": ["value", "gradient"]},
           {"function": {**SURVEY, "expr": "log(x1) +"}, "inputs": {"x1": 2.0, "x2": 5.0}}]
    failures, results = [], []

    def worker(i):
        try:
            with httpx.Client(base_url=str(client.base_url), timeout=120) as c:
                for j in range(6):
                    body = bad[(i + j) % len(bad)] if (i + j) % 2 else good
                    r = c.post("/v1/evaluate", json=body)
                    if body is good:
                        results.append(r.json())
                    elif not 400 <= r.status_code < 500:
                        failures.append((r.status_code, r.text))
        except Exception as e:  # reported below rather than lost in the thread
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert results and all({**r, "cached": None} == {**want, "cached": None} for r in results)


def test_zz_server_logged_no_internal_error(server, client):
    assert client.get("/healthz").status_code == 200
    assert server.process.poll() is None
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
