"""Steps per second of a client-driven optimisation loop: gRPC stream vs gRPC unary vs REST.

Each step sends x and needs the gradient back before the next one (plain gradient
descent on Rosenbrock, n=10), so this is round-trip latency, not throughput. The
gRPC ways run with both Python clients, blocking (`GrpcClient`) and asyncio
(`AsyncGrpcClient`).
It starts its own server on free loopback ports (ADSERVE_COMPILE as set; the
warm-up waits for the numba kernel) unless --http and --grpc point at one.

    .venv/bin/python bench/transport_steps.py [--steps 1000] [--http URL --grpc HOST:PORT] [--settle 3]
"""

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

from adserve_client import AsyncGrpcClient, Client, GrpcClient, expr

ROSENBROCK = expr("sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)", x=[10])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server():
    http, grpc_port = free_port(), free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "adserve.server.cli", "--http-port", str(http),
                             "--grpc-port", str(grpc_port), "--log-level", "warning"], stdout=log, stderr=log,
                            env={**os.environ, "ADSERVE_CACHE_DIR": tempfile.mkdtemp()})
    try:
        url = f"http://127.0.0.1:{http}"
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        proc.wait(30)


def descend(evaluate, x, steps: int) -> tuple:
    """x after `steps` gradient steps through `evaluate`, and the time of each step."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        g = evaluate({"x": x}).gradient["x"]
        times.append(time.perf_counter() - t)
        x = x - 1e-4 * g
    return x, times


async def adescend(evaluate, x, steps: int) -> tuple:
    """`descend` through a coroutine."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        g = (await evaluate({"x": x})).gradient["x"]
        times.append(time.perf_counter() - t)
        x = x - 1e-4 * g
    return x, times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--http")
    p.add_argument("--grpc")
    p.add_argument("--settle", type=float, default=3, help="seconds after warm-up for the kernel to compile")
    args = p.parse_args(argv)
    with contextlib.nullcontext((args.http, args.grpc)) if args.http else server() as (url, target):
        loop = asyncio.new_event_loop()
        with Client(url) as rest, GrpcClient(target) as rpc, rpc.stream() as stream:
            arpc, astream = loop.run_until_complete(_async_client(target))
            f = rest.register(ROSENBROCK)
            sync = {"gRPC EvaluateStream": lambda x: stream.evaluate(f, x, compute=["gradient"]),
                    "gRPC Evaluate (unary)": lambda x: rpc.evaluate(f, x, compute=["gradient"]),
                    "REST (keep-alive)": lambda x: rest.evaluate(f, x, compute=["gradient"])}
            aio = {"gRPC aio EvaluateStream": lambda x: astream.evaluate(f, x, compute=["gradient"]),
                   "gRPC aio Evaluate": lambda x: arpc.evaluate(f, x, compute=["gradient"])}
            ways = {**{name: (lambda x, n, ev=ev: descend(ev, x, n)) for name, ev in sync.items()},
                    **{name: (lambda x, n, ev=ev: loop.run_until_complete(adescend(ev, x, n)))
                       for name, ev in aio.items()}}
            for run in ways.values():  # warm up, and give the kernel time to compile
                run(np.full(10, -1.0), 50)
            time.sleep(args.settle)
            # rounds of 100 steps, the ways taking turns, so that a busy machine slows each alike
            xs, times = {name: np.full(10, -1.0) for name in ways}, {name: [] for name in ways}
            for _ in range(args.steps // 100):
                for name, run in ways.items():
                    xs[name], t = run(xs[name], 100)
                    times[name] += t
            loop.run_until_complete(astream.close())
            loop.run_until_complete(arpc.close())
        print(f"{args.steps} gradient steps each, Rosenbrock n=10, one client, loopback")
        for name, t in times.items():
            print(f"  {name:24s} {len(t) / sum(t):8.0f} steps/s   median {1e3 * np.median(t):.3f} ms/step")


async def _async_client(target: str) -> tuple:
    """An asyncio client and its stream, made inside the loop that will run them."""
    client = AsyncGrpcClient(target)
    return client, client.stream()

if __name__ == "__main__":
    main()
