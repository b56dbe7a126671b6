"""Settings come from defaults, then ADSERVE_* variables, then flags; bad ones stop the start cleanly."""

import socket
import subprocess
import sys

import httpx
import pytest

from adserve.server.cli import load_settings, parse_args
from server_process import free_port, running_server


def test_defaults(monkeypatch):
    for name in ("HOST", "HTTP_PORT", "GRPC_PORT", "MAX_BODY_BYTES"):
        monkeypatch.delenv(f"ADSERVE_{name}", raising=False)
    s = load_settings(parse_args([]))
    assert (s.host, s.http_port, s.grpc_port, s.max_body_bytes) == ("127.0.0.1", 8000, 50051, 16 << 20)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("ADSERVE_HTTP_PORT", "9001")
    monkeypatch.setenv("ADSERVE_GRPC_PORT", "9101")
    monkeypatch.setenv("ADSERVE_API_KEYS", "k1, k2")
    s = load_settings(parse_args(["--http-port", "9002"]))
    assert (s.http_port, s.grpc_port, s.api_keys) == (9002, 9101, ["k1", "k2"])


def test_a_bad_setting_exits_with_its_name(monkeypatch):
    monkeypatch.setenv("ADSERVE_HTTP_PORT", "eighty")
    with pytest.raises(SystemExit) as e:
        load_settings(parse_args([]))
    assert "http_port" in str(e.value.code)


def test_console_entry_serves_both_protocols(tmp_path):
    grpc_port = free_port()
    with running_server(tmp_path / "server.log", grpc_port=grpc_port) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
    assert f"gRPC on 127.0.0.1:{grpc_port}" in server.log()


def _start_failure(http_port: int, grpc_port: int) -> tuple[int, list[str]]:
    """(exit status, the lines of stderr that are not INFO log lines) of an adserve that should not start."""
    r = subprocess.run([sys.executable, "-m", "adserve.server.cli", "--http-port", str(http_port),
                        "--grpc-port", str(grpc_port)], capture_output=True, text=True, timeout=120)
    return r.returncode, [line for line in r.stderr.splitlines() if " INFO " not in line]


def test_a_second_server_on_the_same_grpc_port_exits_with_one_line(tmp_path):
    """grpc sets SO_REUSEPORT unless told not to: a second server would bind the port and share its calls."""
    grpc_port = free_port()
    with running_server(tmp_path / "server.log", grpc_port=grpc_port):
        code, lines = _start_failure(free_port(), grpc_port)
    assert code != 0
    assert lines == [f"adserve: cannot listen for gRPC on 127.0.0.1:{grpc_port}: the port is taken"]


def test_a_second_server_on_the_same_http_port_exits_with_one_line(tmp_path):
    with running_server(tmp_path / "server.log") as server:
        http_port = int(server.url.rsplit(":", 1)[1])
        code, lines = _start_failure(http_port, free_port())
        assert httpx.get(server.url + "/healthz").status_code == 200  # the first one serves on
    assert code != 0
    assert lines == [f"adserve: cannot listen for HTTP on 127.0.0.1:{http_port}: the port is taken"]


def test_a_taken_grpc_port_exits_with_a_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "adserve.server.cli", "--http-port", str(free_port()),
                            "--grpc-port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and f"cannot listen for gRPC on 127.0.0.1:{port}" in r.stderr


def test_a_tls_certificate_without_its_key_exits_with_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv("ADSERVE_TLS_CERT_FILE", str(tmp_path / "cert.pem"))
    monkeypatch.delenv("ADSERVE_TLS_KEY_FILE", raising=False)
    with pytest.raises(SystemExit) as e:
        load_settings(parse_args([]))
    assert "tls_cert_file and tls_key_file go together" in str(e.value.code)
