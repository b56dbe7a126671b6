"""The shared registry and result cache (Redis) in process: packing, the circuit breaker, two services.

Each test that needs Redis starts its own redis-server on a free loopback port.
"""

import logging
import time

import numpy as np
import pytest

from adserve.server.service import Service
from adserve.server.shared import SharedStore, Unpackable, pack, unpack
from redis_process import RedisProcess

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
AT = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}


@pytest.fixture
def redis_proc(tmp_path):
    r = RedisProcess(tmp_path).start()
    yield r
    r.kill()


def store(redis_proc, **kw) -> SharedStore:
    return SharedStore(redis_proc.url, probe_interval=kw.pop("probe_interval", 0.1), **kw)


def services(redis_proc, n=2, **kw):
    return [Service(result_cache_bytes=1 << 20, shared=store(redis_proc, **kw)) for _ in range(n)]


# -- packing -------------------------------------------------------------------------------
def test_pack_round_trips_arrays_scalars_and_plain_data():
    tree = {"value": np.array(1.5), "jacobian": {"x": np.arange(6.0).reshape(2, 3)},
            "empty": np.zeros((0, 3)), "odd": np.array([np.nan, np.inf, -np.inf, -0.0]),
            "f": 2.5, "trace": ({"name": "v1", "shape": (2,), "output": False, "value": np.ones(2)},)}
    back = unpack(pack(tree))
    assert back["value"].shape == () and back["value"] == 1.5
    np.testing.assert_array_equal(back["jacobian"]["x"], tree["jacobian"]["x"])
    assert back["empty"].shape == (0, 3)
    np.testing.assert_array_equal(back["odd"], tree["odd"])
    assert np.signbit(back["odd"][3])
    assert back["f"].shape == () and back["f"] == 2.5
    assert back["trace"][0]["name"] == "v1" and back["trace"][0]["shape"] == [2]
    assert back["trace"][0]["output"] is False
    np.testing.assert_array_equal(back["trace"][0]["value"], np.ones(2))


def test_pack_refuses_what_it_cannot_tell_apart():
    with pytest.raises(Unpackable):
        pack({"\x00a": 1})
    with pytest.raises(Unpackable):
        unpack(b"nope")


# -- the store and its breaker ------------------------------------------------------------
def test_down_at_start_serves_from_memory_then_connects(tmp_path, caplog):
    redis_proc = RedisProcess(tmp_path)  # not started yet
    caplog.set_level(logging.INFO, "adserve.shared")
    a = Service(result_cache_bytes=1 << 20, shared=store(redis_proc))
    try:
        assert "unreachable" in caplog.text
        info, created = a.register(SURVEY)
        assert created
        assert a.evaluate(info["id"], AT)["cached"] is False
        redis_proc.start()
        wait_for(lambda: a._shared.up)
        # what was registered while Redis was away has been written back
        assert redis_proc.client().exists("adserve:v1:fn:" + info["id"])
    finally:
        a.close()
        redis_proc.kill()


def test_a_dead_redis_costs_no_time_per_request(redis_proc):
    s = store(redis_proc, probe_interval=30)
    s.start(lambda: ())
    try:
        assert s.up
        redis_proc.kill()
        assert s.get_definition("abc") is None  # this call finds out, and opens the breaker
        assert not s.up and s.errors == 1
        calls = []
        real = s._client

        class Counting:  # a method of the client called is a network call
            def __getattr__(self, name):
                method = getattr(real, name)
                return lambda *a, **k: calls.append(name) or method(*a, **k)

        s._client = Counting()
        for _ in range(1000):
            assert s.get_definition("abc") is None
            s.put_result(("f", ("value",), False, b"\x00"), {"value": np.ones(3)})
        assert calls == [] and s.errors == 1  # the open breaker answers without touching the network
        s._client = real
    finally:
        s.close()


def test_two_services_share_registry_and_results(redis_proc):
    a, b = services(redis_proc)
    try:
        info, created = a.register(SURVEY)
        assert created
        assert b.info(info["id"]) == info  # fetched from Redis and compiled: the same id
        assert b.register(SURVEY) == (info, False)  # already registered, if on another replica
        first = a.evaluate(info["id"], AT)
        second = b.evaluate(info["id"], AT)
        assert first["cached"] is False and second["cached"] is True
        assert float(second["value"]) == float(first["value"])
        assert float(second["gradient"]["x2"]) == float(first["gradient"]["x2"])
        assert b.stats()["shared"]["hits"] == 1 and b.stats()["shared"]["fetches"] == 1
    finally:
        a.close()
        b.close()


def test_results_expire_and_large_ones_stay_local(redis_proc):
    a, b = services(redis_proc, result_ttl=100, result_max_bytes=200)
    try:
        fn = a.register({"inputs": [{"name": "x", "shape": [50]}], "expr": "sum(x*x)"})[0]["id"]
        a.evaluate(fn, {"inputs": {"x": [1.0] * 50}, "compute": ["value"]})
        a.evaluate(fn, {"inputs": {"x": [1.0] * 50}, "compute": ["gradient"]})  # 400 bytes of gradient
        r = redis_proc.client()
        keys = r.keys("adserve:v1:result:*")
        assert len(keys) == 1 and 0 < r.ttl(keys[0]) <= 100
        assert r.ttl("adserve:v1:fn:" + fn) == -1  # definitions never expire
        assert b.evaluate(fn, {"inputs": {"x": [1.0] * 50}, "compute": ["value"]})["cached"] is True
        assert b.evaluate(fn, {"inputs": {"x": [1.0] * 50}, "compute": ["gradient"]})["cached"] is False
    finally:
        a.close()
        b.close()


