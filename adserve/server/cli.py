"""`adserve`: start the server. Flags override `ADSERVE_*` variables, which override defaults."""

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time

import uvicorn
from pydantic import ValidationError

from .. import __version__
from .settings import Settings

log = logging.getLogger("adserve")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adserve", description="Automatic differentiation as a service.")
    p.add_argument("--host", help="address to listen on (ADSERVE_HOST, default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (ADSERVE_HTTP_PORT, default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 for none (ADSERVE_GRPC_PORT, default 50051)")
    p.add_argument("--log-level", help="critical, error, warning, info or debug (ADSERVE_LOG_LEVEL)")
    p.add_argument("--version", action="version", version=f"adserve {__version__}")
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        sys.exit(f"adserve: bad setting: {problems}")


def main(argv=None) -> None:
    settings = load_settings(parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from adserve.engine import Engine

    engine = Engine.from_settings(settings)
    preloading = engine.preload()  # first thing: numba and the kernels used last (None without compiles)

    from .heap import HeapKeeper
    from .rest import create_app
    from .security import Guard
    from .service import Service

    log.debug("engine limits: %s", engine.limits)
    shared = None
    if settings.redis_url:
        from .shared import SharedStore
        shared = SharedStore(settings.redis_url, timeout=settings.redis_timeout_seconds,
                             result_ttl=settings.redis_result_ttl_seconds,
                             result_max_bytes=settings.redis_result_max_bytes)
    heap = HeapKeeper()
    service = Service(engine=engine, result_cache_bytes=settings.result_cache_bytes, shared=shared,
                      max_functions=settings.max_functions, max_function_bytes=settings.max_function_bytes,
                      max_expr_chars=settings.max_expr_chars, max_expr_depth=settings.max_expr_depth,
                      max_batch=settings.max_batch, heap=heap)
    guard = Guard(settings.api_keys, settings.rate_limit_per_second, settings.rate_limit_burst, shared)
    app = create_app(service, settings, guard)
    _freeze_startup_objects(heap, preloading)
    grpc = f"gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port else "gRPC off"
    if guard.keys:
        log.info("API keys required on /v1 and gRPC (%d configured)", len(settings.api_keys))
    log.info("adserve %s: HTTP on http://%s:%d (docs at /docs), %s; %s", __version__, settings.host,
             settings.http_port, grpc, f"kernels compiled into {settings.cache_dir}" if settings.compile
             else "interpreter only")
    try:
        asyncio.run(serve(app, service, settings, guard))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        sys.exit(f"adserve: {e}")
    _exit_past_stuck_workers()


def _freeze_startup_objects(heap, preloading) -> None:
    """Keep the cyclic GC off what start-up made (modules, numba once its preload is done): a full
    collection over all of it took 30-45 ms, landing on whichever request building a graph set it off.
    From then on the heap keeper freezes what calls leave behind (see heap.py)."""
    heap.start()
    if preloading is not None:
        threading.Thread(target=lambda: (preloading.join(), heap.keep()), name="adserve-gc-freeze",
                         daemon=True).start()


async def serve(app, service, settings: Settings, guard=None) -> None:
    """HTTP (uvicorn) and gRPC in one event loop over one service; SIGTERM or SIGINT drains both at once.

    gRPC health says SERVING once HTTP is up too, and NOT_SERVING again from the signal on. Each protocol
    gives calls in flight the grace period; then the app's shutdown stops kernel compiles."""
    grace = settings.shutdown_grace_seconds
    http = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.http_port, log_config=None,
                                         log_level=settings.log_level, timeout_graceful_shutdown=grace))
    # uvicorn handles the signals while it serves, then puts these back and raises the signal again:
    # they ask for the same shutdown, so a signal before uvicorn starts (or that re-raise) does not kill the drain
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(http, "should_exit", True))
    rpc = None
    if settings.grpc_port:
        from .rpc import SERVICE_NAME, RpcServer
        from .security import GuardInterceptor
        interceptors = [GuardInterceptor(guard, SERVICE_NAME)] if guard is not None and guard.active else []
        # one /metrics and one cap on optimiser runs for both protocols
        rpc = RpcServer(service, settings.host, settings.grpc_port, settings.max_body_bytes, interceptors,
                        metrics=app.state.metrics, optimizers=app.state.optimizers)
        await rpc.start()
    http_task = asyncio.create_task(http.serve())
    if rpc is not None:
        while not (http.started or http_task.done()):
            await asyncio.sleep(0.05)
        await rpc.serving()
        while not (http.should_exit or http_task.done()):
            await asyncio.sleep(0.1)
        await rpc.stop(grace)
    await http_task


def _exit_past_stuck_workers() -> None:
    """Requests still computing after the grace period would hold the interpreter's exit
    forever (worker threads are not daemons, and engine work cannot be interrupted)."""
    deadline = time.monotonic() + 2  # threads that are just finishing may end on their own
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in busy:
        t.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in busy if t.is_alive()]
    if busy:
        log.warning("exiting with %d worker thread(s) still running", len(busy))
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
