"""Interpreter time of loops in reverse mode: `python -m bench.loop_speed [--rounds R] [--profile CASE]`.

Cases, each on the NumPy interpreter (`Engine()`), one point:
  * `for 32000`: the gradient of a scalar `for` loop of 32,000 steps (its whole tape fits the tape budget);
  * `for 33000`: the same loop at 33,000 steps (past the budget: checkpointed, a reverse sweep over segments);
  * `while 1` and `while 16`: the gradient of a scalar `while` that stops on data, at one point (1,389
    iterations) and at a batch of 16 points, each running its own trip count (1,000 to 1,460); fewer than
    while_kernel.ESCALATE_AFTER, so all of it runs on the interpreter (checkpointed, its bound being 100,000);
  * `particle`: GradBench's particle eval (bench/gradbench_nested.py), nested `grad` inside `cond`s and loops;
  * `never 1` and `never 8` (value and gradient alike) and `never 1 value`: bench/hostile.py's "while that
    never stops, 1000-element state" (`while y[0] > -1.0: y = y + c`) up to its while_limit (100,000
    iterations, all on the interpreter: its body is not scalar work), at one point and at a batch of 8; the
    answer is the error. Per-iteration cost is the time over 100,000.
The cases run interleaved, `--rounds` times (rotating order); reported per case: the median CPU time of a
call (process time: this process's threads, whatever else the machine runs) with its spread (min-max), and the
wall time's median. The code generator (codegen, which a long `while` escalates to after
while_kernel.ESCALATE_AFTER iterations) is loaded before timing, so every round sees the same steady state.
`--raw` also prints every timing (for runs interleaved across processes or trees). `--profile CASE` runs one
case under cProfile instead and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FOR = "def f(x, r):\n    y = x\n    for k in range({n}):\n        y = y * r + 0.001 * sin(y)\n    return y\n"
NEVER = "def f(x):\n    y = x\n    while y[0] > -1.0:\n        y = y + 1.000000001\n    return sum(y)"
WHILE = "def f(x, r):\n    y = x\n    k = 0\n    while y < 1e6:\n        y = y * r + 0.001 * sin(y)\n        k += 1\n    return y + k\n"


def _cases():
    from adserve.engine import Engine
    from adserve.engine.limits import Limits
    from bench import gradbench_nested as gb

    engine = Engine()
    cases = {}
    for n in (32_000, 33_000):
        fn = engine.compile_definition({"inputs": [{"name": "x", "shape": []}, {"name": "r", "shape": []}],
                                        "program": FOR.format(n=n)})
        cases[f"for {n}"] = (engine, fn, {"x": 0.5, "r": 0.99999}, ["value", "gradient"])
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": []}, {"name": "r", "shape": []}],
                                    "program": WHILE})
    cases["while 1"] = (engine, fn, {"x": 1.0, "r": 1.01}, ["value", "gradient"])
    cases["while 16"] = (engine, fn, {"x": np.linspace(0.5, 50.0, 16), "r": np.full(16, 1.01)},
                         ["value", "gradient"], True)
    never = engine.compile_definition({"inputs": [{"name": "x", "shape": [1000]}], "program": NEVER})
    cases["never 1 value"] = (engine, never, {"x": np.zeros(1000)}, ["value"])
    cases["never 1"] = (engine, never, {"x": np.zeros(1000)}, ["value", "gradient"])
    cases["never 8"] = (engine, never, {"x": np.zeros((8, 1000))}, ["value", "gradient"], True)
    big = Engine(limits=Limits().updated(**gb.LIMITS))
    cases["particle"] = (big, big.compile_definition(gb.particle()), {"w": [0.0]}, ["value"])
    return cases


def _call(case):
    from adserve.engine.errors import EvaluationError

    engine, fn, inputs, compute, *batch = case
    try:
        return engine.evaluate(fn, inputs, compute, batch=bool(batch))
    except EvaluationError as err:  # the never-ending loop's while_limit
        return {"error": f"{err.code}: {err.message}"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--profile", help="a case to profile instead")
    ap.add_argument("--out", help="with --profile: also dump the stats to this file")
    ap.add_argument("--raw", action="store_true", help="also print each timing: RAW case cpu_s wall_s")
    args = ap.parse_args(argv)
    from adserve.engine.codegen import while_kernel
    while_kernel.generator_loaded(None)
    cases = _cases()
    if args.profile:
        import cProfile
        import pstats
        _call(cases[args.profile])
        pr = cProfile.Profile()
        pr.enable()
        _call(cases[args.profile])
        pr.disable()
        if args.out:
            pr.dump_stats(args.out)
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return
    names = args.only or list(cases)
    answers = {n: _call(cases[n]) for n in names}  # warm-up (plans built, kernels generated), and the answers
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            c, w = time.process_time(), time.perf_counter()
            _call(cases[n])
            cpu[n].append(time.process_time() - c)
            wall[n].append(time.perf_counter() - w)
            if args.raw:
                print(f"RAW {n.replace(' ', '_')} {cpu[n][-1]:.4f} {wall[n][-1]:.4f}", flush=True)
    print(f"| case | CPU s, median (min-max) over {args.rounds} | wall s, median | answer |")
    print("|---|---|---|---|")
    for n in names:
        a = answers[n]
        shown = {k: (v if isinstance(v, str) else np.asarray(v).ravel().tolist() if not isinstance(v, dict) else
                     {kk: np.asarray(vv).ravel().tolist() for kk, vv in v.items()}) for k, v in a.items()}
        print(f"| {n} | {np.median(cpu[n]):.3f} ({min(cpu[n]):.3f}-{max(cpu[n]):.3f}) | "
              f"{np.median(wall[n]):.3f} | {shown} |")


if __name__ == "__main__":
    main()
