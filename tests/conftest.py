"""Shared fixtures and layer markers. `server` is a real adserve process on free loopback ports (HTTP and gRPC)."""

import importlib.metadata
import os

import httpx
import pytest
from hypothesis import settings

# no per-example time limit: CI may run beside a CPU hog, and a slow example is not a wrong one
settings.register_profile("adserve", deadline=None)
settings.load_profile("adserve")

from server_process import TEST_MAX_BODY_BYTES, free_port, running_server

# Kernel compiles and isolation workers run niced in production (compiles take only what requests leave idle;
# short requests come before long ones); a test that waits for one must not starve behind whatever else keeps
# the machine busy (CI may run beside a CPU hog). Servers the tests start inherit this too.
os.environ.setdefault("ADSERVE_COMPILE_NICE", "0")
os.environ.setdefault("ADSERVE_ISOLATE_NICE", "0")  # the same for isolation workers a test waits on

# JAX is the tests' oracle, not what they measure: XLA compiles the jitted references without its fusion
# emitters, a third less compile time (test_property_graphs' two JAX tests 46 -> 30 and 17 -> 12 s of CPU), every
# comparison as before. Cheaper still was LLVM at -O0 without its expensive passes as well, but with both, one
# random program's JAX gradient came out wrong (arctan thrice, then hypot: 1.2046 where the engine, JAX's
# defaults and either flag alone give 1.5734), so an oracle's flags stay at this one. Only on the jaxlib it was
# checked on (XLA aborts on a flag it does not know); bench/ times JAX with its defaults.
if importlib.metadata.version("jaxlib").startswith("0.10."):
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A ready server with a 1 MiB body limit, shared by the session. It compiles no numba kernels (the
    interpreter and the python tier answer): no test of it waits for one, and the 20 to 40 each test process's
    server compiled in the background cost the suite about 100 s of CPU. The compiled tier is tested on servers
    of their own (test_compiled_e2e, test_deadlines_e2e, test_load_e2e, test_faults_e2e)."""
    home = tmp_path_factory.mktemp("adserve")
    env = {"ADSERVE_MAX_BODY_BYTES": str(TEST_MAX_BODY_BYTES), "ADSERVE_CACHE_DIR": str(home / "cache"),
           "ADSERVE_LOG_LEVEL": "info", "ADSERVE_COMPILE": "false"}
    with running_server(home / "server.log", grpc_port=free_port(), env=env) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


# The longest files of a cold run (CPU seconds, tests/cpu_report.py; over 13 s), longest first. The test processes
# (pytest-xdist, a file whole in one) take them first, so two long files run side by side, not one after the
# other at the end while the other process idles.
LONGEST_FIRST = ("test_language_functions.py", "test_primitives.py", "test_llvm_control.py", "test_faults_e2e.py",
                 "test_while_checkpoint.py", "test_llvm_kernels.py", "test_property_graphs.py",
                 "test_tier_consistency.py", "test_parallel_kernels.py", "test_while_compiled.py",
                 "test_gradbench_evals.py", "test_tiered.py", "test_gradbench_nested.py", "test_while.py",
                 "test_codegen.py", "test_python_tier.py", "test_scale_out_e2e.py", "test_registry_lru.py",
                 "test_deadlines_e2e.py", "test_load_e2e.py", "test_cli.py", "test_rpc_server.py",
                 "test_peers_replicas_e2e.py", "test_int_data.py", "test_isolation.py", "test_oip_e2e.py",
                 "test_compiled_e2e.py", "test_isolation_e2e.py", "test_transforms.py")


def pytest_configure(config):
    where = os.environ.get("ADSERVE_TEST_CPU_REPORT")
    if where:
        from cpu_report import CpuReport

        config.pluginmanager.register(CpuReport(where), "adserve-cpu-report")


def pytest_collection_modifyitems(config, items):
    """Mark each test by the directory it lives in (engine, server, e2e), so `-m` selects a layer; run the
    longest files first."""
    for item in items:
        layer = item.path.parent.name
        if layer in ("engine", "server", "e2e"):
            item.add_marker(getattr(pytest.mark, layer))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
