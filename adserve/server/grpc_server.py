"""The gRPC transport: one grpc.aio server every gRPC protocol adds its servicer to.

`GrpcServer` holds what all gRPC services share and no protocol's handlers:
`grpc.health.v1.Health` (NOT_SERVING until `serving()` and again while it
drains), server reflection of every service added, the request size limit, and
interceptors: `RequestIdInterceptor` (outermost, every call: its request id,
logs.py, and one access log line when it ends), `MetricsInterceptor`
(every call of every service, refused ones too), `GuardInterceptor`
(API keys and rate limits: UNAUTHENTICATED or RESOURCE_EXHAUSTED; it sets the
call's tenant, tenancy.py) and the
drain (UNAVAILABLE once stopping, and the count of calls in flight that the
grace period waits for). The drain also gives each call its cancel token (an
engine `Deadline`, `call_token(context)`): it carries the call's gRPC deadline,
is cancelled when the call ends (the client cancels or goes away), and past
the grace period it stops the call's work, which then ends UNAVAILABLE
(`shutting_down`). Each interceptor is one `around` context manager
over a `Call`; the loop that wraps a handler, whatever its streaming shape, is
`Interceptor`'s, written once. `abort` ends a call with a `ServiceError`'s
status (`status.GRPC`), message and, in the trailing metadata, its code,
location and `retry-after`.
The grpc.aio server is made, and its port bound, in `start()`.
"""

import asyncio
import contextlib
import inspect
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.deadline import Deadline
from . import logs, ports, status, tenancy
from .errors import ServiceError, stopped
from .security import Guard, presented_key, retry_after_header

log = logging.getLogger("adserve.grpc")
access = logging.getLogger("adserve.grpc.access")

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
SHUTTING_DOWN = "the server is shutting down; call again (another replica)"


async def abort(context, error: ServiceError):
    """End the call with the error's status and message; its code (and location, retry-after) as metadata."""
    metadata = [("adserve-error-code", error.code)]
    if error.location is not None:
        metadata.append(("adserve-error-location", json.dumps(error.location)))
    if getattr(error, "retry_after", None) is not None:
        metadata.append(("retry-after", retry_after_header(error.retry_after)))
    await context.abort(status.grpc_code(error), error.message, trailing_metadata=tuple(metadata))


@dataclass
class Call:
    """One call as an interceptor sees it; `around` may replace `request` (the request, or the iterator of a
    stream of them) and `context`, and set `responded`, called once per response message."""

    service: str
    method: str
    streamed_in: bool
    request: Any
    context: Any
    responded: Callable[[], None] = lambda: None


class Interceptor(grpc.aio.ServerInterceptor):
    """Runs every call of the services `applies` to inside `around(call)`."""

    def __init__(self):
        self._handlers: dict = {}  # full method name -> its handler, wrapped

    def applies(self, service: str) -> bool:
        return True

    def around(self, call: Call) -> contextlib.AbstractAsyncContextManager:
        raise NotImplementedError

    async def intercept_service(self, continuation, details):
        # a method's handler is wrapped once, not on every call: the continuation (the interceptors inside,
        # then the registered handler) gives the same handler for a method each time; unknown methods (None)
        # are not kept, so what callers make up takes no room
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped(await continuation(details), details.method)
            if wrapped is not None:
                self._handlers[details.method] = wrapped
        return wrapped

    def _wrapped(self, handler, full_method: str):
        service, _, method = full_method.lstrip("/").rpartition("/")
        if handler is None or not self.applies(service):
            return handler
        for kind in _KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._wrap(behaviour, service, method, kind.startswith("stream"))})
        return handler

    def _wrap(self, behaviour, service: str, method: str, streamed_in: bool):
        around = self.around
        if inspect.isasyncgenfunction(behaviour):  # responses yielded (reflection); grpc writes each
            async def wrapped_gen(request, context):
                call = Call(service, method, streamed_in, request, context)
                async with around(call):
                    async with contextlib.aclosing(behaviour(call.request, call.context)) as out:
                        async for response in out:
                            yield response
                            call.responded()
            return wrapped_gen

        async def wrapped(request, context):
            call = Call(service, method, streamed_in, request, context)
            async with around(call):
                response = await behaviour(call.request, call.context)
                if response is not None:  # a unary answer (stream handlers write theirs and return None)
                    call.responded()
                return response
        return wrapped


class RequestIdInterceptor(Interceptor):
    """The call's request id (its `x-request-id` metadata, or a new one) is `logs.request_id` while it runs and
    goes back in its initial metadata; when the call ends, one access line (method, status code, duration),
    as uvicorn's for HTTP."""

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        context = call.context
        presented = next((v for k, v in context.invocation_metadata() or ()
                          if k.lower() == logs.HEADER and isinstance(v, str)), None)
        rid = logs.accept(presented)
        logs.request_id.set(rid)  # each call is its own task: the id ends with it
        start, code = time.perf_counter(), None
        try:
            await context.send_initial_metadata(((logs.HEADER, rid),))
            yield
        except BaseException as e:
            code = _ended_by(e, context)
            raise
        finally:
            method, code = f"/{call.service}/{call.method}", code or _returned(context)
            ms = round((time.perf_counter() - start) * 1000, 1)
            access.info("%s %s %.1f ms", method, code, ms,
                        extra={"grpc_method": method, "grpc_code": code, "duration_ms": ms})


class MetricsInterceptor(Interceptor):
    """Counts every call (by service, method and final status code), its duration, and the messages it
    read and wrote, into `metrics` (a `metrics.Metrics`). Unknown methods are grpc's own UNIMPLEMENTED and
    not counted."""

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        received, sent = self.metrics.grpc_messages(call.service, call.method)
        start, code, context = time.perf_counter(), None, call.context
        if call.streamed_in:
            call.request = _counted(call.request, received)
        else:
            received.inc()
        call.context, call.responded = _Counting(context, received, sent), sent.inc
        try:
            yield
        except BaseException as e:
            code = _ended_by(e, context)
            raise
        finally:
            self.metrics.observe_grpc(call.service, call.method, code or _returned(context),
                                      time.perf_counter() - start)


