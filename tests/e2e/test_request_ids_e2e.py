"""Request ids and JSON logs against a real server process: the id a call carried (X-Request-ID, gRPC
`x-request-id` metadata) is answered back and is in the JSON log line of that call; one is made up when
none (or a bad one) is sent."""

import json

import grpc
import httpx
import pytest

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import free_port, running_server, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("ids") / "server.log", grpc_port=free_port(),
                        env={"ADSERVE_LOG_FORMAT": "json", "ADSERVE_COMPILE": "false"}) as s:
        yield s


def log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def lines_of(server, rid: str) -> list[dict]:
    found = []
    wait_until(lambda: found.extend(x for x in log_lines(server) if x.get("request_id") == rid) or found, 10)
    return found


def grpc_access_lines(server, rid: str) -> list[dict]:
    return [x for x in lines_of(server, rid) if x["logger"] == "adserve.grpc.access"]


SQUARE = pb.EvaluateRequest(function=pb.Definition(inputs=[pb.InputSpec(name="x")], expr="x * x"),
                            inputs={"x": pb.Tensor(data=[3.0])}, compute=["value"])


def test_every_log_line_is_json(server):
    httpx.get(server.url + "/healthz")
    text = server.log().splitlines()
    assert text and all(line.startswith("{") for line in text), text[:3]
    assert {"time", "level", "logger", "message"} <= log_lines(server)[0].keys()


def test_a_rest_request_id_is_answered_and_logged(server):
    r = httpx.post(server.url + "/v1/evaluate", headers={"X-Request-ID": "rest-7f3a.1"},
                   json={"function": {"inputs": [{"name": "x", "shape": []}], "expr": "x * x"},
                         "inputs": {"x": 3.0}, "compute": ["value"]})
    assert r.status_code == 200 and r.headers["x-request-id"] == "rest-7f3a.1"
    [line] = [x for x in lines_of(server, "rest-7f3a.1") if x["logger"] == "uvicorn.access"]
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/evaluate", 200)


def test_a_request_without_an_id_or_with_a_bad_one_gets_a_new_one(server):
    made = httpx.get(server.url + "/healthz").headers["x-request-id"]
    replaced = httpx.get(server.url + "/healthz", headers={"X-Request-ID": "a b;" * 50}).headers["x-request-id"]
    assert len(made) == 32 and len(replaced) == 32 and made != replaced
    assert lines_of(server, made)


def test_a_grpc_request_id_is_answered_and_logged(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = ad_pb2_grpc.DifferentiatorStub(channel)
        _, call = stub.Evaluate.with_call(SQUARE, metadata=[("x-request-id", "grpc-42")], timeout=30)
        assert ("x-request-id", "grpc-42") in call.trailing_metadata()  # a unary answer's trailers
        with pytest.raises(grpc.RpcError) as e:  # a failed call has its id (beside its error code) and its line
            stub.Evaluate(pb.EvaluateRequest(id="nope"), metadata=[("x-request-id", "grpc-43")],
                          timeout=30)
        assert {("x-request-id", "grpc-43"), ("adserve-error-code", "function_not_found")} <= \
            set(e.value.trailing_metadata())
        _, call = stub.Evaluate.with_call(SQUARE, timeout=30)
        [made] = [v for k, v in call.trailing_metadata() if k == "x-request-id"]
        assert len(made) == 32
    [ok] = grpc_access_lines(server, "grpc-42")
    assert (ok["grpc_method"], ok["grpc_code"]) == ("/ad.v1.Differentiator/Evaluate", "OK")
    [failed] = grpc_access_lines(server, "grpc-43")
    assert failed["grpc_code"] == "NOT_FOUND"
    assert lines_of(server, made)


def test_a_grpc_stream_has_its_request_id_before_its_first_answer(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = ad_pb2_grpc.DifferentiatorStub(channel)
        stream = stub.EvaluateStream(iter([SQUARE] * 3), metadata=[("x-request-id", "stream-7")], timeout=30)
        assert ("x-request-id", "stream-7") in stream.initial_metadata()  # before any answer is read
        assert [r.value.data[0] for r in stream] == [9.0] * 3
        assert ("x-request-id", "stream-7") in stream.trailing_metadata()
    [line] = grpc_access_lines(server, "stream-7")
    assert (line["grpc_method"], line["grpc_code"]) == ("/ad.v1.Differentiator/EvaluateStream", "OK")
