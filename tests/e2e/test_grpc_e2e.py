"""The gRPC contract end to end, at the wire, against the real server process (see conftest.py).

Every rpc; status codes with the same messages as REST; health and reflection;
EvaluateStream order; Minimize converging, refusing bad requests, and stopping
when cancelled or past its deadline.
"""

import json
import math
import queue
import time

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import TEST_MAX_BODY_BYTES
from server_process import minimizers_running, wait_until

SURVEY_JSON = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
               "expr": "log(x1) + x1*x2 - sin(x2)"}
SURVEY = pb.Definition(inputs=[pb.InputSpec(name="x1"), pb.InputSpec(name="x2")], expr=SURVEY_JSON["expr"])
VECTOR_OUT = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[3]), pb.InputSpec(name="s")], expr="x * s")
ROSENBROCK = "sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)"


def rosenbrock(n: int) -> pb.Definition:
    return pb.Definition(inputs=[pb.InputSpec(name="x", shape=[n])], expr=ROSENBROCK)


def T(a) -> pb.Tensor:
    a = np.asarray(a, dtype=np.float64)
    return pb.Tensor(shape=a.shape, data=a.ravel().tolist())


def A(t: pb.Tensor) -> np.ndarray:
    return np.array(t.data).reshape(tuple(t.shape))


def survey_at(x1, x2, **fields) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(function=SURVEY, inputs={"x1": T(x1), "x2": T(x2)}, **fields)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return ad_pb2_grpc.DifferentiatorStub(channel)


def failure(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):  # a response stream fails when read
            list(result)
    return e.value


def error_code(e: grpc.RpcError) -> str:
    return dict(e.trailing_metadata())["adserve-error-code"]


# -- operations ----------------------------------------------------------------------
def test_health_says_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)

    def serving(name):
        return health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert wait_until(lambda: serving("") and serving("ad.v1.Differentiator"), 5)
    assert failure(health.Check, health_pb2.HealthCheckRequest(service="no.such.Service")).code() == \
        grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services_and_serves_the_proto(channel):
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="ad.v1.Differentiator")]
    listed, files = reflect.ServerReflectionInfo(iter(requests))
    names = {s.name for s in listed.list_services_response.service}
    assert {"ad.v1.Differentiator", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    protos = [descriptor_pb2.FileDescriptorProto.FromString(raw)
              for raw in files.file_descriptor_response.file_descriptor_proto]
    ad = next(p for p in protos if p.name == "ad/v1/ad.proto")
    assert [m.name for m in ad.service[0].method] == ["Register", "Evaluate", "EvaluateStream", "Minimize",
                                                      "ListFunctions", "GetFunction", "PutTensor"]


# -- Register and Evaluate -----------------------------------------------------------------
def test_register_gives_the_rest_id(stub, client):
    first, again = stub.Register(SURVEY), stub.Register(SURVEY)
    assert first.id == again.id == client.post("/v1/functions", json=SURVEY_JSON).json()["id"]
    assert not again.created
    assert [(s.name, list(s.shape)) for s in first.inputs] == [("x1", []), ("x2", [])]
    assert list(first.output_shape) == [] and first.n_nodes > 0


HELPERS_JSON = {"inputs": [{"name": "x", "shape": [4]}, {"name": "idx", "shape": [3], "dtype": "int64"}],
                "entry": "f", "program": "def f(x, idx):\n    return g(x[idx])\n\ndef g(v):\n    return sum(v * v)"}


def test_int64_inputs_and_entry_work_as_over_rest(stub, client):
    """An int64 input and a program's `entry` (not its last def), declared over gRPC: the REST id, the same
    value and gradient, the dtype in FunctionInfo, and an index out of range refused as over REST."""
    d = HELPERS_JSON
    definition = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[4]),
                                       pb.InputSpec(name="idx", shape=[3], dtype="int64")],
                               program=d["program"], entry="f")
    info = stub.Register(definition)
    rest = client.post("/v1/functions", json=d).json()
    assert info.id == rest["id"]
    assert [(s.name, s.dtype) for s in info.inputs] == [("x", ""), ("idx", "int64")]
    x, idx = [1.0, 2.0, 3.0, 4.0], [3, 0, 3]
    got = stub.Evaluate(pb.EvaluateRequest(id=info.id, inputs={"x": T(x), "idx": T(idx)},
                                           compute=["value", "gradient"]))
    want = client.post(f"/v1/functions/{info.id}/evaluate",
                       json={"inputs": {"x": x, "idx": idx}, "compute": ["value", "gradient"]}).json()
    assert A(got.value) == want["value"] == 16 + 1 + 16
    assert A(got.gradient["x"]).tolist() == want["gradient"]["x"] == [2.0, 0.0, 0.0, 16.0]
    assert "idx" not in got.gradient and "idx" not in want["gradient"]
    e = failure(stub.Evaluate, pb.EvaluateRequest(id=info.id, inputs={"x": T(x), "idx": T([0, 4, 1])}))
    r = client.post(f"/v1/functions/{info.id}/evaluate", json={"inputs": {"x": x, "idx": [0, 4, 1]}})
    assert error_code(e) == r.json()["error"]["code"] == "index_out_of_range" and e.details() == r.json()["error"]["message"]
    # without `entry` the last def (g) would get the inputs: a different function, refused for its arguments
    no_entry = pb.Definition(inputs=definition.inputs, program=d["program"])
    assert error_code(failure(stub.Register, no_entry)) == client.post(
        "/v1/functions", json={k: v for k, v in d.items() if k != "entry"}).json()["error"]["code"]
    bad = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[4], dtype="int32")], expr="sum(x)")
    assert error_code(failure(stub.Register, bad)) == "bad_dtype"


