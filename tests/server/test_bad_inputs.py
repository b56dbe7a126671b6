"""Regression tests for inputs that once ended in a 500: each is now a 4xx with a useful message.

Found by the hostile suite and by tests/server/test_fuzz.py; one test per class, asserting the error kind,
its code and what the message says."""

import numpy as np
import pytest

from adserve.server.service import Service, ServiceError

XY = [{"name": "x", "shape": []}, {"name": "y", "shape": [3]}]
POINT = {"x": 0.5, "y": [1.0, 2.0, 3.0]}
BIG = "9" * 30


@pytest.fixture(scope="module")
def service():
    return Service(result_cache_bytes=1 << 20)


def refused(service, definition, evaluation=None):
    with pytest.raises(ServiceError) as e:
        info, _ = service.register(definition)
        service.evaluate(info["id"], evaluation or {"inputs": POINT})
    assert e.value.kind in ("unprocessable", "too_large", "bad_request"), e.value.kind
    return e.value


@pytest.mark.parametrize("definition", [
    {"inputs": XY, "expr": f"x + {BIG}"},
    {"inputs": XY, "expr": "x * 1" + "0" * 400},
    {"inputs": XY, "expr": f"y[{BIG}]"},
    {"inputs": XY, "expr": f"sum(y, axis={BIG})"},
    {"inputs": XY, "program": f"def f(x, y):\n    s = x\n    for i in range({BIG}):\n        s = s + 1\n    return s"},
    {"inputs": XY, "program": f"def f(x, y):\n    s = x\n    for i in range({'9' * 20}, {'9' * 20} + 2):\n"
                              "        s = s + 1\n    return s"},
    {"inputs": XY, "program": "def f(x, y):\n    n = 4611686018427387904\n    n *= 4\n    return x + n"},
])
def test_integers_beyond_int64(service, definition):
    e = refused(service, definition)
    assert e.code == "integer_overflow" and "beyond int64" in e.message and e.location


def test_graph_number_beyond_float64(service):
    e = refused(service, {"inputs": XY, "graph": {"nodes": [{"id": "a", "op": "add", "args": ["x", 10 ** 400]}],
                                                  "outputs": ["a"]}})
    assert e.code == "bad_graph" and "beyond float64" in e.message
    e = refused(service, {"inputs": XY, "graph": {"nodes": [], "outputs": [{"value": 10 ** 400, "shape": []}]}})
    assert "beyond float64" in e.message


@pytest.mark.parametrize("shape", [[10 ** 30], [100000, 100000]])
def test_literal_output_over_the_element_limit(service, shape):
    e = refused(service, {"inputs": XY, "graph": {"nodes": [], "outputs": [{"value": 1.0, "shape": shape}]}})
    assert e.kind == "too_large" and e.code == "limit_exceeded" and "elements" in e.message


@pytest.mark.parametrize("compute", [["jvp", "trace"], ["hvp", "trace"], ["value", "jvp", "vjp", "trace"]])
@pytest.mark.parametrize("wrt", [["x"], ["y"]])
def test_trace_with_jvp_and_a_wrt_subset(service, compute, wrt):
    """The trace's tangent column holds the inputs left out of `wrt` fixed (a zero tangent)."""
    info, _ = service.register({"inputs": XY, "expr": "x * sum(y)"})
    tangent = {"x": 1.0} if wrt == ["x"] else {"y": [1.0, 0.0, 0.0]}
    r = service.evaluate(info["id"], {"inputs": POINT, "compute": compute, "wrt": wrt, "tangent": tangent,
                                      "cotangent": 1.0})
    want = 6.0 if wrt == ["x"] else 0.5
    if "jvp" in compute:
        assert np.isclose(r["jvp"], want)
    assert np.isclose(r["trace"][-1]["tangent"], want)


def test_batch_without_inputs(service):
    e = refused(service, {"inputs": [], "expr": "1.0 + 2.0"}, {"inputs": {}, "batch": True})
    assert e.code == "empty_batch" and "batch" in e.message


def test_unused_tangent_and_cotangent_are_shape_checked(service):
    f = {"inputs": XY, "expr": "x * sum(y)"}
    e = refused(service, f, {"inputs": POINT, "tangent": {"x": [1.0, 2.0]}})
    assert e.code == "shape_mismatch" and "tangent.x" in e.message
    e = refused(service, f, {"inputs": POINT, "compute": ["gradient"], "cotangent": [1.0, 2.0]})
    assert e.code == "shape_mismatch" and "cotangent" in e.message
    e = refused(service, f, {"inputs": POINT, "tangent": {"nope": 1.0}})
    assert e.code == "unknown_input"
    r = service.evaluate(f, {"inputs": POINT, "compute": ["gradient"], "tangent": {"x": 1.0}, "cotangent": 1.0})
    assert np.isclose(r["gradient"]["x"], 6.0)


@pytest.mark.parametrize("make", [
    lambda n: ({"inputs": XY, "expr": "x"}, {"inputs": {**POINT, n: 1.0}}),
    lambda n: ({"inputs": XY, "expr": "x"}, {"inputs": POINT, "compute": ["gradient"], "wrt": [n]}),
    lambda n: ({"inputs": XY, "expr": "x"}, {"inputs": POINT, "compute": [n]}),
    lambda n: ({"inputs": XY, "expr": f"x + {n}"}, None),
    lambda n: ({"inputs": XY, "expr": f"{n}(x)"}, None),
    lambda n: ({"inputs": XY, "graph": {"nodes": [{"id": "a", "op": n, "args": ["x"]}], "outputs": ["a"]}}, None),
    lambda n: ({"inputs": XY, "graph": {"nodes": [], "outputs": [n]}}, None),
    lambda n: ({"inputs": XY, "graph": {"nodes": [{"id": "a", "op": "sin", "args": [n]}], "outputs": ["a"]}}, None),
])
def test_long_names_are_clipped_in_messages(service, make):
    name = "q" * 50_000
    definition, evaluation = make(name)
    e = refused(service, definition, evaluation)
    assert "qqqq" in e.message and len(e.message) < 2100, len(e.message)
    assert len(str(e.location or "")) < 400


LOOP = "def f(x, y):\n    s = x\n    for i in range(3):\n        s = s * 0.5 + y[i]\n    return s"


def _loop_graph(service):
    graph = service.graph(service.register({"inputs": XY, "program": LOOP})[0]["id"])
    (loop,) = [n for n in graph["graph"]["nodes"] if n["op"] == "loop"]
    return graph, loop


def test_an_output_naming_a_structured_node(service):
    graph, loop = _loop_graph(service)
    graph["graph"]["outputs"] = [loop["id"]]
    e = refused(service, graph)
    assert e.code == "bad_reference" and "several results" in e.message and loop["id"] in e.message


@pytest.mark.parametrize("n_carry", [2, 5, 2 ** 63])
@pytest.mark.parametrize("compute", [["jvp"], ["trace"], ["gradient"]])
def test_a_loop_claiming_more_carried_values_than_it_has(service, n_carry, compute):
    graph, loop = _loop_graph(service)
    loop["params"]["n_carry"] = n_carry
    e = refused(service, graph, {"inputs": POINT, "compute": compute, "tangent": {"x": 1.0, "y": [0.0] * 3}})
    assert e.code in ("shape_mismatch", "bad_graph") and "loop" in e.message.lower()
