"""Every tier gives the interpreter's answer: the NumPy interpreter, the python tier and numba's kernels.

Which tier computed a cached answer must not change it. The comparison (`same`):

* NaN in the same places, infinities the same, and the sign of every zero the same, always;
* bit for bit where every operation is correctly rounded in both (IEEE arithmetic, sqrt, comparisons,
  selections, copies): `EXACT`;
* within 1e-12 of the output's largest magnitude where the order of a sum may differ (reductions,
  contractions: numba's vectorised loops and NumPy's pairwise sums reassociate) or the two use different
  math libraries (NumPy's own SIMD exp/log/tanh against libm's, which numba and the python tier call:
  they differ in the last bit).

The python tier and numba run the same generated code on the same libm, so they must agree bit for bit
wherever no sum is reassociated (`REASSOCIATING`).

The cases: those the GradBench cross-check found (an FMA contracted across `x*x - y*y`, signed zeros of
maximum/minimum and of `x + 0.0`, empty axes and zero-row Jacobian bases) and every spec of the primitive
table (value, JVP and VJP), compiled in test_codegen's grouped kernels: this is where every spec is compiled.
A kernel over empty arrays is compiled with numba's bounds checking on, in a process of its own: no
template may read element 0 of an empty array.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from engine_helpers import make_graph, no_stop, op, prims_used, run
from test_codegen import GROUPS, compile_kernel, run_kernel, spec_graph

from adserve.engine import Engine, backend
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.python import PythonKernel, Unsupported

pytestmark = pytest.mark.compiled

REL = 1e-12
# correctly rounded in NumPy, libm and numba alike: these agree bit for bit across tiers
EXACT = {"abs", "add", "sub", "mul", "div", "neg", "sqrt", "square", "maximum", "minimum", "clip", "sign",
         "floor", "ceil", "round", "eq", "ne", "lt", "le", "gt", "ge", "where", "broadcast_to", "reshape",
         "transpose", "slice", "update_slice", "dyn_slice", "dyn_update", "gather", "concatenate", "argmax",
         "argmin", "arange", "reduce_max", "reduce_min", "loop", "cond", "while"}
REASSOCIATING = {"reduce_sum", "sum_to", "einsum", "logsumexp", "scatter_add"}


def same(got, want, exact, what):
    """`got` is `want`: bit for bit if `exact`, else within REL of want's largest finite magnitude; NaN,
    infinities and the sign of zero exactly either way."""
    got, want = np.asarray(got, dtype=np.float64), np.broadcast_to(np.asarray(want, dtype=np.float64), np.shape(got))
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN at {np.argwhere(np.isnan(got) != nan)[:5].tolist()}"
    g, w = got[~nan], want[~nan]
    inf = np.isinf(w)
    assert np.array_equal(np.isinf(g), inf) and np.array_equal(g[inf], w[inf]), f"{what}: infinities {g} vs {w}"
    zero = (g == 0) & (w == 0)
    assert np.array_equal(np.signbit(g[zero]), np.signbit(w[zero])), f"{what}: sign of zero {g} vs {w}"
    if exact:
        assert np.array_equal(g, w), f"{what}: not bit for bit: {g[g != w][:4]} vs {w[g != w][:4]}"
    else:
        finite = w[~inf]
        scale = float(np.max(np.abs(finite))) if finite.size else 0.0
        err = np.abs(g[~inf] - finite)
        assert np.all(err <= REL * scale), f"{what}: off by {err.max() / scale:.3g} relative (> {REL})"


def python_run(graph, args):
    """The python tier's outputs, or None where it declines (the interpreter answers those: same answer)."""
    k = PythonKernel(kernel_module(graph, "consistency", python=True), "consistency")
    n = max(a.shape[0] for a in args)
    outs = [np.empty((n, *a.shape)) for a in graph.outputs]
    try:
        status = k.run(n, no_stop(), *[np.ascontiguousarray(a, dtype=np.float64) for a in args], *outs)
    except Unsupported:
        return None
    assert status == 0, k.ERRORS[status - 1]
    return outs


def three_ways(graph, args, exact_interp, exact_compiled, what, numba=None):
    """Interpreter vs python tier vs numba (`numba`: the kernel's outputs, computed by the caller)."""
    want = run(graph, args)
    py = python_run(graph, args)
    for j, w in enumerate(want):
        if py is not None:
            same(py[j], w, exact_interp, f"{what}: python tier, output {j}")
        if numba is not None:
            same(numba[j], w, exact_interp, f"{what}: numba, output {j}")
            if py is not None:
                same(numba[j], py[j], exact_compiled, f"{what}: numba vs python tier, output {j}")