def test_graph_form_with_params_literals_and_numbers(stub):
    axes = struct_pb2.Struct()
    axes.update({"axes": [0]})
    graph = pb.Graph(nodes=[
        pb.Node(id="v1", op="mul", args=[pb.Arg(ref="x"), pb.Arg(number=2.0)]),
        pb.Node(id="v2", op="reduce_sum", args=[pb.Arg(ref="v1")], params=axes),
        pb.Node(id="v3", op="add", args=[pb.Arg(ref="v2"), pb.Arg(literal=pb.Literal(shape=[], value=1.0))]),
        pb.Node(id="v4", op="mul", args=[pb.Arg(ref="v3"), pb.Arg(literal=pb.Literal(shape=[2], data=[3.0, -1.0]))]),
        pb.Node(id="v5", op="reduce_sum", args=[pb.Arg(ref="v4")], params=axes)],
        outputs=[pb.Arg(ref="v5")])
    definition = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[3])], graph=graph)
    r = stub.Evaluate(pb.EvaluateRequest(function=definition, inputs={"x": T([1.0, 2.0, 3.0])},
                                         compute=["value", "gradient"]))
    assert A(r.value) == pytest.approx(2 * (2 * 6 + 1)) and A(r.gradient["x"]) == pytest.approx([4.0] * 3)


def test_evaluate_every_kind_matches_rest(stub, client):
    compute = ["value", "gradient", "jvp", "hvp", "jacobian", "hessian"]
    r = stub.Evaluate(survey_at(2.0, 5.0, compute=compute, tangent={"x1": T(1.0), "x2": T(0.0)}))
    rest = client.post("/v1/evaluate", json={"function": SURVEY_JSON, "inputs": {"x1": 2.0, "x2": 5.0},
                                             "compute": compute, "tangent": {"x1": 1.0, "x2": 0.0}}).json()
    assert float(A(r.value)) == rest["value"] == pytest.approx(math.log(2) + 10 - math.sin(5))
    assert float(A(r.jvp)) == rest["jvp"]
    for kind in ("gradient", "hvp", "jacobian"):
        assert {k: float(A(t)) for k, t in getattr(r, kind).items()} == rest[kind]
    assert {a: {b: float(A(t)) for b, t in row.entries.items()} for a, row in r.hessian.items()} == rest["hessian"]
    assert not r.vjp and not r.trace


def test_wrt_matches_rest(stub, client):
    compute = ["gradient", "hvp"]
    r = stub.Evaluate(survey_at(2.0, 5.0, compute=compute, tangent={"x2": T(1.0)}, wrt=["x2"]))
    rest = client.post("/v1/evaluate", json={"function": SURVEY_JSON, "inputs": {"x1": 2.0, "x2": 5.0},
                                             "compute": compute, "tangent": {"x2": 1.0}, "wrt": ["x2"]}).json()
    for kind in compute:
        assert {k: float(A(t)) for k, t in getattr(r, kind).items()} == rest[kind] and list(rest[kind]) == ["x2"]
    assert rest["gradient"]["x2"] == pytest.approx(2 - math.cos(5))


