"""A sweep's plan split where its rows stop sharing work (engine/split.py): the part computed from a point's
inputs alone runs once per point, the rest on every row, and Jacobians and Hessians are what the whole plan on
every row gives, bit for bit: fixed functions (forward and reverse Jacobians, Hessians, batches, `wrt`, loops,
whiles, branches, integer data) and random graphs with loops and branches."""

import numpy as np
import pytest
from hypothesis import given, settings
from test_property_graphs import engine_graph, programs

from adserve.engine import Engine, backend, plans
from adserve.engine.definition import Function
from adserve.engine.ir import Var
from adserve.engine.split import split

engine = Engine()
SPLITS = []  # per evaluation of `_answers`: whether a sweep of it ran split

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
CASES = {
    "survey": (SURVEY, {"x1": 2.0, "x2": 5.0}),
    # 3 outputs of 4 inputs: a reverse Jacobian (a VJP per output), its tape shared
    "reverse": ({"inputs": [{"name": "x", "shape": [4]}],
                 "expr": "stack([sum(exp(x) * x), prod(sin(x)), x[0] * tanh(x[3])])"},
                {"x": [0.3, -0.7, 1.1, 0.2]}),
    # 6 outputs of 2 inputs: forward (a JVP per input)
    "forward": ({"inputs": [{"name": "x", "shape": [2]}, {"name": "A", "shape": [6, 2]}],
                 "expr": "tanh(A @ x) * exp(x[0])"},
                {"x": [0.4, -0.3], "A": np.arange(12.0).reshape(6, 2) / 7}),
    "loop": ({"inputs": [{"name": "x", "shape": [3]}], "program": (
        "def f(x):\n    y = x\n    for i in range(4):\n        y = sin(y) * x + 0.1 * y\n    return sum(y * y)\n")},
        {"x": [0.5, -0.2, 0.9]}),
    "while and branch": ({"inputs": [{"name": "x", "shape": [2]}], "program": (
        "def f(x):\n    y = x\n    k = 0\n    while k < 5 and y[0] < 3.0:\n        y = y * 1.3 + cos(y)\n"
        "        k += 1\n    if y[1] > 0:\n        return sum(exp(y))\n    return sum(y * y)\n")},
        {"x": [0.1, 0.4]}),
    "int data": ({"inputs": [{"name": "x", "shape": [4]}, {"name": "i", "shape": [3], "dtype": "int64"}],
                  "expr": "sum(exp(take(x, i)) * x[0:3])"},
                 {"x": [0.1, 0.2, -0.3, 0.5], "i": np.array([3, 0, 3])}),
}


def _identical(got, want, what):
    if isinstance(want, dict):
        assert got.keys() == want.keys(), what
        for k in want:
            _identical(got[k], want[k], f"{what}.{k}")
        return
    assert np.array_equal(np.asarray(got), np.asarray(want), equal_nan=True), what


def _answers(defn, inputs, monkeypatch=None, engine=engine, **kw):
    """jacobian (and hessian, of a scalar) of `defn` on a fresh function; with `monkeypatch`, from the plans as
    they were before the split (the whole plan on every row)."""
    fn = Engine(limits=engine.limits).compile_definition(defn)  # fresh: plans (and splits) are kept per function
    kinds = ["jacobian", "hessian"] if fn.output_shape == () else ["jacobian"]
    with pytest.MonkeyPatch.context() as m:
        if monkeypatch is not None:
            m.setattr(plans, "split", lambda *a: None)
        else:  # these functions are small: split them whatever the rows would save
            m.setattr(plans, "SPLIT_MIN_WORK", 0)
        out = engine.evaluate(fn, inputs, kinds, **kw)
    splits = [v for k, v in fn._plans.items() if k[0] == "split"]
    SPLITS.append(any(v is not None for v in splits))
    return out


@pytest.mark.parametrize("name", CASES)
def test_sweeps_are_the_whole_plan_s_answers_bit_for_bit(name, monkeypatch):
    defn, inputs = CASES[name]
    wrt = [i["name"] for i in defn["inputs"] if i.get("dtype") != "int64"]
    SPLITS.clear()
    _identical(_answers(defn, inputs, wrt=wrt), _answers(defn, inputs, monkeypatch, wrt=wrt), name)
    # a loop's derivative carries its primal and tangent in one loop equation, which reads the row's tangent:
    # such a plan has nothing to share (and runs whole)
    splits = name not in ("loop", "while and branch")
    assert SPLITS == [splits, False], "the sweep did not run as expected: split, or whole"
    # a batch of 3 points: the shared values are each point's, repeated over its rows
    rng = np.random.default_rng(7)
    batch = {k: np.stack([np.asarray(v) if np.asarray(v).dtype.kind == "i" else
                          np.asarray(v) * rng.uniform(0.9, 1.1) for _ in range(3)]) for k, v in inputs.items()}
    _identical(_answers(defn, batch, batch=True, wrt=wrt), _answers(defn, batch, monkeypatch, batch=True, wrt=wrt),
               f"{name}, batch")
    _identical(_answers(defn, inputs, wrt=wrt[:1]), _answers(defn, inputs, monkeypatch, wrt=wrt[:1]),
               f"{name}, wrt {wrt[:1]}")


