"""The gRPC transport: one grpc.aio server every gRPC protocol adds its servicer to.

`GrpcServer` holds what all gRPC services share and no protocol's handlers:
`grpc.health.v1.Health` (NOT_SERVING until `serving()` and again while it
drains), server reflection of every service added, the request size limit,
and the stages every call passes through (grpc_calls.py: its request id and
access line, metrics, the guard, and the drain with each call's cancel
token). The grpc.aio server is made, and its port bound, in `start()`.
"""

import asyncio

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import ports
from .grpc_calls import CallMetrics, CallPipeline, Drain, Guarding, RequestIds
from .security import Guard

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class _Pools:
    """Descriptor pools as one, for reflection: each lookup answers from the first pool that knows the name."""

    def __init__(self, pools: list):
        self.pools = pools

    def __getattr__(self, method: str):
        def find(*args):
            for pool in self.pools[:-1]:
                try:
                    return getattr(pool, method)(*args)
                except KeyError:
                    pass
            return getattr(self.pools[-1], method)(*args)
        return find


class GrpcServer:
    """The services protocols `add`, with health and reflection, on `host:port` once `start()`ed."""

    def __init__(self, host: str, port: int, max_message_bytes: int, metrics=None, guard: Guard | None = None,
                 tls: tuple[bytes, bytes] | None = None):
        """`tls`: (private key, certificate chain) PEM to serve over TLS; None: plaintext."""
        self.host, self.port, self.max_message_bytes, self.tls = host, port, max_message_bytes, tls
        self._added = []  # (full service name, add_XServicer_to_server, servicer)
        self._names, self._guarded = set(), set()
        self._pools = [descriptor_pool.Default()]
        self._drain = Drain(self._names)
        stages = [RequestIds()]
        if metrics is not None:
            stages.append(CallMetrics(metrics))
        if guard is not None and guard.active:
            stages.append(Guarding(guard, self._guarded))
        stages.append(self._drain)
        self.pipeline = CallPipeline(stages)
        self.server = None
        self.health = None

    def add(self, name: str, add_to_server, servicer, guarded: bool = True, pool=None) -> None:
        """Serve `servicer` (generated `add_XServicer_to_server`, full service name `name`); `pool`: the
        descriptor pool of its messages, for reflection, when it is not the default one."""
        self._added.append((name, add_to_server, servicer))
        if pool is not None:
            self._pools.append(pool)
        self._names.add(name)
        if guarded:
            self._guarded.add(name)

    @property
    def in_flight(self) -> int:
        return self._drain.in_flight

    async def start(self) -> None:
        self.server = grpc.aio.server(interceptors=[self.pipeline], options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            # grpc sets SO_REUSEPORT by default: a second server on a taken port would bind too and share
            # (steal) its calls; without it, a taken port is an error at start
            ("grpc.so_reuseport", 0),
        ])
        for _, add_to_server, servicer in self._added:
            add_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [name for name, _, _ in self._added]
        reflection.enable_server_reflection((*names, _HEALTH, reflection.SERVICE_NAME), self.server,
                                            pool=_Pools(self._pools))
        ports.bind(self.host, self.port, "gRPC").close()  # a taken port: one line, not grpc's C-core error log
        try:
            address = f"{self.host}:{self.port}"
            self.port = self.server.add_insecure_port(address) if self.tls is None else \
                self.server.add_secure_port(address, grpc.ssl_server_credentials([self.tls]))
        except RuntimeError as e:  # grpc's way of saying the port is taken or the address wrong
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port}: {e}") from None
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.SERVING)

    STOP_SECONDS = 1.0  # after the grace period, for the calls stopped to end with their status

    async def stop(self, grace: float) -> None:
        """Health says NOT_SERVING, new calls are refused, calls in flight get `grace` seconds; then their work
        is stopped, they end UNAVAILABLE, and the server stops."""
        await self.health.enter_graceful_shutdown()
        self._drain.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._drain.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._drain.stop_calls()
        deadline = loop.time() + self.STOP_SECONDS
        while self._drain.in_flight and loop.time() < deadline:  # their UNAVAILABLE is on its way
            await asyncio.sleep(0.02)
        await self.server.stop(0)

    async def _set(self, status_) -> None:
        for name in ("", *(name for name, _, _ in self._added)):
            await self.health.set(name, status_)
