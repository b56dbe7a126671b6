"""Two real server processes on loopback sharing one real redis-server; SIGTERM drains.

The replicas run on the interpreter (ADSERVE_COMPILE=false) so that they start
and answer in well under a second; compiled kernels do not change what is shared.
"""

import concurrent.futures
import contextlib
import signal
import threading
import time

import httpx
import orjson
import pytest

from redis_process import RedisProcess
from server_process import evaluations_computing, free_port, running_server, wait_until

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
AT = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(redis, [replica url, replica url]); a test that kills Redis starts it again."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    r = RedisProcess(tmp_path).start()
    env = {"ADSERVE_REDIS_URL": r.url, "ADSERVE_COMPILE": "false", "ADSERVE_CACHE_DIR": str(tmp_path / "cache")}
    try:
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(running_server(tmp_path / f"replica{i}.log", env=env)).url for i in (0, 1)]
            yield r, urls
    finally:
        r.kill()


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_register_on_one_replica_evaluate_on_the_other(cluster):
    _, (url_a, url_b) = cluster
    with httpx.Client(base_url=url_a, timeout=30) as a, httpx.Client(base_url=url_b, timeout=30) as b:
        reg = a.post("/v1/functions", json=SURVEY)
        assert reg.status_code == 201
        fn = reg.json()["id"]
        assert b.get(f"/v1/functions/{fn}").json() == reg.json()
        assert b.post("/v1/functions", json=SURVEY).status_code == 200  # registered already, elsewhere
        assert b.get(f"/v1/functions/{fn}/graph").json() == a.get(f"/v1/functions/{fn}/graph").json()

        first = a.post(f"/v1/functions/{fn}/evaluate", json=AT).json()
        second = b.post(f"/v1/functions/{fn}/evaluate", json=AT).json()
        assert first["cached"] is False and second["cached"] is True
        assert second["value"] == first["value"] == pytest.approx(11.652071455223084)
        assert second["gradient"] == first["gradient"]
        assert metric(b, "adserve_shared_cache_hits_total") == 1
        assert metric(b, "adserve_shared_registry_fetches_total") == 1
        assert metric(a, "adserve_redis_up") == metric(b, "adserve_redis_up") == 1


def test_redis_killed_mid_run_fails_no_request(cluster):
    redis_proc, urls = cluster
    clients = [httpx.Client(base_url=u, timeout=30) for u in urls]
    fn = clients[0].post("/v1/functions", json=SURVEY).json()["id"]
    statuses, stop = [], threading.Event()

    def load(worker: int):
        for i in range(20000):  # bounded; stops when the test has seen enough
            if stop.is_set():
                return
            c = clients[(i + worker) % 2]
            body = {"inputs": {"x1": 1.0 + i % 500, "x2": float(worker)}, "compute": ["value", "gradient"]}
            if i % 3:
                statuses.append(c.post(f"/v1/functions/{fn}/evaluate", json=body).status_code)
            else:
                statuses.append(c.post("/v1/evaluate", json={**body, "function": SURVEY}).status_code)

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(load, w) for w in range(4)]
            time.sleep(0.3)
            redis_proc.kill()
            time.sleep(0.5)
            redis_proc.start()  # back, empty, on the same port
            deadline = time.monotonic() + 15
            while not all(metric(c, "adserve_redis_up") == 1 for c in clients):
                assert time.monotonic() < deadline, "the replicas did not reconnect"
                time.sleep(0.1)
            stop.set()
            for j in jobs:
                j.result()
        assert len(statuses) > 50 and set(statuses) == {200}, sorted(set(statuses))
        assert all(metric(c, "adserve_redis_errors_total") >= 1 for c in clients)
        # the definition lost with Redis's memory was written back on reconnect
        assert redis_proc.client().exists("adserve:v1:fn:" + fn)
        assert all(c.get("/readyz").status_code == 200 for c in clients)
    finally:
        for c in clients:
            c.close()


