"""A client generated from /openapi.json by openapi-python-client (what users of the document run) is small and
calls the service: evaluate, with the generated models, in process.

openapi-python-client pins httpx below the version the server's tests use, so it is not a test extra: it is run
from its own environment, found on PATH or at $OPENAPI_PYTHON_CLIENT (`pipx install openapi-python-client`, or
`python -m venv /tmp/opc-venv && /tmp/opc-venv/bin/pip install openapi-python-client`). Without it, the test
skips. The generated code needs only httpx and attrs, which the test environment has.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from adserve.server.app import build
from adserve.server.service import Service
from adserve.server.settings import Settings

# Every model file is a type in the document: the named ones (Tensor, TensorMap, ErrorCode, ...), the request and
# answer bodies, and the open-inference-protocol bodies. Inlined unions and maps would multiply them (52 before
# they were named); this bound catches a change that inlines them again.
MAX_MODEL_FILES = 36


def generator() -> str:
    found = os.environ.get("OPENAPI_PYTHON_CLIENT") or shutil.which("openapi-python-client") or \
        next((p for p in ("/tmp/opc-venv/bin/openapi-python-client",) if os.path.exists(p)), None)
    if not found:
        pytest.skip("openapi-python-client is not installed (see this module's docstring)")
    return found


def test_a_generated_client_is_small_and_evaluates(tmp_path, monkeypatch):
    tool = generator()
    app = build(Settings(grpc_port=0), service=Service(result_cache_bytes=1 << 20)).http
    http = TestClient(app)
    (tmp_path / "openapi.json").write_text(json.dumps(http.get("/openapi.json").json()))
    r = subprocess.run([tool, "generate", "--path", "openapi.json", "--meta", "none", "--output-path", "generated"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    models = [p for p in (tmp_path / "generated" / "models").glob("*.py") if p.name != "__init__.py"]
    assert len(models) <= MAX_MODEL_FILES, sorted(p.name for p in models)

    (tmp_path / "generated").rename(tmp_path / "adserve_generated")
    monkeypatch.syspath_prepend(str(tmp_path))
    client_mod = importlib.import_module("adserve_generated.client")
    evaluate = importlib.import_module("adserve_generated.api.evaluate.evaluate")
    model_mod = importlib.import_module("adserve_generated.models")
    client = client_mod.Client(base_url="http://testserver")
    client.set_httpx_client(http)
    body = model_mod.EvaluationWithFunction.from_dict({
        "function": {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
                     "expr": "log(x1) + x1*x2 - sin(x2)"},
        "inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]})
    answer = evaluate.sync_detailed(client=client, body=body)
    assert answer.status_code == 200, answer.content
    result = answer.parsed
    assert isinstance(result, model_mod.EvaluationResult)
    assert result.value == pytest.approx(11.652071455223084)
    assert result.gradient["x1"] == pytest.approx(5.5)
    assert "compute" in answer.headers["server-timing"]
    refused = evaluate.sync(client=client, body=model_mod.EvaluationWithFunction.from_dict({
        "function": {"inputs": [{"name": "x", "shape": []}], "expr": "x +"}, "inputs": {"x": 1.0}}))
    assert isinstance(refused, model_mod.ErrorBody) and refused.error.code == model_mod.ErrorCode.SYNTAX_ERROR
    for name in [m for m in sys.modules if m.startswith("adserve_generated")]:
        del sys.modules[name]
