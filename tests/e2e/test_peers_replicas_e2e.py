"""A function registered by name on one replica answers through every peer protocol on another replica that
shares its Redis (UM-Bridge, Tesseract, the Open Inference Protocol over REST and gRPC), and again after that
replica restarts: the peers' own clients, by name, nothing registered there."""

import contextlib

import httpx
import numpy as np
import pytest
import tesseract_core
import tritonclient.grpc as tritonclient_grpc
import tritonclient.http as tritonclient_http
import umbridge

from redis_process import RedisProcess
from server_process import free_port, running_server

NAME = "peers.replicated"
DEFINITION = {"name": NAME, "inputs": [{"name": "x", "shape": [2]}, {"name": "y", "shape": []}],
              "expr": "x * y + sin(x)"}
X, Y = np.array([0.3, -1.2]), 2.0
VALUE = X * Y + np.sin(X)
GRADIENT_Y = X  # d/dy of sum(cotangent * value) with a cotangent of ones


def oip_value(module, url):
    client = module.InferenceServerClient(url=url)
    try:
        inputs = []
        for name, a in (("x", X), ("y", np.array(Y))):
            t = module.InferInput(name, list(a.shape), "FP64")
            t.set_data_from_numpy(a)
            inputs.append(t)
        return client.infer(NAME, inputs).as_numpy("value")
    finally:
        client.close()


def answers_through_every_protocol(server):
    model = umbridge.HTTPModel(server.url + "/umbridge", NAME)
    np.testing.assert_allclose(model([X.tolist(), [Y]])[0], VALUE, rtol=1e-12)
    np.testing.assert_allclose(model.gradient(0, 1, [X.tolist(), [Y]], [1.0, 1.0]), [GRADIENT_Y.sum()], rtol=1e-12)
    tess = tesseract_core.Tesseract.from_url(server.url + "/tesseract/" + NAME)
    np.testing.assert_allclose(tess.apply({"x": X, "y": np.array(Y)})["value"], VALUE, rtol=1e-12)
    np.testing.assert_allclose(oip_value(tritonclient_http, server.url.removeprefix("http://")), VALUE, rtol=1e-12)
    np.testing.assert_allclose(oip_value(tritonclient_grpc, server.grpc), VALUE, rtol=1e-12)


@pytest.fixture
def redis(tmp_path):
    r = RedisProcess(tmp_path).start()
    yield r
    r.kill()


def test_a_name_registered_on_one_replica_answers_every_protocol_on_the_other_and_after_a_restart(tmp_path, redis):
    env = {"ADSERVE_REDIS_URL": redis.url, "ADSERVE_COMPILE": "false", "ADSERVE_CACHE_DIR": str(tmp_path / "cache")}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(running_server(tmp_path / "a.log", grpc_port=free_port(), env=env))
        r = httpx.post(a.url + "/v1/functions", json=DEFINITION, timeout=60)
        assert r.status_code == 201, r.text
        b = stack.enter_context(running_server(tmp_path / "b.log", grpc_port=free_port(), env=env))
        answers_through_every_protocol(b)
    # the first replica gone, a new process comes up on the same Redis and knows the name
    with running_server(tmp_path / "restarted.log", grpc_port=free_port(), env=env) as restarted:
        answers_through_every_protocol(restarted)
