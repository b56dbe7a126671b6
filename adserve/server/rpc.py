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
RESOURCE_EXHAUSTED.
"""

import asyncio
import contextlib
import json
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import optimize, rpc_codec
from .errors import BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHENTICATED, UNPROCESSABLE, ServiceError
from .grpc_gen import ad_pb2, ad_pb2_grpc

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
    def __init__(self, service):
        self.service = service
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
            target, body = rpc_codec.minimization_in(request)
            run = await asyncio.to_thread(optimize.start, self.service, target, body)
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
        await context.abort(STATUS[e.kind], e.message, trailing_metadata=tuple(metadata))
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("internal error in %s", context.peer())
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


class RpcServer:
    """A grpc.aio server with the Differentiator, health and reflection on `host:port`."""

    def __init__(self, service, host: str, port: int, max_message_bytes: int, interceptors=()):
        self.service = service
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ])
        self.differentiator = Differentiator(service)
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
