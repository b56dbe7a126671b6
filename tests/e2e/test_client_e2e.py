"""The Python client (clients/python, `adserve_client`) against the real server: the same calls and
answers over REST (blocking and asyncio) and gRPC, typed errors, the lockstep stream, the README example."""

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adserve_client import (AsyncClient, AsyncGrpcClient, Client, DeadlineExceeded, GrpcClient, InvalidArgument,
                            NotFound, ResourceExhausted, expr, program)

SURVEY = expr("log(x1) + x1*x2 - sin(x2)", x1=[], x2=[])
VECTOR_OUT = expr("x * s", x=[3], s=[])
ROSENBROCK = expr("sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)", x=10)
LOOP = program("def f(x):\n    l = x\n    for i in range(4):\n        l = 4.0 * l * (1.0 - l)\n    return l\n", x=[])


@pytest.fixture(scope="module", params=["rest", "grpc"])
def ad(request, server):
    client = Client(server.url) if request.param == "rest" else GrpcClient(server.grpc)
    with client:
        yield client


def test_register_and_evaluate_every_kind(ad):
    f = ad.register(SURVEY)
    assert ad.register(SURVEY).id == f.id and f.inputs == [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}]
    r = ad.evaluate(f, {"x1": 2.0, "x2": 5.0}, compute=["value", "gradient", "jvp", "hvp", "hessian", "jacobian"],
                    tangent={"x1": 1.0, "x2": 0.0})
    assert r.value == pytest.approx(np.log(2) + 10 - np.sin(5)) and isinstance(r.value, np.ndarray)
    assert r.gradient["x1"] == pytest.approx(5.5) and r.jvp == pytest.approx(5.5)
    assert r.hvp["x1"] == pytest.approx(-0.25) and r.hessian["x2"]["x2"] == pytest.approx(np.sin(5))
    assert r.jacobian["x2"] == pytest.approx(2 - np.cos(5)) and r.vjp is None


def test_vjp_jacobian_batch_and_definitions_on_the_way(ad):
    x, c = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
    r = ad.evaluate(VECTOR_OUT, {"x": x, "s": 1.5}, compute=["vjp", "jacobian"], cotangent=c)
    np.testing.assert_allclose(r.vjp["x"], 1.5 * c)
    np.testing.assert_allclose(r.jacobian["x"], 1.5 * np.eye(3))
    r = ad.evaluate(SURVEY, {"x1": [1.0, 2.0], "x2": [3.0, 4.0]}, compute=["gradient"], batch=True)
    np.testing.assert_allclose(r.gradient["x1"], np.log(1.0) * 0 + 1 / np.array([1.0, 2.0]) + [3.0, 4.0])


def test_int64_inputs_and_an_entry_through_either_protocol(ad):
    """A definition with an int64 input and an `entry` (not its last def), by both clients: the same id, the
    dtype said back, integer indices sent as numpy integers, no derivative for them."""
    d = {"inputs": [{"name": "x", "shape": [4]}, {"name": "idx", "shape": [3], "dtype": "int64"}], "entry": "f",
         "program": "def f(x, idx):\n    return g(x[idx])\n\ndef g(v):\n    return sum(v * v)"}
    f = ad.register(d)
    assert f.inputs == d["inputs"]
    r = ad.evaluate(f, {"x": [1.0, 2.0, 3.0, 4.0], "idx": np.array([3, 0, 3])}, compute=["value", "gradient"])
    assert r.value == 33.0 and set(r.gradient) == {"x"}
    np.testing.assert_allclose(r.gradient["x"], [2.0, 0.0, 0.0, 16.0])


def test_wrt_differentiates_a_subset_of_the_inputs(ad):
    r = ad.evaluate(VECTOR_OUT, {"x": [1.0, 2.0, 3.0], "s": 1.5}, compute=["jacobian", "vjp"],
                    cotangent=[1.0, 1.0, 1.0], wrt=["s"])
    assert set(r.jacobian) == set(r.vjp) == {"s"}
    np.testing.assert_allclose(r.jacobian["s"], [1.0, 2.0, 3.0])
    assert r.vjp["s"] == pytest.approx(6.0)


def test_timeout_ms_stops_the_computation(ad):
    """A loop of 10^6 iterations (a function new to the server, so its first run is on the interpreter, which
    stops at the deadline): DeadlineExceeded with the server's code and how far it got."""
    step = 1e-6 if isinstance(ad, Client) else 2e-6
    long = program(f"def f(x):\n    for i in range(1000000):\n        x = x * 0.999999 + {step} * sin(x)\n"
                   "    return x\n", x=[])
    with pytest.raises(DeadlineExceeded) as e:
        ad.evaluate(long, {"x": 0.5}, compute=["value"], timeout_ms=200)
    assert e.value.code == "deadline_exceeded" and "of 1,000,000 loop iterations" in e.value.message


