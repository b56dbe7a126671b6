"""The gRPC server in process: health NOT_SERVING while starting, SERVING once ready, NOT_SERVING while
draining; a call in flight holds the drain, a new one is refused."""

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from adserve.server.app import build
from adserve.server.settings import Settings
from server_process import free_port

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class SlowService:
    """Registers anything, slowly: a call that stays in flight."""

    is_ready = False

    def ready(self):
        return self.is_ready

    def register(self, definition):
        time.sleep(0.5)
        return {"id": "f", "inputs": [], "output_shape": [], "n_nodes": 1}, True


def test_health_through_start_ready_and_drain():
    async def scenario():
        service, port = SlowService(), free_port()
        server = build(Settings(grpc_port=port, max_body_bytes=1 << 20), service=service)
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(name=""):
                return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
            seen = [await status()]
            await server.serving()  # not ready yet: stays NOT_SERVING
            seen.append(await status("ad.v1.Differentiator"))
            service.is_ready = True
            await server.serving()
            seen.append(await status("ad.v1.Differentiator"))
            stub = ad_pb2_grpc.DifferentiatorStub(channel)
            in_flight = asyncio.ensure_future(stub.Register(pb.Definition()))
            await asyncio.sleep(0.1)
            stopping = asyncio.ensure_future(server.stop(5))
            await asyncio.sleep(0.1)
            seen.append(await status())
            try:
                await stub.Register(pb.Definition())
                refused = None
            except grpc.aio.AioRpcError as e:
                refused = e.code()
            info = await in_flight
            await stopping
        return seen, refused, info.id
    seen, refused, finished = asyncio.run(scenario())
    assert seen == [NOT_SERVING, NOT_SERVING, SERVING, NOT_SERVING]
    assert refused == grpc.StatusCode.UNAVAILABLE and finished == "f"