def test_evaluate_by_id_is_cached_and_holds_only_what_was_asked(stub):
    fid = stub.Register(SURVEY).id
    # a point no other test evaluates: the session's server (and its result cache) is shared
    request = pb.EvaluateRequest(id=fid, inputs={"x1": T(3.0625), "x2": T(-1.0078125)})
    first, second = stub.Evaluate(request), stub.Evaluate(request)
    assert first.HasField("value") and not first.gradient and not first.HasField("jvp")
    assert not first.cached and second.cached and A(first.value) == A(second.value)


def test_vector_output_and_batch(stub):
    x, s, c = np.array([1.0, 2.0, 3.0]), 1.5, np.array([0.5, -1.0, 2.0])
    r = stub.Evaluate(pb.EvaluateRequest(function=VECTOR_OUT, inputs={"x": T(x), "s": T(s)}, cotangent=T(c),
                                         tangent={"x": T([1.0, 0.0, 0.0]), "s": T(1.0)},
                                         compute=["value", "jacobian", "vjp", "jvp"]))
    np.testing.assert_allclose(A(r.value), x * s)
    np.testing.assert_allclose(A(r.jacobian["x"]), s * np.eye(3))
    np.testing.assert_allclose(A(r.vjp["s"]), c @ x)
    np.testing.assert_allclose(A(r.jvp), x + [s, 0, 0])
    x1, x2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    r = stub.Evaluate(survey_at(x1, x2, compute=["value", "gradient"], batch=True))
    np.testing.assert_allclose(A(r.value), np.log(x1) + x1 * x2 - np.sin(x2))
    np.testing.assert_allclose(A(r.gradient["x2"]), x1 - np.cos(x2))


def test_trace_rows(stub):
    r = stub.Evaluate(survey_at(2.0, 5.0, compute=["trace"]))
    rows = {row.name: row for row in r.trace}
    assert {"x1", "x2"} <= set(rows) and sum(row.output for row in r.trace) == 1
    assert float(A(rows["x1"].value)) == 2.0 and float(A(rows["x1"].adjoint)) == pytest.approx(5.5)


def test_non_finite_numbers_pass_as_doubles(stub):
    r = stub.Evaluate(survey_at(-1.0, 0.0, compute=["value", "gradient"]))
    assert math.isnan(float(A(r.value))) and float(A(r.gradient["x1"])) == -1.0


# -- errors ------------------------------------------------------------------------------
LOOP_TOO_LONG = {"inputs": [{"name": "x", "shape": []}],
                 "program": "def f(x):\n    s = x\n    for i in range(2000000):\n        s = s + x\n    return s\n"}


