"""Server-side minimisation in process (adserve/server/optimize.py) on the real engine: methods, several
shaped inputs, checks before any work, and leaving the iteration stopping the optimiser thread."""

import asyncio
import threading

import numpy as np
import pytest

from adserve.server import optimize
from adserve.server.service import Service, ServiceError
from server_process import wait_until

ROSENBROCK = {"inputs": [{"name": "x", "shape": [10]}],
              "expr": "sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)"}
BOWL = {"inputs": [{"name": "a", "shape": [2]}, {"name": "B", "shape": [2, 2]}, {"name": "c", "shape": []}],
        "expr": "sum((a - 1.0)**2) + sum((B - 2.0)**2) + (c + 3.0)**4"}


@pytest.fixture(scope="module")
def service():
    return Service()


def minimize(service, definition, **body):
    async def collect():
        run = await asyncio.to_thread(optimize.start, service, definition, body)
        return [p async for p in run.progress()]
    return asyncio.run(collect())


@pytest.mark.parametrize("method", list(optimize.METHODS))
def test_every_method_finds_the_rosenbrock_minimum(service, method):
    steps = minimize(service, ROSENBROCK, x0={"x": -np.ones(10)}, method=method)
    assert steps[-1]["done"] and steps[-1]["success"] and not any(s["done"] for s in steps[:-1])
    np.testing.assert_allclose(steps[-1]["x"]["x"], np.ones(10), atol=1e-4)


def test_inputs_of_several_shapes(service):
    x0 = {"a": np.zeros(2), "B": np.zeros((2, 2)), "c": np.array(0.0)}
    last = minimize(service, BOWL, x0=x0, method="newton-cg", gtol=1e-8)[-1]
    np.testing.assert_allclose(last["x"]["a"], [1, 1], atol=1e-6)
    np.testing.assert_allclose(last["x"]["B"], np.full((2, 2), 2.0), atol=1e-6)
    assert last["x"]["c"].shape == () and abs(last["x"]["c"] + 3) < 0.1  # a quartic: slow at its flat bottom


def test_a_minimum_at_x0_is_one_step(service):
    steps = minimize(service, BOWL, x0={"a": np.ones(2), "B": np.full((2, 2), 2.0), "c": np.array(-3.0)})
    assert [(s["iteration"], s["done"]) for s in steps] == [(0, False), (0, True)] and steps[-1]["success"]


def test_max_iter_bounds_the_run(service):
    steps = minimize(service, ROSENBROCK, x0={"x": -np.ones(10)}, max_iter=5)
    assert steps[-1]["iteration"] == 5 and not steps[-1]["success"]


@pytest.mark.parametrize("body, code", [
    ({"x0": {"x": [0.0] * 10}, "method": "simplex"}, "invalid_field"),
    ({"x0": {"x": [0.0] * 10}, "max_iter": 0}, "invalid_field"),
    ({"x0": {"x": [0.0] * 10}, "max_iter": 1.5}, "invalid_field"),
    ({"x0": {"x": [0.0] * 10}, "gtol": -1}, "invalid_field"),
    ({"x0": {"x": [0.0] * 10}, "gtol": "small"}, "invalid_field"),
    ({"x0": {"x": [0.0] * 10}, "tol": 1e-3}, "unknown_field"),
    ({"method": "lbfgs"}, "missing_field"),
    ({"x0": [0.0] * 10}, "invalid_field"),
    ({"x0": {"x": [0.0] * 10, "y": 1.0}}, "unknown_input"),
    ({"x0": {"x": [[0.0] * 10]}}, "shape_mismatch"),
    ({"x0": {"x": ["zero"] * 10}}, "invalid_tensor"),
    ([1, 2], "invalid_minimization"),
])
def test_bad_requests_fail_before_any_work(service, body, code):
    with pytest.raises(ServiceError) as e:
        optimize.start(service, ROSENBROCK, body)
    assert e.value.code == code and e.value.kind == "unprocessable" and len(e.value.message) > 10


def test_leaving_early_stops_the_optimiser(service):
    big = {"inputs": [{"name": "x", "shape": [500]}], "expr": ROSENBROCK["expr"]}

    async def take_three():
        run = await asyncio.to_thread(optimize.start, service, big, {"x0": {"x": -np.ones(500)}, "gtol": 0})
        seen = []
        async for p in run.progress():
            seen.append(p["iteration"])
            if len(seen) == 3:
                break
        return seen, run
    seen, run = asyncio.run(take_three())
    assert seen == [0, 1, 2] and run.stop.is_set()  # closing the generator set the flag
    assert wait_until(lambda: optimize.running() == 0, 2)


X0 = {"a": [0.0, 0.0], "B": [[0.0, 0.0], [0.0, 0.0]], "c": 0.0}


def test_the_service_admits_refuses_and_gives_back_places():
    service = Service(max_optimizers=1)

    async def scenario():
        run = await service.minimize(BOWL, {"x0": X0})
        with pytest.raises(ServiceError) as refused:
            await service.minimize(BOWL, {"x0": X0})
        steps = [p async for p in run.progress()]
        run.close()
        run.close()  # closing twice gives back one place, not two
        return refused.value, steps
    refused, steps = asyncio.run(scenario())
    assert refused.kind == "rate_limited" and refused.code == "too_many_optimizers" and refused.retry_after > 0
    assert steps[-1]["done"] and wait_until(lambda: service.optimizers.in_flight == 0, 2)
    with pytest.raises(ServiceError):  # a bad request gives its place back at once
        asyncio.run(service.minimize(BOWL, {"x0": {"a": [0.0]}}))
    assert service.optimizers.in_flight == 0 and service.optimizers.refused == 1


class SlowStart(Service):
    """Its runs start only once `go` is set."""

    def __init__(self):
        super().__init__(max_optimizers=1)
        self.go = threading.Event()

    def _start_run(self, *args):
        self.go.wait(10)
        return super()._start_run(*args)


def test_a_caller_cancelled_while_its_run_starts_leaves_no_place_taken():
    service = SlowStart()

    async def scenario():
        starting = asyncio.ensure_future(service.minimize(BOWL, {"x0": X0}))
        await asyncio.sleep(0)
        assert service.optimizers.in_flight == 1
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        service.go.set()
        await asyncio.to_thread(wait_until, lambda: service.optimizers.in_flight == 0, 5)
    asyncio.run(scenario())
    assert service.optimizers.in_flight == 0
