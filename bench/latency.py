"""Request latency of adserve against a bare FastAPI+uvicorn app, measured in the same run.

Starts adserve with its defaults (HTTP and gRPC; only the ports and the cache
directory are set) and the bare app (`bench/bare_app.py`, served with
adserve's uvicorn options), registers the survey function f(x1, x2) =
log(x1) + x1*x2 - sin(x2) on adserve, and then times one request at a time
on kept-alive connections, the ways taking turns request by request, so a
busy machine slows each alike:

- REST evaluate: `POST /v1/functions/{id}/evaluate`, value and gradient at a
  new point each time (the result cache never answers), against the bare
  app's `POST /evaluate` of the same body;
- `GET /healthz` of each;
- gRPC unary `Evaluate` of the same, on one reused channel, against a bare
  grpc.aio server answering it by hand (`bench/bare_grpc.py`);
- the same gRPC call from a C client, `h2load` (nghttp2's load generator: one
  connection, one call at a time, a block of `--per-round` calls per server in
  turn), when it is installed (Debian: `apt-get install nghttp2-client`). grpc's
  Python client spends about 0.3 ms of each call itself, as much as a bare
  server does: this way times the servers. h2load sends one message, so its
  point is fixed: adserve's result cache answers it (in process, a computed
  answer of the survey function costs 2 us more).

HTTP's ways are timed first, then gRPC's (adserve serves both in one process:
a gRPC call between two HTTP requests would slow adserve's HTTP where the bare
app serves no gRPC). The HTTP client is `http.client` (one connection per
server), the same for both; a time is the client's, request written to answer read. Reported per
way: p50 and p90 over all requests, and the spread of the per-round medians;
for the REST pairs, the ratio of the p50s and the median (min-max) of the
per-round ratios.

`--profile FILE` runs adserve under cProfile (its event loop thread; see
`bench/profiled.py`) and writes the stats to FILE when it stops.

`--compare DIR` starts the adserve of another checkout too (the working
directory and PYTHONPATH set to DIR), timed in the same turns as "(compare)":
before and after a change, in one run.

    .venv/bin/python -m bench.latency [--rounds 20] [--per-round 200] [--profile FILE] [--compare DIR]
"""

import argparse
import contextlib
import datetime
import http.client
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import grpc

from adserve.server.grpc_gen import ad_pb2, ad_pb2_grpc

from . import sections

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
JSON = {"Content-Type": "application/json"}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, path: str, proc, log_path: str, within: float = 120) -> None:
    t = time.monotonic()
    while time.monotonic() - t < within:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}; log {log_path}")
        with contextlib.suppress(OSError):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"not ready in {within} s; log {log_path}")


@contextlib.contextmanager
def _process(cmd: list, port: int, ready_path: str, env: dict, log_path: str, cwd: str | None = None):
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd)
    try:
        _wait_ready(port, ready_path, proc, log_path)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_grpc(port: int, proc, log_path: str, within: float = 60) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=within)
    except grpc.FutureTimeoutError:
        raise RuntimeError(f"gRPC baseline not ready in {within} s (exit {proc.poll()}); log {log_path}") from None
    finally:
        channel.close()


