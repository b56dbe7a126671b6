"""Memory and time of reverse mode through a long `while` loop, per tier: `python -m bench.loop_memory`.

The loop is N steps of an S-element state (N = the loop's bound, ADSERVE_MAX_WHILE_ITERATIONS):

    y = x; k = 0
    while k < N:
        y = y * r + 0.001 * sin(y)
        k += 1
    return sum(y)

Each (N, S, tier, kind) runs in a process of its own: the plan's graph (value, gradient or hvp) is built, its
kernel loaded (numba: compiled first in another process, so compiling is not measured), then run once for
one point (`--repeat`: several times, the fastest reported). Reported: the wall time of that run and how far it raised the process's peak resident memory
(ru_maxrss after minus before: the memory the run itself took). `--max-elements` raises the element limit,
for measuring a tape the default limit refuses; `--loop for` runs the same loop as `for k in range(N)`.
Results print as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

PROGRAM = """
def f(x, r):
    y = x
    k = 0
    while k < {n}:
        y = y * r + 0.001 * sin(y)
        k += 1
    return sum(y)
"""
FOR_PROGRAM = """
def f(x, r):
    y = x
    for k in range({n}):
        y = y * r + 0.001 * sin(y)
    return sum(y)
"""


def _setup(n, s, kind, max_elements, loop="while"):
    import numpy as np

    from adserve.engine import Engine, Limits, main_plan

    limits = Limits().updated(max_while_iterations=n, max_elements=max_elements)
    engine = Engine(limits=limits)
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [s]}, {"name": "r", "shape": []}],
                                    "program": (FOR_PROGRAM if loop == "for" else PROGRAM).format(n=n)})
    kinds = {"value": {"value"}, "gradient": {"value", "gradient"}, "hvp": {"value", "gradient", "hvp"}}[kind]
    from adserve.engine.limits import check_tape
    if kind != "value" and fn.tape:
        check_tape(fn.tape, 1, limits)  # the server's up-front refusal
    graph, _ = main_plan(fn, frozenset(kinds))
    x = np.linspace(-1, 1, s)[None]
    args = [x, np.array([0.99999])] + ([np.ones((1, s)), np.array([0.5])] if kind == "hvp" else [])
    return graph, args, fn.tape


def _kernel_path(graph, cache, title):
    import hashlib

    from adserve.engine.codegen.module import kernel_module
    src = kernel_module(graph, title)
    key = hashlib.sha256(src.encode()).hexdigest()[:24]
    path = os.path.join(cache, f"gen_{key}.py")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(src)
    return path


def one(n, s, tier, kind, max_elements, cache, repeat=1, loop="while"):
    """Run one case in this process; print a JSON line."""
    import numpy as np

    from adserve.engine.deadline import FLAG_SLOTS
    try:
        graph, args, tape = _setup(n, s, kind, max_elements, loop)
    except Exception as e:  # a refusal up front is a result too
        print(json.dumps({"refused": str(e)[:160]}))
        return
    if tier == "numba":
        from adserve.engine.codegen.worker import load
        path = _kernel_path(graph, cache, f"{loop} loop {n}x{s} {kind}")
        if "--compile" in sys.argv:
            load(path, os.path.basename(path)[:-3])
            return
        mod = load(path, os.path.basename(path)[:-3])
    elif tier == "python":
        from adserve.engine.codegen.module import kernel_module
        from adserve.engine.codegen.python import PythonKernel
        mod = PythonKernel(kernel_module(graph, "bench", python=True), "bench")
    outs = [np.empty((1, *a.shape)) for a in graph.outputs]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = math.inf
    for _ in range(repeat):  # the fastest of `repeat` runs: the machine may be shared
        t = time.perf_counter()
        if tier == "interpreter":
            from adserve.engine.interpreter import run
            run(graph, args)
        else:
            stop = np.zeros(FLAG_SLOTS, np.int64)
            runner = mod.kernel if tier == "numba" else mod.run
            status = runner(1, stop, *args, *outs)
            assert status == 0, status
        seconds = min(seconds, time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mb": (after - before) / 1024, "tape": tape}))


def case(n, s, tier, kind, max_elements, cache, repeat=1, loop="while", timeout=3600):
    cmd = [sys.executable, "-m", "bench.loop_memory", "--one", str(n), str(s), tier, kind,
           "--max-elements", str(max_elements), "--cache", cache, "--repeat", str(repeat), "--loop", loop]
    if tier == "numba":  # compile first, in a process of its own
        subprocess.run(cmd + ["--compile"], check=True, timeout=timeout, capture_output=True)
    out = subprocess.run(cmd, check=True, timeout=timeout, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=4, metavar=("N", "S", "TIER", "KIND"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--max-elements", type=int, default=10_000_000)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "adserve-bench-loop-memory"))
    ap.add_argument("--sizes", default="100000x10,100000x1000")
    ap.add_argument("--tiers", default="interpreter,python,numba")
    ap.add_argument("--kinds", default="value,gradient,hvp")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case in one process; the fastest is reported")
    ap.add_argument("--loop", choices=("while", "for"), default="while", help="the same loop as a for loop")
    a = ap.parse_args(argv)
    os.makedirs(a.cache, exist_ok=True)
    if a.one:
        n, s, tier, kind = a.one
        one(int(n), int(s), tier, kind, a.max_elements, a.cache, a.repeat, a.loop)
        return
    print("| N | S | tier | kind | time (s) | x value | peak memory of the run (MB) | tape (elements/point) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        n, s = map(int, size.split("x"))
        for tier in a.tiers.split(","):
            base = None
            for kind in a.kinds.split(","):
                r = case(n, s, tier, kind, a.max_elements, a.cache, a.repeat, a.loop)
                if "refused" in r:
                    print(f"| {n:,} | {s:,} | {tier} | {kind} | refused: {r['refused']} | | | |", flush=True)
                    continue
                base = r["seconds"] if kind == "value" else base
                ratio = f"{r['seconds'] / base:.1f}" if base else ""
                print(f"| {n:,} | {s:,} | {tier} | {kind} | {r['seconds']:.2f} | {ratio} | {r['peak_mb']:.1f} | "
                      f"{r['tape']:,} |", flush=True)


if __name__ == "__main__":
    main()
