"""Time GradBench's evals: ours (in process, `Engine.evaluate`) beside JAX (`jit`, float64), two ways.

* **GradBench's method, cold**: a new function (ours: `compile_definition` on the tiered backend, whose
  kernels for it are not compiled yet; JAX: a new `jit`) called back to back for one second (at least once);
  the fastest call, as GradBench's tools report with `min_seconds = 1`. Ours answers on the interpreter or the
  python tier while numba compiles in the background (the tier of the fastest call is reported); JAX's first
  call compiles, its later ones are fast.
* **Warm, interleaved** (`bench.timing.measure`): after ours has its numba kernels and has chosen its tier by
  timing, both contenders are timed in rounds, each round both in a rotating order; the ratio ours/JAX per
  round, summarised as median and interquartile range.

Before timing, ours must equal JAX's output (relative 1e-9).
"""

from __future__ import annotations

import collections
import time

import numpy as np

from adserve.engine import Engine, backend
from adserve.engine.allocator import keep_freed_memory
from adserve.engine.limits import Limits

from ..timing import measure


def _close(a, b, rtol=1e-9):
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _close(x, y, rtol)
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b))) if b.size else 1))


def check(part, engine: Engine, fn, rtol=1e-10):
    """Ours (on `engine`) equals JAX for this part."""
    _close(call(part, engine, fn)(), part.jax()(), rtol)


def call(part, engine, fn, meta=None):
    return lambda: part.out(engine.evaluate(fn, part.inputs, part.compute, tangent=part.tangent, batch=part.batch,
                                            wrt=part.wrt, meta=meta))


def _engine(part, tier) -> Engine:
    return Engine(tier, limits=Limits().updated(**part.limits)) if part.limits else Engine(tier)


def timed_runs(fn, seconds: float) -> list:
    """Seconds of each call of `fn`, called back to back until `seconds` have passed (at least once)."""
    runs, t_end = [], time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        fn()
        now = time.perf_counter()
        runs.append(now - t)
        if now >= t_end:
            return runs


def _gradbench_min(fn, seconds=1.0):
    """GradBench's measure: run until `seconds` have passed (at least once); the fastest run, and the runs."""
    runs = timed_runs(fn, seconds)
    return min(runs), len(runs)


def cold(part, tier, seconds=1.0) -> dict:
    """GradBench's column for one part: ours from a new function on `tier` (a Tiered backend), JAX from a new
    jit; the fastest call within the first `seconds`, and the tiers ours answered on."""
    engine = _engine(part, tier)
    t0 = time.perf_counter()
    fn = engine.compile_definition(part.definition)
    meta, tiers, best, runs = {}, collections.Counter(), float("inf"), 0
    run = call(part, engine, fn, meta)
    while True:
        t = time.perf_counter()
        run()
        now = time.perf_counter()
        tiers[meta.get("backend", "?")] += 1
        if now - t < best:
            best, best_tier = now - t, meta.get("backend", "?")
        runs += 1
        if now - t0 >= seconds:
            break
    jax_best, jax_runs = _gradbench_min(part.jax(), seconds)  # includes the jit's compile, as GradBench does
    return {"ours_s": best, "ours_tier": best_tier, "ours_runs": runs, "ours_tiers": dict(tiers),
            "jax_s": jax_best, "jax_runs": jax_runs}


def settled(part, tier, settle_s=3.0):
    """(a zero-argument call of ours on `tier`, the dict it writes how it answered into), once its kernels are in
    and its tier chosen."""
    engine = _engine(part, tier)
    fn = engine.compile_definition(part.definition)
    meta = {}
    ours = call(part, engine, fn, meta)
    ours()
    engine.settle()
    for _ in range(3):  # the backend times its tiers on the first runs after a kernel arrives: let it choose
        t_end = time.perf_counter() + settle_s
        while time.perf_counter() < t_end:
            ours()
        if engine.settle(0.0):
            break
        engine.settle()
    return ours, meta


def warm(part, tier, budget_s=8.0, rounds=15, settle_s=3.0, log=print) -> dict:
    """Ours on `tier` once its kernels are in and its tier chosen, against JAX, interleaved."""
    ours, meta = settled(part, tier, settle_s)
    jax = part.jax()
    _close(ours(), jax())
    t = measure({"ours": ours, "jax": jax}, rounds=rounds, budget_s=budget_s)
    seen = collections.Counter()
    for _ in range(5):
        ours()
        seen[meta.get("backend", "?")] += 1
    return {"ours_s": t.median("ours"), "jax_s": t.median("jax"), "ratio": t.ratio("ours", "jax"),
            "rounds": len(t.per_call["ours"]), "tier": seen.most_common(1)[0][0], "tiers_seen": dict(seen)}


def run(evals, cache_dir, budget_s=8.0, cold_s=1.0, log=print) -> list:
    """Every part of every eval: cold (GradBench's method) then warm. One Tiered backend, one eval at a time,
    so nothing else compiles while a part is timed warm (the cold second shares the machine with its own
    background compile, as a new function on a server does)."""
    keep_freed_memory()  # this process's allocator as the server's (engine/allocator.py): freed blocks reused
    tier = backend.Tiered(cache_dir, workers=2)
    out = []
    try:
        for ev in evals:
            for part in ev.parts:
                log(f"  {ev.name} {ev.label} {part.function}")
                row = {"eval": ev.name, "label": ev.label, "function": part.function}
                try:
                    row["cold"] = cold(part, tier, cold_s)
                    row["warm"] = warm(part, tier, budget_s, log=log)
                except Exception as err:  # a failure is a row of the report, not the end of the run
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    log(f"    FAILED {row['error']}")
                else:
                    w, c = row["warm"], row["cold"]
                    log(f"    warm: ours {w['ours_s'] * 1e3:.3f} ms on {w['tier']}, jax {w['jax_s'] * 1e3:.3f} ms,"
                        f" ratio {w['ratio'].text()}; cold: ours {c['ours_s'] * 1e3:.3f} ms on {c['ours_tier']}"
                        f" ({c['ours_runs']} runs), jax {c['jax_s'] * 1e3:.3f} ms ({c['jax_runs']} runs)")
                out.append(row)
    finally:
        tier.shutdown()
    return out
