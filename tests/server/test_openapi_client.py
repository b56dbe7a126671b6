"""A client generated from /openapi.json by openapi-python-client (what users of the document run) is small and
calls the service: evaluate, with the generated models, in process.

openapi-python-client pins httpx below the version the server's tests use, so it is not a test extra: it runs
from its own environment, made on first use under ~/.cache/adserve-tests (pip, from PyPI; later runs reuse it),
or the one $OPENAPI_PYTHON_CLIENT names. Offline, without one, the test skips (and fails under CI=true). The
generated code needs only httpx and attrs, which the test environment has.
"""

import fcntl
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adserve.server.app import build
from adserve.server.service import Service
from adserve.server.settings import Settings

# The generator's version is pinned: how many model files a document makes depends on it.
GENERATOR = "openapi-python-client==0.29.1"

# Every model file is a type of adserve's own API: its 15 object shapes (Definition, InputSpec, Evaluation and
# EvaluationWithFunction, EvaluationResult, FunctionInfo, FunctionList, HeldTensor, Minimization,
# MinimizeProgress, ErrorBody, ErrorDetail, TensorMap, B64Tensor, TensorRef), its 6 enums (ComputeKind,
# Transform, ErrorCode, NonFinite, a held tensor's dtype, the minimize method) and 2 open objects: JsonObject
# (a graph, an error's location and a trace row share it: one class each made 25) and the Hessian's map of
# maps. Named unions and maps keep it there: inlined, they made 52. The peer protocols' routes (Open Inference
# Protocol, UM-Bridge, Tesseract) are not in the document: each is described by its own specification (the
# OIP routes also at /v2/openapi.json), and their users run their own clients; their 8 model files made 33.
# 23 is the floor of a document that types what the server checks, with this generator: it writes a module for
# every schema with `enum` and for every object schema (a map of `additionalProperties` too), and none for a
# union (beyond its members'), a `const` or an untyped schema. 0.29.1 is its newest release (December 2026); its
# `literal_enums: true` option makes 23 as well (each enum is then a module of a `Literal` alias and its check).
# An enum written as `oneOf` of `const`s only (each value described) makes Literal unions instead, 17 files, but
# this generator's parser of such a union accepts only its first value (openapi-python-client issue #1044, open:
# its union template tries a member inside try/except only when the member's template has a type check, and
# the const template has none), so `ErrorCode` would refuse "syntax_error"; each enum keeps its `enum` beside
# the described `oneOf`, which the generator ignores (it reads `enum` first) and /docs and /redoc show.
# Fewer files each take typed information away; measured, by rewriting the document: the 6 enums as plain
# strings make 17; one class for two shapes makes 22 each: Evaluation with an optional `function` (the
# evaluate-by-id route refuses one), B64Tensor and TensorRef as one object of optional fields, the Hessian as a
# TensorMap whose values may be TensorMaps (every `inputs` may then hold nested maps); JsonObject as untyped
# JSON makes 22. Under 15 takes the enums as strings and all three merges (14; two merges make 15). Nor fewer
# otherwise: the Hessian's map as a named schema, or not nullable, still makes its own file; an ErrorDetail
# inlined into ErrorBody makes `error_body_error_detail`; EvaluationWithFunction as `allOf` Evaluation and
# `function` is still its own class; titles do not change the count; the graph typed by GET /v1/schema/graph's
# schema makes 33 (its node, body, literal and params shapes), and JsonObject stays for the location and the
# trace row.
MAX_MODEL_FILES = 23


def generator() -> str:
    """The openapi-python-client executable: $OPENAPI_PYTHON_CLIENT, else a pinned one in a cached venv."""
    if os.environ.get("OPENAPI_PYTHON_CLIENT"):
        return os.environ["OPENAPI_PYTHON_CLIENT"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adserve-tests"
    venv = cache / GENERATOR.replace("==", "-")
    tool, done = venv / "bin" / "openapi-python-client", venv / ".installed"
    if done.exists():
        return str(tool)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".openapi-python-client.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # test sessions side by side make it once
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)  # what an interrupted install left
            r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
            if r.returncode == 0:
                r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                    "--disable-pip-version-check", GENERATOR],
                                   capture_output=True, text=True, timeout=540)
            if r.returncode != 0:
                message = f"could not install {GENERATOR} into {venv}: {r.stderr[-1500:]}"
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
            done.touch()
    return str(tool)


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
    assert isinstance(refused.error.location, model_mod.JsonObject) and refused.error.location["line"] == 1
    # `function` may also be a registered function's id or name
    register = importlib.import_module("adserve_generated.api.functions.register_function")
    info = register.sync(client=client, body=model_mod.Definition.from_dict(
        {"name": "square", "inputs": [{"name": "x", "shape": []}], "expr": "x*x"}))
    assert isinstance(info, model_mod.FunctionInfo)
    for function in (info.id, "square"):
        body = model_mod.EvaluationWithFunction.from_dict({"function": function, "inputs": {"x": 3.0}})
        assert body.function == function
        assert evaluate.sync(client=client, body=body).value == 9.0
    for name in [m for m in sys.modules if m.startswith("adserve_generated")]:
        del sys.modules[name]
