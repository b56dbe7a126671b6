"""What users of FastAPI, Prometheus and HTTP tooling expect of the app, in process: `/metrics` as a scraper
reads it, HEAD where GET is, request ids, gzip."""

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from adserve.server.app import build
from adserve.server.service import Service
from adserve.server.settings import Settings


@pytest.fixture(scope="module")
def client():
    with TestClient(build(Settings(grpc_port=0), service=Service(result_cache_bytes=1 << 20)).http) as c:
        yield c


def test_metrics_parse_with_the_process_collectors_and_no_created_series(client):
    client.get("/healthz")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"process_resident_memory_bytes", "python_info", "python_gc_collections"} <= families.keys()
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert "adserve_http_requests" in families
    assert not [s for f in families.values() for s in f.samples if s.name.endswith("_created")]


def test_metrics_speak_openmetrics_when_asked(client):
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(r.text)}  # the strict parser: it refuses a bad exposition
    assert "process_resident_memory_bytes" in families and "adserve_http_requests" in families


def test_head_answers_wherever_get_does_without_a_body(client):
    fid = client.post("/v1/functions", json={"inputs": [{"name": "x", "shape": []}], "expr": "x * x"}).json()["id"]
    for path in ("/", "/healthz", "/readyz", "/metrics", "/v1/functions", f"/v1/functions/{fid}",
                 "/openapi.json", "/static/adserve.js"):
        get, head = client.get(path), client.head(path)
        assert (path, head.status_code) == (path, 200) and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        if path not in ("/metrics", f"/v1/functions/{fid}"):  # their bodies change between calls
            assert head.headers["content-length"] == get.headers["content-length"]
    assert 'method="HEAD",route="/healthz",status="200"' in client.get("/metrics").text
    missing = client.head(f"/v1/functions/{fid}x")
    assert missing.status_code == 404 and missing.content == b""


GZIP = {"Accept-Encoding": "gzip"}


def test_static_assets_and_large_json_are_gzipped_for_clients_that_accept_it(client):
    for path in ("/static/adserve.js", "/openapi.json", "/"):
        r = client.get(path, headers=GZIP)
        assert r.headers.get("content-encoding") == "gzip", path
        assert len(r.content) > 1024  # httpx decoded it
        assert "gzip" not in client.get(path, headers={"Accept-Encoding": "identity"}).headers.get(
            "content-encoding", "")
    small = client.get("/healthz", headers=GZIP)
    assert "content-encoding" not in small.headers and small.json() == {"status": "ok"}


def test_minimize_streams_and_binary_answers_are_not_gzipped(client):
    fid = client.post("/v1/functions", json={"inputs": [{"name": "x", "shape": [40]}],
                                              "expr": "sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)"}
                      ).json()["id"]
    with client.stream("POST", f"/v1/functions/{fid}/minimize", json={"x0": {"x": [-1.0] * 40}},
                       headers=GZIP) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        assert "content-encoding" not in r.headers
        assert sum(1 for line in r.iter_lines() if line) > 2
    head = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [40], "data": %s}], ' \
           b'"parameters": {"binary_data_output": true}}' % str([0.5] * 40).encode()
    r = client.post(f"/v2/models/{fid}/infer", content=head, headers=GZIP)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in r.headers
    assert int(r.headers["inference-header-content-length"]) < len(r.content)


def spec_of(settings: Settings, path: str = "/openapi.json") -> dict:
    app = build(settings, service=Service(result_cache_bytes=1 << 20)).http
    return TestClient(app).get(path).json()


def operations(spec: dict):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_openapi_operation_ids_are_explicit_and_unique(client):
    # unique across both documents: a generator given both makes one client
    ids = [op.get("operationId") for path in ("/openapi.json", "/v2/openapi.json")
           for _, _, op in operations(client.get(path).json())]
    assert len(ids) > 15 and len(set(ids)) == len(ids)
    # FastAPI's own are the function name, path and method (evaluate_v1_evaluate_post)
    assert not [i for i in ids if i is None or i.endswith(("_get", "_post", "_head"))], ids
    assert {"evaluate", "evaluateFunction", "registerFunction", "minimizeFunction", "healthz"} <= set(ids)


