"""`Service.brief`: which evaluations a transport may answer on its event loop (no compile, no plan to build,
no Redis, no batch, a small cost-model bound), and that the REST and gRPC adapters answer them the same way."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adserve.engine import Engine
from adserve.server import tenancy
from adserve.server.app import build
from adserve.server.service import Service
from adserve.server.settings import Settings

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
AT = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}
# 10^4 elements: its gradient's cost-model bound (a few times 10^4 per operation) is over BRIEF_WORK
LARGE = {"inputs": [{"name": "x", "shape": [10000]}], "expr": "sum(sin(x) * x)"}


@pytest.fixture
def service():
    s = Service(Engine(), result_cache_bytes=1 << 20)
    yield s
    s.close()


def test_brief_once_the_plan_has_run(service):
    fid = service.register(SURVEY)[0]["id"]
    assert not service.brief(fid, AT)  # its plans are built on the first evaluation: in a worker thread
    service.evaluate(fid, AT)
    assert service.brief(fid, {**AT, "inputs": {"x1": 3.0, "x2": 1.0}})
    assert service.brief(SURVEY, AT)  # the definition sent again: registered, compiled, nothing to do
    assert not service.brief(fid, {**AT, "compute": ["hessian"]})  # another plan, not run yet
    assert not service.brief(fid, {**AT, "batch": True})
    assert not service.brief(fid, {**AT, "compute": [{"not": "a name"}]})
    assert not service.brief({**SURVEY, "name": "survey"}, AT)  # a name to give is the registry's work


def test_not_brief_for_what_it_does_not_hold(service):
    fid = service.register(SURVEY)[0]["id"]
    service.evaluate(fid, AT)
    assert not service.brief("0" * 40, AT)
    assert not service.brief({**SURVEY, "expr": "x1 * x2"}, AT)  # would be compiled
    with tenancy.acting_as("another-tenant"):  # its registry does not have it
        assert not service.brief(fid, AT)


def test_not_brief_over_the_cost_bound(service):
    fid = service.register(LARGE)[0]["id"]
    body = {"inputs": {"x": np.linspace(0, 1, 10000)}, "compute": ["value", "gradient"]}
    service.evaluate(fid, body)
    assert not service.brief(fid, body)
    off = Service(Engine(), result_cache_bytes=1 << 20, brief_work=0)
    try:
        sid = off.register(SURVEY)[0]["id"]
        off.evaluate(sid, AT)
        assert not off.brief(sid, AT)
    finally:
        off.close()


class CountingService(Service):
    """Records whether each evaluation ran on the event loop's thread or in a worker thread."""

    def __init__(self):
        super().__init__(Engine(), result_cache_bytes=1 << 20)
        self.threads = []

    def evaluate(self, target, body, meta=None, deadline=None):
        import threading
        self.threads.append(threading.current_thread().name)
        return super().evaluate(target, body, meta, deadline)


def test_rest_answers_a_brief_evaluation_on_the_loop_the_same():
    counting = CountingService()
    with TestClient(build(Settings(grpc_port=0), service=counting).http) as client:
        fid = client.post("/v1/functions", json=SURVEY).json()["id"]
        answers = [client.post(f"/v1/functions/{fid}/evaluate", json={**AT, "inputs": {"x1": x1, "x2": 5.0}})
                   for x1 in (2.0, 3.0)]
        by_definition = client.post("/v1/evaluate", json={"function": SURVEY, **AT, "inputs": {"x1": 4.0, "x2": 5.0}})
    first, second = counting.threads[:2]
    assert first != second  # the first in a worker thread (its plans are built), the second on the loop
    for r, x1 in zip([*answers, by_definition], (2.0, 3.0, 4.0)):
        assert r.status_code == 200, r.text
        assert r.json()["value"] == pytest.approx(np.log(x1) + 5 * x1 - np.sin(5.0))
        assert r.json()["gradient"]["x1"] == pytest.approx(1 / x1 + 5.0)
        assert "total;dur=" in r.headers["server-timing"] and r.headers["x-adserve-backend"]
    assert counting.threads[2] == second  # /v1/evaluate with the definition: on the loop too


def test_never_brief_when_the_engine_would_isolate_it():
    """With ADSERVE_ISOLATE_WORK under the brief bound, a small evaluation goes to an isolation worker: waiting on
    its pipe must not happen on the event loop."""
    from adserve.engine.isolation import WorkerPool, WorkerSpec

    pool = WorkerPool(WorkerSpec(cache_dir=None, nice=0), size=1, threshold=10)
    s = Service(Engine(isolation=pool), result_cache_bytes=1 << 20)
    try:
        fid = s.register(SURVEY)[0]["id"]
        meta = {}
        r = s.evaluate(fid, AT, meta)
        assert np.isclose(r["value"], np.log(2.0) + 10.0 - np.sin(5.0)) and pool.stats()["evaluations"] >= 1, \
            pool.stats()
        assert not s.brief(fid, {**AT, "inputs": {"x1": 3.0, "x2": 1.0}})
    finally:
        s.close()
        pool.close()
