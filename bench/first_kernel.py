"""Seconds from a new function's first request to its first compiled answer, through the server.

    python -m bench.first_kernel [--nodes 1000 10000] [--repeats 3] [--within 60]

What a user of a new function sees: a fresh `adserve` on a fresh kernel cache (`ADSERVE_MAX_NODES` and
`ADSERVE_MAX_EXPR_CHARS` raised for random-10000's 208,000 characters); a seeded random straight-line function of
about N IR nodes (bench.compile_time's) sent with its first `POST /v1/evaluate` (value and gradient), then the same
request back to back at a new point each time (the result cache never answers) until `x-adserve-backend` says
`numba` (a compiled kernel, quick or optimised), and on until an optimised kernel answers (`Server-Timing` without
`kernel;...;desc=quick`). Reported per run: the first answer's seconds (registration, the plan, an interpreted
run), and the seconds from the first request to the first compiled answer and to the optimised kernel's; a server
per run, started and settled before the clock starts (its spare compile worker ready). Against the targets of 1 s for
1,000 nodes and 5 s for 10,000 (issue #15), on 2 idle cores.

`--beside`: what the compile costs other callers meanwhile. A second client calls the survey function (compiled
and warm) back to back on its own connection, from BASELINE_SECONDS before the new function's first request until
its optimised kernel answers; the median latency of those calls is reported for the quiet moment before, the wait
for the first compiled answer, and the optimised compile after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

from .compile_time import random_definition
from .latency import SURVEY, _free_port, _process

SETTLE_SECONDS = 3.0  # after /readyz: the server's spare compile worker and preload are under way
BASELINE_SECONDS = 1.0


class Beside:
    """Calls of the survey function back to back on a connection of their own, each noted (start, seconds)."""

    def __init__(self, port: int):
        import http.client
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        fid = self._call("POST", "/v1/functions", SURVEY)["id"]
        self.path, self.body = f"/v1/functions/{fid}/evaluate", {"inputs": {"x1": 2.0, "x2": 5.0},
                                                                  "compute": ["value", "gradient"]}
        deadline = time.monotonic() + 60
        while self._call("POST", self.path, self._next(), header="x-adserve-backend") != "numba":
            if time.monotonic() > deadline:
                raise RuntimeError("the survey function did not compile within 60 s")
            time.sleep(0.05)
        self.calls: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _next(self) -> dict:
        """The call's body at a new point (the result cache never answers)."""
        self.body["inputs"]["x1"] += 1e-6
        return self.body

    def _call(self, method, path, body, header=None):
        self.conn.request(method, path, json.dumps(body), {"content-type": "application/json"})
        r = self.conn.getresponse()
        text = r.read()
        if r.status not in (200, 201):
            raise RuntimeError(f"{r.status}: {text[:300]!r}")
        return r.getheader(header) if header else json.loads(text)

    def _loop(self):
        while not self.stop.is_set():
            body = self._next()
            t = time.perf_counter()
            self._call("POST", self.path, body)
            self.calls.append((t, time.perf_counter() - t))

    def median_ms(self, start: float, end: float | None) -> float | None:
        """The median latency of the calls that started between `start` and `end` (time.perf_counter)."""
        inside = [s for t, s in self.calls if start <= t < (end if end is not None else float("inf"))]
        return statistics.median(inside) * 1e3 if inside else None


def one_run(nodes: int, within: float, beside: bool = False) -> dict:
    import http.client

    with tempfile.TemporaryDirectory(prefix="adserve-fk-") as home:
        port = _free_port()
        env = {"ADSERVE_CACHE_DIR": os.path.join(home, "cache"), "ADSERVE_MAX_NODES": "1000000",
               "ADSERVE_MAX_EXPR_CHARS": "10000000"}
        cmd = [sys.executable, "-m", "adserve.server.cli", "--http-port", str(port), "--grpc-port", "0"]
        with _process(cmd, port, "/readyz", env, os.path.join(home, "server.log")):
            time.sleep(SETTLE_SECONDS)
            other = Beside(port) if beside else None
            if other is not None:
                other.thread.start()
                time.sleep(BASELINE_SECONDS)
            definition = random_definition(nodes, seed=0)
            rng = np.random.default_rng(0)
            inputs = {i["name"]: rng.standard_normal(i["shape"]).tolist() if i.get("shape") else 0.3
                      for i in definition["inputs"]}
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(60.0, within))

            def evaluate(body) -> tuple[str, bool]:
                """(the tier that answered, whether it was a large kernel's quick one)"""
                conn.request("POST", "/v1/evaluate", json.dumps(body), {"content-type": "application/json"})
                r = conn.getresponse()
                text = r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {text[:300]!r}")
                return r.getheader("x-adserve-backend"), "desc=quick" in r.getheader("server-timing", "")

            body = {"function": definition, "inputs": inputs, "compute": ["value", "gradient"]}
            t0 = time.perf_counter()
            tier, quick = evaluate(body)
            first = time.perf_counter() - t0
            k, compiled, optimised = 0, None, None
            while time.perf_counter() - t0 < within:
                if tier == "numba":
                    compiled = compiled or time.perf_counter() - t0
                    if not quick:
                        optimised = time.perf_counter() - t0
                        break
                k += 1
                inputs["s"] = 0.3 + 1e-6 * k
                tier, quick = evaluate(body)
            result = {"first_answer": first, "compiled_answer": compiled, "optimised_answer": optimised,
                      "requests": k + 1}
            if other is not None:
                other.stop.set()
                other.thread.join(60)
                result.update(beside_quiet_ms=other.median_ms(t0 - BASELINE_SECONDS, t0),
                              beside_compiling_ms=other.median_ms(t0, t0 + compiled if compiled else None),
                              beside_optimising_ms=other.median_ms(t0 + compiled, t0 + optimised)
                              if compiled and optimised else None)
            return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--within", type=float, default=60.0, help="give up on a compiled answer after this many s")
    ap.add_argument("--beside", action="store_true", help="also time another function's calls meanwhile")
    a = ap.parse_args(argv)
    rows = {n: [] for n in a.nodes}
    for r in range(a.repeats):
        for n in a.nodes:
            res = one_run(n, a.within, a.beside)
            rows[n].append(res)
            print(f"  [{r + 1}/{a.repeats}] random-{n}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()), flush=True)

    def cell(values):
        if any(v is None for v in values):
            return "not compiled within the limit"
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
    print("\n| function | first answer (s) | first compiled answer (s) | optimised kernel's first answer (s) |\n"
          "| --- | --- | --- | --- |")
    for n, runs in rows.items():
        print(f"| random-{n} | {cell([x['first_answer'] for x in runs])} | "
              f"{cell([x['compiled_answer'] for x in runs])} | {cell([x['optimised_answer'] for x in runs])} |")
    if a.beside:
        print("\n| function | survey call beside it, quiet (ms) | while its first kernel compiles (ms) | while it is "
              "optimised (ms) |\n| --- | --- | --- | --- |")
        for n, runs in rows.items():
            print(f"| random-{n} | " + " | ".join(cell([x[k] for x in runs]) for k in (
                "beside_quiet_ms", "beside_compiling_ms", "beside_optimising_ms")) + " |")


if __name__ == "__main__":
    main()
