"""POST /v1/functions/{id}/minimize end to end: NDJSON progress, 4xx before streaming, disconnect stops it."""

import json

import httpx
import numpy as np
import pytest

from server_process import minimizers_running, wait_until

ROSENBROCK = {"inputs": [{"name": "x", "shape": [10]}],
              "expr": "sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)"}


@pytest.fixture(scope="module")
def rosenbrock_id(client):
    return client.post("/v1/functions", json=ROSENBROCK).json()["id"]


def lines(response: httpx.Response) -> list:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg"])
def test_progress_lines_end_at_the_minimum(client, rosenbrock_id, method):
    steps = lines(client.post(f"/v1/functions/{rosenbrock_id}/minimize",
                              json={"x0": {"x": [-1.0] * 10}, "method": method}))
    assert set(steps[0]) == {"iteration", "x", "value", "grad_norm", "done", "message", "success"}
    assert [s["done"] for s in steps] == [False] * (len(steps) - 1) + [True]
    assert steps[0]["x"]["x"] == [-1.0] * 10 and steps[-1]["success"] and steps[-1]["message"]
    np.testing.assert_allclose(steps[-1]["x"]["x"], np.ones(10), atol=1e-4)


def test_the_fields_of_minimize_request(client, rosenbrock_id):
    steps = lines(client.post(f"/v1/functions/{rosenbrock_id}/minimize",
                              json={"id": rosenbrock_id, "x0": {"x": [-1.0] * 10}, "max_iter": 2, "gtol": 1e-3}))
    assert steps[-1]["iteration"] == 2


def test_base64_in_gives_base64_out(client, rosenbrock_id):
    from test_rest_e2e import b64, from_b64
    steps = lines(client.post(f"/v1/functions/{rosenbrock_id}/minimize", json={"x0": {"x": b64(-np.ones(10))}}))
    np.testing.assert_allclose(from_b64(steps[-1]["x"]["x"]), np.ones(10), atol=1e-4)


@pytest.mark.parametrize("path, body, status, code", [
    ("{id}", {"x0": {"x": [0.0] * 10}, "method": "simplex"}, 422, "invalid_field"),
    ("{id}", {"x0": {"x": [0.0] * 3}}, 422, "shape_mismatch"),
    ("{id}", {"x0": {"x": [0.0] * 10}, "id": "other"}, 422, "invalid_field"),
    ("{id}", {"x0": {"x": [0.0] * 10}, "function": ROSENBROCK}, 422, "unknown_field"),
    ("{id}", {}, 422, "missing_field"),
    ("nope", {"x0": {"x": [0.0] * 10}}, 404, "function_not_found"),
])
def test_bad_requests_are_plain_errors(client, rosenbrock_id, path, body, status, code):
    r = client.post(f"/v1/functions/{path.format(id=rosenbrock_id)}/minimize", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_malformed_json_is_400(client, rosenbrock_id):
    r = client.post(f"/v1/functions/{rosenbrock_id}/minimize", content=b"{x0")
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


def test_closing_the_connection_stops_the_optimiser(server, client):
    big = client.post("/v1/functions", json={**ROSENBROCK, "inputs": [{"name": "x", "shape": [2000]}]}).json()["id"]
    with httpx.Client(base_url=server.url, timeout=60) as own:  # its own connection, to close
        with own.stream("POST", f"/v1/functions/{big}/minimize",
                        json={"x0": {"x": [-1.0] * 2000}, "max_iter": 100000, "gtol": 0}) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection when collected
            assert json.loads(next(lines))["iteration"] == 0
            assert minimizers_running(client) == 1
    assert wait_until(lambda: minimizers_running(client) == 0, 3)