def test_killed_mid_run_then_restarted_empty(redis_proc, caplog):
    caplog.set_level(logging.INFO, "adserve.shared")
    a, b = services(redis_proc)
    try:
        fn = a.register(SURVEY)[0]["id"]
        b.info(fn)
        redis_proc.kill()
        for i in range(20):  # both keep answering, from memory
            for s in (a, b):
                r = s.evaluate(fn, {"inputs": {"x1": 1.0 + i, "x2": 2.0}, "compute": ["value"]})
                assert np.isfinite(r["value"])
        assert "failed" in caplog.text
        assert not a._shared.up and not b._shared.up
        only_a = a.register({"inputs": [{"name": "x", "shape": []}], "expr": "x**3"})[0]["id"]
        redis_proc.start()  # same port, no data
        wait_for(lambda: a._shared.up and b._shared.up)
        assert "reachable again" in caplog.text
        c = services(redis_proc, n=1)[0]
        try:
            assert c.info(only_a)["id"] == only_a
            assert c.info(fn)["id"] == fn
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_a_definition_that_compiles_to_another_id_is_ignored(redis_proc):
    a, b = services(redis_proc)
    try:
        fn = a.register(SURVEY)[0]["id"]
        other = a.register({"inputs": [{"name": "x", "shape": []}], "expr": "x + 1"})[0]["id"]
        r = redis_proc.client()
        r.set("adserve:v1:fn:" + fn, r.get("adserve:v1:fn:" + other))
        r.set("adserve:v1:fn:deadbeef", b"not json")
        for missing in (fn, "deadbeef", "nope"):
            with pytest.raises(Exception) as e:
                b.info(missing)
            assert getattr(e.value, "code", None) == "function_not_found"
    finally:
        a.close()
        b.close()


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_names_listings_and_held_tensors_are_shared_and_written_back(redis_proc):
    from adserve.server import tenancy

    a, b = services(redis_proc)
    try:
        with tenancy.acting_as("k" * 32):
            fn = a.register({**SURVEY, "name": "survey"})[0]["id"]
            assert b.info("survey") == {**a.info(fn), "name": "survey"}
            ref = a.put_tensor([1.0, 2.0])["ref"]
            assert b.held_tensor(ref).tolist() == [1.0, 2.0]
            assert b.list_functions() == a.list_functions() and len(a.list_functions()[0]) == 1
        assert b.list_functions() == ([], None)  # another tenant's listing
        redis_proc.kill()
        redis_proc.start()  # same port, no data: a writes back its registrations and names
        wait_for(lambda: redis_proc.client().hget(f"adserve:v1:t:{'k' * 32}:names", "survey") is not None)
        c = services(redis_proc, n=1)[0]
        try:
            with tenancy.acting_as("k" * 32):
                assert c.info("survey")["id"] == fn and [f["id"] for f in c.list_functions()[0]] == [fn]
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_an_id_only_redis_holds_is_503_while_the_breaker_is_open(redis_proc):
    """A replica asked for an id or name it does not hold, while Redis is unreachable, cannot know whether
    another replica registered it: 503 `registry_unavailable` with Retry-After (gRPC UNAVAILABLE with
    `retry-after`), not a 404 the client would take as final. What it holds still answers, and once Redis is
    back the id resolves; an id nobody has is a 404 again."""
    import asyncio

    import grpc
    from fastapi.testclient import TestClient

    from adserve.server import errors
    from adserve.server.app import build
    from adserve.server.grpc_gen import ad_pb2 as pb
    from adserve.server.grpc_gen import ad_pb2_grpc
    from adserve.server.settings import Settings
    from server_process import free_port

    a, b = services(redis_proc, probe_interval=0.2)
    try:
        fn = a.register({**SURVEY, "name": "survey"})[0]["id"]
        held = b.register({"inputs": [{"name": "x", "shape": []}], "expr": "x * 2"})[0]["id"]
        redis_proc.kill()
        for target in (fn, "survey"):
            with pytest.raises(errors.ServiceError) as e:
                b.info(target)
            assert (e.value.kind, e.value.code) == (errors.UNAVAILABLE, "registry_unavailable")
            assert e.value.retry_after == 0.2 and "Redis" in e.value.message
        assert b.info(held)["id"] == held  # what this replica holds needs no Redis

        port = free_port()
        server = build(Settings(grpc_port=port), service=b)
        r = TestClient(server.http).post(f"/v1/functions/{fn}/evaluate", json=AT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"
        assert int(r.headers["retry-after"]) >= 1

        async def grpc_call():
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = ad_pb2_grpc.DifferentiatorStub(channel)
                    try:
                        await stub.Evaluate(pb.EvaluateRequest(id=fn, inputs={"x1": pb.Tensor(data=[2.0]),
                                                                              "x2": pb.Tensor(data=[5.0])}))
                    except grpc.aio.AioRpcError as err:
                        return err.code(), dict(err.trailing_metadata()).get("retry-after")
            finally:
                await server.stop(0)
        code, retry = asyncio.run(grpc_call())
        assert code == grpc.StatusCode.UNAVAILABLE and retry is not None

        redis_proc.start()  # empty: a writes its registrations back
        wait_for(lambda: b._shared.up and redis_proc.client().exists("adserve:v1:fn:" + fn))
        assert b.info(fn)["id"] == fn
        with pytest.raises(errors.ServiceError) as e:
            b.info("0" * 64)
        assert e.value.code == "function_not_found"
    finally:
        a.close()
        b.close()