def test_the_rows_of_a_hessian_do_no_work_of_the_point_alone():
    """The survey function's HVP plan: the second derivatives' coefficients (-sin(x2), -1/x1^2) are shared, the
    rows only multiply and add their tangents through, and the primal's log, which no row reads, is in neither."""
    fn = Engine().compile_definition(SURVEY)
    graph, _ = plans.main_plan(fn, frozenset({"hvp"}), ("x1", "x2"))
    parts = split(graph, [False, False, True, True], range(1, len(graph.outputs)))
    row_prims = {e.prim for e in parts.per_row.eqns}
    assert row_prims and not row_prims & {"log", "sin", "cos", "exp", "div", "recip"}, row_prims
    varying = set(parts.per_row.inputs[-2:])
    for e in parts.per_row.eqns:  # every equation of a row reads the row's tangent, through another or directly
        assert any(a in varying for a in e.inputs if type(a) is Var), e
        varying.update(e.outputs)
    shared_inputs = set(parts.shared.inputs)
    assert parts.reads == () or set(parts.reads) <= {0, 1}
    assert all(type(a) is not Var or a in shared_inputs or any(a in e.outputs for e in parts.shared.eqns)
               for e in parts.shared.eqns for a in e.inputs)
    shared_prims = {e.prim for e in parts.shared.eqns}
    assert shared_prims >= {"sin", "div"} and "log" not in shared_prims


def test_a_small_saving_runs_the_plan_whole():
    """Below SPLIT_MIN_WORK element operations saved, one kernel call of the whole plan costs less than two."""
    fn = Engine().compile_definition(SURVEY)
    engine.evaluate(fn, {"x1": 2.0, "x2": 5.0}, ["hessian"])
    assert [v for k, v in fn._plans.items() if k[0] == "split"] == [None]
    big = Engine().compile_definition({"inputs": [{"name": "x", "shape": [200]}, {"name": "A", "shape": [200, 200]}],
                                       "expr": "sum(tanh(A @ x) * x)"})
    engine.evaluate(big, {"x": np.full(200, 0.01), "A": np.eye(200)}, ["hessian"], wrt=["x"])
    [parts] = [v for k, v in big._plans.items() if k[0] == "split"]
    assert parts is not None and {"einsum", "dot"} & {e.prim for e in parts.shared.eqns}  # A @ x, once


def test_a_batch_whose_shared_values_would_be_large_copies_runs_whole(monkeypatch):
    """A batch's shared values are copied to every row of their point; past SPLIT_MAX_COPY bytes the plan runs
    whole (one run, not two) and answers the same."""
    defn, inputs = CASES["reverse"]
    batch = {"x": np.stack([np.asarray(inputs["x"])] * 4)}
    monkeypatch.setattr(plans, "SPLIT_MIN_WORK", 0)
    runs = []
    for limit in (1 << 30, 8):
        monkeypatch.setattr(plans, "SPLIT_MAX_COPY", limit)
        local = Engine()
        answers = local.evaluate(local.compile_definition(defn), batch, ["jacobian"], batch=True)
        runs.append((local.stats()["runs"]["interpreter"], answers))
    assert [r for r, _ in runs] == [2, 1]
    _identical(runs[0][1], runs[1][1], "reverse, batch")


def test_a_jacobian_in_inputs_the_output_does_not_read_is_zeros():
    """The forward sweep of an output whose tangent is structurally zero (found by test_fuzz): no rows to split."""
    fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": [2]}, {"name": "y", "shape": [3]}],
                                      "expr": "sin(y) * 2.0"})
    r = engine.evaluate(fn, {"x": [[0.5, 0.5]] * 2, "y": [[1.0, -2.0, 3.0]] * 2}, ["value", "jacobian"],
                        batch=True, wrt=["x"])
    assert np.array_equal(r["jacobian"]["x"], np.zeros((2, 3, 2))) and r["value"].shape == (2, 3)


def test_nothing_shared_means_no_split():
    """A linear function's JVP rows need nothing of the point (2 * t): the plan runs whole."""
    fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": "2.0 * x"})
    [(graph, _, _)] = plans.jacobian_plans(fn, ("x",))
    assert split(graph, [False, True], [1]) is None
    r = engine.evaluate(fn, {"x": [1.0, 2.0, 3.0]}, ["jacobian"])
    assert np.array_equal(r["jacobian"]["x"], 2.0 * np.eye(3))


def _fixed_random_graphs(n):
    """`n` random programs of test_property_graphs (element-wise ops, reductions, where, scans, conds over
    x:[3], y:[3], s:[]), the same on every run."""
    found = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None)
    @given(programs(control_flow=True, max_len=7))
    def collect(case):
        found.append(case[0])  # (program, seed)

    collect()
    return found[:n]