@contextlib.contextmanager
def servers(home: str, profile: str | None = None, compare: str | None = None):
    """Yield {"adserve": (HTTP port, gRPC port), "compare": the same or None, "bare": HTTP port,
    "bare gRPC": port}, all ready. `compare`: another checkout whose adserve runs beside this one's."""
    ports = {"adserve": (_free_port(), _free_port()), "compare": compare and (_free_port(), _free_port()),
             "bare": _free_port(), "bare gRPC": _free_port()}
    launcher = [sys.executable, "-m", "bench.profiled", profile, "--"] if profile else \
        [sys.executable, "-m", "adserve.server.cli"]
    with contextlib.ExitStack() as stack:
        for name, cwd in (("adserve", None), ("compare", compare)):
            if ports[name] is None:
                continue
            http_port, grpc_port = ports[name]
            # `-m` puts the working directory first on sys.path: the compared checkout's adserve is imported
            env = {"ADSERVE_CACHE_DIR": os.path.join(home, f"cache-{name}"), **({"PYTHONPATH": cwd} if cwd else {})}
            cmd = (launcher if cwd is None else [sys.executable, "-m", "adserve.server.cli"]) + \
                ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
            stack.enter_context(_process(cmd, http_port, "/readyz", env, os.path.join(home, f"{name}.log"), cwd))
        stack.enter_context(_process([sys.executable, "-m", "bench.bare_app", "--port", str(ports["bare"])],
                                     ports["bare"], "/healthz", {}, os.path.join(home, "bare.log")))
        log_path = os.path.join(home, "bare_grpc.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.bare_grpc", "--port", str(ports["bare gRPC"])],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_grpc(ports["bare gRPC"], proc, log_path)
            yield ports
        finally:
            proc.terminate()
            proc.wait(30)


class Http:
    """One kept-alive connection; `call` returns the seconds from writing the request to reading the answer."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def call(self, method: str, path: str, body: bytes | None = None) -> float:
        t = time.perf_counter()
        self.conn.request(method, path, body, JSON if body is not None else {})
        r = self.conn.getresponse()
        data = r.read()
        elapsed = time.perf_counter() - t
        if r.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return elapsed

    def json(self, method: str, path: str, body=None):
        self.conn.request(method, path, None if body is None else json.dumps(body).encode(), JSON)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read())


def _point(i: int) -> tuple[float, float]:
    return 2.0 + i * 1e-9, 5.0  # a new point each time: the result cache never answers


def _until_compiled(ours: Http, fid: str, within: float = 300) -> None:
    """Ask until the numba kernel answers (its compile runs in the background), so no compile runs while
    timing; the interpreter's answers are fine if compiles are off."""
    t, i = time.monotonic(), 0
    while time.monotonic() - t < within:
        i += 1
        x1, x2 = _point(-i)
        ours.conn.request("POST", f"/v1/functions/{fid}/evaluate",
                          json.dumps({"inputs": {"x1": x1, "x2": x2}, "compute": ["value", "gradient"]}), JSON)
        r = ours.conn.getresponse()
        r.read()
        if r.getheader("x-adserve-backend") in ("numba", None) or os.environ.get("ADSERVE_COMPILE") == "false":
            return
        time.sleep(0.05)
    raise RuntimeError(f"no numba answer within {within} s")


def ways(ports: dict) -> dict:
    """name -> callable(i) timing one request (seconds)."""
    bare = Http(ports["bare"])
    bare_stub = ad_pb2_grpc.DifferentiatorStub(grpc.insecure_channel(f"127.0.0.1:{ports['bare gRPC']}"))

    def body(i):
        x1, x2 = _point(i)
        return json.dumps({"inputs": {"x1": x1, "x2": x2}, "compute": ["value", "gradient"]}).encode()

    def rpc(i, stub, fid=""):
        x1, x2 = _point(i)
        request = ad_pb2.EvaluateRequest(id=fid, compute=["value", "gradient"],
                                         inputs={"x1": ad_pb2.Tensor(data=[x1]), "x2": ad_pb2.Tensor(data=[x2])})
        t = time.perf_counter()
        stub.Evaluate(request)
        return time.perf_counter() - t

    out, c_client = {}, []
    for name in ("adserve", "compare"):
        if ports[name] is None:
            continue
        http_port, grpc_port = ports[name]
        ours = Http(http_port)
        status, info = ours.json("POST", "/v1/functions", SURVEY)
        assert status in (200, 201), info
        fid = info["id"]
        _until_compiled(ours, fid)
        stub = ad_pb2_grpc.DifferentiatorStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        out.update({f"REST evaluate ({name})": lambda i, c=ours, f=fid: c.call("POST", f"/v1/functions/{f}/evaluate",
                                                                               body(i)),
                    f"GET /healthz ({name})": lambda i, c=ours: c.call("GET", "/healthz"),
                    f"gRPC unary Evaluate ({name})": lambda i, s=stub, f=fid: rpc(i, s, f)})
        c_client.append((name, grpc_port, fid))
    out.update({"REST evaluate (bare)": lambda i: bare.call("POST", "/evaluate", body(i)),
                "GET /healthz (bare)": lambda i: bare.call("GET", "/healthz"),
                "gRPC unary Evaluate (bare)": lambda i: rpc(i, bare_stub)})
    if shutil.which("h2load"):
        for name, port, fid in [*c_client, ("bare", ports["bare gRPC"], "")]:
            out[f"{C_CLIENT} ({name})"] = Blocks(port, fid)
    else:
        print("h2load is not installed (Debian: nghttp2-client): the C client's way is left out")
    return dict(sorted(out.items(), key=lambda kv: _ORDER.index(kv[0].split(" (")[0])))