# -- the cases the cross-check found ---------------------------------------------------------------------
NZ = -0.0
NAN = float("nan")
CASES = [  # (name, f, shapes, points): each point a list of inputs
    ("sqrt(x*x - y*y)", lambda x, y: op.sqrt(x * x - y * y), [(), ()], [[0.1, 0.1], [0.3, 0.3], [1.5, 0.5]]),
    ("log(x*y - z*w)", lambda x, y, z, w: op.log(x * y - z * w), [(), (), (), ()],
     [[0.1, 0.3, 0.3, 0.1], [0.7, 0.3, 0.3, 0.7], [0.2, 0.7, 0.1, 0.3]]),
    ("maximum", op.maximum, [(), ()], [[NZ, 0.0], [0.0, NZ], [NAN, 1.0], [1.0, NAN], [NZ, NZ], [2.0, 1.0]]),
    ("minimum", op.minimum, [(), ()], [[NZ, 0.0], [0.0, NZ], [NAN, 1.0], [1.0, NAN], [NZ, NZ], [2.0, 1.0]]),
    ("maximum[4]", op.maximum, [(4,), (4,)], [[[NZ, 0.0, NAN, 1.0], [0.0, NZ, 1.0, NAN]]]),
    ("1/(x + 0.0)", lambda x: 1.0 / (x + 0.0), [()], [[NZ], [0.0], [2.0]]),
    ("sign, 1/sign", lambda x: (op.sign(x), 1.0 / op.sign(x)), [()], [[NZ], [0.0], [NAN], [2.0], [-3.0]]),
    ("1/(0.0 + x)", lambda x: 1.0 / (0.0 + x), [()], [[NZ], [0.0]]),
    ("1/(x - 0.0), 1/(x - -0.0), 1/(x + -0.0)",
     lambda x: (1.0 / (x - 0.0), 1.0 / (x - NZ), 1.0 / (x + NZ)), [()], [[NZ], [0.0]]),
    ("1/(x * 1.0), 1/(x / 1.0)", lambda x: (1.0 / (x * 1.0), 1.0 / (x / 1.0)), [()], [[NZ], [0.0]]),
    ("max/min over ±0", lambda x: (op.reduce_max(x), op.reduce_min(x), 1.0 / op.reduce_max(x),
                                  1.0 / op.reduce_min(x)), [(3,)],
     [[[NZ, 0.0, NZ]], [[0.0, NZ, 0.0]], [[NZ, NZ, NZ]], [[0.0, 0.0, 0.0]], [[NZ, NAN, 0.0]]]),
    ("sum of -0", lambda x: (1.0 / op.reduce_sum(x), 1.0 / op.reduce_sum(x * x, axes=(1,))), [(2, 3)],
     [[np.full((2, 3), NZ)], [np.zeros((2, 3))]]),
    ("empty axis", lambda x, y: (op.reduce_sum(x, axes=(1,)), op.reduce_max(x, axes=(1,)),
                                 op.reduce_min(x, axes=(1,)), op.logsumexp(x, axes=(1,)) * y,
                                 1.0 / op.reduce_sum(x) + y), [(3, 0), ()], [[np.zeros((3, 0)), 2.0]]),
    ("empty contraction", lambda a, b: op.einsum(a, b, spec="ij,jk->ik") * 2.0, [(2, 0), (0, 3)],
     [[np.zeros((2, 0)), np.zeros((0, 3))]]),
]


def case_graph():
    """One graph of every case's value, JVP and VJP (as test_codegen's spec groups), and its arguments:
    each case's points in turn, the other cases at their first point meanwhile."""
    class Case:
        def __init__(self, f, shapes):
            self.f, self.shapes = f, shapes
    graph = spec_graph([Case(f, shapes) for _, f, shapes, _ in CASES])
    B = max(len(points) for *_, points in CASES)
    args, tangents, cotangents = [], [], []
    for _, f, shapes, points in CASES:
        g = make_graph(f, shapes)
        for j, s in enumerate(shapes):
            args.append(np.stack([np.asarray(points[min(k, len(points) - 1)][j], dtype=np.float64).reshape(s)
                                  for k in range(B)]))
            tangents.append(np.stack([np.full(s, (-1.0) ** k) for k in range(B)]))
        cotangents += [np.stack([np.full(a.shape, 1.0 + k) for k in range(B)]) for a in g.outputs]
    # spec_graph's inputs: per case its xs, then its tangents, then its cotangents
    ordered, ai, ci = [], 0, 0
    for _, f, shapes, _ in CASES:
        n, m = len(shapes), len(make_graph(f, shapes).outputs)
        ordered += args[ai:ai + n] + tangents[ai:ai + n] + cotangents[ci:ci + m]
        ai, ci = ai + n, ci + m
    return graph, ordered


