"""gRPC calls in /metrics, end to end against the session's server process (conftest.py): calls by service,
method and status code, their durations, and the messages each method read and wrote, unary and streaming,
in the registry /metrics serves beside the HTTP counters. Counts are compared before and after the calls
made here (the server is shared with other test files, which make calls of their own)."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import wait_until

SERVICE = "ad.v1.Differentiator"
# a definition of this file's own: nothing else registers it, so nothing else asks for it
DEFINITION = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[3])], expr="sum(x * x * 1.2345)")


def T(a) -> pb.Tensor:
    a = np.asarray(a, dtype=np.float64)
    return pb.Tensor(shape=a.shape, data=a.ravel().tolist())


def samples(client) -> dict:
    """{(sample name, sorted labels): value} of everything /metrics says now."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def calls(snapshot, method, code, service=SERVICE) -> float:
    return snapshot.get(("adserve_grpc_requests_total", (("code", code), ("method", method), ("service", service))), 0)


def duration_count(snapshot, method, code, service=SERVICE) -> float:
    key = ("adserve_grpc_request_duration_seconds_count", (("code", code), ("method", method), ("service", service)))
    return snapshot.get(key, 0)


def messages(snapshot, way, method, service=SERVICE) -> float:
    return snapshot.get((f"adserve_grpc_messages_{way}_total", (("method", method), ("service", service))), 0)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


def test_unary_calls_are_counted_by_method_and_code(channel, client):
    stub = ad_pb2_grpc.DifferentiatorStub(channel)
    before = samples(client)
    function_id = stub.Register(DEFINITION).id
    stub.Evaluate(pb.EvaluateRequest(id=function_id, inputs={"x": T([1.0, 2.0, 3.0])}, compute=["gradient"]))
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as e:
            stub.Evaluate(pb.EvaluateRequest(id="0" * 64, inputs={"x": T([1.0, 2.0, 3.0])}))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.Evaluate(pb.EvaluateRequest(id=function_id, inputs={"x": T([1.0, 2.0])}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    after = samples(client)

    def delta(f, *args):
        return f(after, *args) - f(before, *args)
    assert delta(calls, "Register", "OK") == 1
    assert delta(calls, "Evaluate", "OK") == 1
    assert delta(calls, "Evaluate", "NOT_FOUND") == 2
    assert delta(calls, "Evaluate", "INVALID_ARGUMENT") == 1
    assert delta(calls, "Check", "OK", "grpc.health.v1.Health") == 1
    assert delta(duration_count, "Evaluate", "NOT_FOUND") == 2  # every call is timed, failed ones too
    assert delta(messages, "received", "Evaluate") == 4
    assert delta(messages, "sent", "Evaluate") == 1  # failed calls answer no message
    # beside the HTTP counters, in one registry
    assert any(name == "adserve_http_requests_total" for name, _ in after)


def test_streams_count_messages_both_ways(channel, client):
    stub = ad_pb2_grpc.DifferentiatorStub(channel)
    function_id = stub.Register(DEFINITION).id
    before = samples(client)
    requests = [pb.EvaluateRequest(id=function_id, inputs={"x": T([float(i), 1.0, 2.0])}) for i in range(5)]
    assert len(list(stub.EvaluateStream(iter(requests)))) == 5
    bad = requests[:2] + [pb.EvaluateRequest(id="0" * 64, inputs={"x": T([1.0, 2.0, 3.0])})]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.EvaluateStream(iter(bad)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    progress = list(stub.Minimize(pb.MinimizeRequest(id=function_id, x0={"x": T([1.0, -2.0, 3.0])})))
    assert progress[-1].done
    after = samples(client)

    def delta(f, *args):
        return f(after, *args) - f(before, *args)
    assert delta(calls, "EvaluateStream", "OK") == 1
    assert delta(calls, "EvaluateStream", "NOT_FOUND") == 1
    assert delta(messages, "received", "EvaluateStream") == 8
    assert delta(messages, "sent", "EvaluateStream") == 7
    assert delta(calls, "Minimize", "OK") == 1
    assert delta(messages, "received", "Minimize") == 1
    assert delta(messages, "sent", "Minimize") == len(progress)


def test_cancelled_and_past_deadline_calls_say_so(channel, client):
    stub = ad_pb2_grpc.DifferentiatorStub(channel)
    big = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[1500])],
                        expr="sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)")
    request = pb.MinimizeRequest(function=big, x0={"x": T(-np.ones(1500))}, max_iter=100_000, gtol=0.0)
    before = samples(client)
    call = stub.Minimize(request)
    assert next(call).iteration == 0
    call.cancel()
    assert wait_until(lambda: calls(samples(client), "Minimize", "CANCELLED") == calls(before, "Minimize",
                                                                                       "CANCELLED") + 1, 10)
    call = stub.Minimize(request, timeout=2.0)
    with pytest.raises(grpc.RpcError) as e:
        for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: calls(samples(client), "Minimize", "DEADLINE_EXCEEDED") == calls(
        before, "Minimize", "DEADLINE_EXCEEDED") + 1, 10)

