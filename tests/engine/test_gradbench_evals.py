"""GradBench's evals (bench/gradbench/evals.py) at tiny sizes: every part's output from adserve (interpreter
tier) equals JAX's at 1e-10, and the memoised det is the determinant. Correctness only, never timing."""

import numpy as np
import pytest

pytest.importorskip("jax")

from adserve.engine import Engine
from bench import gradbench_nested
from bench.gradbench import evals as E
from bench.gradbench.runner import check

PARTS = [(ev, p) for ev in E.tiny() for p in ev.parts]


@pytest.mark.parametrize("ev,part", PARTS, ids=[f"{ev.name}-{p.function}" for ev, p in PARTS])
def test_ours_equals_jax(ev, part):
    engine = Engine()
    check(part, engine, engine.compile_definition(part.definition), rtol=1e-10)


def test_every_gradbench_eval_is_written():
    names = {ev.name for ev in E.tiny()} | {ev.name for ev in gradbench_nested.evals()}
    assert names == {"hello", "gmm", "ba", "ht", "lstm", "ode", "kmeans", "llsq", "lse", "det", "particle",
                     "saddle"}


@pytest.mark.parametrize("ell", [1, 2, 3, 5])
def test_det_by_minors_is_the_determinant(ell):
    ev = E.det(ell)
    primal, grad = ev.parts
    engine = Engine()
    fn = engine.compile_definition(primal.definition)
    A = primal.inputs["A"].reshape(ell, ell)
    r = engine.evaluate(fn, primal.inputs, ["value", "gradient"], wrt=("A",))
    assert np.isclose(r["value"], np.linalg.det(A), rtol=1e-12)
    # d det / dA = det(A) A^-T
    np.testing.assert_allclose(r["gradient"]["A"].reshape(ell, ell), np.linalg.det(A) * np.linalg.inv(A).T,
                               rtol=1e-9, atol=1e-12)


def test_ba_objective_matches_the_one_observation_function():
    ev = E.ba(3, 4, 10, seed=2)
    obj, jac = ev.parts
    assert (obj.function, jac.function) == ("objective", "jacobian (blocks)")
    engine = Engine()
    whole = engine.evaluate(engine.compile_definition(obj.definition), obj.inputs, ["value"])["value"]
    one = engine.evaluate(engine.compile_definition(jac.definition), jac.inputs, ["value"], batch=True)["value"]
    np.testing.assert_allclose(whole[:20].reshape(10, 2), one[:, :2], rtol=1e-14)
    np.testing.assert_allclose(whole[20:], one[:, 2], rtol=1e-14)


def test_ba_whole_jacobian_is_its_blocks_in_place():
    """The dense Jacobian of the one-definition objective (int64 camera and point indices) holds, at row
    block i, observation i's 3x15 block at its camera's, point's and weight's columns, zeros elsewhere."""
    n, m, p = 3, 4, 10
    ev = E.ba(n, m, p, whole_jacobian=True, seed=3)
    obj, whole, blocks = ev.parts
    assert whole.function == "jacobian" and whole.definition is obj.definition
    assert {s["name"]: s.get("dtype") for s in obj.definition["inputs"]}["cam_idx"] == "int64"
    engine = Engine()
    Jc, JX, Jw = whole.out(engine.evaluate(engine.compile_definition(whole.definition), whole.inputs,
                                           ["jacobian"], wrt=whole.wrt))
    bc, bX, bw = blocks.out(engine.evaluate(engine.compile_definition(blocks.definition), blocks.inputs,
                                            ["jacobian"], wrt=blocks.wrt, batch=True))
    assert Jc.shape == (3 * p, n, 11) and JX.shape == (3 * p, m, 3) and Jw.shape == (3 * p, p)
    rows = lambda i: [2 * i, 2 * i + 1, 2 * p + i]  # noqa: E731
    for i in range(p):
        np.testing.assert_allclose(Jc[rows(i), i % n], bc[i], rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(JX[rows(i), i % m], bX[i], rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(Jw[rows(i), i], bw[i], rtol=1e-13, atol=1e-300)
        Jc[rows(i), i % n] = 0
        JX[rows(i), i % m] = 0
        Jw[rows(i), i] = 0
    assert not Jc.any() and not JX.any() and not Jw.any()


def test_ht_identity_global_rotation_and_int_inputs():
    """ht with a zero global rotation (the reference's identity branch) still equals JAX, in both variants;
    the bone hierarchy, correspondences and triangles are int64 inputs."""
    from bench.gradbench import ht as H
    m = H.model(25, 30, seed=5)
    for complicated in (False, True):
        inst = H.instance(m, 4, complicated, seed=6)
        inst["theta"][:3] = 0.0
        ev = H.ht(m, inst, complicated=complicated)
        dtypes = {s["name"]: s.get("dtype") for s in ev.parts[0].definition["inputs"]}
        assert dtypes["parents"] == dtypes["correspondences"] == "int64"
        assert dtypes.get("triangles") == ("int64" if complicated else None)
        for part in ev.parts:
            engine = Engine()
            check(part, engine, engine.compile_definition(part.definition), rtol=1e-10)


def test_make_bench_keeps_the_gradbench_section(tmp_path):
    from bench.gradbench import BEGIN, END, kept_section
    doc = tmp_path / "benchmarks.md"
    assert kept_section(doc) == ""
    block = f"{BEGIN}\n## GradBench\n\n| a |\n{END}\n"
    doc.write_text("# Benchmarks\n\nold tables\n\n" + block)
    assert kept_section(doc) == block
