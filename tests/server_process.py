"""Start a real adserve process (`python -m adserve.server.cli`) on a free loopback port.

The one start-and-wait-until-ready helper: the tests use it, and so does the
benchmark (`bench/service.py` puts this directory on `sys.path`, as
`scripts/demo-screenshot.py` does), so nothing here may need pytest.
"""

import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


TEST_MAX_BODY_BYTES = 1 << 20  # the body limit of the session's shared server (conftest.py's `server`)


@dataclass
class RunningServer:
    url: str
    log_path: Path
    process: subprocess.Popen
    grpc: str | None = None  # "127.0.0.1:<port>" when gRPC is on
    ready_seconds: float = 0.0  # from starting the process to the first 200 on /readyz

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(log_path: Path, grpc_port: int = 0, env=None, ready_within: float = 90, *,
                   append: bool = False, poll: float = 0.1, tls_ca: Path | None = None, cwd: Path | None = None):
    """Yield a server that answers 200 on /readyz; stop it afterwards, whatever happened (SIGTERM, then
    SIGKILL after 20 s). `env` is added to this process's environment; its output goes to `log_path`
    (appended to with `append`); /readyz is asked every `poll` seconds. `tls_ca`: the server serves TLS
    (ADSERVE_TLS_* in `env`) with a certificate this CA file verifies; its url is then https. `cwd`: the
    directory it runs in, whose `adserve` package it imports (default this process's: another checkout's, to
    compare code versions)."""
    port = free_port()
    cmd = [sys.executable, "-m", "adserve.server.cli", "--host", "127.0.0.1", "--http-port", str(port),
           "--grpc-port", str(grpc_port)]
    verify = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
    started = time.perf_counter()
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)
    server = RunningServer(f"{'https' if tls_ca else 'http'}://127.0.0.1:{port}", Path(log_path), proc,
                           f"127.0.0.1:{grpc_port}" if grpc_port else None)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} (log: {log_path}):\n{server.log()[-3000:]}")
            try:
                if httpx.get(server.url + "/readyz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > ready_within:
                raise RuntimeError(f"server not ready in {ready_within} s (log: {log_path}):\n{server.log()[-3000:]}")
            time.sleep(poll)
        server.ready_seconds = time.perf_counter() - started
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def minimizers_running(client: httpx.Client) -> int:
    """The server's `adserve_minimize_running` gauge: optimisers still running."""
    metrics = client.get("/metrics").text
    return int(float(re.search(r"^adserve_minimize_running (\S+)$", metrics, re.M)[1]))


def evaluations_computing(client: httpx.Client) -> int:
    """The server's `adserve_evaluations_computing` gauge: evaluations in its engine now."""
    metrics = client.get("/metrics").text
    return int(float(re.search(r"^adserve_evaluations_computing (\S+)$", metrics, re.M)[1]))


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
