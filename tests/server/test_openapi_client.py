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

# A model file for each of the API's 14 object shapes, and none of any other kind. This generator writes a module
# for every object schema (a map of `additionalProperties` too) and for every schema with a top-level `enum`, and
# none for a union (beyond its members'), a `const`, a string or an untyped schema. So (schemas.py's docstring):
# - the 6 enums (ComputeKind, Transform, ErrorCode, NonFinite, Dtype, the minimize method) are strings whose
#   `enum` is one `allOf` member: validators and /docs still have it, the generated client a `str` whose docstring
#   lists the values (as enum classes they were 6 more files; an enum of `oneOf` `const`s alone makes a parser
#   that accepts only its first value: openapi-python-client issue #1044, open);
# - one `Evaluation` serves both evaluate routes, each body adding its `function` rule by `allOf` of the one
#   reference, which the generator reads as the reference (two classes made one more file);
# - the minimize stream's line is described in its NDJSON response, which a generated client cannot read
#   anyway (as a component it made one more file);
# - `JsonObject` (a graph, an error's location, a trace row) is untyped: a plain dict, not a class wrapping one.
# The peer protocols' routes (Open Inference Protocol, UM-Bridge, Tesseract) are not in the document: each has
# its own specification (the OIP routes also at /v2/openapi.json). Measured with 0.29.1, its newest release.
MODEL_FILES = {"b64_tensor", "definition", "error_body", "error_detail", "evaluation", "evaluation_result",
               "function_info", "function_list", "held_tensor", "hessian", "input_spec", "minimization",
               "tensor_map", "tensor_ref"}


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
    models = {p.stem for p in (tmp_path / "generated" / "models").glob("*.py") if p.name != "__init__.py"}
    assert models == MODEL_FILES and len(models) < 15

    (tmp_path / "generated").rename(tmp_path / "adserve_generated")
    monkeypatch.syspath_prepend(str(tmp_path))
    client_mod = importlib.import_module("adserve_generated.client")
    evaluate = importlib.import_module("adserve_generated.api.evaluate.evaluate")
    model_mod = importlib.import_module("adserve_generated.models")
    client = client_mod.Client(base_url="http://testserver")
    client.set_httpx_client(http)
    body = model_mod.Evaluation.from_dict({
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
    refused = evaluate.sync(client=client, body=model_mod.Evaluation.from_dict({
        "function": {"inputs": [{"name": "x", "shape": []}], "expr": "x +"}, "inputs": {"x": 1.0}}))
    assert isinstance(refused, model_mod.ErrorBody) and refused.error.code == "syntax_error"
    assert refused.error.location == {"line": 1, "column": 4}
    assert "`hessian`" in model_mod.Evaluation.__doc__  # the compute kinds, where a user of the class looks
    by_id = importlib.import_module("adserve_generated.api.evaluate.evaluate_function")
    # `function` may also be a registered function's id or name
    register = importlib.import_module("adserve_generated.api.functions.register_function")
    info = register.sync(client=client, body=model_mod.Definition.from_dict(
        {"name": "square", "inputs": [{"name": "x", "shape": []}], "expr": "x*x"}))
    assert isinstance(info, model_mod.FunctionInfo)
    for function in (info.id, "square"):
        body = model_mod.Evaluation.from_dict({"function": function, "inputs": {"x": 3.0}})
        assert body.function == function
        assert evaluate.sync(client=client, body=body).value == 9.0
    held = model_mod.Evaluation.from_dict({"inputs": {"x": 4.0}, "compute": ["value", "hessian"]})
    answer = by_id.sync(client=client, function_id=info.id, body=held)
    assert answer.value == 16.0 and answer.hessian["x"]["x"] == 2.0
    for name in [m for m in sys.modules if m.startswith("adserve_generated")]:
        del sys.modules[name]
