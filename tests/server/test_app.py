"""`build(settings)`: the one wiring. A protocol is one `mount(server)` in `PROTOCOLS`, and what it mounts gets
the service, the guard and the metrics that every other protocol gets, with nothing else to change."""

from fastapi import APIRouter
from fastapi.testclient import TestClient

from adserve.server import app
from adserve.server.app import build
from adserve.server.service import Service
from adserve.server.settings import Settings
from adserve.server.web import JSONOut, ServiceDep

KEY = "k-test-0123456789"


def peer_protocol(server) -> None:
    router = APIRouter()

    @router.get("/peer/{function_id}")
    def info(function_id: str, service: ServiceDep):
        return JSONOut({"outputs": service.info(function_id)["output_shape"]})

    server.http.include_router(router)
    server.guarded_paths.append("/peer/")


def test_a_new_protocol_is_one_mount(monkeypatch):
    monkeypatch.setattr(app, "PROTOCOLS", (*app.PROTOCOLS, peer_protocol))
    server = build(Settings(grpc_port=0, api_keys=KEY), service=Service(result_cache_bytes=1 << 20))
    c, auth = TestClient(server.http), {"Authorization": f"Bearer {KEY}"}
    fid = c.post("/v1/functions", json={"inputs": [{"name": "x", "shape": [2]}], "expr": "x * 2"},
                 headers=auth).json()["id"]
    assert c.get(f"/peer/{fid}").status_code == 401  # the guard covers it
    assert c.get(f"/peer/{fid}", headers=auth).json() == {"outputs": [2]}  # the same service
    r = c.get("/peer/unknown", headers=auth)  # the same error handling
    assert r.status_code == 404 and r.json()["error"]["code"] == "function_not_found"
    assert 'route="/peer/{function_id}",status="200"' in c.get("/metrics").text  # the same metrics


def test_build_makes_each_shared_piece_once():
    server = build(Settings(grpc_port=50999), service=Service(result_cache_bytes=1 << 20))
    assert server.http.state.service is server.service and server.http.state.metrics is server.metrics
    assert server.grpc is not None and server.guarded_paths == ["/v1/", "/umbridge/", "/tesseract/", "/v2/models/"]
    assert build(Settings(grpc_port=0), service=server.service).grpc is None
