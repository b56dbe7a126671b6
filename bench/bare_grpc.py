"""The gRPC baseline of `bench/latency.py`: a grpc.aio server with nothing but `ad.v1.Differentiator.Evaluate`.

It answers the survey function f(x1, x2) = log(x1) + x1*x2 - sin(x2) by hand (value
and gradient, whatever the request's id), with no interceptors, health or
reflection, on the event loop adserve runs (uvicorn's auto loop: uvloop when
installed), so the difference to adserve is adserve's own.

    python -m bench.bare_grpc --port 50100
"""

import argparse
import asyncio
import math

import grpc
from uvicorn.loops.auto import auto_loop_factory

from adserve.server.grpc_gen import ad_pb2, ad_pb2_grpc


class Survey(ad_pb2_grpc.DifferentiatorServicer):
    async def Evaluate(self, request, context):
        x1, x2 = request.inputs["x1"].data[0], request.inputs["x2"].data[0]
        return ad_pb2.EvaluateResponse(
            value=ad_pb2.Tensor(data=[math.log(x1) + x1 * x2 - math.sin(x2)]),
            gradient={"x1": ad_pb2.Tensor(data=[1 / x1 + x2]), "x2": ad_pb2.Tensor(data=[x1 - math.cos(x2)])})


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    ad_pb2_grpc.add_DifferentiatorServicer_to_server(Survey(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    with asyncio.Runner(loop_factory=auto_loop_factory(use_subprocess=False)) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
