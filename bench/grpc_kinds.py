"""Unary gRPC latency of bare Python servers of each kind, side by side in one run.

Starts `bench/bare_grpc.py` servers (grpc.aio on the default asyncio loop, grpc's
thread-pool server, and variants of their channel options) and times the
survey example's unary `Evaluate` against each, one request at a time on one
reused channel per server, the servers taking turns request by request (a
busy machine slows each alike). Reports p50 and p90 and the spread of the
per-round medians: what a Python gRPC server can answer in on this machine,
whatever adserve does. "+md": the answer preceded by initial metadata (adserve's
request id); "opt=latency": `grpc.optimization_target=latency`; "reuseport off":
`grpc.so_reuseport=0` (adserve's setting). `--client c` times the servers from
h2load (a C client, block by block, as bench/latency.py's C client way)
instead of grpc's Python client, which costs about 0.3 ms of each call itself.

    .venv/bin/python -m bench.grpc_kinds [--rounds 10] [--per-round 200] [--client python|c]
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import grpc

from adserve.server.grpc_gen import ad_pb2, ad_pb2_grpc

from .latency import C_CLIENT, Blocks, _free_port, _point, _wait_grpc, measure, report

KINDS = {  # name (short: the report's column is 32 wide) -> bench/bare_grpc.py's arguments
    "aio": ["--kind", "aio"],
    "aio +md": ["--kind", "aio", "--initial-metadata"],
    "aio reuseport off": ["--kind", "aio", "--option", "grpc.so_reuseport=0"],
    "aio opt=latency": ["--kind", "aio", "--option", "grpc.optimization_target=latency"],
    "sync 1 thread": ["--kind", "sync", "--workers", "1"],
    "sync 4": ["--kind", "sync", "--workers", "4"],
    "sync 4 +md": ["--kind", "sync", "--workers", "4", "--initial-metadata"],
    "sync 4 reuseport off": ["--kind", "sync", "--workers", "4", "--option", "grpc.so_reuseport=0"],
    "sync 4 opt=latency": ["--kind", "sync", "--workers", "4", "--option", "grpc.optimization_target=latency"],
}


@contextlib.contextmanager
def bare_servers(home: str, kinds: dict):
    """Yield name -> port of one bare server of each kind, all ready."""
    procs, ports = [], {}
    try:
        for name, args in kinds.items():
            port = _free_port()
            log_path = os.path.join(home, f"{len(procs)}.log")
            with open(log_path, "w") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "bench.bare_grpc", "--port", str(port), *args],
                                              stdout=log, stderr=subprocess.STDOUT))
            _wait_grpc(port, procs[-1], log_path)
            ports[name] = port
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def ways(ports: dict, client: str = "python") -> dict:
    """name -> callable(i) timing one unary Evaluate (seconds) on that server's channel; with the C client,
    name -> `Blocks` of calls from h2load."""
    if client == "c":
        return {f"{C_CLIENT} ({name})": Blocks(port, "") for name, port in ports.items()}

    def rpc(i, stub):
        x1, x2 = _point(i)
        request = ad_pb2.EvaluateRequest(compute=["value", "gradient"],
                                         inputs={"x1": ad_pb2.Tensor(data=[x1]), "x2": ad_pb2.Tensor(data=[x2])})
        t = time.perf_counter()
        stub.Evaluate(request)
        return time.perf_counter() - t

    return {f"gRPC unary Evaluate ({name})": lambda i, s=ad_pb2_grpc.DifferentiatorStub(
        grpc.insecure_channel(f"127.0.0.1:{port}")): rpc(i, s) for name, port in ports.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=200)
    p.add_argument("--only", help="comma-separated kinds to run (default all), e.g. 'aio,sync 4'")
    p.add_argument("--client", choices=("python", "c"), default="python",
                   help="grpc's Python client (one channel), or h2load's C client")
    args = p.parse_args(argv)
    kinds = {k: v for k, v in KINDS.items() if not args.only or k in args.only.split(",")}
    with tempfile.TemporaryDirectory(prefix="adserve-grpc-kinds-") as home, bare_servers(home, kinds) as ports:
        times = measure(ways(ports, args.client), args.rounds, args.per_round)
    order = "request by request" if args.client == "python" else "block by block (h2load)"
    print(f"{args.rounds} rounds x {args.per_round} requests per server, interleaved {order}; "
          f"loopback, one channel per server; load average {os.getloadavg()[0]:.1f} at the end")
    print(report(times))


if __name__ == "__main__":
    main()