def test_openapi_names_its_shared_types(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"Tensor", "TensorMap", "Real", "ComputeKind", "Transform", "ErrorCode"} <= schemas.keys()
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    evaluation = schemas["Evaluation"]["properties"]
    assert evaluation["inputs"]["$ref"] == "#/components/schemas/TensorMap"
    assert schemas["TensorMap"]["additionalProperties"] == {"$ref": "#/components/schemas/Tensor"}
    assert evaluation["compute"]["items"] == {"$ref": "#/components/schemas/ComputeKind"}
    assert set(schemas["ComputeKind"]["allOf"][0]["enum"]) >= {"value", "gradient", "hessian"}
    assert schemas["EvaluationResult"]["properties"]["hessian"]["anyOf"][0] == {"$ref": "#/components/schemas/Hessian"}
    assert schemas["Hessian"]["additionalProperties"] == {"$ref": "#/components/schemas/TensorMap"}
    assert {"$ref": "#/components/schemas/ErrorCode"} in schemas["ErrorDetail"]["properties"]["code"]["anyOf"]
    # the union is written once, in Tensor, and referred to everywhere else
    text = str({k: v for k, v in schemas.items() if k != "Tensor"})
    assert "#/components/schemas/B64Tensor" not in text
    [transform] = [p for p in spec["paths"]["/v1/functions/{function_id}/source"]["get"]["parameters"]
                   if p["name"] == "transform"]
    assert transform["schema"]["$ref"] == "#/components/schemas/Transform"


def test_openapi_evaluations_share_one_schema_and_say_where_function_goes(client):
    """Both evaluate routes take an `Evaluation`: POST /v1/evaluate needs its `function`, the route of a
    registered function refuses one (422 unknown_field), each said by `allOf` of the one reference."""
    spec = client.get("/openapi.json").json()
    body = {path: spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            for path in ("/v1/evaluate", "/v1/functions/{function_id}/evaluate")}
    evaluation = {"$ref": "#/components/schemas/Evaluation"}
    assert body["/v1/evaluate"] == {"allOf": [evaluation], "required": ["function"]}
    assert body["/v1/functions/{function_id}/evaluate"] == {"allOf": [evaluation],
                                                             "not": {"required": ["function"]}}
    assert "function" in spec["components"]["schemas"]["Evaluation"]["properties"]
    refused = client.post("/v1/functions/anything/evaluate", json={"function": "f", "inputs": {}})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_field"
    assert client.post("/v1/evaluate", json={"inputs": {}}).status_code == 422


def test_openapi_describes_each_value_of_each_enum(client):
    """Every enum is a string constrained by one `allOf` member: `enum`, and each value again as `oneOf` of
    `const`s with its own description (the compute kinds', transforms' and methods' from the engine's and
    optimiser's tables, the error codes' from `schemas.ERRORS`, which docs/rest.md's table is generated from
    too). Outside it, the string's description lists the values: what a generated client shows (it types the
    string as a string; an enum class each would be 6 more model files: test_openapi_client.py)."""
    from adserve.engine.evaluation import KIND_DOCS
    from adserve.server import docgen, optimize
    from adserve.server import schemas as models
    named = client.get("/openapi.json").json()["components"]["schemas"]
    enums = {name: named[name] for name in ("ComputeKind", "Transform", "ErrorCode", "NonFinite", "Dtype")}
    enums["method"] = named["Minimization"]["properties"]["method"]
    for name, schema in enums.items():
        [constraint] = schema["allOf"]
        assert schema["type"] == "string" and "enum" not in schema and "oneOf" not in schema, name
        assert [v["const"] for v in constraint["oneOf"]] == constraint["enum"], name
        assert all(v["description"] for v in constraint["oneOf"]), name
        assert all(f"`{value}`" in schema["description"] for value in constraint["enum"]), name
    enums = {name: schema["allOf"][0] for name, schema in enums.items()}
    described = {v["const"]: v["description"] for v in enums["ErrorCode"]["oneOf"]}
    assert described == {code: f"{status}: {doc}" for code, (status, doc) in models.ERRORS.items()}
    assert enums["ComputeKind"]["enum"] == list(KIND_DOCS) and enums["method"]["enum"] == list(optimize.METHODS)
    assert all(doc in v["description"] for v, doc in zip(enums["ComputeKind"]["oneOf"], KIND_DOCS.values()))
    text = (docgen.docgen.DOCS / "rest.md").read_text()
    assert docgen.render(text) == text, "docs/rest.md's error table is stale: run python -m adserve.server.docgen"