def test_random_graphs_sweep_as_the_whole_plan():
    """The Hessian (an HVP per input component: 7 rows) of random graphs, split and whole, bit for bit; most of
    them have a part to share."""
    rng = np.random.default_rng(3)
    split_runs = 0
    for prog in _fixed_random_graphs(40):
        inputs = {"x": rng.uniform(-1, 1, 3), "y": rng.uniform(-1, 1, 3), "s": float(rng.uniform(-1, 1))}
        answers = []
        for whole in (False, True):
            fn = Function(engine_graph(prog), [("x", (3,)), ("y", (3,)), ("s", ())])
            with pytest.MonkeyPatch.context() as m:
                m.setattr(plans, "SPLIT_MIN_WORK", 0)
                if whole:
                    m.setattr(plans, "split", lambda *a: None)
                answers.append(engine.evaluate(fn, inputs, ["hessian", "jacobian"]))
            split_runs += not whole and any(v is not None for k, v in fn._plans.items() if k[0] == "split")
        _identical(answers[0], answers[1], str(prog))
    assert split_runs >= 20, split_runs


@pytest.mark.compiled
@pytest.mark.timeout(900)
def test_compiled_sweeps_split_answer_as_compiled_whole_plans(tmp_path, monkeypatch):
    """On the compiled tier, split sweeps (a kernel for the shared part, one for the rows) give the whole plan's
    kernel's answers bit for bit, in arrays no input shares, for single points and batches."""
    monkeypatch.setattr(plans, "SPLIT_MIN_WORK", 0)
    tier = backend.Tiered(str(tmp_path), workers=2)
    try:
        compiled = Engine(tier)
        for name in ("survey", "reverse", "forward", "int data"):
            defn, inputs = CASES[name]
            wrt = [i["name"] for i in defn["inputs"] if i.get("dtype") != "int64"]
            for batch in (False, True):
                xs = {k: np.stack([np.asarray(v)] * 2) if batch else v for k, v in inputs.items()}
                answers = []
                for whole in (False, True):
                    fn = compiled.compile_definition(defn)  # a Function of its own: its own plans
                    kinds = ["jacobian", "hessian"] if fn.output_shape == () else ["jacobian"]
                    with pytest.MonkeyPatch.context() as m:
                        if whole:
                            m.setattr(plans, "split", lambda *a: None)
                        compiled.evaluate(fn, xs, kinds, batch=batch, wrt=wrt)  # the kernels start compiling
                        assert compiled.settle(600) and not tier.store.failed
                        for _ in range(20):  # the timing policy may try the interpreter now and then
                            meta = {}
                            got = compiled.evaluate(fn, xs, kinds, batch=batch, wrt=wrt, meta=meta)
                            if meta["backend"] == "numba":
                                break
                        assert meta["backend"] == "numba", name
                    answers.append(got)
                _identical(answers[0], answers[1], f"{name}, batch {batch}")
                want = engine.evaluate(compiled.compile_definition(defn), xs, kinds, batch=batch, wrt=wrt)
                for got_leaf, want_leaf in zip(_leaves(answers[0]), _leaves(want)):
                    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-12, atol=1e-14, err_msg=name)
                    assert not any(np.shares_memory(got_leaf, np.asarray(v)) for v in xs.values())
    finally:
        tier.shutdown()


def _leaves(tree):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k])
    else:
        yield tree


def test_a_forward_jacobian_pushes_each_input_s_tangents_alone():
    """A forward Jacobian in two inputs sweeps each with a JVP plan of its own (jacobian_plans): the rows of `u`,
    whose tangents reach only the last product, do not carry the zero tangents of `theta` through the rest. The
    answer is JAX's `jacfwd`."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    defn = {"inputs": [{"name": "theta", "shape": [3]}, {"name": "u", "shape": [4]}],
            "expr": "concatenate([tanh(sin(theta) * exp(theta)) * u[0], tanh(theta) * u[1], cos(theta) * u[2], "
                    "theta * u[3]])"}
    fn = Engine().compile_definition(defn)
    point = {"theta": np.array([0.3, -0.2, 0.9]), "u": np.array([1.5, -0.5, 2.0, 0.25])}
    got = engine.evaluate(fn, point, ["jacobian"])["jacobian"]

    def f(theta, u):
        return jnp.concatenate([jnp.tanh(jnp.sin(theta) * jnp.exp(theta)) * u[0], jnp.tanh(theta) * u[1],
                                jnp.cos(theta) * u[2], theta * u[3]])
    want = jax.jacfwd(f, argnums=(0, 1))(point["theta"], point["u"])
    for name, w in zip(("theta", "u"), want):
        np.testing.assert_allclose(got[name], np.asarray(w), rtol=1e-13, atol=1e-15)
    plans_made = {k[1]: v for k, v in fn._plans.items() if k[0] == "jvp"}
    assert set(plans_made) == {("theta",), ("u",)}  # no plan of both
    # the rows of u multiply their tangents by the primal's coefficients; theta's differentiate tanh, sin, exp
    assert len(plans_made[("u",)][0].eqns) < len(plans_made[("theta",)][0].eqns)