def test_the_cross_check_cases_agree_on_every_tier():
    """Bit for bit: at these points every sum is of zeros or exact, and log's argument an exact zero."""
    graph, args = case_graph()
    numba = run_kernel(compile_kernel(graph, "tier consistency: cross-check cases"), graph, args)
    three_ways(graph, args, True, True, "cross-check cases", numba)


def test_the_builder_keeps_the_sign_of_zero():
    """x + 0.0 is not x (it is +0.0 at x = -0.0): only the identities that hold for every x fold away."""
    for f, folds in [(lambda x: x + 0.0, False), (lambda x: 0.0 + x, False), (lambda x: x - NZ, False),
                     (lambda x: x + NZ, True), (lambda x: NZ + x, True), (lambda x: x - 0.0, True),
                     (lambda x: x * 1.0, True), (lambda x: 1.0 * x, True), (lambda x: x / 1.0, True)]:
        g = make_graph(f, [()])
        assert (not g.eqns) == folds, g
        for x in (NZ, 0.0, 1.5, -np.inf, NAN):
            (out,) = run(g, [np.array([x])])
            with np.errstate(invalid="ignore"):
                want = f(np.float64(x))
            assert np.array_equal(out, [want], equal_nan=True) and np.signbit(out[0]) == np.signbit(want)


@pytest.mark.parametrize("group", range(len(GROUPS)), ids=lambda i: f"{GROUPS[i][0].id}..{GROUPS[i][-1].id}")
def test_every_spec_agrees_on_every_tier(group):
    """Every spec of the primitive table (value, JVP and VJP), compiled in test_codegen's groups of a few specs a
    kernel, on 3 points: the first input shared by all (a leading axis of 1), the rest per point."""
    rng = np.random.default_rng(group)
    specs = GROUPS[group]
    per_spec = []
    for s in specs:
        g = make_graph(s.f, s.shapes)
        n = len(g.inputs)
        points = [s.draw(rng, k) for k in range(3)]
        a = [np.stack([p[j] for p in points]) if j else points[0][j][None] for j in range(n)]
        a += [rng.standard_normal((3, *v.shape)) for v in g.inputs]
        a += [rng.standard_normal((3, *o.shape)) for o in g.outputs]
        per_spec.append(a)
    graph = spec_graph(specs)
    numba = run_kernel(compile_kernel(graph, f"group {group}"), graph, [x for a in per_spec for x in a])
    start = 0
    for s, a in zip(specs, per_spec):
        g = spec_graph([s])
        used = prims_used(g)
        outs = numba[start:start + len(g.outputs)]
        start += len(g.outputs)
        three_ways(g, a, used <= EXACT, not used & REASSOCIATING, s.id, outs)
    assert start == len(numba)


# -- empty arrays ------------------------------------------------------------------------------------------
EMPTY = [  # definitions over empty arrays: every tier answers (or fails) as the interpreter does
    ({"inputs": [{"name": "x", "shape": [3, 0]}, {"name": "y", "shape": []}],
      "expr": "sum(sum(x, axis=1)) + sum(logsumexp(x, axis=1)) * y + sum(x @ ones(0)) + y * y"},
     {"x": np.zeros((3, 0)), "y": 2.0}),
    ({"inputs": [{"name": "x", "shape": [0]}, {"name": "i", "shape": []}],
      "expr": "sum(x * 2) + i"}, {"x": np.zeros(0), "i": 0.0}),
]


def test_empty_arrays_are_never_read_in_compiled_code():
    """Reductions and contractions over empty axes, empty slices and concatenations, compiled with numba's
    bounds checking (NUMBA_BOUNDSCHECK=1, in a process of its own, so any read of an empty array raises):
    the kernel answers as the interpreter, bit for bit. (Indexing into an empty axis is refused when the
    function is defined.)"""
    script = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from engine_helpers import make_graph, no_stop, op, run
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.worker import load

def f(x, y, e):
    return (op.reduce_max(x, axes=(1,)), op.reduce_min(x, axes=(1,)), op.reduce_sum(x, axes=(1,)),
            op.logsumexp(x, axes=(1,)), op.einsum(x, y, spec="ij,jk->ik"), op.reduce_sum(e) + 1.0,
            op.concatenate(e, e, op.reshape(op.slice(x, index=((0, 1, 1), (0, 0, 1))), shape=(0,)), axis=0),
            op.reduce_max(op.einsum(y, e, spec="jk,j->k")), e * 2.0)

