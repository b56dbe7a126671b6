"""A real server with API keys and a rate limit: REST and gRPC refuse calls without a key, the open
routes stay open, and the demo page works with a key (from the URL fragment, or typed in after a 401)."""

import grpc
import httpx
import pytest

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import free_port, running_server
from browser_helpers import TIMEOUT_MS, expect_text

KEY = "demo-key-7f3a"
SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    home = tmp_path_factory.mktemp("keyed")
    env = {"ADSERVE_API_KEYS": f"{KEY},second-key", "ADSERVE_RATE_LIMIT_PER_SECOND": "50",
           "ADSERVE_RATE_LIMIT_BURST": "100", "ADSERVE_CACHE_DIR": str(home / "cache"), "ADSERVE_COMPILE": "false"}
    with running_server(home / "server.log", grpc_port=free_port(), env=env) as s:
        yield s


def test_rest_and_grpc_need_a_key(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        r = c.post("/v1/functions", json=SURVEY)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        r = c.post("/v1/functions", json=SURVEY, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code in (200, 201)
        for path in ("/healthz", "/readyz", "/metrics", "/", "/static/demo/main.js"):
            assert c.get(path).status_code == 200
    with grpc.insecure_channel(keyed.grpc) as channel:
        stub = ad_pb2_grpc.DifferentiatorStub(channel)
        definition = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[])], expr="sin(x)")
        with pytest.raises(grpc.RpcError) as e:
            stub.Register(definition)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Register(definition, metadata=(("authorization", f"Bearer {KEY}"),)).id


def test_demo_with_a_key_in_the_fragment_and_typed_after_a_401(keyed, browser):
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(keyed.url + f"/#key={KEY}")
    expect_text(pg, "#result-value", "11.652")
    assert "key=" not in pg.url  # dropped from the address bar, kept in localStorage
    pg.reload()
    expect_text(pg, "#result-value", "11.652")
    context.close()

    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(keyed.url + "/")
    expect_text(pg, "#results", "401")
    pg.fill("#api-key", "second-key")
    pg.click(".key-form button")
    expect_text(pg, "#result-value", "11.652")
    context.close()
