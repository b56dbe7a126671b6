"""The gRPC adapter of `ad.v1`: the `Differentiator` servicer, added to the gRPC server by `mount(server)`.

Handlers only translate (`rpc_codec`) and run the service in worker threads
(a brief evaluation, `Service.brief`, on the event loop: the hop would cost
more), each evaluation under the call's token (`grpc_calls.call_token`: the
call's deadline; cancelled when the call ends or the server stops).
A `ServiceError` ends the call with its status from `status.GRPC` and the same
message as REST; its snake_case code (and location, as JSON) travel in the
trailing metadata (`grpc_calls.abort`). Health, reflection, metrics, the
guard and the drain are the gRPC server's, the same for every service on it.
"""

import asyncio
import contextlib
import logging

import grpc

from . import rpc_codec, status
from .errors import ServiceError
from .grpc_gen import ad_pb2, ad_pb2_grpc
from .grpc_calls import abort, call_token

log = logging.getLogger("adserve.grpc")

# A message up to this size is decoded on the event loop, and a brief evaluation (`Service.brief`) answered there
BRIEF_MESSAGE_BYTES = 16 << 10

SERVICE_NAME = ad_pb2.DESCRIPTOR.services_by_name["Differentiator"].full_name


def mount(server) -> None:
    if server.grpc is not None:
        server.grpc.add(SERVICE_NAME, ad_pb2_grpc.add_DifferentiatorServicer_to_server, Differentiator(server.service))


class Differentiator(ad_pb2_grpc.DifferentiatorServicer):
    def __init__(self, service):
        self.service = service

    async def Register(self, request, context):
        async with _status(context):
            definition = rpc_codec.definition_in(request)
            info, created = await asyncio.to_thread(self.service.register, definition)
            return rpc_codec.info_out(info, created)

    async def Evaluate(self, request, context):
        async with _status(context):
            return await self._evaluation(request, call_token(context))

    async def EvaluateStream(self, request_iterator, context):
        async with _status(context):
            async for request in request_iterator:
                if not await _send(context, await self._evaluation(request, call_token(context))):
                    return

    async def Minimize(self, request, context):
        async with _status(context):
            target, body = rpc_codec.minimization_in(request)
            run = await self.service.minimize(target, body)
            try:
                async with contextlib.aclosing(run.progress()) as progress:
                    async for p in progress:
                        if not await _send(context, rpc_codec.progress_out(p)):
                            return
            finally:
                run.close()

    async def ListFunctions(self, request, context):
        async with _status(context):
            page = await asyncio.to_thread(self.service.list_functions, request.after or None, request.limit or None)
            return rpc_codec.listing_out(*page)

    async def GetFunction(self, request, context):
        async with _status(context):
            return rpc_codec.info_out(await asyncio.to_thread(self.service.info, request.id))

    async def PutTensor(self, request, context):
        async with _status(context):
            return rpc_codec.held_out(await asyncio.to_thread(self.service.put_tensor,
                                                              rpc_codec.tensor_in(request, "tensor")))

    async def _evaluation(self, request, token):
        """The response to one evaluation: on the event loop when the message is small and the service says
        the evaluation is brief (the hop to a worker thread and back costs more), else in a worker thread."""
        if request.ByteSize() > BRIEF_MESSAGE_BYTES:
            return await asyncio.to_thread(self._evaluate, request, token)
        target, body = rpc_codec.evaluation_in(request)
        if self.service.brief(target, body):
            return self._evaluated(target, body, token)
        return await asyncio.to_thread(self._evaluated, target, body, token)

    def _evaluate(self, request, token=None):
        """Decode, evaluate, encode: the CPU-bound part."""
        return self._evaluated(*rpc_codec.evaluation_in(request), token)

    def _evaluated(self, target, body, token=None):
        return rpc_codec.result_out(self.service.evaluate(target, body, deadline=token))


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
        await abort(context, e)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("internal error in %s", context.peer())
        await context.abort(grpc.StatusCode.INTERNAL, status.INTERNAL_MESSAGE)