def test_openapi_responses_say_what_is_sent(client):
    spec = client.get("/openapi.json").json()
    evaluate = spec["paths"]["/v1/evaluate"]["post"]["responses"]
    assert {"Server-Timing", "x-adserve-backend"} <= evaluate["200"]["headers"].keys()
    assert "Retry-After" in evaluate["429"]["headers"] and "Retry-After" in evaluate["503"]["headers"]
    assert evaluate["422"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
    assert evaluate["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EvaluationResult")
    assert spec["components"]["schemas"]["EvaluationResult"]["examples"]
    minimize = spec["paths"]["/v1/functions/{function_id}/minimize"]["post"]["responses"]["200"]["content"]
    [line] = minimize.values()  # the stream's line, described where it is (not a component: test_openapi_client)
    assert list(minimize) == ["application/x-ndjson"] and "MinimizeProgress" not in spec["components"]["schemas"]
    assert line["schema"]["title"] == "MinimizeProgress" and line["schema"]["required"] == [
        "iteration", "x", "value", "grad_norm", "done", "message", "success"]
    assert line["schema"]["properties"]["x"] == {"$ref": "#/components/schemas/TensorMap"}
    refused = spec["paths"]["/v1/functions/{function_id}/minimize"]["post"]["responses"]["429"]
    assert list(refused["content"]) == ["application/json"] and "Retry-After" in refused["headers"]
    for path, method, op in operations(spec):
        if method == "get" and path.startswith("/v1/") and path != "/v1/functions":
            assert "422" not in op["responses"] or path.endswith("/source"), path  # source: unknown_transform


def test_openapi_declares_the_api_keys_when_the_server_has_them():
    keyed = spec_of(Settings(grpc_port=0, api_keys="k-0123456789"))
    assert keyed["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": keyed["components"]["securitySchemes"][
            "HTTPBearer"]["description"]},
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": keyed["components"][
            "securitySchemes"]["APIKeyHeader"]["description"]}}
    ops = {(path, method): op for path, method, op in operations(keyed)}
    assert ops["/v1/evaluate", "post"]["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert "security" not in ops["/healthz", "get"]
    keyed_oip = spec_of(Settings(grpc_port=0, api_keys="k-0123456789"), "/v2/openapi.json")
    assert keyed_oip["components"]["securitySchemes"] == keyed["components"]["securitySchemes"]
    ops = {(path, method): op for path, method, op in operations(keyed_oip)}
    assert ops["/v2/models/{name}/infer", "post"]["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert "security" not in ops["/v2/health/ready", "get"]
    for path in ("/openapi.json", "/v2/openapi.json"):
        open_spec = spec_of(Settings(grpc_port=0), path)
        assert "securitySchemes" not in open_spec["components"]
        assert not [op for _, _, op in operations(open_spec) if "security" in op]


def refs(node):
    if isinstance(node, dict):
        yield from ([node["$ref"]] if "$ref" in node else [])
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_openapi_describes_adserves_api_and_each_peer_protocol_has_its_own(client):
    """/openapi.json is adserve's API (what its clients and client generators read); the Open Inference
    Protocol's routes are in a document of their own, UM-Bridge's and Tesseract's in their specifications (and
    each Tesseract's own /tesseract/{name}/openapi.json). Each document names every type it refers to."""
    spec = client.get("/openapi.json").json()
    assert {path.split("/")[1] for path in spec["paths"]} == {"v1", "healthz", "readyz", "metrics"}
    assert not [name for name in spec["components"]["schemas"] if name.startswith("Oip")]
    oip = client.get("/v2/openapi.json")
    assert oip.status_code == 200
    oip = oip.json()
    assert all(path.startswith("/v2") for path in oip["paths"])
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"} \
        <= oip["paths"].keys()
    infer = oip["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OipInferRequest"}
    assert oip["info"]["version"] == spec["info"]["version"]
    for document in (spec, oip):
        named = {"#/components/schemas/" + name for name in document["components"]["schemas"]}
        assert set(refs(document)) <= named


def test_the_api_key_dependencies_check_nothing_themselves():
    """The guard checks keys; the documenting dependencies must not turn a keyless call into FastAPI's 403."""
    app = build(Settings(grpc_port=0, api_keys="k-0123456789"), service=Service(result_cache_bytes=1 << 20)).http
    c = TestClient(app)
    assert c.get("/v1/functions").status_code == 401
    assert c.get("/v1/functions", headers={"x-api-key": "k-0123456789"}).status_code == 200
    assert c.get("/v1/functions", headers={"Authorization": "Bearer k-0123456789"}).status_code == 200
