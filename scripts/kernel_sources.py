"""Dump the generated kernel sources of a fixed set of graphs to a directory, one file per kernel.

    python scripts/kernel_sources.py OUT_DIR

Run it before and after a change to the code generator (or to the primitive table) and `diff -r` the two
directories: a refactor that means no change to generated code leaves them byte-identical. The set: the
benchmark cases (`bench/problems.py`), the survey example and the codegen test programs, each as the value,
gradient, JVP, VJP and HVP plans the server compiles; and every `Spec` of tests/engine/test_primitives.py as
its graph, JVP graph, VJP graph and HVP graph. Each is written as the serial kernel, its parallel batch
variant and the python tier's module.
"""

from __future__ import annotations

import os
import re
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests", "engine")]

import numpy as np  # noqa: E402

from adserve.engine import Engine, main_plan  # noqa: E402
from adserve.engine.builder import Builder, inline, op  # noqa: E402
from adserve.engine.codegen.module import kernel_module  # noqa: E402
from adserve.engine.jvp import jvp_graph  # noqa: E402
from adserve.engine.vjp import vjp_graph  # noqa: E402

PLANS = {"value": {"value"}, "gradient": {"value", "gradient"}, "jvp": {"jvp"}, "vjp": {"vjp"}, "hvp": {"hvp"},
         "all": {"value", "gradient", "hvp"}}
VARIANTS = {"serial": {}, "parallel": {"parallel": True}, "python": {"python": True}}


def _write(out, name, graph):
    safe = re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)
    for variant, kw in VARIANTS.items():
        with open(os.path.join(out, f"{safe}.{variant}.py"), "w") as f:
            f.write(kernel_module(graph, name, **kw))


def _definitions():
    from bench.problems import cases
    from test_codegen import PROGRAMS

    for c in cases():
        yield f"bench-{c.bench}-{c.label}", c.definition, c.wrt
    for name, (defn, _) in sorted(PROGRAMS.items()):
        yield f"program-{name}", defn, None


def _weighted_sum_hvp(g):
    """x, w, v -> HVP of sum_j <f_j(x), w_j>: the spec's second-order graph."""
    b = Builder()
    xs = [b.input(v.shape) for v in g.inputs]
    ws = [b.input(a.shape) for a in g.outputs]
    total = None
    for o, w in zip(inline(b, g, xs), ws):
        term = op.reduce_sum(o * w)
        total = term if total is None else total + term
    sg = b.build([total])
    gg = vjp_graph(sg, [True] * len(xs) + [False] * len(ws), [True])
    b2 = Builder()
    ins = [b2.input(v.shape) for v in sg.inputs]
    grad = b2.build(inline(b2, gg, [*ins, 1.0]))
    return jvp_graph(grad, [True] * len(xs) + [False] * len(ws))[0]


def main(out):
    os.makedirs(out, exist_ok=True)
    count, engine = 0, Engine()
    for name, defn, wrt in _definitions():
        fn = engine.compile_definition(defn)
        for plan, kinds in PLANS.items():
            if kinds & {"gradient", "hvp"} and fn.output_shape != ():
                continue
            graph, _ = main_plan(fn, frozenset(kinds), wrt)
            _write(out, f"{name}.{plan}", graph)
            count += 1
    from test_primitives import SPECS, make_graph

    for s in SPECS:
        g = make_graph(s.f, s.shapes)
        n, m = len(g.inputs), len(g.outputs)
        _write(out, f"spec-{s.id}.primal", g)
        _write(out, f"spec-{s.id}.jvp", jvp_graph(g, [True] * n)[0])
        _write(out, f"spec-{s.id}.vjp", vjp_graph(g, [True] * n, [True] * m))
        _write(out, f"spec-{s.id}.hvp", _weighted_sum_hvp(g))
        count += 4
    print(f"{count} graphs, {count * len(VARIANTS)} kernel sources in {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kernels")
