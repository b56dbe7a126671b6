"""Tenants: with API keys configured, each key has its own names, listing, registry and held tensors;
compiled functions are shared by content. A flood of registrations from one key evicts its own first."""

import asyncio

import grpc
import pytest
from fastapi.testclient import TestClient

from adserve.server.app import build
from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from adserve.server.service import Service
from adserve.server.settings import Settings
from server_process import free_port

A, B = {"Authorization": "Bearer key-a"}, {"X-API-Key": "key-b"}
SQUARES = {"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(x * x)"}
AT = {"inputs": {"x": [1.0, 2.0]}}


def app(**service):
    s = Service(result_cache_bytes=1 << 20, tenants=2, **service)
    return TestClient(build(Settings(grpc_port=0, api_keys="key-a,key-b"), service=s).http), s


def test_one_key_cannot_see_or_use_what_another_registered():
    c, service = app()
    a = c.post("/v1/functions", json={**SQUARES, "name": "mine"}, headers=A).json()
    fid = a["id"]
    for path in (f"/v1/functions/{fid}", "/v1/functions/mine", f"/v1/functions/{fid}/graph",
                 f"/v1/functions/{fid}/source"):
        r = c.get(path, headers=B)
        assert r.status_code == 404 and r.json()["error"]["code"] == "function_not_found", path
        assert c.get(path, headers=A).status_code == 200, path
    for target in (fid, "mine"):
        assert c.post(f"/v1/functions/{target}/evaluate", json=AT, headers=B).status_code == 404
        assert c.post(f"/v1/functions/{target}/minimize", json={"x0": {"x": [1.0, 1.0]}}, headers=B).status_code == 404
    assert c.get("/v1/functions", headers=B).json() == {"functions": []}
    assert [f["id"] for f in c.get("/v1/functions", headers=A).json()["functions"]] == [fid]
    # A's own calls go through, the optimiser's thread included (it evaluates as A)
    lines = c.post("/v1/functions/mine/minimize", json={"x0": {"x": [1.0, 1.0]}}, headers=A).text.splitlines()
    assert '"done":true' in lines[-1] and '"error"' not in lines[-1]

    # B registers the same definition itself: new for B (201, nothing said about A), same id, and B's own name
    other = {"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(x)"}
    mine_b = c.post("/v1/functions", json={**other, "name": "mine"}, headers=B).json()
    r = c.post("/v1/functions", json=SQUARES, headers=B)
    assert r.status_code == 201 and r.json()["id"] == fid
    assert c.get("/v1/functions/mine", headers=B).json()["id"] == mine_b["id"]
    assert c.get("/v1/functions/mine", headers=A).json()["id"] == fid  # A's name did not move
    assert c.post(f"/v1/functions/{fid}/evaluate", json=AT, headers=B).json()["value"] == 5.0
    assert service.stats()["functions"] == 2  # the compiled function is one, shared by content


def test_held_tensors_are_per_key():
    c, _ = app()
    ref = c.post("/v1/tensors", json=[1.0, 2.0], headers=A).json()["ref"]
    body = {"function": SQUARES, "inputs": {"x": {"ref": ref}}}
    assert c.post("/v1/evaluate", json=body, headers=A).status_code == 200
    r = c.post("/v1/evaluate", json=body, headers=B)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_tensor"
    assert c.post("/v1/tensors", json=[1.0, 2.0], headers=B).json()["ref"] == ref  # a content address
    assert c.post("/v1/evaluate", json=body, headers=B).status_code == 200


def test_a_flood_from_one_key_evicts_its_own_registrations_first():
    c, service = app(definition_bytes=2 * 12_000, max_functions=16)
    kept = [c.post("/v1/functions", json={"inputs": [{"name": "x", "shape": []}], "expr": f"x + {i}.25",
                                          "name": f"b{i}"}, headers=B).json()["id"] for i in range(5)]
    flood = [c.post("/v1/functions", json={"inputs": [{"name": "x", "shape": []}], "expr": f"x * {i}.5"},
                    headers=A).json()["id"] for i in range(300)]
    assert c.get(f"/v1/functions/{flood[0]}", headers=A).status_code == 404  # A's own oldest went
    assert c.get(f"/v1/functions/{flood[-1]}", headers=A).status_code == 200
    for i, fid in enumerate(kept):  # B's are all still registered (compiled again where evicted)
        assert c.post(f"/v1/functions/b{i}/evaluate", json={"inputs": {"x": 1.0}}, headers=B).json()["value"] == 1 + i + .25
    assert [f["id"] for f in c.get("/v1/functions", headers=B).json()["functions"]] == sorted(kept)
    assert service.stats()["functions"] <= 16


@pytest.mark.parametrize("use_b_key", [False, True])
def test_grpc_calls_are_scoped_by_their_key(use_b_key):
    async def scenario():
        port = free_port()
        server = build(Settings(grpc_port=port, api_keys="key-a,key-b"),
                       service=Service(result_cache_bytes=1 << 20, tenants=2))
        await server.start()
        await server.serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ad_pb2_grpc.DifferentiatorStub(channel)
                md_a, md_b = (("authorization", "Bearer key-a"),), (("x-api-key", "key-b"),)
                spec = [pb.InputSpec(name="x", shape=[])]
                await stub.Register(pb.Definition(inputs=spec, expr="sin(x)", name="f"), metadata=md_a)
                md = md_b if use_b_key else md_a
                listed = await stub.ListFunctions(pb.ListFunctionsRequest(), metadata=md)
                try:
                    got = (await stub.GetFunction(pb.GetFunctionRequest(id="f"), metadata=md)).name
                except grpc.aio.AioRpcError as e:
                    got = e.code()
                return [f.name for f in listed.functions], got
        finally:
            await server.stop(0)

    listed, got = asyncio.run(scenario())
    if use_b_key:
        assert listed == [] and got == grpc.StatusCode.NOT_FOUND
    else:
        assert listed == ["f"] and got == "f"


def test_a_call_without_its_tenant_finds_nothing():
    """Each call's tenant follows it into worker threads; code that loses it (a bare thread) finds no
    function at all, rather than everyone's."""
    import threading

    from adserve.server import tenancy
    from adserve.server.errors import ServiceError

    s = Service(result_cache_bytes=1 << 20, tenants=2)
    with tenancy.acting_as("a" * 32):
        fid = s.register(SQUARES)[0]["id"]
        assert s.info(fid)["id"] == fid
        outcome = []

        def bare():
            try:
                outcome.append(s.info(fid))
            except ServiceError as e:
                outcome.append(e.code)
        thread = threading.Thread(target=bare)
        thread.start()
        thread.join()
    assert outcome == ["function_not_found"]
