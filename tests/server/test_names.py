"""Names and listings (REST and gRPC, in process): a definition's name is a tag on its id, accepted wherever
an id is; `GET /v1/functions` and `ListFunctions` page through the registered functions in id order."""

import asyncio

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from adserve.engine import Engine
from adserve.server.app import build
from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from adserve.server.service import Service
from adserve.server.settings import Settings
from server_process import free_port

SQUARES = {"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(x * x)"}
SINE = {"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(sin(x))"}
AT = {"inputs": {"x": [1.0, 2.0]}, "compute": ["value", "gradient"]}


@pytest.fixture
def c():
    return TestClient(build(Settings(grpc_port=0), service=Service(Engine(), result_cache_bytes=1 << 20)).http)


def test_a_name_is_not_part_of_the_id_and_moves_like_a_tag(c):
    plain = c.post("/v1/functions", json=SQUARES).json()
    named = c.post("/v1/functions", json={**SQUARES, "name": "f"})
    assert named.status_code == 200 and named.json() == {**plain, "name": "f"}  # same id, known already
    assert "name" not in plain
    assert c.post("/v1/functions", json={**SQUARES, "name": "g.v1-2_x"}).json()["id"] == plain["id"]  # two names
    moved = c.post("/v1/functions", json={**SINE, "name": "f"})
    assert moved.status_code == 201 and moved.json()["name"] == "f"
    assert c.get("/v1/functions/f").json()["id"] == moved.json()["id"] != plain["id"]
    assert c.get("/v1/functions/g.v1-2_x").json() == {**plain, "name": "g.v1-2_x"}
    assert c.get(f"/v1/functions/{plain['id']}").json()["id"] == plain["id"]


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "slash/no", "é", 7, None, ["f"]])
def test_a_name_outside_the_rule_is_422_naming_the_rule(c, name):
    r = c.post("/v1/functions", json={**SQUARES, "name": name})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_name"
    assert "1-64 characters" in r.json()["error"]["message"]
    assert c.get("/v1/functions").json() == {"functions": []}  # a bad request registered nothing


def test_id_and_name_both_work_on_every_path(c):
    fid = c.post("/v1/functions", json={**SQUARES, "name": "sq"}).json()["id"]
    for target in (fid, "sq"):
        assert c.get(f"/v1/functions/{target}").json()["id"] == fid
        assert c.get(f"/v1/functions/{target}/graph").json()["inputs"] == SQUARES["inputs"]
        assert "def " in c.get(f"/v1/functions/{target}/source", params={"transform": "gradient"}).text
        r = c.post(f"/v1/functions/{target}/evaluate", json=AT).json()
        assert r["value"] == 5.0 and r["gradient"] == {"x": [2.0, 4.0]}
        lines = c.post(f"/v1/functions/{target}/minimize", json={"x0": {"x": [1.0, -1.0]}}).text.splitlines()
        assert '"done":true' in lines[-1]
    assert c.get("/v1/functions/nope").json()["error"]["code"] == "function_not_found"
    # a definition sent with the evaluation may carry a name too
    r = c.post("/v1/evaluate", json={**AT, "function": {**SINE, "name": "sn"}})
    assert r.status_code == 200 and c.get("/v1/functions/sn").json()["name"] == "sn"


def test_listing_pages_in_id_order(c):
    ids = sorted(c.post("/v1/functions", json={"inputs": [{"name": "x", "shape": []}], "expr": f"x * {i}.5"}).json()["id"]
                 for i in range(7))
    c.post("/v1/functions", json={"inputs": [{"name": "x", "shape": []}], "expr": "x * 3.5", "name": "three"})
    seen, after, pages = [], None, 0
    while True:
        body = c.get("/v1/functions", params={"limit": 3, **({"after": after} if after else {})}).json()
        pages += 1
        seen += body["functions"]
        after = body.get("next")
        if after is None:
            break
        assert after == body["functions"][-1]["id"] and len(body["functions"]) == 3
    assert pages == 3 and [f["id"] for f in seen] == ids
    assert [f.get("name") for f in seen].count("three") == 1
    assert set(seen[0]) >= {"id", "inputs", "output_shape", "n_nodes"}
    assert len(c.get("/v1/functions").json()["functions"]) == 7  # the default page holds them all


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=2.5", f"after={'x' * 201}"])
def test_bad_listing_parameters_are_422(c, query):
    r = c.get(f"/v1/functions?{query}")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"


def test_grpc_names_listing_and_get_function():
    async def scenario():
        port = free_port()
        server = build(Settings(grpc_port=port), service=Service(result_cache_bytes=1 << 20))
        await server.start()
        await server.serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ad_pb2_grpc.DifferentiatorStub(channel)
                spec = [pb.InputSpec(name="x", shape=[2])]
                info = await stub.Register(pb.Definition(inputs=spec, expr="sum(x * x)", name="sq"))
                other = await stub.Register(pb.Definition(inputs=spec, expr="sum(x * x)"))
                x = {"x": pb.Tensor(shape=[2], data=[1.0, 2.0])}
                by_name = await stub.Evaluate(pb.EvaluateRequest(id="sq", inputs=x, compute=["gradient"]))
                got = await stub.GetFunction(pb.GetFunctionRequest(id="sq"))
                by_id = await stub.GetFunction(pb.GetFunctionRequest(id=info.id))
                first = await stub.ListFunctions(pb.ListFunctionsRequest(limit=1))
                steps = [m.iteration async for m in stub.Minimize(pb.MinimizeRequest(id="sq", x0=x))]
                errors = []
                for call in (stub.GetFunction(pb.GetFunctionRequest(id="nope")),
                             stub.ListFunctions(pb.ListFunctionsRequest(limit=5000)),
                             stub.Register(pb.Definition(inputs=spec, expr="sum(x)", name="no spaces"))):
                    try:
                        await call
                    except grpc.aio.AioRpcError as e:
                        errors.append((e.code(), dict(e.trailing_metadata())["adserve-error-code"]))
                return info, other, by_name, got, by_id, first, steps, errors
        finally:
            await server.stop(0)

    info, other, by_name, got, by_id, first, steps, errors = asyncio.run(scenario())
    assert info.name == "sq" and info.created and other.id == info.id and not other.created
    assert list(by_name.gradient["x"].data) == [2.0, 4.0]
    assert got.id == by_id.id == info.id and got.name == by_id.name == "sq"
    assert [f.id for f in first.functions] == [info.id] and first.functions[0].name == "sq" and not first.next
    assert steps[0] == 0
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert errors == [(grpc.StatusCode.NOT_FOUND, "function_not_found"), (invalid, "invalid_parameter"),
                      (invalid, "invalid_name")]


def test_the_service_takes_the_name_off_before_the_engine():
    seen = []

    class Watching(Engine):
        def compile_definition(self, defn, max_depth=None):
            seen.append(dict(defn))
            return super().compile_definition(defn, max_depth)

    s = Service(Watching(), result_cache_bytes=1 << 20)
    info, created = s.register({**SQUARES, "name": "f"})
    assert created and info["name"] == "f" and all("name" not in d for d in seen)
    assert np.isclose(s.evaluate("f", {"inputs": {"x": [3.0, 4.0]}})["value"], 25.0)
