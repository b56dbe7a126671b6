"""The Python client against a server with TLS and API keys, and against a rate limit: a self-signed certificate
made here (openssl), the key sent by the client (REST and gRPC), and calls refused with 429 / RESOURCE_EXHAUSTED
made again by the client after the server's Retry-After."""

import shutil
import ssl
import subprocess

import httpx
import pytest

from adserve_client import Client, GrpcClient, ResourceExhausted, Unauthenticated, Unavailable, expr
from server_process import free_port, running_server

KEY = "k-tls-0123456789"
SQUARE = expr("x * x", x=[])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """(certificate, private key) paths: self-signed, for localhost and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate with")
    home = tmp_path_factory.mktemp("tls")
    cert, key = home / "cert.pem", home / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(certificate, tmp_path_factory):
    cert, key = certificate
    env = {"ADSERVE_TLS_CERT_FILE": str(cert), "ADSERVE_TLS_KEY_FILE": str(key), "ADSERVE_API_KEYS": KEY,
           "ADSERVE_COMPILE": "false"}
    with running_server(tmp_path_factory.mktemp("tls-server") / "server.log", grpc_port=free_port(), env=env,
                        tls_ca=cert) as s:
        yield s


def test_grpc_over_tls_with_an_api_key(tls_server, certificate):
    root = certificate[0].read_bytes()
    with GrpcClient(tls_server.grpc, root_certificates=root, api_key=KEY) as client:
        assert float(client.evaluate(SQUARE, {"x": 3.0}).value) == 9.0
    with GrpcClient(tls_server.grpc, root_certificates=root) as keyless, pytest.raises(Unauthenticated):
        keyless.evaluate(SQUARE, {"x": 3.0})
    with GrpcClient(tls_server.grpc, retries=0) as plaintext, pytest.raises(Unavailable):
        plaintext.evaluate(SQUARE, {"x": 3.0})  # no TLS: the handshake fails


def test_rest_over_tls_with_an_api_key(tls_server, certificate):
    verify = ssl.create_default_context(cafile=str(certificate[0]))
    with Client(tls_server.url, api_key=KEY, verify=verify) as client:
        assert float(client.evaluate(SQUARE, {"x": 4.0}).value) == 16.0
    with Client(tls_server.url, verify=verify) as keyless, pytest.raises(Unauthenticated):
        keyless.evaluate(SQUARE, {"x": 4.0})


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One request every 4 s per client, one at once: a second call right after a first is refused (at one a
    second, a busy machine's second call could come after the next token; the retrying client waits 4 s)."""
    env = {"ADSERVE_RATE_LIMIT_PER_SECOND": "0.25", "ADSERVE_RATE_LIMIT_BURST": "1", "ADSERVE_COMPILE": "false"}
    with running_server(tmp_path_factory.mktemp("limited") / "server.log", grpc_port=free_port(), env=env) as s:
        yield s


def refusals(server, metric: str, label: str) -> float:
    """The sum of `metric` over its series with `label` (such as `status="429"`)."""
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric + "{") and label in line)


def test_a_rate_limited_rest_call_is_retried_after_retry_after(limited):
    with Client(limited.url, retries=5) as patient, Client(limited.url, retries=0) as once:
        patient.evaluate(SQUARE, {"x": 1.0})  # takes the one token (after waiting for it, if need be)
        with pytest.raises(ResourceExhausted) as e:
            once.evaluate(SQUARE, {"x": 1.0})
        assert e.value.status == 429 and e.value.retryable and e.value.retry_after >= 1
        before = refusals(limited, "adserve_http_requests_total", 'status="429"')
        assert float(patient.evaluate(SQUARE, {"x": 3.0}).value) == 9.0  # refused first, then answered
    assert refusals(limited, "adserve_http_requests_total", 'status="429"') > before


def test_a_rate_limited_grpc_call_is_retried_after_retry_after(limited):
    with GrpcClient(limited.grpc, retries=5) as patient, GrpcClient(limited.grpc, retries=0) as once:
        patient.evaluate(SQUARE, {"x": 1.0})
        with pytest.raises(ResourceExhausted) as e:
            once.evaluate(SQUARE, {"x": 1.0})
        assert e.value.retryable and e.value.retry_after >= 1
        before = refusals(limited, "adserve_grpc_requests_total", 'code="RESOURCE_EXHAUSTED"')
        assert float(patient.evaluate(SQUARE, {"x": 3.0}).value) == 9.0
    assert refusals(limited, "adserve_grpc_requests_total", 'code="RESOURCE_EXHAUSTED"') > before


def test_a_message_over_the_size_limit_is_not_retried(limited):
    """RESOURCE_EXHAUSTED without retry-after (grpc's own size limit) would be refused again: raised at once."""
    with GrpcClient(limited.grpc, retries=3) as client, pytest.raises(ResourceExhausted) as e:
        client.evaluate(expr("sum(x)", x=[3_000_000]), {"x": [0.0] * 3_000_000})
    assert not e.value.retryable
