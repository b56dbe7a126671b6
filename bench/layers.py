"""Where a REST request's time goes inside adserve's process, layer by layer, without the network.

The app is built as the server builds it (`app.build`; with `--compile`, timed
once the numba kernel answers, else on the interpreter) and called directly as
an ASGI app, on the event loop the server runs (uvloop when installed), with
the survey example's evaluate request at a new point each time. Each variant is
the same app with one piece taken out, or one piece alone (the route's handler
without routing, `rest._evaluate`, `Service.evaluate`, `Engine.evaluate`, the
bare app of bench/latency.py); the variants take turns in rounds, each timed as
the median of a block of calls (a busy machine's pauses land on a few calls,
not on the median), and the difference to the full stack is what the piece
costs. uvicorn's own share (HTTP parsing, the transport, the access line) is
not in here: `bench/latency.py` compares whole servers.

    .venv/bin/python -m bench.layers [--rounds 15] [--block 300] [--compile]
"""

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import orjson
from starlette.requests import Request

from adserve.server import logs, rest
from adserve.server.app import build
from adserve.server.settings import Settings

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}


def _scope(path: str, method: str, body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), (b"accept-encoding", b"gzip, deflate")],
            "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {}}


async def call(stack, path: str, method: str = "GET", body: bytes = b"") -> int:
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await stack(dict(_scope(path, method, body), app=APPS.get(stack, APP[0])), receive, send)
    return sent[0]["status"]


APP = [None]  # what Starlette's app puts in the scope before its middleware stack
APPS = {}  # a stack of another app -> that app


def _strip(app, *names: str):
    """The app's middleware stack rebuilt without the user middlewares named."""
    kept = [m for m in app.user_middleware if m.cls.__name__ not in names]
    saved = app.user_middleware
    app.user_middleware = kept
    try:
        return app.build_middleware_stack()
    finally:
        app.user_middleware = saved


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=300)
    p.add_argument("--compile", action="store_true", help="numba kernels on (timing starts once one answers)")
    args = p.parse_args(argv)
    logs.configure("info")
    logging.getLogger("adserve").setLevel("INFO")
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(cache_dir=os.path.join(home, "cache"), compile=args.compile, grpc_port=0)
        server = build(settings)
        try:
            run(server, args)
        finally:
            server.service.close()


def run(server, args) -> None:
    app, service = server.http, server.service
    APP[0] = app
    fid = service.register(SURVEY)[0]["id"]
    path = f"/v1/functions/{fid}/evaluate"
    counter = [0]

    def point() -> dict:
        counter[0] += 1
        return {"inputs": {"x1": 2.0 + counter[0] * 1e-9, "x2": 5.0}, "compute": ["value", "gradient"]}

    def body() -> bytes:
        return orjson.dumps(point())

    if args.compile:  # until the kernel answers: its compile runs in the background
        t = time.monotonic()
        while rest._evaluate(service, fid, body(), 0.0)[1]["x-adserve-backend"] != "numba":
            if time.monotonic() - t > 300:
                raise RuntimeError("no numba kernel in 300 s")
            time.sleep(0.05)

    full = app.build_middleware_stack()
    names = [m.cls.__name__ for m in app.user_middleware]
    variants = {"full stack": lambda: call(full, path, "POST", body())}
    for name in names:
        stack = _strip(app, name)
        variants[f"without {name}"] = lambda stack=stack: call(stack, path, "POST", body())
    bare = _strip(app, *names)
    variants["without any user middleware"] = lambda: call(bare, path, "POST", body())
    from bench.bare_app import app as bare_app  # the baseline of bench/latency.py
    bare_stack = bare_app.build_middleware_stack()
    APPS[bare_stack] = bare_app
    variants["the bare app's POST /evaluate"] = lambda: call(bare_stack, "/evaluate", "POST", body())
    variants["GET /healthz, full stack"] = lambda: call(full, "/healthz")
    variants["GET /healthz, no user middleware"] = lambda: call(bare, "/healthz")

    async def handler():
        raw = body()

        async def receive():
            return {"type": "http.request", "body": raw, "more_body": False}

        sent = []

        async def send(message):
            sent.append(message)

        scope = dict(_scope(path, "POST", raw), app=app)
        response = await rest._evaluation(Request(scope, receive), fid)
        await response(scope, receive, send)

    async def direct():
        return rest._evaluate(service, fid, body(), time.perf_counter())

    async def hop():
        return await asyncio.to_thread(rest._evaluate, service, fid, body(), time.perf_counter())

    async def evaluate_only():
        return service.evaluate(fid, point(), {})

    fn = service._functions.peek(fid)

    async def engine_only():
        x = point()["inputs"]
        return service.engine.evaluate(fn, {k: np.float64(v) for k, v in x.items()}, ["value", "gradient"])

    variants["the route's handler and its response, no routing"] = handler
    variants["rest._evaluate inline (parse, service, encode)"] = direct
    variants["rest._evaluate in a thread (to_thread)"] = hop
    variants["Service.evaluate alone"] = evaluate_only
    variants["Engine.evaluate alone"] = engine_only

    async def measure():
        times = {name: [] for name in variants}
        for name, v in variants.items():  # warm up
            for _ in range(50):
                await v()
        for _ in range(args.rounds):
            for name, v in variants.items():
                block = []
                for _ in range(args.block):
                    t = time.perf_counter()
                    await v()
                    block.append(time.perf_counter() - t)
                times[name].append(statistics.median(block))
        return times

    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    times = runner(measure())
    base = statistics.median(times["full stack"])
    print(f"{args.rounds} rounds x {args.block} calls per variant, in process (ASGI), "
          f"loop {runner.__module__}; us per call: median (min-max of rounds), difference to the full stack")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"  {name:48s} {1e6 * m:7.1f}  ({1e6 * min(t):6.1f}-{1e6 * max(t):6.1f})  {1e6 * (m - base):+7.1f}")


if __name__ == "__main__":
    main()