def test_graph_form_round_trip_keeps_the_id(ad, client):
    """The canonical graph from REST, loop included, registered through this client gives the same id."""
    f = ad.register(LOOP)
    graph = client.get(f"/v1/functions/{f.id}/graph").json()
    assert ad.register(graph).id == f.id
    assert ad.evaluate(graph, {"x": 0.3}, compute=["value"]).value == pytest.approx(
        ad.evaluate(LOOP, {"x": 0.3}).value)


def test_non_finite_values_both_ways(ad):
    r = ad.evaluate(SURVEY, {"x1": -1.0, "x2": np.inf}, compute=["value"])
    assert np.isnan(r.value)


def test_typed_errors_carry_the_server_message(ad):
    with pytest.raises(NotFound) as e:
        ad.evaluate("nope", {"x": 1.0})
    assert e.value.code == "function_not_found" and "no function with id 'nope'" in str(e.value)
    with pytest.raises(InvalidArgument) as e:
        ad.evaluate(expr("x +* 2", x=[]), {"x": 1.0})
    assert e.value.code == "syntax_error" and e.value.location == {"line": 1, "column": 4}
    with pytest.raises(InvalidArgument) as e:
        ad.evaluate(VECTOR_OUT, {"x": np.ones(3), "s": 1.0}, compute=["gradient"])
    assert "scalar output" in e.value.message
    too_long = program("def f(x):\n    s = x\n    for i in range(2000000):\n        s = s + x\n    return s\n", x=[])
    with pytest.raises(ResourceExhausted):
        ad.register(too_long)


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg"])
def test_minimize_rosenbrock(ad, method):
    steps = list(ad.minimize(ROSENBROCK, {"x": -np.ones(10)}, method=method))
    assert steps[0].iteration == 0 and steps[-1].done and steps[-1].success
    np.testing.assert_allclose(steps[-1].x["x"], np.ones(10), atol=1e-4)


def test_minimize_errors_and_early_exit(ad):
    with pytest.raises(InvalidArgument) as e:
        list(ad.minimize(ROSENBROCK, {"x": np.zeros(10)}, method="simplex"))
    assert e.value.code == "invalid_field"
    steps = ad.minimize(ROSENBROCK, {"x": -np.ones(10)}, max_iter=1000)
    assert [next(steps).iteration for _ in range(2)] == [0, 1]
    steps.close()


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_async_clients(server, protocol):
    async def run():
        async with (AsyncClient(server.url) if protocol == "rest" else AsyncGrpcClient(server.grpc)) as ad:
            f = await ad.register(SURVEY)
            r = await ad.evaluate(f, {"x1": 2.0, "x2": 5.0}, compute=["gradient"])
            steps = [s async for s in ad.minimize(ROSENBROCK, {"x": -np.ones(10)}, method="newton-cg")]
            with pytest.raises(NotFound):
                await ad.evaluate("nope", {"x": 1.0})
            return r, steps
    r, steps = asyncio.run(run())
    assert r.gradient["x1"] == pytest.approx(5.5)
    np.testing.assert_allclose(steps[-1].x["x"], np.ones(10), atol=1e-4)


def test_async_grpc_stream_lockstep(server):
    async def run():
        async with AsyncGrpcClient(server.grpc) as ad:
            f = await ad.register(ROSENBROCK)
            async with ad.stream() as s:
                x = np.full(10, -1.0)
                first = (await s.evaluate(f, {"x": x})).value
                for _ in range(200):
                    x = x - 1e-4 * (await s.evaluate(f, {"x": x}, compute=["gradient"])).gradient["x"]
                last = (await s.evaluate(f, {"x": x})).value
                with pytest.raises(InvalidArgument):
                    await s.evaluate(f, {"x": np.ones(3)})
                with pytest.raises(InvalidArgument):  # the error ended the stream: it is raised again
                    await s.evaluate(f, {"x": x})
            return first, last
    first, last = asyncio.run(run())
    assert last < first


def test_grpc_stream_lockstep(server):
    with GrpcClient(server.grpc) as g, g.stream() as s:
        f = g.register(ROSENBROCK)
        x = np.full(10, -1.0)
        first = s.evaluate(f, {"x": x}, compute=["value", "gradient"]).value
        for _ in range(200):
            x = x - 1e-4 * s.evaluate(f, {"x": x}, compute=["gradient"]).gradient["x"]
        assert s.evaluate(f, {"x": x}).value < first
        with pytest.raises(InvalidArgument):
            s.evaluate(f, {"x": np.ones(3)})
        with pytest.raises(InvalidArgument):  # the error ended the stream: it is raised again
            s.evaluate(f, {"x": x})


def test_readme_example_runs(server):
    example = Path(__file__).resolve().parents[2] / "clients/python/examples/rosenbrock.py"
    readme = (example.parent.parent / "README.md").read_text()
    assert example.read_text().strip() in readme  # the README shows the example as it is
    out = subprocess.run([sys.executable, str(example), server.grpc], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[1. 1. 1. 1. 1. 1. 1. 1. 1. 1.]" in out.stdout
