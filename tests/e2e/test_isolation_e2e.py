"""Isolation against a real server process: long evaluations run in a worker process of their own.

* A long evaluation (the HVP of a 10^6-step loop, `timeout_ms` 2000) and the survey example side by side:
  the long one answers 504 deadline_exceeded saying how far it got, the short ones answer correctly while
  it runs; `/metrics` counts the isolated evaluation and its worker, a child process of the server, is
  still there (it stopped by itself).
* A request over the worker's memory limit (ADSERVE_WORKER_MEMORY_BYTES) answers 413 too_large naming
  it; the worker is replaced (counted) and the next request answers.
* A compile worker under a tiny ADSERVE_COMPILE_MEMORY_BYTES: the function answers on the interpreter, the
  failure is counted with reason "memory".

Behaviour only: no latency is asserted (bench/isolation.py measures it).
"""

import glob
import math
import threading

import httpx
import pytest

from server_process import evaluations_computing as computing
from server_process import running_server, wait_until

N = 1_000_000
LOOP = {"inputs": [{"name": "x", "shape": []}],
        "program": f"def f(x):\n    for i in range({N}):\n        x = x * 0.999999 + 0.000001 * sin(x)\n    return x\n"}
HVP = {"inputs": {"x": 0.5}, "compute": ["hvp"], "tangent": {"x": 1.0}}
SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
          "expr": "log(x1) + x1*x2 - sin(x2)"}
AT = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}
BIG = {"inputs": [{"name": "x", "shape": []}],  # 9e6-element values from a scalar: ~72 MB each
       "expr": "sum(sin(ones([3000, 3000]) * x) * cos(ones([3000, 3000]) * x))"}
# The request-bytes estimate (ADSERVE_MAX_REQUEST_BYTES) would refuse the memory case before it runs; it is
# raised here so that the worker's own limit, the line behind it, is what the test meets.
ENV = {"ADSERVE_COMPILE": "false", "ADSERVE_RESULT_CACHE_BYTES": "0", "ADSERVE_ISOLATE_WORKERS": "1",
       "ADSERVE_WORKER_MEMORY_BYTES": str(400 << 20), "ADSERVE_MAX_EVAL_SECONDS": "120",
       "ADSERVE_MAX_REQUEST_BYTES": str(16 << 30)}


def metric(client, name):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def isolation_workers(pid):
    """Pids of the server's isolation workers (its children running adserve.engine.isolation_worker)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(stat[:-4] + "cmdline", "rb") as f:
                    if b"adserve.engine.isolation_worker" in f.read():
                        out.append(int(stat.split("/")[2]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def check_survey(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["value"] == pytest.approx(math.log(2) + 10 - math.sin(5))
    assert body["gradient"]["x1"] == pytest.approx(0.5 + 5) and body["gradient"]["x2"] == pytest.approx(2 - math.cos(5))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("isolation")
    with running_server(home / "server.log", env={**ENV, "ADSERVE_CACHE_DIR": str(home)}) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def test_short_requests_answer_while_a_long_one_runs_to_its_timeout(server, client):
    loop_id = client.post("/v1/functions", json=LOOP).json()["id"]
    survey_id = client.post("/v1/functions", json=SURVEY).json()["id"]
    assert wait_until(lambda: len(isolation_workers(server.process.pid)) == 1, 30)  # started with the server
    (worker,) = isolation_workers(server.process.pid)
    long = {}

    def run_long():
        with httpx.Client(base_url=server.url, timeout=120) as mine:
            long["r"] = mine.post(f"/v1/functions/{loop_id}/evaluate", json={**HVP, "timeout_ms": 2000})

    t = threading.Thread(target=run_long)
    t.start()
    assert wait_until(lambda: computing(client) >= 1 or not t.is_alive(), 20)
    answered_meanwhile = 0
    while t.is_alive():
        r = client.post(f"/v1/functions/{survey_id}/evaluate", json=AT)
        check_survey(r)
        answered_meanwhile += t.is_alive()
    t.join()
    assert answered_meanwhile >= 3
    r = long["r"]
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "deadline_exceeded" and loop_id in err["message"] and "timeout_ms 2000" in err["message"]
    assert f"of {N:,} loop iterations" in err["message"]
    assert wait_until(lambda: computing(client) == 0, 20)
    assert metric(client, "adserve_isolated_evaluations_total") >= 1
    shorter = {**LOOP, "program": LOOP["program"].replace(f"range({N})", "range(100000)")}  # still isolated
    r = client.post("/v1/evaluate", json={"function": shorter, "inputs": {"x": 0.5}, "compute": ["value"]})
    assert r.status_code == 200 and "compute;dur=" in r.headers["server-timing"]
    assert ";desc=isolated" in r.headers["server-timing"] and r.headers["x-adserve-backend"] == "interpreter"
    assert metric(client, "adserve_isolation_workers") == 1
    assert isolation_workers(server.process.pid) == [worker]  # it stopped by itself and is kept
    check_survey(client.post(f"/v1/functions/{survey_id}/evaluate", json=AT))


def test_a_request_over_the_workers_memory_limit_is_413_naming_it(server, client):
    before = isolation_workers(server.process.pid)
    r = client.post("/v1/evaluate", json={"function": BIG, "inputs": {"x": 0.1}, "compute": ["value", "gradient"]})
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "too_large" and "ADSERVE_WORKER_MEMORY_BYTES" in err["message"], err
    lines = client.get("/metrics").text.splitlines()
    assert 'adserve_isolation_workers_replaced_total{reason="memory"} 1.0' in lines
    after = isolation_workers(server.process.pid)
    assert len(after) == 1 and after != before
    small = {"inputs": [{"name": "x", "shape": []}], "expr": "sum(sin(ones([30, 30]) * x))"}
    r = client.post("/v1/evaluate", json={"function": small, "inputs": {"x": 0.1}, "compute": ["value"]})
    assert r.status_code == 200 and r.json()["value"] == pytest.approx(900 * math.sin(0.1))


def test_a_compile_worker_out_of_memory_leaves_the_function_on_the_interpreter(tmp_path):
    env = {"ADSERVE_CACHE_DIR": str(tmp_path), "ADSERVE_COMPILE_MEMORY_BYTES": str(200 << 20),
           "ADSERVE_PYTHON_TIER": "false", "ADSERVE_RESULT_CACHE_BYTES": "0"}
    with running_server(tmp_path / "server.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fid = client.post("/v1/functions", json=SURVEY).json()["id"]

        def failed():
            check_survey(client.post(f"/v1/functions/{fid}/evaluate", json=AT))
            lines = client.get("/metrics").text.splitlines()
            return 'adserve_compile_failures_total{reason="memory"} 1.0' in lines

        assert wait_until(failed, 120)
        for _ in range(3):
            r = client.post(f"/v1/functions/{fid}/evaluate", json=AT)
            check_survey(r)
            assert r.headers["x-adserve-backend"] == "interpreter"
        assert "ran out of memory" in server.log() and "ADSERVE_COMPILE_MEMORY_BYTES" in server.log()
