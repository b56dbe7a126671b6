"""`python -m bench.deadline_overhead`: what checking a deadline costs the interpreter.

Each case is evaluated with `Engine.evaluate` on the NumPy interpreter without a deadline and with one that never
passes (so every equation and loop iteration checks it), interleaved (bench/timing.py); the ratio
with/without is printed per case (median and interquartile range over the rounds). Not asserted anywhere:
a report for docs and reviews.
"""

from __future__ import annotations

import numpy as np

from adserve.engine import Engine
from adserve.engine.deadline import Deadline

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


def main() -> None:
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
