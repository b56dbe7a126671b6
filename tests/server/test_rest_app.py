"""The app factory in process: its lifespan closes the service, and its OpenAPI document is complete."""

import pytest
from fastapi.testclient import TestClient

from adserve.engine import Engine
from adserve.server.app import build
from adserve.server.settings import Settings


def app(service):
    return build(Settings(grpc_port=0), service=service).http


class StubService:
    closed = False

    def close(self):
        self.closed = True

    def stats(self):
        return {"functions": 0, "cache_hits": 0, "cache_misses": 0, "cache_entries": 0, "cache_bytes": 0,
                "engine": Engine().stats()}


def test_shutdown_closes_the_service():
    service = StubService()
    with TestClient(app(service)) as client:
        assert client.get("/healthz").status_code == 200
        assert not service.closed
    assert service.closed


def test_openapi_documents_every_hand_parsed_body():
    spec = TestClient(app(StubService())).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path in ("/v1/functions", "/v1/functions/{function_id}/evaluate", "/v1/evaluate"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        ref = body["$ref"] if "$ref" in body else body["allOf"][0]["$ref"]  # the evaluations: with a constraint
        assert ref.split("/")[-1] in schemas
    assert "InputSpec" in schemas and "B64Tensor" in schemas


class MetaService(StubService):
    """Answers every evaluation with a fixed account of how it was computed; `brief` says whether the
    transport answers it on the event loop or in a worker thread."""

    def __init__(self, meta, brief=False):
        self.meta, self.is_brief = meta, brief

    def brief(self, target, body):
        return self.is_brief

    def evaluate(self, target, body, meta=None, deadline=None):
        meta.update(self.meta)
        return {"value": 1.0, "cached": bool(self.meta.get("cache_hit"))}


@pytest.mark.parametrize("brief", [False, True], ids=["in a thread", "on the loop"])
def test_headers_name_the_tier_and_the_kernel_variant(brief):
    def headers(meta):
        with TestClient(app(MetaService(meta, brief))) as client:
            r = client.post("/v1/functions/abc/evaluate", json={"inputs": {"x": 1.0}})
            assert r.status_code == 200, r.text
            return r.headers["x-adserve-backend"], r.headers["server-timing"]

    tier, timing = headers({"backend": "numba-parallel", "compute_ms": 1.5})
    assert tier == "numba" and timing.startswith("compute;dur=1.500;desc=parallel, total;dur=")
    tier, timing = headers({"backend": "numba", "compute_ms": 2.0})
    assert tier == "numba" and timing.startswith("compute;dur=2.000, total;dur=")
    tier, timing = headers({"backend": "interpreter", "compute_ms": 3.0, "compile": "pending"})
    assert tier == "interpreter" and timing.startswith("compute;dur=3.000, compile;desc=pending, total;dur=")
    tier, timing = headers({"backend": "numba", "compute_ms": 2.0, "kernel_ms": 1.25, "kernel": "quick",
                            "compile": "optimising"})  # a large kernel's quick one, its optimised one on the way
    assert tier == "numba" and timing.startswith("compute;dur=2.000, kernel;dur=1.250;desc=quick, "
                                                 "compile;desc=optimising, total;dur=")
    tier, timing = headers({"backend": "numba", "cache_hit": True})
    assert tier == "numba" and timing.startswith("cache;desc=hit, total;dur=")


def test_the_evaluate_routes_are_reached_first_and_behave_as_documented():
    """The plain evaluate routes ahead of FastAPI's answer (errors in the app's form, 405 with Allow for
    another method, the template in the metrics), and the FastAPI routes still document them."""
    from adserve.server.service import Service
    server = build(Settings(grpc_port=0), service=Service(Engine(), result_cache_bytes=1 << 20))
    first = [getattr(r, "path", None) for r in server.http.router.routes[:2]]
    assert first == ["/v1/functions/{function_id}/evaluate", "/v1/evaluate"]
    square = {"inputs": [{"name": "x", "shape": []}], "expr": "x * x"}
    with TestClient(server.http) as client:
        fid = client.post("/v1/functions", json=square).json()["id"]
        assert client.post(f"/v1/functions/{fid}/evaluate", json={"inputs": {"x": 3.0}}).json()["value"] == 9.0
        assert client.post("/v1/evaluate", json={"function": square, "inputs": {"x": 2.0}}).json()["value"] == 4.0
        unknown = client.post("/v1/functions/nope/evaluate", json={"inputs": {"x": 1.0}})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "function_not_found"
        malformed = client.post("/v1/evaluate", content=b"{not json")
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "malformed_json"
        wrong = client.get(f"/v1/functions/{fid}/evaluate")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        metrics = client.get("/metrics").text
        spec = client.get("/openapi.json").json()
    for route, status in (("/v1/functions/{function_id}/evaluate", 200), ("/v1/functions/{function_id}/evaluate", 404),
                          ("/v1/evaluate", 200), ("/v1/evaluate", 400)):
        assert f'method="POST",route="{route}",status="{status}"' in metrics
    assert spec["paths"]["/v1/functions/{function_id}/evaluate"]["post"]["parameters"][0]["name"] == "function_id"
