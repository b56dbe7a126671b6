"""Shared fixtures. `server` starts a real adserve process on a free loopback port."""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

TEST_MAX_BODY_BYTES = 1 << 20


@dataclass
class RunningServer:
    url: str
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A server process (`python -m adserve.server.cli`), ready, with a 1 MiB body limit."""
    home = tmp_path_factory.mktemp("adserve")
    port, log_path = _free_port(), home / "server.log"
    env = {**os.environ, "ADSERVE_MAX_BODY_BYTES": str(TEST_MAX_BODY_BYTES),
           "ADSERVE_CACHE_DIR": str(home / "cache"), "ADSERVE_LOG_LEVEL": "info"}
    cmd = [sys.executable, "-m", "adserve.server.cli", "--host", "127.0.0.1", "--http-port", str(port),
           "--grpc-port", "0"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    running = RunningServer(f"http://127.0.0.1:{port}", log_path, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{running.log()[-3000:]}")
            try:
                if httpx.get(running.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 90 s:\n{running.log()[-3000:]}")
            time.sleep(0.1)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