async def _counted(requests, received):
    async for r in requests:
        received.inc()
        yield r


class _Counting:
    """The call's context as the handler sees it, counting the messages written and read through it."""

    __slots__ = ("_context", "_received", "_sent")

    def __init__(self, context, received, sent):
        self._context, self._received, self._sent = context, received, sent

    def __getattr__(self, name):
        return getattr(self._context, name)

    async def write(self, message) -> None:
        await self._context.write(message)
        self._sent.inc()

    async def read(self):
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._received.inc()
        return message


def _code_name(code) -> str:
    return getattr(code, "name", None) or str(code)


def _returned(context) -> str:
    """The status of a call whose handler returned: the code it set; the call's end when it was over
    before (a stream whose write failed returns quietly), else OK."""
    code = context.code()
    if code is not None:
        return _code_name(code)
    return _cut_short(context) if context.cancelled() else "OK"


def _ended_by(error: BaseException, context) -> str:
    """The status of a call whose handler raised `error`."""
    if isinstance(error, grpc.aio.AbortError):
        return _code_name(context.code() or grpc.StatusCode.UNKNOWN)
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return _cut_short(context)
    return "UNKNOWN"  # what grpc answers for an exception no handler mapped


# A client whose deadline passes cancels the call itself, a little before the server's copy of the
# deadline expires (that copy starts when the call arrives): a cancel this close to it is the deadline.
DEADLINE_SLACK_SECONDS = 0.1


def _cut_short(context) -> str:
    """A call ended from outside: its deadline passed, or else the client cancelled it or went away."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS else "CANCELLED"


class GuardInterceptor(Interceptor):
    """Each call of a guarded service passes the guard first, or ends UNAUTHENTICATED or RESOURCE_EXHAUSTED
    (with `retry-after` in the trailing metadata).

    The key is checked when a call starts. A token is taken then for a call with one request message;
    for a stream of requests, one as each message is read (through the request iterator, which is how the
    stream handlers read), and a message over the limit ends the stream with RESOURCE_EXHAUSTED: the
    responses before it stand, as for any error on a stream."""

    def __init__(self, guard: Guard, guarded: set):
        super().__init__()
        self.guard, self.guarded = guard, guarded

    def applies(self, service: str) -> bool:
        return service in self.guarded

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        context = call.context
        md = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            client = self.guard.identify(presented_key(md.get("authorization"), md.get("x-api-key")),
                                         _peer(context.peer()))
            if not call.streamed_in:
                self.guard.charge(client)
        except ServiceError as e:
            await abort(context, e)
        if call.streamed_in:
            call.request = self._charged(call.request, context, client)
        token = tenancy.enter(tenancy.of_client(client))  # the key's names, functions and tensors
        try:
            yield
        finally:
            tenancy.leave(token)

    async def _charged(self, requests, context, client: str):
        async for request in requests:
            try:
                self.guard.charge(client)
            except ServiceError as e:
                await abort(context, e)
            yield request


def _peer(peer: str | None) -> str:
    """The address of a grpc peer string (`ipv4:127.0.0.1:5555`, `ipv6:[::1]:5555`), without the port."""
    if not peer:
        return "unknown"
    _, _, rest = peer.partition(":")
    host, _, _ = rest.rpartition(":")
    return host.strip("[]") or rest


def call_token(context) -> Deadline | None:
    """The call's cancel token (see `_Drain`), None for a service the drain does not cover."""
    return getattr(context, "token", None)


class _WithToken:
    """The call's context as the handler sees it, with the call's `token`."""

    __slots__ = ("_context", "token")

    def __init__(self, context, token: Deadline):
        self._context, self.token = context, token

    def __getattr__(self, name):
        return getattr(self._context, name)


class _Drain(Interceptor):
    """Once `draining`, new calls of the added services end UNAVAILABLE; `in_flight` counts the others, each
    with its token: the call's deadline, cancelled when the call ends or by `stop_calls`."""

    def __init__(self, services: set):
        super().__init__()
        self.services, self.draining, self.stopping, self.in_flight = services, False, False, 0
        self._calls: dict = {}  # the task of each call in flight -> its token

    def applies(self, service: str) -> bool:
        return service in self.services

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        context = call.context
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        token = Deadline(context.time_remaining(), "the call's gRPC deadline")
        context.add_done_callback(lambda _: token.cancel("cancelled", "was cancelled: the call ended"))
        call.context = _WithToken(context, token)
        task = asyncio.current_task()
        self._calls[task] = token
        self.in_flight += 1
        try:
            yield
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            await abort(context, stopped("shutting_down", SHUTTING_DOWN))
        finally:
            self._calls.pop(task, None)
            token.close()
            self.in_flight -= 1

    def stop_calls(self) -> None:
        """The grace period is over: stop every call's work (UNAVAILABLE) and end the calls."""
        self.stopping = True
        for task, token in list(self._calls.items()):
            token.cancel("shutting_down", "was stopped: the server is shutting down")
            task.cancel()


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
        self._drain = _Drain(self._names)
        self.interceptors = [RequestIdInterceptor()]
        if metrics is not None:
            self.interceptors.append(MetricsInterceptor(metrics))
        if guard is not None and guard.active:
            self.interceptors.append(GuardInterceptor(guard, self._guarded))
        self.interceptors.append(self._drain)
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
        self.server = grpc.aio.server(interceptors=self.interceptors, options=[
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
