"""Latency through the real REST server: first answer for a new function, compiled tier after a restart.

A server process (`python -m adserve.server.cli`) is started on a fresh cache
directory. Fresh definitions (sums of distinct scalar terms, new constants
every run, so nothing is cached anywhere) are POSTed to `/v1/evaluate` on a
warm connection; the time is the client's, request sent to response read.
Then one definition is asked again (new inputs each time, so the result cache
never answers) until `x-adserve-backend` says `numba`; the server is stopped
and started again on the same cache directory, and the same is timed after
the restart: the kernel should come from disk, not from a compile.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:  # the one server start-up helper, shared with the tests (it needs no pytest)
    sys.path.append(_TESTS)
from server_process import running_server  # noqa: E402

N_X = 8


def terms_definition(n_terms: int, rng, group=50) -> dict:
    """sum_i sin(a_i * x[i % 8]): distinct constants, so no two terms share a node.

    Terms are summed in parenthesised groups: a flat chain of 1,000 `+` is refused
    as nested too deeply (`too_deep`)."""
    a = rng.uniform(0.5, 1.5, n_terms)
    terms = [f"sin({float(v)!r} * x[{i % N_X}])" for i, v in enumerate(a)]
    groups = [" + ".join(terms[i:i + group]) for i in range(0, n_terms, group)]
    expr = groups[0] if len(groups) == 1 else " + ".join(f"({g})" for g in groups)
    return {"inputs": [{"name": "x", "shape": [N_X]}], "expr": expr}


@contextlib.contextmanager
def server(cache_dir: str, log_path: str, compile_kernels=True):
    """Yield (url, seconds from process start to ready); the process is stopped afterwards."""
    env = {"ADSERVE_CACHE_DIR": cache_dir, "ADSERVE_LOG_LEVEL": "warning",
           "ADSERVE_COMPILE": "true" if compile_kernels else "false"}
    # appended to: the log holds both servers of a probe, before and after the restart
    with running_server(log_path, env=env, ready_within=120, append=True, poll=0.02) as s:
        yield s.url, s.ready_seconds


def _ask(client, defn, step, compute):
    x = np.linspace(0.1, 0.9, N_X) + step * 1e-7  # new inputs: the result cache never answers
    t = time.perf_counter()
    r = client.post("/v1/evaluate", json={"function": defn, "inputs": {"x": x.tolist()}, "compute": compute})
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"POST /v1/evaluate answered {r.status_code}: {r.text[:500]}")
    return elapsed, r.headers.get("x-adserve-backend"), r.headers.get("server-timing", "")


def until_numba(client, defn, compute, timeout, pause=0.005):
    """(seconds from the first request to the first numba answer, requests made) or (None, n) on timeout."""
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < timeout:
        step += 1
        _, tier, _ = _ask(client, defn, step, compute)
        if tier == "numba":
            return time.perf_counter() - t0, step
        time.sleep(pause)
    return None, step


def probe(sizes=((334, "1,000-op"), (1000, "1,000 terms")), fresh=5, compute=("value", "gradient"),
          compile_kernels=True, restart=True, seed=None, log=print) -> dict:
    """First-answer latency for `fresh` new functions of each size; then the restart probe on the first one."""
    rng = np.random.default_rng(seed)
    compute = list(compute)
    out = {"first_answer": [], "compute": compute}
    with tempfile.TemporaryDirectory(prefix="adserve-bench-") as home:
        cache, log_path = os.path.join(home, "cache"), os.path.join(home, "server.log")
        with server(cache, log_path, compile_kernels) as (url, ready_s), httpx.Client(base_url=url, timeout=120) as c:
            out["ready_s"] = ready_s
            c.get("/healthz")  # the connection is open before anything is timed
            keep = t_keep = None
            for n_terms, name in sizes:
                defns = [terms_definition(n_terms, rng) for _ in range(fresh)]
                keep, t_keep = keep or defns[0], t_keep or time.perf_counter()
                times = [_ask(c, d, 0, compute) for d in defns]
                out["first_answer"].append({"name": name, "terms": n_terms, "n_nodes": _n_nodes(defns[0]),
                                            "seconds": [t[0] for t in times], "tiers": [t[1] for t in times],
                                            "server_timing": [t[2] for t in times]})
                log(f"  first answer, {name}: median {1e3 * float(np.median([t[0] for t in times])):.1f} ms; "
                    f"server timing {times[-1][2]}")
                out["first_answer"][-1]["in_process_ms"] = breakdown(n_terms, compute=compute)
            if not (restart and compile_kernels):
                return out
            t = time.perf_counter()
            seconds, _ = until_numba(c, keep, compute, timeout=300, pause=0.2)
            out["compile_to_numba_s"] = None if seconds is None else t - t_keep + seconds
            log(f"  compiled tier {out['compile_to_numba_s']} s after the function's first request")
        if out["compile_to_numba_s"] is None:
            return out
        t_start = time.perf_counter()
        with server(cache, log_path) as (url, ready_s), httpx.Client(base_url=url, timeout=120) as c:
            c.get("/healthz")
            t_first = time.perf_counter()
            seconds, requests = until_numba(c, keep, compute, timeout=60)
            out["restart"] = {"ready_s": ready_s, "to_numba_s": seconds, "requests": requests,
                              "from_start_s": None if seconds is None else t_first - t_start + seconds}
            log(f"  after restart: ready in {ready_s:.2f} s, numba {seconds} s after the first request")
    return out


def breakdown(n_terms: int, fresh=3, compute=("value", "gradient"), seed=None) -> dict:
    """Where a first answer's time goes, in process on the interpreter: median ms per stage."""
    from adserve.engine import Engine, main_plan
    rng, stages = np.random.default_rng(seed), {"definition": [], "plan": [], "interpreter run": []}
    engine = Engine()
    for _ in range(fresh):
        defn = terms_definition(n_terms, rng)
        t0 = time.perf_counter()
        fn = engine.compile_definition(defn)
        t1 = time.perf_counter()
        main_plan(fn, compute)
        t2 = time.perf_counter()
        engine.evaluate(fn, {"x": np.linspace(0.1, 0.9, N_X)}, list(compute))
        t3 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[k].append(v)
    return {k: 1e3 * float(np.median(v)) for k, v in stages.items()}


def _n_nodes(defn) -> int:
    from adserve.engine import Engine
    return Engine().compile_definition(defn).n_nodes


if __name__ == "__main__":
    print(probe(fresh=3))
