"""The cost model's units against real seconds (per tier) and peak memory: `python -m bench.cost_calibration`.

A request is admitted on static units (limits.py): `steps` (operation executions per point, loops
multiplying their bodies: `ADSERVE_MAX_STEPS`), request `work` (element operations x batch x a factor per
compute kind: `ADSERVE_MAX_REQUEST_WORK`) and its estimated peak bytes (memory.py:
`ADSERVE_MAX_REQUEST_BYTES`). This measures, per tier (the NumPy interpreter, the python tier, numba's
kernel) and per compute kind, how many seconds one unit costs, on the benchmark cases and on random programs
that hypothesis steers (`target()`) towards the worst seconds per unit and the worst measured/estimated
bytes. A run's time is bounded as `a * steps + b * work`: `a` is the worst seconds per step found on
step-bound programs (small arrays), `b` the worst seconds per unit of work on work-bound ones (large arrays);
at the limits, that is the longest an admitted request can take. Writes bench/results/cost_calibration.json
and prints the table docs/security.md shows.

Options: --examples N (hypothesis examples per search, default 60), --numba K (random programs also
compiled with numba, default 4; each compile takes seconds), --quick.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from adserve.engine import Engine, main_plan
from adserve.engine.errors import EngineError
from adserve.engine.interpreter import run as interpret
from adserve.engine.limits import KIND_FACTOR, Limits
from adserve.engine.memory import request_steps
from adserve.server.tensors import dumps, encode_tree

KINDS = ("value", "gradient", "hvp")
MEASURABLE = 0.005  # runs shorter than this are fixed costs (call, allocation), not the units': left out of fits
WIDE = Limits(max_steps=10 ** 9, max_work=1e13, max_request_work=1e15, max_request_bytes=1 << 40,
              max_trip_count=10 ** 8, max_elements=10 ** 9)
UNARY = ("sin", "cos", "exp", "tanh", "log1p", "sqrt", "abs", "sigmoid")


# -- programs ------------------------------------------------------------------------------------
def loop_program(n, length, vec_ops, scalar_ops, nested):
    """A `for` loop of `length` iterations over a vector of `n` (its `vec_ops`: unary functions applied to it)
    and a scalar accumulator (`scalar_ops`: functions of one element); nested: an inner loop of 3."""
    body = ["y = x", "s = 0.0"]
    inner = "    "
    loop = [f"for i in range({length}):"]
    if nested:
        loop.append("    for j in range(3):")
        inner = "        "
    stmts = [f"{inner}y = {f}(y) * 0.5 + x * 0.25" for f in vec_ops]
    stmts += [f"{inner}s = s + {f}(y[{k % n}]) * 0.1" for k, f in enumerate(scalar_ops)]
    if not stmts:
        stmts = [f"{inner}s = s + 0.5"]
    lines = body + loop + stmts + ["return sum(y * y) + s"]
    return "def f(x):\n" + "\n".join("    " + line for line in lines) + "\n"


@st.composite
def programs(draw):
    """(vector size, program source) of a random loop program."""
    n = draw(st.sampled_from([1, 2, 8, 64, 512, 4096, 32768]))
    source = loop_program(n, draw(st.sampled_from([1, 10, 100, 1000, 3000])),
                          draw(st.lists(st.sampled_from(UNARY), max_size=4)),
                          draw(st.lists(st.sampled_from(UNARY), max_size=4)), draw(st.booleans()))
    return n, source


def bench_cases(quick):
    from bench.problems import cases
    out = []
    for c in cases(quick=quick, seed=0):
        out.append((f"{c.bench} {c.label}", c.definition, c.inputs, c.batch))
    return out


# -- timing --------------------------------------------------------------------------------------
def _best(f, budget=0.3, most=5):
    """The least of a few timed runs (at least one; more while under `budget` seconds)."""
    times = []
    start = time.perf_counter()
    while len(times) < most and (not times or time.perf_counter() - start < budget):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def plan_args(fn, graph, kind, B, rng):
    xs = [rng.uniform(0.1, 0.9, (B, *fn.input_shapes[n])) for n in fn.input_names]
    ts = [rng.standard_normal((B, *fn.input_shapes[n])) for n in fn.input_names] if kind == "hvp" else []
    return xs + ts


def time_tiers(fn, kind, B, rng, numba=None):
    """{tier: seconds} of one run of the request's main plan on each tier asked (the python tier only where
    its own estimate says it pays: it is never used elsewhere)."""
    graph, _ = main_plan(fn, {kind})
    args = plan_args(fn, graph, kind, B, rng)
    out = {"interpreter": _best(lambda: interpret(graph, args))}
    if units(fn, kind, B)["python_pays"]:
        out.update(_python(graph, args, B))
    if numba is not None:
        out.update(_numba(numba, graph, args, B))
    return out


def _python(graph, args, B):
    out = {}
    try:
        from adserve.engine.codegen.module import kernel_module
        from adserve.engine.codegen.python import PythonKernel, Unsupported
        from adserve.engine.codegen.templates import interpreter_only
        if not interpreter_only(graph):
            k = PythonKernel(kernel_module(graph, "calibration", python=True), "calibration")
            outs = [np.empty((B, *a.shape)) for a in graph.outputs]
            from adserve.engine.deadline import FLAG_SLOTS
            stop = np.zeros(FLAG_SLOTS, np.int64)
            try:
                out["python"] = _best(lambda: k.run(B, stop, *args, *outs))
            except Unsupported:
                pass
    except Exception as e:  # a tier that cannot run the plan is not timed
        print(f"  (python tier: {type(e).__name__}: {e})", file=sys.stderr)
    return out


def _numba(numba, graph, args, B):
    from adserve.engine.backend.interpreter import NUMBA
    from adserve.engine.backend.plan import call_kernel, plan_meta
    out = {}
    numba.kernel(graph)
    if numba.wait(graph, 600):
        module = numba.store.module(graph, NUMBA)
        meta = plan_meta(graph)
        out["numba"] = _best(lambda: call_kernel(module.kernel, module.ERRORS, meta, B, args))
    return out


def units(fn, kind, B):
    """The request's units as the limits count them: its plan's steps (max_request_steps) and its work
    (max_request_work: work x batch x the kind's factor); and the python tier's own time estimate."""
    from adserve.engine.backend.plan import plan_meta
    from adserve.engine.backend.python_tier import PythonTier
    from adserve.engine.backend.interpreter import interpreter_floor
    graph, _ = main_plan(fn, {kind})
    meta = plan_meta(graph)
    tier = PythonTier.__new__(PythonTier)
    return {"steps": request_steps(fn, [graph]), "work": fn.work * KIND_FACTOR[kind] * B,
            "python_estimate": tier.seconds(meta, B),
            "python_pays": tier.seconds(meta, B) < PythonTier.PYTHON_MARGIN * interpreter_floor(meta, B)}


# -- memory --------------------------------------------------------------------------------------
def memory(engine, fn, compute, B, rng):
    """(estimated, measured) peak bytes of one request on the interpreter, its JSON answer included."""
    lead = (B,) if B > 1 else ()
    inputs = {n: rng.uniform(0.1, 0.9, lead + s) for n, s in fn.input_shapes.items()}
    kw = {"tangent": {n: rng.standard_normal(lead + s) for n, s in fn.input_shapes.items()}} \
        if "hvp" in compute else {}
    meta = {}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = engine.evaluate(fn, inputs, compute, batch=B > 1, meta=meta, **kw)
        dumps(encode_tree(out))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return meta["estimated_bytes"], peak


# -- the searches --------------------------------------------------------------------------------
class Record:
    def __init__(self):
        self.rows = []  # every measurement
        self.worst = {}  # (tier, kind, unit) -> (ratio, row)
        self.memory = []  # (name, compute, B, estimated, measured)

    def add(self, name, fn, kind, B, seconds):
        u = units(fn, kind, B)
        for tier, s in seconds.items():
            row = {"case": name, "tier": tier, "kind": kind, "B": B, "seconds": s, **u}
            self.rows.append(row)
            ratios = {unit: s / max(u[unit], 1) for unit in ("steps", "work")} if s >= MEASURABLE else {}
            if tier == "python" and u["python_pays"]:  # where the tier is used: its time against its own model
                ratios["own estimate"] = s / u["python_estimate"]
            for unit, r in ratios.items():
                key = f"{tier}/{kind}/{unit}"
                if r > self.worst.get(key, (0,))[0]:
                    self.worst[key] = (r, row)
        return u


def search(record, engine, examples, numba_budget, numba):
    compiled = [0]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(programs(), st.sampled_from(KINDS), st.sampled_from([1, 1, 16]))
    def one(program, kind, B):
        n, source = program
        try:
            fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [n]}], "program": source})
        except EngineError:
            return
        if fn.work * KIND_FACTOR[kind] * B > 5e8:  # keep each example under a few seconds
            return
        rng = np.random.default_rng(0)
        use_numba = numba if compiled[0] < numba_budget and fn.steps > 1000 else None
        compiled[0] += use_numba is not None
        seconds = time_tiers(fn, kind, B, rng, use_numba)
        u = record.add(f"random: {source!r}", fn, kind, B, seconds)
        for tier, s in seconds.items():
            if s >= MEASURABLE:
                target(s / max(u["steps"], 1), label=f"{tier} seconds per step")
                target(s / max(u["work"], 1), label=f"{tier} seconds per work")
            if tier == "python" and u["python_pays"]:
                target(s / u["python_estimate"], label="python seconds per its own estimate")
        compute = [kind] if kind != "value" else ["value"]
        est, peak = memory(engine, fn, compute, B, rng)
        record.memory.append((f"random: {source!r}", compute, B, est, peak))
        target(peak / est, label="measured / estimated bytes")
    one()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=60)
    p.add_argument("--numba", type=int, default=4)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.examples, a.numba = 15, 1
    engine = Engine(limits=WIDE)
    record = Record()
    cache = tempfile.mkdtemp(prefix="adserve-calibration-")
    from adserve.engine.backend import Tiered
    numba = Tiered(cache, python=False) if a.numba else None
    rng = np.random.default_rng(1)
    try:
        print("bench cases ...", file=sys.stderr)
        for name, defn, inputs, batch in bench_cases(a.quick):
            fn = engine.compile_definition(defn)
            B = next(iter(inputs.values())).shape[0] if batch else 1
            for kind in ("value", "gradient") + (("hvp",) if fn.output_shape == () else ()):
                seconds = time_tiers(fn, kind, B, rng, numba)
                record.add(name, fn, kind, B, seconds)
                est, peak = memory(engine, fn, [kind], B, rng)
                record.memory.append((name, [kind], B, est, peak))
        print("random programs ...", file=sys.stderr)
        search(record, engine, a.examples, a.numba, numba)
        issue_cases(record, engine, rng)
    finally:
        if numba is not None:
            numba.shutdown()
    report(record)


def issue_cases(record, engine, rng):
    """The issue's requests, measured where they fit (each within a few hundred MiB)."""
    for n in (500, 1000, 2000):
        fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [n]}],
                                        "expr": "sum(sin(x) * x) + sum(x ** 2)"})
        est, peak = memory(engine, fn, ["hessian"], 1, rng)
        record.memory.append((f"hessian of x[{n}]", ["hessian"], 1, est, peak))
    for length in (2000, 10000, 20000):
        fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [1000]}],
                                        "program": loop_program(1000, length, ["sin"], [], False)})
        est, peak = memory(engine, fn, ["gradient"], 1, rng)
        record.memory.append((f"{length}-step loop over 1,000 elements, gradient", ["gradient"], 1, est, peak))


