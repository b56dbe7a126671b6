"""`python -m bench.deadline_overhead [--compiled]`: what checking a deadline costs the interpreter and the kernels.

Each case is evaluated with `Engine.evaluate` on the NumPy interpreter without a deadline and with one that never
passes (so every equation and loop iteration checks it), interleaved (bench/timing.py); the ratio
with/without is printed per case (median and interquartile range over the rounds). With `--compiled`, each
case's numba kernel (and, for the batch, its parallel variant) is compiled twice, as generated and with its
stop-flag checks taken out, and the two are timed against each other, calling the kernels directly. Not
asserted anywhere: a report for docs and reviews.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile

import numpy as np

from adserve.engine import Engine, main_plan
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.worker import load, threadsafe_layer
from adserve.engine.deadline import FLAG_SLOTS, Deadline

from .timing import measure

LOOP = "def f(x):\n    for i in range(2000):\n        x = x * 0.999 + 0.001 * sin(x)\n    return x\n"
NESTED = ("def f(x):\n    s = 0.0\n    for i in range(40):\n        for j in range(40):\n"
          "            s = s + x * i - j\n    return s\n")
CASES = {
    "scalar loop, 2000 iterations (value)": ({"inputs": [{"name": "x", "shape": []}], "program": LOOP},
                                            {"x": 0.5}, ["value"]),
    "scalar loop, 2000 iterations (gradient)": ({"inputs": [{"name": "x", "shape": []}], "program": LOOP},
                                               {"x": 0.5}, ["value", "gradient"]),
    "nested loops 40x40 (gradient)": ({"inputs": [{"name": "x", "shape": []}], "program": NESTED},
                                      {"x": 0.5}, ["value", "gradient"]),
    "200 scalar ops, no loop (gradient)": ({"inputs": [{"name": "x", "shape": []}],
                                            "expr": " + ".join(f"sin({k}.5 * x)" for k in range(200))},
                                           {"x": 0.5}, ["value", "gradient"]),
    "array expression, n=10,000 (gradient)": ({"inputs": [{"name": "x", "shape": [10_000]}],
                                               "expr": "sum(exp(sin(x)) * x + log1p(x * x))"},
                                              {"x": np.linspace(0, 1, 10_000)}, ["value", "gradient"]),
}


LONG = "def f(x):\n    for i in range(100000):\n        x = x * 0.999999 + 0.000001 * sin(x)\n    return x\n"
COMPILED_CASES = {**CASES,
                  "scalar loop, 100,000 iterations (hvp)": ({"inputs": [{"name": "x", "shape": []}], "program": LONG},
                                                            {"x": 0.5}, ["hvp"])}
CHECK = re.compile(r"^ *if stop_flag\(stop\) != 0:\n *return stopped\(.*\)\n", re.M)


def _without_checks(src: str) -> str:
    """The module without its stop-flag checks (each is two lines of its own: the kernel as before them)."""
    out, n = CHECK.subn("", src)
    assert n > 0 and "stop_flag(stop)" not in out
    return out


def _compiled(graph, title, parallel, checks, where):
    src = kernel_module(graph, title, parallel=parallel)
    src = src if checks else _without_checks(src)
    name = "gen_bench_" + hashlib.sha256(src.encode()).hexdigest()[:20]
    path = os.path.join(where, name + ".py")
    with open(path, "w") as f:
        f.write(src)
    return load(path, name)


def compiled(batch=64) -> None:
    """The kernels with and without their checks, on one point and on a batch (serial; and parallel for the
    loops: the variant compiles slowly)."""
    threadsafe_layer()
    engine = Engine()
    where = tempfile.mkdtemp(prefix="adserve-bench-stop-")
    sys.path.insert(0, where)
    stop = np.zeros(FLAG_SLOTS, np.int64)
    print("compiled kernel time with stop-flag checks / without (median [interquartile range] over rounds)")
    for name, (definition, inputs, compute) in COMPILED_CASES.items():
        fn = engine.compile_definition(definition)
        graph = main_plan(fn, set(compute))[0]
        rng = np.random.default_rng(0)
        for parallel, B in ((False, 1), (False, batch), (True, batch))[:3 if "loop" in name else 2]:
            mods = {c: _compiled(graph, name, parallel, c == "with", where) for c in ("with", "without")}
            x = np.asarray(inputs["x"], float)  # every input of these plans (x, its tangent) has x's shape
            args = [np.array(np.broadcast_to(x + 0.01 * rng.random(), (B, *v.shape)), order="C")
                    for v in graph.inputs]
            outs = [np.empty((B, *a.shape)) for a in graph.outputs]
            t = measure({c: (lambda m=m: m.kernel(B, stop, *args, *outs)) for c, m in mods.items()},
                        rounds=15, block_s=0.02)
            kind = "parallel" if parallel else "serial"
            print(f"  {name:42s} {kind:8s} B={B:<3d} {t.ratio('with', 'without').text(3)}"
                  f"   ({t.median('without') * 1e6:,.1f} us without)", flush=True)


def main() -> None:
    if "--compiled" in sys.argv[1:]:
        compiled()
        return
    engine = Engine()  # the NumPy interpreter
    far = Deadline(3600.0)
    print("interpreter time with a deadline / without (median [interquartile range] over rounds)")
    for name, (definition, inputs, compute) in CASES.items():
        fn = engine.compile_definition(definition)
        engine.evaluate(fn, inputs, compute)  # builds the plan
        t = measure({"without": lambda: engine.evaluate(fn, inputs, compute),
                     "with": lambda: engine.evaluate(fn, inputs, compute, deadline=far)}, rounds=15, block_s=0.02)
        print(f"  {name:42s} {t.ratio('with', 'without').text(3)}   ({t.median('without') * 1e3:.2f} ms without)")
    far.close()


if __name__ == "__main__":
    main()
