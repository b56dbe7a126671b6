"""`build(settings)`: the one place the server is wired, into a `Server` that the CLI serves and tests use.

It makes the engine, the `Service` (the data plane every protocol shares),
the metrics registry and the guard; then the two transports (the HTTP app,
`web.create_app`, and the gRPC server, `grpc_server.GrpcServer`, when a gRPC
port is set); then mounts every protocol in `PROTOCOLS` on them. A protocol is
one module with `mount(server)`: it adds its routes to `server.http` (and the
path prefix the guard covers to `server.guarded_paths`) and/or its servicer to
`server.grpc`, and only translates between its wire format and the service.
Adding a protocol is that module and one line in `PROTOCOLS`.
"""

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass, field

import uvicorn
from uvicorn.loops.auto import auto_loop_factory
from fastapi import FastAPI

from . import oip, oip_grpc, ports, rest, rpc, tesseract, umbridge, web
from .grpc_server import GrpcServer
from .metrics import Metrics
from .security import Guard
from .settings import Settings

log = logging.getLogger("adserve")

PROTOCOLS = (
    rest.mount,  # ad.v1 over REST: /v1
    rpc.mount,   # ad.v1 over gRPC: ad.v1.Differentiator
    umbridge.mount,  # UM-Bridge 1.0: /umbridge
    tesseract.mount,  # the Tesseract runtime API: /tesseract/{name}
    oip.mount,   # Open Inference Protocol v2 (KServe, Triton) over REST: /v2
    oip_grpc.mount,  # ... and over gRPC: inference.GRPCInferenceService
)


@dataclass
class Server:
    settings: Settings
    service: object
    metrics: Metrics
    guard: Guard
    http: FastAPI = None
    grpc: GrpcServer | None = None
    guarded_paths: list = field(default_factory=list)  # HTTP path prefixes behind the guard
    preloading: threading.Thread | None = None  # the engine's start-up preload, when it has one

    async def start(self) -> None:
        """Listen for gRPC (health NOT_SERVING until `serving()`); HTTP is uvicorn's, in `serve()`."""
        if self.grpc is not None:
            await self.grpc.start()

    async def serving(self) -> None:
        """Both protocols are up: gRPC health says SERVING when the service is ready."""
        if self.grpc is not None and self.service.ready():
            await self.grpc.serving()

    async def stop(self, grace: float) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace)

    def run(self) -> None:
        """`serve()` on the event loop uvicorn's own `run` would choose (uvloop when installed, as uvicorn's
        default `loop="auto"` does), not the standard asyncio loop `asyncio.run` gives."""
        with asyncio.Runner(loop_factory=auto_loop_factory(use_subprocess=False)) as runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        """HTTP (uvicorn) and gRPC in one event loop over one service; SIGTERM or SIGINT drains both at once.

        gRPC health says SERVING once HTTP is up too, and NOT_SERVING again from the signal on. Each protocol
        gives calls in flight the grace period; then the app's shutdown closes the service."""
        self._freeze_startup_objects()
        settings = self.settings
        grace = settings.shutdown_grace_seconds
        tls = {} if settings.tls_cert_file is None else {"ssl_certfile": str(settings.tls_cert_file),
                                                         "ssl_keyfile": str(settings.tls_key_file)}
        http = uvicorn.Server(uvicorn.Config(self.http, host=settings.host, port=settings.http_port,
                                             log_config=None, log_level=settings.log_level,
                                             timeout_graceful_shutdown=grace, **tls))
        # uvicorn handles the signals while it serves, then puts these back and raises the signal again:
        # they ask for the same shutdown, so a signal before uvicorn starts (or that re-raise) does not kill the drain
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: setattr(http, "should_exit", True))
        # the isolation workers' imports (started with the engine) are done before the first request
        engine = self.service.engine
        if hasattr(engine, "wait_ready") and not await asyncio.to_thread(engine.wait_ready, 60.0):
            log.warning("isolation workers not ready after 60 s; serving anyway")
        # HTTP's socket is bound here, before gRPC's: a taken port of either stops the start before anything serves
        listening = ports.bind(settings.host, settings.http_port, "HTTP")
        try:
            await self.start()
        except BaseException:
            listening.close()
            raise
        # HTTP's shutdown closes the service: not before gRPC's calls in flight have had their grace period
        grpc_drained = asyncio.Event()
        if self.grpc is not None:
            self.http.state.drains.append(grpc_drained.wait)
        http_task = asyncio.create_task(http.serve(sockets=[listening]))
        try:
            if self.grpc is not None:
                while not (http.started or http_task.done()):
                    await asyncio.sleep(0.05)
                await self.serving()
                while not (http.should_exit or http_task.done()):
                    await asyncio.sleep(0.1)
                await self.stop(grace)
        finally:
            grpc_drained.set()
        await http_task

    def _freeze_startup_objects(self) -> None:
        """Keep the cyclic GC off what start-up made (modules, numba once its preload is done): a full
        collection over all of it took 30-45 ms, landing on whichever request building a graph set it off.
        From then on the heap keeper freezes what calls leave behind (see heap.py)."""
        heap, preloading = self.service.heap, self.preloading
        if not hasattr(heap, "start"):  # a service without a heap keeper
            return
        heap.start()
        if preloading is not None:
            threading.Thread(target=lambda: (preloading.join(), heap.keep()), name="adserve-gc-freeze",
                             daemon=True).start()