def stops_accepting(url: str, within: float = 30.0) -> None:
    """New connections are refused after SIGTERM (the server notices the signal on its next tick; `within` only
    bounds a hang: the callers check that what they had in flight was still running then)."""
    deadline = time.monotonic() + within
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
        except httpx.ConnectError:
            return
        except httpx.TransportError:  # accepted just before the listener closed, then reset
            pass
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.02)


def test_a_replica_starts_ready_and_serves_while_redis_is_down(tmp_path):
    env = {"ADSERVE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "ADSERVE_COMPILE": "false",
           "ADSERVE_CACHE_DIR": str(tmp_path / "cache")}
    with running_server(tmp_path / "server.log", env=env) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/evaluate", json={**AT, "function": SURVEY})
        assert r.status_code == 200 and r.json()["value"] == pytest.approx(11.652071455223084)
        assert metric(c, "adserve_redis_up") == 0
        assert "WARNING adserve.shared: Redis at" in server.log()


SLOW = {"inputs": [{"name": "x", "shape": []}],
        "program": "def f(x):\n    s = 0.0\n    for i in range(60000):\n        s = s + sin(x * i)\n    return s\n"}


# a grace period no computation here comes near, on a loaded machine too (an evaluation that outlives the grace
# is stopped and answered 503: tests/e2e/test_deadlines_e2e.py)
GENEROUS = {"ADSERVE_SHUTDOWN_GRACE_SECONDS": "300", "ADSERVE_MAX_EVAL_SECONDS": "300"}


def test_sigterm_drains_requests_in_flight_then_exits(tmp_path):
    env = {"ADSERVE_COMPILE": "false", "ADSERVE_CACHE_DIR": str(tmp_path / "cache"), **GENEROUS}
    with running_server(tmp_path / "server.log", env=env) as server, httpx.Client(base_url=server.url) as c:
        fn = httpx.post(f"{server.url}/v1/functions", json=SLOW, timeout=30).json()["id"]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{server.url}/v1/functions/{fn}/evaluate",
                                    json={"inputs": {"x": 0.5}, "compute": ["value", "gradient"]}, timeout=300)
            assert wait_until(lambda: evaluations_computing(c) == 1 or in_flight.done(), 60)  # the server has it
            server.process.send_signal(signal.SIGTERM)
            stops_accepting(server.url)
            assert not in_flight.done(), "the slow request is too fast to test draining"
            answer = in_flight.result()
        assert answer.status_code == 200 and set(answer.json()) == {"value", "gradient", "cached"}, answer.text
        assert server.process.wait(60) in (0, -signal.SIGTERM)


SLOW_ROSENBROCK = {"inputs": [{"name": "x", "shape": [2]}],
                   "program": "def f(x):\n    s = 0.0\n    for i in range(300):\n"
                              "        s = s + (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2\n    return s / 300\n"}


def test_sigterm_lets_a_stream_in_flight_finish(tmp_path):
    env = {"ADSERVE_COMPILE": "false", "ADSERVE_CACHE_DIR": str(tmp_path / "cache"), **GENEROUS}
    with running_server(tmp_path / "server.log", env=env) as server:
        fn = httpx.post(f"{server.url}/v1/functions", json=SLOW_ROSENBROCK, timeout=30).json()["id"]
        body = {"x0": {"x": [-1.2, 1.0]}, "method": "lbfgs", "max_iter": 6}
        with httpx.stream("POST", f"{server.url}/v1/functions/{fn}/minimize", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = orjson.loads(next(lines))
            assert first["iteration"] == 0 and not first["done"]
            server.process.send_signal(signal.SIGTERM)
            stops_accepting(server.url)
            rest = [orjson.loads(line) for line in lines if line]
        assert rest and rest[-1]["done"] and "error" not in rest[-1]
        assert len(rest) >= 2 and rest[0]["iteration"] == 1 and rest[-1]["iteration"] == body["max_iter"]
        assert server.process.wait(60) in (0, -signal.SIGTERM)