def fit(record, kind, tiers):
    """(a, b): seconds per primal step and per unit of request work bounding every run of `kind` on `tiers`."""
    rows = [r for r in record.rows if r["kind"] == kind and r["tier"] in tiers and r["seconds"] >= MEASURABLE]
    if not rows:
        return None
    # a from step-bound runs (at most 16 elements of work per step), b from every run after a's share
    bound = [r["seconds"] / r["steps"] for r in rows if r["work"] <= 16 * r["steps"] * KIND_FACTOR[kind]]
    a = max(bound, default=0.0)
    b = max(max(r["seconds"] - a * r["steps"], 0) / r["work"] for r in rows)
    return a, b


def report(record):
    limits = Limits()
    out = {"worst": {k: {"ratio": v[0], **v[1]} for k, v in record.worst.items()}, "fits": {}, "memory": [],
           "rows": record.rows}
    print("\n| tier | kind | seconds per step (worst) | seconds per work unit (worst) | at max_request_steps | "
          "at max_request_work |")
    print("| --- | --- | --- | --- | --- | --- |")
    for tier in ("interpreter", "python", "numba"):
        for kind in KINDS:
            f = fit(record, kind, (tier,))
            if f is None:
                continue
            a, b = f
            out["fits"][f"{tier}/{kind}"] = {"a": a, "b": b}
            print(f"| {tier} | {kind} | {a:.2e} | {b:.2e} | {a * limits.max_request_steps:,.1f} s | "
                  f"{b * limits.max_request_work:,.1f} s |")
    print("\n| case | compute | B | estimated MiB | measured MiB | measured/estimated |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = sorted(record.memory, key=lambda m: -m[4] / m[3])
    named = [m for m in record.memory if not m[0].startswith("random")]
    for name, compute, B, est, peak in worst[:6] + [m for m in named if m not in worst[:6]]:
        print(f"| {name[:70]} | {','.join(compute)} | {B} | {est / 2**20:,.1f} | {peak / 2**20:,.1f} | "
              f"{peak / est:.2f} |")
    out["memory"] = [{"case": n, "compute": c, "B": B, "estimated": e, "measured": m}
                     for n, c, B, e, m in record.memory]
    print("\nworst seconds per unit found:")
    for key, (ratio, row) in sorted(record.worst.items()):
        print(f"  {key}: {ratio:.2e}  ({row['case'][:100]}, B={row['B']}, {row['seconds']:.3f} s)")
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/cost_calibration.json", "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
