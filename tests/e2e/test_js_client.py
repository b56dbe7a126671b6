"""The JS client (clients/js/adserve.js) under Node's test runner, against the session's server."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_js_client_under_node(server):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH: the JS client's own tests need Node 18 or later")
    run = subprocess.run([node, "--test", "clients/js/test/"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ADSERVE_URL": server.url})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
