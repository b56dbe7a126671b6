"""Short requests beside a long one: the survey example's latency, idle and while a long evaluation runs.

`python -m bench.isolation` starts a real server (`python -m adserve.server.cli`, result cache off, a fresh
kernel cache) and asks it the survey example, `log(x1) + x1*x2 - sin(x2)` at (2, 5), value and gradient,
back to back over one keep-alive REST connection; the time is the client's, request sent to answer read.
Each round has three phases of the same length, measured one after another in the same run:

* idle: nothing else runs;
* interpreter: another connection keeps a long interpreter-bound evaluation running (a 10^6-iteration
  loop, value only, a new constant each time so each is a plan's first run, which the interpreter answers;
  `timeout_ms` ends each after a few seconds);
* numba: another connection keeps a numba-bound evaluation running (a 10^5-iteration loop over a batch of
  points, once its kernel is compiled).

Rounds repeat the three phases (in a rotating order) so that the machine's drift hits all of them alike; the
table gives p50, p99 and the maximum per phase over all rounds, and each loaded phase's p99 over the idle
p99: pooled, and per round (the median and range of the rounds' ratios).
`--compare` runs it twice, isolation off then on; `--write` puts the tables into docs/benchmarks.md.
`--env NAME=VALUE` sets server settings (e.g. `ADSERVE_ISOLATE_WORKERS=0` for no isolation).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:  # the one server start-up helper, shared with the tests (it needs no pytest)
    sys.path.append(_TESTS)
from server_process import evaluations_computing, running_server, wait_until  # noqa: E402

from bench import sections  # noqa: E402

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
          "expr": "log(x1) + x1*x2 - sin(x2)"}
SURVEY_BODY = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}
INTERPRETER_STEPS = 1_000_000
NUMBA_STEPS, NUMBA_BATCH = 100_000, 300
PHASES = ("idle", "interpreter", "numba")
BEGIN, END = "<!-- BEGIN ISOLATION (python -m bench.isolation --write) -->", "<!-- END ISOLATION -->"


def loop_program(n: int, c: float) -> dict:
    return {"inputs": [{"name": "x", "shape": []}],
            "program": f"def f(x):\n    for i in range({n}):\n        x = x * {c!r} + 0.000001 * sin(x)\n    return x\n"}


class Load:
    """A thread that keeps one long evaluation running on its own connection until stopped."""

    def __init__(self, url: str, kind: str, numba_id: str | None, timeout_ms: int):
        self.url, self.kind, self.numba_id, self.timeout_ms = url, kind, numba_id, timeout_ms
        self.stop = threading.Event()
        self.answers: list = []  # (status, backend header, seconds)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def _request(self, c):
        self._n += 1
        if self.kind == "interpreter":  # a new constant: a new plan, whose first run the interpreter answers
            c_ = 0.999999 - 1e-9 * (self._n + 1000 * os.getpid() % 997 + time.time_ns() % 1000)
            return c.post("/v1/evaluate", json={"function": loop_program(INTERPRETER_STEPS, c_),
                                                "inputs": {"x": 0.5}, "timeout_ms": self.timeout_ms})
        x = np.linspace(0.1, 0.9, NUMBA_BATCH) + 1e-9 * self._n
        return c.post(f"/v1/functions/{self.numba_id}/evaluate",
                      json={"inputs": {"x": x.tolist()}, "batch": True, "timeout_ms": self.timeout_ms})

    def _run(self):
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                r = self._request(c)
                self.answers.append((r.status_code, r.headers.get("x-adserve-backend"), time.perf_counter() - t))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def survey(c: httpx.Client, fid: str, seconds: float) -> list:
    """Latencies (s) of back-to-back survey requests for `seconds`."""
    out, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        r = c.post(f"/v1/functions/{fid}/evaluate", json=SURVEY_BODY)
        out.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"survey answered {r.status_code}: {r.text[:300]}")
    return out


def until_backend(c, path, body, want, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = c.post(path, json=body)
        if r.headers.get("x-adserve-backend") in want:
            return True
        time.sleep(0.2)
    return False


def summary(lat) -> dict:
    a = 1e3 * np.asarray(lat)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def run(rounds=6, seconds=4.0, timeout_ms=4000, env=None, log=print) -> dict:
    out = {"rounds": [], "env": dict(env or {}), "seconds": seconds, "timeout_ms": timeout_ms}
    with tempfile.TemporaryDirectory(prefix="adserve-iso-") as home:
        server_env = {"ADSERVE_CACHE_DIR": os.path.join(home, "cache"), "ADSERVE_LOG_LEVEL": "warning",
                      "ADSERVE_RESULT_CACHE_BYTES": "0", "ADSERVE_MAX_EVAL_SECONDS": "120", **(env or {})}
        with running_server(Path(home) / "server.log", env=server_env, ready_within=120) as s, \
                httpx.Client(base_url=s.url, timeout=120) as c:
            fid = c.post("/v1/functions", json=SURVEY).json()["id"]
            numba_id = c.post("/v1/functions", json=loop_program(NUMBA_STEPS, 0.999999)).json()["id"]
            small = {"inputs": {"x": [0.5, 0.6]}, "batch": True}
            ok = until_backend(c, f"/v1/functions/{numba_id}/evaluate", small, ("numba", "numba-parallel"), 600)
            ok &= until_backend(c, f"/v1/functions/{fid}/evaluate", SURVEY_BODY, ("numba",), 600)
            log(f"  kernels ready: {ok}")
            for _ in range(3):  # the loop's tier choice at the load's batch size (and its parallel variant)
                with Load(s.url, "numba", numba_id, timeout_ms) as load:
                    time.sleep(3)
            survey(c, fid, 2.0)  # warm
            for r in range(rounds):
                row = {}
                for phase in PHASES[r % 3:] + PHASES[:r % 3]:  # a rotating order: no phase always follows another
                    wait_until(lambda: evaluations_computing(c) == 0, 60)
                    if phase == "idle":
                        lat = survey(c, fid, seconds)
                        row[phase] = {**summary(lat), "latencies": lat}
                        continue
                    with Load(s.url, phase, numba_id, timeout_ms) as load:
                        time.sleep(0.5)  # the long evaluation has started
                        lat = survey(c, fid, seconds)
                    row[phase] = summary(lat)
                    row[phase]["load"] = sorted({f"{st} {b}" for st, b, _ in load.answers})
                    row[phase]["latencies"] = lat
                log(f"  round {r + 1}: " + "; ".join(
                    f"{p} p50 {v['p50']:.2f} p99 {v['p99']:.2f} max {v['max']:.1f} ms (n {v['n']})"
                    + (f" load {v['load']}" if "load" in v else "") for p, v in row.items()))
                out["rounds"].append(row)
    return out


def table(result) -> str:
    """One row per phase: every round's requests pooled, and the per-round p99 ratios to the same round's idle
    p99 (their median and range)."""
    lines = ["| phase | requests | p50 ms | p99 ms | max ms | p99 / idle p99 (all rounds) | "
             "per round: median (min-max) |", "|---|---:|---:|---:|---:|---:|---:|"]
    rounds = result["rounds"]
    idle = summary([x for r in rounds for x in r["idle"]["latencies"]])
    for p in PHASES:
        v = summary([x for r in rounds for x in r[p]["latencies"]])
        ratios = [r[p]["p99"] / r["idle"]["p99"] for r in rounds]
        lines.append(f"| {p} | {v['n']} | {v['p50']:.2f} | {v['p99']:.2f} | {v['max']:.1f} | "
                     f"{v['p99'] / idle['p99']:.2f} | {np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return "\n".join(lines)


def kept_section(path) -> str:
    """The isolation section of an existing docs/benchmarks.md ('' if none), which `make bench` keeps."""
    return sections.kept_section(path, BEGIN, END)


def section(runs) -> str:
    """The benchmarks.md section: one table per run, (label, result) each."""
    load = os.getloadavg()[0]
    out = [BEGIN, "## Short requests beside a long one", "",
           "The survey example (`log(x1) + x1*x2 - sin(x2)` at (2, 5), value and gradient) asked back to back "
           "over one keep-alive REST connection, idle and while another connection keeps a long evaluation "
           "running: a 10^6-iteration loop on the interpreter (a new function each time), or a 10^5-iteration "
           f"loop over a batch of {NUMBA_BATCH} points on its numba kernel. Each phase lasts "
           f"{runs[0][1]['seconds']:g} s; the phases of a round run one after another (in a rotating order) in "
           "the same server process, so the machine's drift hits all of them alike. The p99 ratio to idle is "
           "given over all rounds pooled, and per round (the loaded phase against the same round's idle "
           "phase: the median and range of the rounds). The numbers swing with the load of the (shared) "
           "machine; the ratios are what to read.", "",
           f"Run {datetime.date.today().isoformat()}, {os.cpu_count()} cores, load average {load:.1f} at the end "
           "(the machine was shared).", ""]
    for label, result in runs:
        out += [f"**{label}**", "", table(result), ""]
    out.append(END)
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each phase (default 4)")
    ap.add_argument("--timeout-ms", type=int, default=4000, help="timeout_ms of each long evaluation")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a server setting")
    ap.add_argument("--compare", action="store_true",
                    help="two servers, one after the other: isolation off (ADSERVE_ISOLATE_WORKERS=0), then on")
    ap.add_argument("--write", metavar="PATH", nargs="?", const="docs/benchmarks.md",
                    help="write the tables into PATH's isolation section (default docs/benchmarks.md)")
    args = ap.parse_args(argv)
    env = dict(e.split("=", 1) for e in args.env)
    variants = ([("isolation off (ADSERVE_ISOLATE_WORKERS=0)", {**env, "ADSERVE_ISOLATE_WORKERS": "0"}),
                 ("isolation on (the defaults)", env)] if args.compare else [("this run", env)])
    runs = []
    for label, e in variants:
        print(label)
        result = run(args.rounds, args.seconds, args.timeout_ms, e)
        runs.append((label, result))
        print(table(result))
        with contextlib.suppress(Exception):
            ratios = {p: [r[p]["p99"] / r["idle"]["p99"] for r in result["rounds"]] for p in PHASES[1:]}
            print("p99 / idle p99, per round: " + "; ".join(f"{p} {', '.join(f'{x:.2f}' for x in v)}"
                                                          for p, v in ratios.items()))
    if args.write:
        sections.write_section(args.write, BEGIN, END, section(runs))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