def build(settings: Settings, service=None) -> Server:
    """The server of `settings`: every piece made once, here. `service` (tests) replaces the engine and
    service `settings` would make."""
    shared = None
    preloading = None
    if service is None:
        engine, preloading = make_engine(settings)
        if settings.redis_url:
            from .shared import SharedStore
            shared = SharedStore(settings.redis_url, timeout=settings.redis_timeout_seconds,
                                 result_ttl=settings.redis_result_ttl_seconds,
                                 result_max_bytes=settings.redis_result_max_bytes)
        service = make_service(settings, engine, shared)
    metrics = Metrics(service)
    guard = Guard(settings.api_keys, settings.rate_limit_per_second, settings.rate_limit_burst, shared)
    server = Server(settings, service, metrics, guard, preloading=preloading)
    server.http = web.create_app(service, settings, metrics, guard, server.guarded_paths)
    if settings.grpc_port:
        server.grpc = GrpcServer(settings.host, settings.grpc_port, settings.max_body_bytes, metrics, guard,
                                 tls=_tls_pair(settings))
    for mount in PROTOCOLS:
        mount(server)
    return server


def _tls_pair(settings: Settings) -> tuple[bytes, bytes] | None:
    """(private key, certificate chain) PEM of the settings' TLS files, or None; a file that cannot be read
    stops the start with its name."""
    if settings.tls_cert_file is None:
        return None
    try:
        return settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
    except OSError as e:
        raise SystemExit(f"adserve: cannot read the TLS files: {e}") from None


def make_engine(settings: Settings):
    """(the engine of `settings`, its start-up preload thread or None)."""
    from adserve.engine import Engine

    # plans run on the interpreter until their numba kernel, compiled in the background, is ready
    engine = Engine.from_settings(settings)
    preloading = engine.preload()  # first thing: numba and the kernels used last (None without compiles)
    log.debug("engine limits: %s", engine.limits)
    return engine, preloading


def make_service(settings: Settings, engine, shared=None):
    from .heap import HeapKeeper
    from .service import Service

    return Service(engine=engine, result_cache_bytes=settings.result_cache_bytes, shared=shared,
                   max_functions=settings.max_functions, max_function_bytes=settings.max_function_bytes,
                   max_expr_chars=settings.max_expr_chars, max_expr_depth=settings.max_expr_depth,
                   max_batch=settings.max_batch, heap=HeapKeeper(), max_optimizers=settings.max_optimizers,
                   max_eval_seconds=settings.max_eval_seconds,
                   tenants=max(1, len(settings.api_keys)), tensor_cache_bytes=settings.tensor_cache_bytes)