C_CLIENT = "gRPC Evaluate, C client"
_ORDER = ["REST evaluate", "GET /healthz", "gRPC unary Evaluate", C_CLIENT]


class Blocks:
    """The C client's way: each call runs h2load for a block of `n` unary Evaluate calls, one at a time on one
    connection, and returns each call's seconds (h2load's own, request written to answer read)."""

    def __init__(self, port: int, fid: str):
        self.url = f"http://127.0.0.1:{port}/ad.v1.Differentiator/Evaluate"
        message = ad_pb2.EvaluateRequest(id=fid, compute=["value", "gradient"],
                                         inputs={"x1": ad_pb2.Tensor(data=[2.0]), "x2": ad_pb2.Tensor(data=[5.0])})
        # h2load answers HTTP's status only: the call is checked once here, through grpc, to be a success
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ad_pb2_grpc.DifferentiatorStub(channel).Evaluate(message, timeout=30)
        payload = message.SerializeToString()
        self.body = tempfile.NamedTemporaryFile(prefix="adserve-latency-", suffix=".grpc")
        self.body.write(b"\0" + struct.pack(">I", len(payload)) + payload)  # gRPC's length-prefixed message
        self.body.flush()

    def __call__(self, n: int) -> list:
        with tempfile.NamedTemporaryFile(prefix="adserve-h2load-", suffix=".log") as log:
            r = subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", "1", "-d", self.body.name,
                                "-H", "content-type: application/grpc", "-H", "te: trailers",
                                f"--log-file={log.name}", self.url], capture_output=True, text=True)
            rows = [line.split("\t") for line in open(log.name)]
        if r.returncode != 0 or len(rows) != n or any(status != "200" for _, status, *_ in rows):
            raise RuntimeError(f"h2load: {len(rows)} of {n} answered 200; {r.stdout[-500:]} {r.stderr[-500:]}")
        return [int(row[2]) / 1e6 for row in rows]


PHASES = (("REST", "GET"), ("gRPC unary",), (C_CLIENT,))
RATIOS = tuple((f"{way} ({name})", f"{way} (bare)") for way in _ORDER for name in ("adserve", "compare"))


def measure(calls: dict, rounds: int, per_round: int, warmup: int = 300) -> dict:
    """name -> list of rounds, each a list of seconds; the ways take turns request by request (`Blocks`
    ways: block by block)."""
    if all(isinstance(call, Blocks) for call in calls.values()):
        for call in calls.values():
            call(warmup)
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                times[name].append(call(per_round))
        return times
    i = 0
    for _ in range(warmup):
        i += 1
        for call in calls.values():
            call(i)
    times = {name: [] for name in calls}
    for _ in range(rounds):
        batch = {name: [] for name in calls}
        for _ in range(per_round):
            i += 1
            for name, call in calls.items():
                batch[name].append(call(i))
        for name in calls:
            times[name].append(batch[name])
    return times


