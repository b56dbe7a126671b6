"""The gRPC baselines of `bench/latency.py` and `bench/grpc_kinds.py`: a server with nothing but
`ad.v1.Differentiator.Evaluate`.

It answers the survey function f(x1, x2) = log(x1) + x1*x2 - sin(x2) by hand (value
and gradient, whatever the request's id), with no interceptors, health or
reflection, so the difference to adserve is adserve's own (`--initial-metadata`: but for
the request id adserve sends in every call's initial metadata). `--kind aio` (the
default) is a grpc.aio server on the event loop adserve runs (uvicorn's auto
loop: uvloop when installed); `--kind sync` is grpc's thread-pool server
(`grpc.server`, `--workers` threads). `--option NAME=VALUE` adds a channel
argument (an integer, else a string: `grpc.optimization_target=latency`).

    python -m bench.bare_grpc --port 50100 [--kind aio|sync] [--workers 4] [--option grpc.so_reuseport=0]
                              [--initial-metadata]
"""

import argparse
import asyncio
import math
from concurrent import futures

import grpc
from uvicorn.loops.auto import auto_loop_factory

from adserve.server.grpc_gen import ad_pb2, ad_pb2_grpc


def _answer(request):
    x1, x2 = request.inputs["x1"].data[0], request.inputs["x2"].data[0]
    return ad_pb2.EvaluateResponse(
        value=ad_pb2.Tensor(data=[math.log(x1) + x1 * x2 - math.sin(x2)]),
        gradient={"x1": ad_pb2.Tensor(data=[1 / x1 + x2]), "x2": ad_pb2.Tensor(data=[x1 - math.cos(x2)])})


# `--initial-metadata`: each call sends initial metadata ahead of its answer, as adserve sends the request id
INITIAL_METADATA = []


class Survey(ad_pb2_grpc.DifferentiatorServicer):
    async def Evaluate(self, request, context):
        if INITIAL_METADATA:
            await context.send_initial_metadata(INITIAL_METADATA)
        return _answer(request)


class SyncSurvey(ad_pb2_grpc.DifferentiatorServicer):
    def Evaluate(self, request, context):
        if INITIAL_METADATA:
            context.send_initial_metadata(INITIAL_METADATA)
        return _answer(request)


async def serve(host: str, port: int, options: list) -> None:
    server = grpc.aio.server(options=options)
    ad_pb2_grpc.add_DifferentiatorServicer_to_server(Survey(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(host: str, port: int, options: list, workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    ad_pb2_grpc.add_DifferentiatorServicer_to_server(SyncSurvey(), server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    server.wait_for_termination()


def _option(text: str) -> tuple:
    name, _, value = text.partition("=")
    return name, int(value) if value.lstrip("-").isdigit() else value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kind", choices=("aio", "sync"), default="aio")
    p.add_argument("--workers", type=int, default=4, help="the sync server's threads")
    p.add_argument("--option", action="append", type=_option, default=[], help="a channel argument NAME=VALUE")
    p.add_argument("--initial-metadata", action="store_true",
                   help="send an x-request-id in each call's initial metadata, ahead of the answer")
    args = p.parse_args(argv)
    if args.initial_metadata:
        INITIAL_METADATA.append(("x-request-id", "0123456789abcdef0123456789abcdef"))
    if args.kind == "sync":
        serve_sync(args.host, args.port, args.option, args.workers)
        return
    with asyncio.Runner(loop_factory=auto_loop_factory(use_subprocess=False)) as runner:
        runner.run(serve(args.host, args.port, args.option))


if __name__ == "__main__":
    main()
