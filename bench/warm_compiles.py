"""Warm compile workers against a process per compile: CPU and seconds to each of a run of new kernels.

    python -m bench.warm_compiles [--kernels N] [--rounds R]

A burst of new functions (what a client sweeping a model family sends, and what the test suite does) compiles
one kernel after another through one kernel store, on a cold cache. Each kernel is the value-and-gradient plan
of a new function: the survey example with a different constant, or a seeded random straight-line function of
about 100 IR nodes (bench.compile_time's). Rounds alternate the two ways, on fresh caches: `warm`, the store as
it is (workers kept between compiles), and `one-shot`, a worker per compile (MAX_COMPILES = 1), as before warm
workers. Reported per kernel: the compile workers' CPU seconds (RUSAGE_CHILDREN: the machine may be shared) and
the wall seconds from request to kernel loaded; medians over the kernels of all rounds, with min-max.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

from adserve.engine import Engine, main_plan
from adserve.engine.backend import Tiered, compile_workers

from .compile_time import random_definition


def definitions(n: int, round_: int) -> list[dict]:
    """n new functions (distinct in every round, so no cache holds them)."""
    out = []
    for i in range(n):
        c = 1.0 + (round_ * 1000 + i) * 1e-6
        if i % 2 == 0:
            out.append({"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
                        "expr": f"log(x1) + x1*x2 - sin(x2) * {c!r}"})
        else:
            d = random_definition(100, seed=round_ * 1000 + i)
            out.append(d)
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_round(defs, one_shot: bool) -> tuple[float, list[float]]:
    """(the compile workers' CPU seconds in all, wall seconds to each kernel) of kernels compiled one after
    another. CPU is counted once every worker has ended (a warm worker's CPU shows only then)."""
    saved = compile_workers.MAX_COMPILES
    compile_workers.MAX_COMPILES = 1 if one_shot else saved
    out, cpu0 = [], _children_cpu()
    with tempfile.TemporaryDirectory() as cache:
        tiered = Tiered(cache, workers=1, python=False)
        engine = Engine(tiered)
        try:
            for d in defs:
                graph, _ = main_plan(engine.compile_definition(d), frozenset({"value", "gradient"}))
                t = time.perf_counter()
                tiered.store.kernel(graph)
                if not tiered.store.wait(graph, timeout=600):
                    raise RuntimeError(f"kernel failed: {tiered.store.failed}")
                wall = time.perf_counter() - t
                print(f"  {'one-shot' if one_shot else 'warm'} {'survey' if 'expr' in d else 'random-100'}: "
                      f"{wall:.2f} s", flush=True)
                out.append(wall)
        finally:
            tiered.shutdown()
            compile_workers.MAX_COMPILES = saved
    time.sleep(1.0)  # the last one-shot worker is reaped by a thread of its own
    return _children_cpu() - cpu0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    results = {"warm": [0.0, []], "one-shot": [0.0, []]}
    for r in range(args.rounds):
        for way in (("warm", "one-shot") if r % 2 == 0 else ("one-shot", "warm")):
            cpu, walls = run_round(definitions(args.kernels, r * 2 + (way == "warm")), way == "one-shot")
            results[way][0] += cpu
            results[way][1] += walls
    print(f"{'way':<10} {'kernels':>7} {'worker CPU s per kernel':>24} {'wall s p50 (min-max)':>24}")
    for way, (cpu, walls) in results.items():
        print(f"{way:<10} {len(walls):>7} {cpu / len(walls):>24.2f} "
              f"{statistics.median(walls):>10.2f} ({min(walls):.2f}-{max(walls):.2f})")


if __name__ == "__main__":
    main()