@pytest.mark.parametrize("case, rest_status, status", [
    ("unknown id", 404, grpc.StatusCode.NOT_FOUND),
    ("syntax error", 422, grpc.StatusCode.INVALID_ARGUMENT),
    ("missing input", 422, grpc.StatusCode.INVALID_ARGUMENT),
    ("gradient of a vector", 422, grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown compute", 422, grpc.StatusCode.INVALID_ARGUMENT),
    ("over a cost limit", 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_errors_have_the_rest_message(stub, client, case, rest_status, status):
    x = {"name": "x", "shape": []}
    rest_body, request = {
        "unknown id": ({"function": "nope", "inputs": {"x": 1.0}},
                       pb.EvaluateRequest(id="nope", inputs={"x": T(1.0)})),
        "syntax error": ({"function": {"inputs": [x], "expr": "x +* 2"}, "inputs": {"x": 1.0}},
                         pb.EvaluateRequest(function=pb.Definition(inputs=[pb.InputSpec(name="x")], expr="x +* 2"),
                                            inputs={"x": T(1.0)})),
        "missing input": ({"function": SURVEY_JSON, "inputs": {"x1": 1.0}},
                          pb.EvaluateRequest(function=SURVEY, inputs={"x1": T(1.0)})),
        "gradient of a vector": (
            {"function": {"inputs": [{"name": "x", "shape": [3]}, x | {"name": "s"}], "expr": "x * s"},
             "inputs": {"x": [1.0, 2.0, 3.0], "s": 1.0}, "compute": ["gradient"]},
            pb.EvaluateRequest(function=VECTOR_OUT, inputs={"x": T([1.0, 2.0, 3.0]), "s": T(1.0)},
                               compute=["gradient"])),
        "unknown compute": ({"function": SURVEY_JSON, "inputs": {"x1": 1.0, "x2": 1.0}, "compute": ["curl"]},
                            survey_at(1.0, 1.0, compute=["curl"])),
        "over a cost limit": ({"function": LOOP_TOO_LONG, "inputs": {"x": 1.0}},
                              pb.EvaluateRequest(function=pb.Definition(inputs=[pb.InputSpec(name="x")],
                                                                        program=LOOP_TOO_LONG["program"]),
                                                 inputs={"x": T(1.0)})),
    }[case]
    response = client.post("/v1/evaluate", json=rest_body)
    assert response.status_code == rest_status, response.text
    rest = response.json()["error"]
    e = failure(stub.Evaluate, request)
    assert e.code() == status and e.details() == rest["message"] and error_code(e) == rest["code"]
    if "location" in rest:
        assert json.loads(dict(e.trailing_metadata())["adserve-error-location"]) == rest["location"]


def test_register_errors(stub):
    e = failure(stub.Register, pb.Definition(inputs=[pb.InputSpec(name="x")]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "exactly one of" in e.details()


@pytest.mark.parametrize("request_, code, says", [
    (pb.EvaluateRequest(id="abc", function=SURVEY), "invalid_field", "not both"),
    (pb.EvaluateRequest(inputs={"x": T(1.0)}), "missing_field", '"id"'),
    (pb.EvaluateRequest(function=SURVEY, inputs={"x1": pb.Tensor(shape=[2, 2], data=[1, 2, 3]), "x2": T(1.0)}),
     "invalid_tensor", "inputs.x1 holds 3 numbers but shape [2, 2] needs 4"),
    (pb.EvaluateRequest(function=SURVEY, inputs={"x1": pb.Tensor(shape=[-1]), "x2": T(1.0)}),
     "invalid_tensor", "inputs.x1.shape"),
])
def test_protobuf_shaped_mistakes(stub, request_, code, says):
    e = failure(stub.Evaluate, request_)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and error_code(e) == code and says in e.details()


def test_message_over_the_body_limit(stub):
    big = np.zeros(TEST_MAX_BODY_BYTES // 8 + 1000)
    e = failure(stub.Evaluate, pb.EvaluateRequest(id="whatever", inputs={"x": T(big)}))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_exceeded(stub):
    heavy = pb.EvaluateRequest(function=rosenbrock(1000), inputs={"x": T(np.linspace(-1, 1, 1000))},
                               compute=["hessian"])  # a thousand HVP sweeps
    e = failure(stub.Evaluate, heavy, timeout=0.02)
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- EvaluateStream -------------------------------------------------------------------------
def test_stream_answers_each_request_in_order(stub):
    fid = stub.Register(SURVEY).id
    x1 = np.linspace(0.5, 3.0, 200)
    requests = [pb.EvaluateRequest(id=fid, inputs={"x1": T(v), "x2": T(2.0)}) for v in x1]
    values = [float(A(r.value)) for r in stub.EvaluateStream(iter(requests))]
    np.testing.assert_allclose(values, np.log(x1) + 2 * x1 - math.sin(2.0))


def test_stream_carries_a_thousand_step_loop(stub):
    """Gradient descent driven by the client: each request waits for the previous answer, on one call."""
    fid = stub.Register(rosenbrock(10)).id
    outbox = queue.SimpleQueue()
    answers = stub.EvaluateStream(iter(outbox.get, None), timeout=120)
    x, values = np.full(10, -1.0), []
    for _ in range(1000):
        outbox.put(pb.EvaluateRequest(id=fid, inputs={"x": T(x)}, compute=["value", "gradient"]))
        r = next(answers)
        values.append(float(A(r.value)))
        x = x - 1e-4 * A(r.gradient["x"])
    outbox.put(None)
    assert list(answers) == []
    assert values[-1] < values[0] / 2 and all(b <= a for a, b in zip(values, values[1:]))


def test_a_bad_request_ends_the_stream_with_its_status(stub):
    requests = [survey_at(1.0, 2.0), survey_at(1.0, 2.0, compute=["curl"]), survey_at(3.0, 4.0)]
    answers = stub.EvaluateStream(iter(requests))
    assert float(A(next(answers).value)) == pytest.approx(2 - math.sin(2))
    with pytest.raises(grpc.RpcError) as e:
        next(answers)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_code(e.value) == "invalid_compute"


# -- Minimize -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lbfgs", "newton-cg"])
def test_minimize_rosenbrock_from_minus_one(stub, method):
    steps = list(stub.Minimize(pb.MinimizeRequest(function=rosenbrock(10), x0={"x": T(-np.ones(10))},
                                                  method=method)))
    assert [s.iteration for s in steps[:-1]] == list(range(len(steps) - 1))
    assert [s.done for s in steps] == [False] * (len(steps) - 1) + [True]
    last = steps[-1]
    assert last.success and last.message and last.iteration == steps[-2].iteration
    np.testing.assert_allclose(A(last.x["x"]), np.ones(10), atol=1e-4)
    assert last.value < 1e-8 and steps[0].value == 9 * (100 * 4 + 4)
    assert float(A(steps[0].x["x"])[0]) == -1.0


def test_minimize_options(stub):
    steps = list(stub.Minimize(pb.MinimizeRequest(function=rosenbrock(10), x0={"x": T(-np.ones(10))},
                                                  max_iter=3)))
    assert steps[-1].done and steps[-1].iteration == 3 and not steps[-1].success
    steps = list(stub.Minimize(pb.MinimizeRequest(function=rosenbrock(10), x0={"x": T(-np.ones(10))},
                                                  method="newton-cg", gtol=1e-2)))
    assert steps[-1].success and steps[-1].grad_norm <= 1e-2 < steps[-3].grad_norm


@pytest.mark.parametrize("request_, status, says", [
    (pb.MinimizeRequest(function=rosenbrock(10), x0={"x": T(np.zeros(10))}, method="nelder-mead"),
     grpc.StatusCode.INVALID_ARGUMENT, "method is the string 'nelder-mead'"),
    (pb.MinimizeRequest(function=VECTOR_OUT, x0={"x": T(np.zeros(3)), "s": T(1.0)}),
     grpc.StatusCode.INVALID_ARGUMENT, "scalar output"),
    (pb.MinimizeRequest(function=rosenbrock(10), x0={"x": T(np.zeros(9))}),
     grpc.StatusCode.INVALID_ARGUMENT, "x0.x has shape [9], expected [10]"),
    (pb.MinimizeRequest(function=rosenbrock(10), x0={}), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'x'"),
    (pb.MinimizeRequest(function=rosenbrock(10), x0={"x": T(np.zeros(10))}, max_iter=-5),
     grpc.StatusCode.INVALID_ARGUMENT, "max_iter"),
    (pb.MinimizeRequest(id="nope", x0={"x": T(0.0)}), grpc.StatusCode.NOT_FOUND, "no function with id 'nope'"),
])
def test_minimize_refuses_before_streaming(stub, request_, status, says):
    e = failure(stub.Minimize, request_)
    assert e.code() == status and says in e.details()


def _long_minimization(stub, **call_options):
    """Rosenbrock in 2000 variables: thousands of L-BFGS iterations, so it cannot finish while a test watches."""
    call = stub.Minimize(pb.MinimizeRequest(function=rosenbrock(2000), x0={"x": T(-np.ones(2000))},
                                            max_iter=100_000, gtol=0.0), **call_options)
    assert [next(call).iteration for _ in range(3)] == [0, 1, 2]
    return call


def test_cancelling_minimize_stops_the_optimiser(stub, client):
    call = _long_minimization(stub)
    assert minimizers_running(client) == 1  # paused once unread iterates fill the buffers, holding its thread
    call.cancel()
    assert wait_until(lambda: minimizers_running(client) == 0, 2)


def test_a_deadline_stops_minimize(stub, client):
    call = _long_minimization(stub, timeout=2.0)
    with pytest.raises(grpc.RpcError) as e:
        for _ in call:
            time.sleep(0.05)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: minimizers_running(client) == 0, 2)
