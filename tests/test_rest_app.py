"""The app factory in process: its lifespan closes the service, and its OpenAPI document is complete."""

from fastapi.testclient import TestClient

from adserve.server.rest import create_app
from adserve.server.settings import Settings


class StubService:
    closed = False

    def close(self):
        self.closed = True

    def stats(self):
        return {"functions": 0, "cache_hits": 0, "cache_misses": 0, "cache_entries": 0, "cache_bytes": 0,
                "runs": {}, "compiles": 0, "compile_failures": 0}


def test_shutdown_closes_the_service():
    service = StubService()
    with TestClient(create_app(service, Settings())) as client:
        assert client.get("/healthz").status_code == 200
        assert not service.closed
    assert service.closed


def test_openapi_documents_every_hand_parsed_body():
    spec = TestClient(create_app(StubService(), Settings())).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path in ("/v1/functions", "/v1/functions/{function_id}/evaluate", "/v1/evaluate"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in schemas
    assert "InputSpec" in schemas and "B64Tensor" in schemas
