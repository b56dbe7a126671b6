"""GradBench's evals (bench/gradbench/evals.py) at tiny sizes: every part's output from adserve (interpreter
tier) equals JAX's at 1e-10, and the memoised det is the determinant. Correctness only, never timing."""

import numpy as np
import pytest

pytest.importorskip("jax")

from adserve.engine import Engine
from bench.gradbench import evals as E
from bench.gradbench.runner import check

PARTS = [(ev, p) for ev in E.tiny() for p in ev.parts]


@pytest.mark.parametrize("ev,part", PARTS, ids=[f"{ev.name}-{p.function}" for ev, p in PARTS])
def test_ours_equals_jax(ev, part):
    engine = Engine()
    check(part, engine, engine.compile_definition(part.definition), rtol=1e-10)


def test_every_gradbench_eval_is_written_or_said_why_not():
    names = {ev.name for ev in E.tiny()} | set(E.NOT_WRITTEN)
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
    ev = E.ba(3, 4, 10)
    obj, jac = ev.parts
    engine = Engine()
    whole = engine.evaluate(engine.compile_definition(obj.definition), obj.inputs, ["value"])["value"]
    one = engine.evaluate(engine.compile_definition(jac.definition), jac.inputs, ["value"], batch=True)["value"]
    np.testing.assert_allclose(whole[:20].reshape(10, 2), one[:, :2], rtol=1e-14)
    np.testing.assert_allclose(whole[20:], one[:, 2], rtol=1e-14)


def test_make_bench_keeps_the_gradbench_section(tmp_path):
    from bench.gradbench import BEGIN, END, kept_section
    doc = tmp_path / "benchmarks.md"
    assert kept_section(doc) == ""
    block = f"{BEGIN}\n## GradBench\n\n| a |\n{END}\n"
    doc.write_text("# Benchmarks\n\nold tables\n\n" + block)
    assert kept_section(doc) == block
