"""The routes the demo page needs beyond the contract: its static files, the generated
source of a transform, and the "trace" compute kind over REST (real server, conftest.py)."""

import pytest

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
          "expr": "log(x1) + x1*x2 - sin(x2)"}


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/demo/main.js"' in page.text
    js = client.get("/static/adserve.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "export class Client" in js.text
    assert client.get("/static/vendor/codemirror.min.js").status_code == 200
    for missing in ("/static/nothing.js", "/static/../rest.py", "/static/%2e%2e/rest.py", "/static/"):
        r = client.get(missing)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", missing


def test_generated_source(client):
    fid = client.post("/v1/functions", json=SURVEY).json()["id"]
    r = client.get(f"/v1/functions/{fid}/source", params={"transform": "gradient"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "def kernel(" in r.text and fid in r.text
    assert "def kernel(" in client.get(f"/v1/functions/{fid}/source").text  # primal by default
    bad = client.get(f"/v1/functions/{fid}/source", params={"transform": "hessian"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_transform"
    missing = client.get("/v1/functions/nope/source")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "function_not_found"
    vector = client.post("/v1/functions", json={"inputs": [{"name": "x", "shape": [2]}], "expr": "2 * x"}).json()
    r = client.get(f"/v1/functions/{vector['id']}/source", params={"transform": "hvp"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_scalar"


def test_trace_over_rest(client):
    r = client.post("/v1/evaluate", json={"function": SURVEY, "inputs": {"x1": 2, "x2": 5},
                                         "tangent": {"x1": 1, "x2": 0}, "compute": ["trace"]})
    assert r.status_code == 200, r.text
    rows = r.json()["trace"]
    assert [row["name"] for row in rows] == ["x1", "x2", "v1", "v2", "v3", "v4", "v5"]
    out = rows[-1]
    assert out["output"] and out["value"] == pytest.approx(11.652071455223084)
    assert out["tangent"] == pytest.approx(5.5) and out["adjoint"] == 1.0
    assert rows[0]["adjoint"] == pytest.approx(5.5) and rows[1]["adjoint"] == pytest.approx(1.7163378145367738)
