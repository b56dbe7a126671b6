"""The gRPC adapter: `ad.v1.Differentiator` over the same `Service` as REST.

Handlers only translate (`rpc_codec`) and run the service in worker threads.
A `ServiceError` ends the call with the status from `STATUS`, the one table of
this protocol, and the same message as REST; its snake_case code (and
location, as JSON) travel in the trailing metadata. The server also answers
`grpc.health.v1.Health` (NOT_SERVING until `serving()` and again while it
drains) and server reflection. Requests are capped at the REST body limit.
While it drains, health still answers, new Differentiator calls get
UNAVAILABLE, and calls in flight have the grace period to finish.
API keys and rate limits are a server interceptor passed to `RpcServer`
(`security.GuardInterceptor`) that ends a call with UNAUTHENTICATED or
RESOURCE_EXHAUSTED. `MetricsInterceptor`, outermost, counts every call of every
service (rejected ones too) into the app's Prometheus registry. `Minimize` runs
take a slot of the process's `optimize.Capacity` (shared with REST) or are
refused with RESOURCE_EXHAUSTED.
"""

import asyncio
import contextlib
import inspect
import json
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import optimize, rpc_codec
from .errors import BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHENTICATED, UNPROCESSABLE, ServiceError
from .grpc_gen import ad_pb2, ad_pb2_grpc
from .security import retry_after_header
from .settings import default_max_optimizers

log = logging.getLogger("adserve.grpc")

SERVICE_NAME = ad_pb2.DESCRIPTOR.services_by_name["Differentiator"].full_name
STATUS = {
    BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    UNPROCESSABLE: grpc.StatusCode.INVALID_ARGUMENT,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INTERNAL_MESSAGE = "internal error: this is a bug in the server, and it has been logged"


class Differentiator(ad_pb2_grpc.DifferentiatorServicer):
    def __init__(self, service, optimizers: optimize.Capacity):
        self.service, self.optimizers = service, optimizers
        self.draining = False
        self.in_flight = 0

    @contextlib.asynccontextmanager
    async def _call(self, context: grpc.aio.ServicerContext):
        """Refuse the call once draining, else count it while it runs and end it with the mapped status."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; call again (another replica)")
        self.in_flight += 1
        try:
            async with _status(context):
                yield
        finally:
            self.in_flight -= 1

    async def Register(self, request, context):
        async with self._call(context):
            definition = rpc_codec.definition_in(request)
            info, created = await asyncio.to_thread(self.service.register, definition)
            return rpc_codec.info_out(info, created)

    async def Evaluate(self, request, context):
        async with self._call(context):
            return await asyncio.to_thread(self._evaluate, request)

    async def EvaluateStream(self, request_iterator, context):
        async with self._call(context):
            async for request in request_iterator:
                if not await _send(context, await asyncio.to_thread(self._evaluate, request)):
                    return

    async def Minimize(self, request, context):
        async with self._call(context):
            with self.optimizers.admit() as slot:  # over the cap: RESOURCE_EXHAUSTED before any work
                target, body = rpc_codec.minimization_in(request)
                run = await asyncio.to_thread(optimize.start, self.service, target, body, slot)
                async with contextlib.aclosing(run.progress()) as progress:
                    async for p in progress:
                        if not await _send(context, rpc_codec.progress_out(p)):
                            return

    def _evaluate(self, request):
        """Decode, evaluate, encode: the CPU-bound part, run in a worker thread."""
        return rpc_codec.result_out(self.service.evaluate(*rpc_codec.evaluation_in(request)))


async def _send(context: grpc.aio.ServicerContext, message) -> bool:
    """Write one message of a response stream; False once the call is over (cancelled, past its
    deadline while the write waited for a slow reader, or the client gone): nobody is left to tell."""
    try:
        await context.write(message)
        return True
    except Exception as e:  # e.g. ExecuteBatchError when the client went away before grpc marked the call done
        log.debug("stream write failed (the client is gone): %s", type(e).__name__)
        return False


@contextlib.asynccontextmanager
async def _status(context: grpc.aio.ServicerContext):
    """End the call with the mapped status of whatever the service raised."""
    try:
        yield
    except ServiceError as e:
        metadata = [("adserve-error-code", e.code)]
        if e.location is not None:
            metadata.append(("adserve-error-location", json.dumps(e.location)))
        if getattr(e, "retry_after", None) is not None:
            metadata.append(("retry-after", retry_after_header(e.retry_after)))
        await context.abort(STATUS[e.kind], e.message, trailing_metadata=tuple(metadata))
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("internal error in %s", context.peer())
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call (by service, method and final status code), its duration, and the messages it
    read and wrote, into `metrics` (a `metrics.Metrics`). First among the interceptors, so calls that
    another one refuses (UNAUTHENTICATED, RESOURCE_EXHAUSTED) count too. Unknown methods are grpc's own
    UNIMPLEMENTED and not counted."""

    def __init__(self, metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        for kind in _KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._counted(behaviour, service, method,
                                                               kind.startswith("stream"))})
        return handler

    def _counted(self, behaviour, service: str, method: str, streamed_in: bool):
        observe = self.metrics.observe_grpc
        received, sent = self.metrics.grpc_messages(service, method)

        async def each_request(requests):
            async for r in requests:
                received.inc()
                yield r

        def requests_of(request):
            if streamed_in:
                return each_request(request)
            received.inc()
            return request

        if inspect.isasyncgenfunction(behaviour):  # responses yielded (reflection); grpc writes each
            async def counted_gen(request, context):
                start, code = time.perf_counter(), None
                try:
                    counting = _Counting(context, received, sent)
                    async with contextlib.aclosing(behaviour(requests_of(request), counting)) as out:
                        async for response in out:
                            yield response
                            sent.inc()
                except BaseException as e:
                    code = _ended_by(e, context)
                    raise
                finally:
                    observe(service, method, code or _returned(context), time.perf_counter() - start)
            return counted_gen

        async def counted(request, context):
            start, code = time.perf_counter(), None
            try:
                response = await behaviour(requests_of(request), _Counting(context, received, sent))
                if response is not None:  # a unary answer (stream handlers write theirs and return None)
                    sent.inc()
                return response
            except BaseException as e:
                code = _ended_by(e, context)
                raise
            finally:
                observe(service, method, code or _returned(context), time.perf_counter() - start)
        return counted


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


class RpcServer:
    """A grpc.aio server with the Differentiator, health and reflection on `host:port`.

    `metrics` (the app's `metrics.Metrics`) counts its calls; `optimizers` caps Minimize runs (give the
    REST app's, so the cap is per process; default: a cap of its own of `default_max_optimizers()`)."""

    def __init__(self, service, host: str, port: int, max_message_bytes: int, interceptors=(), metrics=None,
                 optimizers: optimize.Capacity | None = None):
        self.service = service
        if metrics is not None:
            interceptors = [MetricsInterceptor(metrics), *interceptors]
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ])
        self.optimizers = optimizers or optimize.Capacity(default_max_optimizers())
        self.differentiator = Differentiator(service, self.optimizers)
        ad_pb2_grpc.add_DifferentiatorServicer_to_server(self.differentiator, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:  # grpc's way of saying the port is taken or the address wrong
            raise OSError(f"cannot listen for gRPC on {host}:{port}: {e}") from None

    async def start(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def serving(self) -> None:
        if self.service.ready():
            await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Health says NOT_SERVING, new calls are refused, calls in flight get `grace` seconds; then it stops."""
        await self.health.enter_graceful_shutdown()
        self.differentiator.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.differentiator.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.server.stop(0)

    async def _set(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