g = make_graph(f, [(3, 0), (0, 2), (0,)])
path = sys.argv[2] + "/gen_empty.py"
with open(path, "w") as out:
    out.write(kernel_module(g, "empty arrays"))
mod = load(path, "gen_empty")
for B in (1, 2):
    args = [np.zeros((B, 3, 0)), np.zeros((B, 0, 2)), np.zeros((B, 0))]
    outs = [np.empty((B, *a.shape)) for a in g.outputs]
    status = mod.kernel(B, no_stop(), *args, *outs)
    assert status == 0, status
    for o, w in zip(outs, run(g, args)):
        w = np.broadcast_to(w, o.shape)
        assert np.array_equal(o, w) and np.array_equal(np.signbit(o), np.signbit(w)), (o, w)
print("ok")
"""
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": tmp,
               "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(here)), here,
                                              os.environ.get("PYTHONPATH", "")])}
        r = subprocess.run([sys.executable, "-c", script, here, tmp], env=env, capture_output=True, text=True,
                           timeout=900)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_a_batch_with_an_empty_input_is_an_empty_batch(tmp_path):
    """An input with no rows beside one shared row is a batch of none (NumPy's broadcasting), on every tier:
    no kernel reads row 0 of the empty input (the python tier, which runs the kernel's code with Python's
    bounds checks, would raise)."""
    g = make_graph(lambda x, y: (x * y, op.reduce_sum(x) + y), [(2,), ()])
    args = [np.zeros((0, 2)), np.ones((1,))]
    tier = backend.Tiered(str(tmp_path), compile=False)
    tier.python.pays = lambda plan, B: True
    try:
        for _ in range(3):
            got = tier.run(g, args)
            tier.settle()
            for o, w in zip(got, run(g, args)):
                assert o.shape[0] == 0 and np.shape(w)[0] == 0
    finally:
        tier.shutdown()


@pytest.mark.parametrize("defn, point", EMPTY, ids=["reductions over an empty axis", "an empty input"])
def test_empty_arrays_and_zero_row_bases_on_the_python_tier(defn, point, tmp_path):
    """Value, gradient, Jacobian and Hessian of functions over empty arrays: the python tier (forced, as
    it is chosen for scalar-heavy plans) answers as the interpreter, or leaves the answer to it."""
    interp = Engine()
    tier = backend.Tiered(str(tmp_path), compile=False)
    tier.python.pays = lambda plan, B: True
    ours = Engine(tier)
    try:
        fi, fo = interp.compile_definition(defn), ours.compile_definition(defn)
        names = [d["name"] for d in defn["inputs"]]
        for compute, wrt in ((["value", "gradient"], None), (["value", "jacobian"], None),
                             (["jacobian"], (names[0],)), (["hessian"], (names[0],)), (["hessian"], None)):
            want = interp.evaluate(fi, point, compute, wrt=wrt)
            for _ in range(3):  # the python kernel is built after the plan's first run
                meta = {}
                got = ours.evaluate(fo, point, compute, wrt=wrt, meta=meta)
                tier.settle()
                _same_tree(got, want, f"{defn['expr']} {compute} wrt={wrt} on {meta.get('backend')}")
        assert tier.stats.python_kernels > 0
    finally:
        tier.shutdown()


def _same_tree(got, want, what):
    if isinstance(want, dict):
        assert set(got) == set(want), what
        for k in want:
            _same_tree(got[k], want[k], f"{what}: {k}")
        return
    same(got, want, True, what)


def test_a_zero_row_jacobian_basis_is_an_empty_answer():
    """A Jacobian of an empty output (reverse: zero VJP rows) or in an empty input (forward: zero JVP rows)
    is an empty array of the right shape, on a batch too, not an error."""
    eng = Engine()
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": "x[0:0] * 2"})
    r = eng.evaluate(fn, {"x": np.ones(3)}, ["value", "jacobian"])
    assert r["value"].shape == (0,) and r["jacobian"]["x"].shape == (0, 3)
    r = eng.evaluate(fn, {"x": np.ones((2, 3))}, ["jacobian"], batch=True)
    assert r["jacobian"]["x"].shape == (2, 0, 3)
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": [0]}, {"name": "y", "shape": [2]}],
                                 "expr": "y * 2 + sum(x)"})
    r = eng.evaluate(fn, {"x": np.zeros(0), "y": np.ones(2)}, ["jacobian"])
    assert r["jacobian"]["x"].shape == (2, 0) and np.array_equal(r["jacobian"]["y"], 2 * np.eye(2))
