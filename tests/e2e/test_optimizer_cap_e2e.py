"""The cap on optimiser runs in flight (ADSERVE_MAX_OPTIMIZERS), end to end: a server process capped at one
run, shared by REST and gRPC. Over the cap a Minimize is refused at once (429 with Retry-After and the error
body; RESOURCE_EXHAUSTED with retry-after), and a run's slot comes back however it ended: cancelled, its
client gone, past its deadline, refused for a bad request, finished.
"""

import json
import re

import grpc
import httpx
import pytest

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import free_port, running_server, wait_until

ROSENBROCK = "sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)"


def definition(n: int) -> dict:
    return {"inputs": [{"name": "x", "shape": [n]}], "expr": ROSENBROCK}


def grpc_request(function_id: str, n: int, **fields) -> pb.MinimizeRequest:
    return pb.MinimizeRequest(id=function_id, x0={"x": pb.Tensor(shape=[n], data=[-1.0] * n)}, **fields)


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    home = tmp_path_factory.mktemp("capped")
    env = {"ADSERVE_MAX_OPTIMIZERS": "1", "ADSERVE_CACHE_DIR": str(home / "cache"), "ADSERVE_COMPILE": "false"}
    with running_server(home / "server.log", grpc_port=free_port(), env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client, \
            grpc.insecure_channel(server.grpc) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        long_id = client.post("/v1/functions", json=definition(2000)).json()["id"]
        short_id = client.post("/v1/functions", json=definition(4)).json()["id"]
        yield server, client, ad_pb2_grpc.DifferentiatorStub(channel), long_id, short_id


def gauge(client: httpx.Client, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    assert found, f"{name} is not in /metrics"
    return float(found[1])


def in_flight(client) -> int:
    return int(gauge(client, "adserve_minimize_in_flight"))


def start_long_grpc(stub, long_id, **options):
    """Rosenbrock in 2000 variables, no gtol: it cannot finish while the test runs."""
    call = stub.Minimize(grpc_request(long_id, 2000, max_iter=100_000, gtol=0.0), **options)
    assert [next(call).iteration for _ in range(2)] == [0, 1]
    return call


def refused_over_grpc(stub, short_id) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Minimize(grpc_request(short_id, 4)))
    return e.value


def assert_refused_over_rest(client, short_id):
    r = client.post(f"/v1/functions/{short_id}/minimize", json={"x0": {"x": [-1.0] * 4}})
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert error["code"] == "too_many_optimizers" and "at most 1 at once" in error["message"]
    assert "ADSERVE_MAX_OPTIMIZERS" in error["message"]


def assert_accepted_over_rest(client, short_id):
    with client.stream("POST", f"/v1/functions/{short_id}/minimize", json={"x0": {"x": [-1.0] * 4}}) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["success"], lines[-1]


def test_a_second_run_is_refused_until_the_first_is_cancelled(capped):
    server, client, stub, long_id, short_id = capped
    assert gauge(client, "adserve_minimize_limit") == 1 and in_flight(client) == 0
    refused_before = gauge(client, "adserve_minimize_refused_total")
    call = start_long_grpc(stub, long_id)
    assert in_flight(client) == 1
    e = refused_over_grpc(stub, short_id)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 1 at once" in e.details() and "ADSERVE_MAX_OPTIMIZERS" in e.details()
    meta = dict(e.trailing_metadata())
    assert meta["adserve-error-code"] == "too_many_optimizers" and meta["retry-after"] == "1"
    assert_refused_over_rest(client, short_id)  # one cap for both protocols
    assert gauge(client, "adserve_minimize_refused_total") == refused_before + 2
    call.cancel()
    assert wait_until(lambda: in_flight(client) == 0, 10)
    assert_accepted_over_rest(client, short_id)
    assert wait_until(lambda: in_flight(client) == 0, 10)  # finished: its slot is back too
    progress = list(stub.Minimize(grpc_request(short_id, 4)))
    assert progress[-1].done and progress[-1].success


def test_a_rest_run_holds_the_slot_until_its_client_leaves(capped):
    server, client, stub, long_id, short_id = capped
    assert wait_until(lambda: in_flight(client) == 0, 10)
    with httpx.Client(base_url=server.url, timeout=60) as own:  # its own connection, to close
        with own.stream("POST", f"/v1/functions/{long_id}/minimize",
                        json={"x0": {"x": [-1.0] * 2000}, "max_iter": 100000, "gtol": 0}) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection when collected
            assert json.loads(next(lines))["iteration"] == 0
            assert in_flight(client) == 1
            assert refused_over_grpc(stub, short_id).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_until(lambda: in_flight(client) == 0, 10)
    assert_accepted_over_rest(client, short_id)


def test_a_deadline_gives_the_slot_back(capped):
    server, client, stub, long_id, short_id = capped
    assert wait_until(lambda: in_flight(client) == 0, 10)
    call = start_long_grpc(stub, long_id, timeout=3.0)
    assert_refused_over_rest(client, short_id)
    with pytest.raises(grpc.RpcError) as e:
        for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: in_flight(client) == 0, 10)
    assert_accepted_over_rest(client, short_id)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_refused_requests_give_the_slot_back(capped, protocol):
    server, client, stub, long_id, short_id = capped
    assert wait_until(lambda: in_flight(client) == 0, 10)
    for _ in range(3):  # at a cap of one, a slot kept by any of these would refuse the good run below
        if protocol == "rest":
            r = client.post(f"/v1/functions/{short_id}/minimize", json={"x0": {"x": [1.0, 2.0]}})
            assert r.status_code == 422 and r.json()["error"]["code"] == "shape_mismatch"
            r = client.post(f"/v1/functions/{'0' * 64}/minimize", json={"x0": {"x": [1.0] * 4}})
            assert r.status_code == 404
            assert client.post(f"/v1/functions/{short_id}/minimize", content=b"{x0").status_code == 400
        else:
            bad = pb.MinimizeRequest(id=short_id, x0={"x": pb.Tensor(shape=[2], data=[1.0, 2.0])})
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Minimize(bad))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Minimize(pb.MinimizeRequest(id="0" * 64, x0={"x": pb.Tensor(shape=[4], data=[1.0] * 4)})))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert in_flight(client) == 0
    assert_accepted_over_rest(client, short_id)


def test_the_cap_is_a_setting_with_a_default_per_core():
    from adserve.server.settings import Settings, default_max_optimizers
    assert Settings().max_optimizers == default_max_optimizers() >= 2
    assert Settings(max_optimizers=3).max_optimizers == 3
    with pytest.raises(ValueError):
        Settings(max_optimizers=0)
