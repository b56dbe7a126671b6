"""Shared fixtures and layer markers. `server` is a real adserve process on free loopback ports (HTTP and gRPC)."""

import os

import httpx
import pytest
from hypothesis import settings

# no per-example time limit: CI may run beside a CPU hog, and a slow example is not a wrong one
settings.register_profile("adserve", deadline=None)
settings.load_profile("adserve")

from server_process import free_port, running_server

# Kernel compiles run niced in production (they take only what requests leave idle); a test that waits for one
# must not starve behind whatever else keeps the machine busy (CI may run beside a CPU hog). Servers the tests
# start inherit this too.
os.environ.setdefault("ADSERVE_COMPILE_NICE", "0")

TEST_MAX_BODY_BYTES = 1 << 20


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A ready server with a 1 MiB body limit, shared by the session."""
    home = tmp_path_factory.mktemp("adserve")
    env = {"ADSERVE_MAX_BODY_BYTES": str(TEST_MAX_BODY_BYTES), "ADSERVE_CACHE_DIR": str(home / "cache"),
           "ADSERVE_LOG_LEVEL": "info"}
    with running_server(home / "server.log", grpc_port=free_port(), env=env) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def pytest_collection_modifyitems(config, items):
    """Mark each test by the directory it lives in (engine, server, e2e), so `-m` selects a layer."""
    for item in items:
        layer = item.path.parent.name
        if layer in ("engine", "server", "e2e"):
            item.add_marker(getattr(pytest.mark, layer))