def _pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report(times: dict) -> str:
    lines = [f"{'':32s} {'p50 ms':>8s} {'p90 ms':>8s}   round medians ms (min-max)"]
    for name, rounds in times.items():
        alls = [t for r in rounds for t in r]
        medians = [statistics.median(r) for r in rounds]
        lines.append(f"{name:32s} {1e3 * _pct(alls, .5):8.3f} {1e3 * _pct(alls, .9):8.3f}   "
                     f"{1e3 * min(medians):.3f}-{1e3 * max(medians):.3f}")
    def every(name):
        return [t for r in times[name] for t in r]

    for a, b in RATIOS:
        if a not in times or b not in times:
            continue
        per_round = [statistics.median(ra) / statistics.median(rb) for ra, rb in zip(times[a], times[b])]
        lines.append(f"ratio {a}: p50 {_pct(every(a), .5) / _pct(every(b), .5):.2f}x; per round "
                     f"median {statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--per-round", type=int, default=200)
    p.add_argument("--profile", help="run adserve under cProfile; its stats are written to this file")
    p.add_argument("--only", help="time only the ways whose name contains this (e.g. gRPC)")
    p.add_argument("--compare", help="another checkout (e.g. /work/main): its adserve is timed too, as (compare)")
    p.add_argument("--compare-label", help="what --compare's checkout is, for the written section (default: its path)")
    p.add_argument("--write", metavar="PATH", nargs="?", const="docs/benchmarks.md",
                   help="also write the table into PATH's latency section (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adserve-latency-") as home, \
            servers(home, args.profile and os.path.abspath(args.profile), args.compare) as ports:
        calls = {name: call for name, call in ways(ports).items() if not args.only or args.only in name}
        times = {}
        for phase in PHASES:  # HTTP's ways, then gRPC's: one protocol's traffic does not slow the other's
            group = {name: call for name, call in calls.items() if name.startswith(phase)}
            if group:
                times.update(measure(group, args.rounds, args.per_round))
    print(f"{args.rounds} rounds x {args.per_round} requests per way, interleaved request by request (HTTP's "
          f"ways, then gRPC's; h2load's block by block); loopback, http.client keep-alive, one gRPC channel")
    print(report(times))
    if args.write:
        sections.write_section(args.write, BEGIN, END, section(times, args))
        print(f"wrote {args.write}")


BEGIN, END = "<!-- BEGIN LATENCY (python -m bench.latency --write) -->", "<!-- END LATENCY -->"


def kept_section(path) -> str:
    """The latency section of an existing docs/benchmarks.md ('' if none), which `make bench` keeps."""
    return sections.kept_section(path, BEGIN, END)


def section(times: dict, args) -> str:
    """The benchmarks.md section: how it was measured, and the report as a table."""
    compare = f"; (compare) is the adserve of {args.compare_label or f'`{args.compare}`'}" if args.compare else ""
    return "\n".join([
        BEGIN, "## Request latency against a bare FastAPI / grpc.aio server", "",
        "`python -m bench.latency`: adserve with its defaults, a bare FastAPI+uvicorn app (`bench/bare_app.py`, "
        "adserve's uvicorn options) and a bare grpc.aio server (`bench/bare_grpc.py`) in the same run. The survey "
        "example's value and gradient on a registered function, a new point each request (the result cache never "
        "answers), after its numba kernel answers; one request at a time on kept-alive connections (http.client, "
        "one gRPC channel), the ways taking turns request by request, HTTP's ways first and then gRPC's. The C "
        "client's way (`h2load`, one connection, a block of calls per server in turn) calls at one fixed point, "
        "which adserve's result cache answers; grpc's Python client costs about 0.3 ms of each call itself. Where "
        "the time goes inside the process, layer by layer: `python -m bench.layers --compile`.", "",
        f"Run {datetime.date.today().isoformat()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end (the machine was shared); {args.rounds} rounds x {args.per_round} "
        f"requests per way{compare}.", "", "```", report(times), "```", END]) + "\n"


if __name__ == "__main__":
    main()
