"""Rate limits charge every request message of an EvaluateStream, end to end: a server process with API keys
and a token bucket of 4 per key, refilled at 0.01 a second (no token comes back while the test runs).
Opening a stream is free; each message read takes a token from the key's bucket, the same bucket as REST
requests and unary calls; the message that finds it empty ends the stream with RESOURCE_EXHAUSTED, the rate
and when to retry (the responses before it stand), and then REST answers 429 with Retry-After.
"""

import queue

import grpc
import httpx
import pytest

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import free_port, running_server

KEYS = ("key-lockstep", "key-pipelined", "key-shared")
BURST = 4
DEFINITION = {"inputs": [{"name": "x", "shape": []}], "expr": "sin(x) * x"}
LIMITED = "over the rate limit of 0.01 requests a second (bursts of 4); retry in"


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    home = tmp_path_factory.mktemp("limited")
    env = {"ADSERVE_API_KEYS": ",".join(KEYS), "ADSERVE_RATE_LIMIT_PER_SECOND": "0.01",
           "ADSERVE_RATE_LIMIT_BURST": str(BURST), "ADSERVE_CACHE_DIR": str(home / "cache"),
           "ADSERVE_COMPILE": "false"}
    with running_server(home / "server.log", grpc_port=free_port(), env=env) as server, \
            grpc.insecure_channel(server.grpc) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield server, ad_pb2_grpc.DifferentiatorStub(channel)


def auth(key):
    return (("authorization", f"Bearer {key}"),)


def request(x: float) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(function=pb.Definition(inputs=[pb.InputSpec(name="x")], expr=DEFINITION["expr"]),
                              inputs={"x": pb.Tensor(data=[x])}, compute=["value", "gradient"])


def assert_rate_limited(e: grpc.RpcError):
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    assert LIMITED in e.details()
    meta = dict(e.trailing_metadata())
    assert meta["adserve-error-code"] == "rate_limited"
    assert 90 <= int(meta["retry-after"]) <= 100  # a token every 100 s: about that long until the next


class Lockstep:
    """One EvaluateStream driven a message at a time: send one, read its answer."""

    def __init__(self, stub, key):
        self._requests = queue.Queue()
        self._responses = stub.EvaluateStream(iter(self._requests.get, None), metadata=auth(key))

    def step(self, x: float) -> pb.EvaluateResponse:
        self._requests.put(request(x))
        return next(self._responses)

    def close(self):
        self._requests.put(None)
        self._responses.cancel()


def test_each_message_of_a_stream_takes_a_token(limited):
    server, stub = limited
    stream = Lockstep(stub, KEYS[0])
    try:
        # a bucket of 4: the stream's opening took none, or the 4th message would be refused
        answers = [stream.step(float(i)).value.data[0] for i in range(BURST)]
        assert len(answers) == BURST
        with pytest.raises(grpc.RpcError) as e:
            stream.step(9.0)
        assert_rate_limited(e.value)
    finally:
        stream.close()
    # the same bucket for a unary call and for REST
    with pytest.raises(grpc.RpcError) as e:
        stub.Evaluate(request(1.0), metadata=auth(KEYS[0]))
    assert_rate_limited(e.value)
    r = httpx.post(server.url + "/v1/evaluate", headers={"Authorization": f"Bearer {KEYS[0]}"},
                   json={"function": DEFINITION, "inputs": {"x": 1.0}})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 90
    assert r.json()["error"]["code"] == "rate_limited" and LIMITED in r.json()["error"]["message"]


def test_a_client_sending_ahead_gets_answers_up_to_the_limit_then_the_error(limited):
    server, stub = limited
    answered = []
    with pytest.raises(grpc.RpcError) as e:
        for response in stub.EvaluateStream(iter([request(float(i)) for i in range(10)]), metadata=auth(KEYS[1])):
            answered.append(response.value.data[0])
    assert_rate_limited(e.value)
    assert len(answered) == BURST  # the answers before the refused message stand, in order


def test_rest_requests_and_stream_messages_share_a_key_budget(limited):
    server, stub = limited
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEYS[2]}) as rest:
        for _ in range(2):
            assert rest.post("/v1/evaluate", json={"function": DEFINITION, "inputs": {"x": 0.5}}).status_code == 200
        stream = Lockstep(stub, KEYS[2])
        try:
            assert len([stream.step(float(i)) for i in range(BURST - 2)]) == BURST - 2
            with pytest.raises(grpc.RpcError) as e:
                stream.step(3.0)
            assert_rate_limited(e.value)
        finally:
            stream.close()
        assert rest.post("/v1/evaluate", json={"function": DEFINITION, "inputs": {"x": 0.5}}).status_code == 429
        # open routes take no token
        assert rest.get("/readyz").status_code == 200
        metrics = rest.get("/metrics").text
    assert 'adserve_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="EvaluateStream",' \
           'service="ad.v1.Differentiator"}' in metrics


def test_a_wrong_key_still_ends_a_stream_when_it_opens(limited):
    server, stub = limited
    stream = Lockstep(stub, "not-a-key")
    try:
        with pytest.raises(grpc.RpcError) as e:
            stream.step(1.0)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stream.close()
