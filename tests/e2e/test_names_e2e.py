"""Names, listings and held tensors end to end: the Python clients (REST and gRPC) against the session's
server, and two keyed replicas sharing one real redis-server, which list the same set and resolve each
other's names and refs, per key."""

import contextlib

import httpx
import numpy as np
import pytest

from adserve_client import Client, GrpcClient, NotFound, expr
from redis_process import RedisProcess
from server_process import running_server

SUM_SQ = expr("sum(x * x)", x=[3])


@pytest.fixture(scope="module", params=["rest", "grpc"])
def ad(request, server):
    client = Client(server.url) if request.param == "rest" else GrpcClient(server.grpc)
    with client:
        yield client


def test_clients_name_list_and_hold(ad):
    name = f"e2e.sum-sq.{type(ad).__name__}"
    f = ad.register({**SUM_SQ, "name": name})
    assert f.name == name and ad.info(name).id == f.id and ad.info(f).name == name
    assert ad.evaluate(name, {"x": [1.0, 2.0, 3.0]}, compute=["gradient"]).gradient["x"].tolist() == [2.0, 4.0, 6.0]
    seen, after = [], None
    while True:
        page = ad.list_functions(limit=2, after=after)
        seen += page.functions
        if page.next is None:
            break
        after = page.next
    assert [g.id for g in seen] == sorted(g.id for g in seen) and any(g.name == name for g in seen)
    held = ad.put_tensor(np.array([1.0, 2.0, 3.0]))
    assert held.shape == (3,) and held.dtype == "float64" and held.nbytes == 24
    r = ad.evaluate(f, {"x": held}, compute=["value", "vjp"], cotangent={"ref": ad.put_tensor(2.0).ref})
    assert r.value == 14.0 and r.vjp["x"].tolist() == [4.0, 8.0, 12.0]
    with pytest.raises(NotFound) as e:
        ad.evaluate(f, {"x": {"ref": "2" * 64}})
    assert e.value.code == "unknown_tensor"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("named-cluster")
    r = RedisProcess(tmp).start()
    env = {"ADSERVE_REDIS_URL": r.url, "ADSERVE_COMPILE": "false", "ADSERVE_CACHE_DIR": str(tmp / "cache"),
           "ADSERVE_API_KEYS": "key-a,key-b"}
    try:
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(running_server(tmp / f"replica{i}.log", env=env)).url for i in (0, 1)]
            yield urls
    finally:
        r.kill()


def clients(url):
    return (httpx.Client(base_url=url, timeout=30, headers={"Authorization": "Bearer key-a"}),
            httpx.Client(base_url=url, timeout=30, headers={"Authorization": "Bearer key-b"}))


def test_replicas_list_the_same_set_and_resolve_each_others_names_and_refs(replicas):
    (a0, b0), (a1, b1) = clients(replicas[0]), clients(replicas[1])
    ids = sorted(a0.post("/v1/functions", json={"inputs": [{"name": "x", "shape": []}], "expr": f"x * {i}.5"}).json()
                 ["id"] for i in range(5))
    named = a1.post("/v1/functions", json={**SUM_SQ, "name": "shared"}).json()
    ids = sorted(ids + [named["id"]])
    listings = []
    for c in (a0, a1):
        page1 = c.get("/v1/functions", params={"limit": 4}).json()
        page2 = c.get("/v1/functions", params={"limit": 4, "after": page1["next"]}).json()
        assert "next" not in page2
        listings.append(page1["functions"] + page2["functions"])
    assert listings[0] == listings[1] and [f["id"] for f in listings[0]] == ids
    assert [f.get("name") for f in listings[0]].count("shared") == 1

    # a name given on one replica resolves on the other, and moving it there moves it here
    assert a0.get("/v1/functions/shared").json()["id"] == named["id"]
    moved = a0.post("/v1/functions", json={"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(x)",
                                           "name": "shared"}).json()
    assert a1.get("/v1/functions/shared").json()["id"] == moved["id"] != named["id"]

    # a ref held through one replica stands for its tensor on the other
    ref = a0.post("/v1/tensors", params={"shape": "3"}, content=np.array([1.0, 2.0, 3.0]).tobytes(),
                  headers={"Content-Type": "application/octet-stream"}).json()["ref"]
    r = a1.post("/v1/functions/shared/evaluate", json={"inputs": {"x": {"ref": ref}}, "compute": ["value"]})
    assert r.status_code == 200 and r.json()["value"]["b64"]

    # the other key sees none of it, on either replica
    for b in (b0, b1):
        assert b.get("/v1/functions").json() == {"functions": []}
        assert b.get("/v1/functions/shared").status_code == 404
        assert b.get(f"/v1/functions/{ids[0]}").status_code == 404
        r = b.post("/v1/evaluate", json={"function": SUM_SQ, "inputs": {"x": {"ref": ref}}})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_tensor"
    assert b1.post("/v1/functions", json=SUM_SQ).status_code == 201  # new for key b, though a has it
    assert b0.post("/v1/functions", json=SUM_SQ).status_code == 200  # and then known to b on every replica
    assert [f["id"] for f in b0.get("/v1/functions").json()["functions"]] == [named["id"]]
