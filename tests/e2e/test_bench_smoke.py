"""The benchmark harness on tiny sizes, interpreter only: it runs, ours agrees with JAX, the report renders.

No timing is asserted: wall-clock numbers belong in docs/benchmarks.md (`make bench`), not in tests.
"""

import math

import pytest

from bench import harness, problems, report, service


@pytest.fixture(scope="module")
def results():
    # the harness checks ours against JAX (relative 1e-7) before timing each case
    return harness.run_all(problems.cases(quick=True), cache_dir=None, rivals=("jax", "autograd"),
                           budget_s=0.05, rounds=5, log=lambda m: None)


def test_every_case_runs_and_forms_its_target_ratios(results):
    assert [c["bench"] for c in results["cases"]] == [c.bench for c in problems.cases(quick=True)]
    for c in results["cases"]:
        assert set(c["targets"]) <= set(c["ratios"]), c["bench"]
        assert all(math.isfinite(s.median) and s.median > 0 for s in c["ratios"].values())


def test_the_report_renders(results, tmp_path):
    sv = service.probe(sizes=((5, "5 terms"),), fresh=1, compile_kernels=False, restart=False, log=lambda m: None)
    assert sv["first_answer"][0]["tiers"] == ["interpreter"]
    text = report.tables(results, sv)
    assert "## Targets" in text and "REST first answer" in text
    assert "| helmholtz | n=10 | gradient/primal |" in text


def test_every_contender_differentiates_the_same_inputs():
    case = problems.gmm(4, 2, 2, __import__("numpy").random.default_rng(0))
    got = harness.Ours(case, None, None).request("deriv")
    assert set(got()["gradient"]) == {"alpha", "mu", "q"}  # not the sample points X
