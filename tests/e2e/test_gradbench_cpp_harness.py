"""bench.gradbench.cpp's harness (GradBench's C++ reference beside ours), against stand-ins for the reference
programs: scripts with the same command line and output as GradBench's C++ harness (cpp/gradbench/main.hpp:
`PROGRAM INPUT.json FUNCTION`; the output's JSON on the first line, then one line per run). The real programs
are built from a GradBench checkout by the bench itself; CI has none. No timing is asserted."""

import json
import sys

import numpy as np
import pytest

from bench.gradbench import cpp
from bench.gradbench import evals as E

STAND_IN = """#!{python}
import json, sys, time
import numpy as np
data = json.load(open(sys.argv[1]))
x = np.array(data["x"])
if sys.argv[2] == "primal":
    out = float(np.log(np.sum(np.exp(x))))
else:
    out = (np.exp(x) / np.sum(np.exp(x)) * {scale}).tolist()
print(json.dumps(out))
t_end, runs = time.perf_counter() + data["min_seconds"], 0
while runs < data["min_runs"] or time.perf_counter() < t_end:
    runs += 1
    print(json.dumps({{"name": "evaluate", "nanoseconds": 1000}}))
"""


def stand_in(tmp_path, scale):
    path = tmp_path / f"lse-{scale}"
    path.write_text(STAND_IN.format(python=sys.executable, scale=scale))
    path.chmod(0o755)
    return path


@pytest.mark.compiled
def test_ours_is_checked_against_the_reference_and_both_are_timed(tmp_path):
    ev = E.lse(7)
    data = cpp.INPUTS["lse"](ev.parts[0].inputs, ev.params)
    assert data == {"x": ev.parts[0].inputs["x"].tolist()}  # GradBench's lse input: {"x": [...]}
    rows = cpp.compare([ev, E.ba(3, 4, 10, seed=1)], lambda name: stand_in(tmp_path, 1.0), str(tmp_path / "cache"),
                       seconds=0.06, settle_s=0.05, log=lambda m: None)
    # a seeded ba is skipped: GradBench's repeated form cannot hold it
    assert [(r["eval"], r["function"]) for r in rows] == [("lse", "primal"), ("lse", "gradient")]
    for r in rows:
        assert "error" not in r, r
        assert r["cpp_s"] == pytest.approx(1e-6) and r["cpp_runs"] >= cpp.ROUNDS and r["ours_s"] > 0
    assert "| lse | n=7 | gradient |" in cpp.table(rows)


@pytest.mark.compiled
def test_an_output_that_differs_from_the_reference_is_a_failed_row(tmp_path):
    rows = cpp.compare([E.lse(7)], lambda name: stand_in(tmp_path, 1.001), str(tmp_path / "cache"), seconds=0.03,
                       settle_s=0.05, log=lambda m: None)
    primal, gradient = rows
    assert "error" not in primal
    assert gradient["error"].startswith("AssertionError") and "ours_s" not in gradient
    assert "failed: AssertionError" in cpp.table(rows)


def test_gmm_input_and_jacobian_output_are_gradbench_s_shapes():
    ev = E.gmm(3, 2, 8)
    data = cpp.INPUTS["gmm"](ev.parts[0].inputs, ev.params)
    assert (data["d"], data["k"], data["n"], data["gamma"], data["m"]) == (3, 2, 8, 1.0, 0)
    assert np.shape(data["mu"]) == (2, 3) and np.shape(data["l"]) == (2, 3) and np.shape(data["x"]) == (8, 3)
    json.dumps(data)  # plain JSON
    out = {"alpha": [1, 2], "mu": [[1, 2, 3], [4, 5, 6]], "q": [[0] * 3] * 2, "l": [[7, 8, 9]] * 2}
    alpha, mu, q, l = cpp._output("gmm", "jacobian", out)
    assert alpha.shape == (2,) and mu.shape == (2, 3) and l.shape == (2, 3)


def test_ba_in_gradbench_s_repeated_forms():
    ev = E.ba(3, 4, 10)
    data = cpp.INPUTS["ba"](ev.parts[0].inputs, ev.params)
    assert (data["n"], data["m"], data["p"]) == (3, 4, 10) and len(data["cam"]) == 11 and len(data["x"]) == 3
    ours = np.concatenate([np.tile([1.5, -2.0], 10), np.full(10, 0.25)])
    theirs = {"reproj_error": {"elements": [1.5, -2.0], "repeated": 10}, "w_err": {"element": 0.25, "repeated": 10}}
    got, want = cpp._ours("ba", "objective", ours), cpp._output("ba", "objective", theirs)
    assert [np.asarray(a).tolist() for a in got] == [np.asarray(a).tolist() for a in want]
    ours[3] = 7.0  # not repeated: GradBench's form cannot hold it
    with pytest.raises(AssertionError):
        cpp._ours("ba", "objective", ours)
    cam, X, w = np.arange(10 * 33.0).reshape(10, 3, 11), np.zeros((10, 3, 3)), np.ones((10, 3))
    vals = cpp._ours("ba", "jacobian (blocks)", (cam, X, w))
    assert vals.shape == (31,) and vals[:11].tolist() == cam[0, 0].tolist()
    assert vals[15:26].tolist() == cam[0, 1].tolist() and vals[-1] == w[-1, 2]
    assert cpp.FUNCTIONS[("ba", "jacobian (blocks)")] == "jacobian" and cpp.FUNCTIONS[("ba", "jacobian")] is None
    assert cpp.compare([E.ba(3, 4, 10, seed=1)], None, "unused", 0.01) == []  # a seeded ba has no repeated form


def test_ht_input_is_gradbench_s_hand_input():
    """ht's input as GradBench's io.py writes it and cpp/gradbench/evals/ht.hpp reads it: `us` empty for
    simple; the model's matrices row-major per bone, positions homogeneous, a row of weights per vertex."""
    from bench.gradbench import ht as H
    m = H.model(n_verts=20, n_tris=7)
    for complicated in (False, True):
        ev = H.ht(m, c=5, complicated=complicated)
        assert ev.params == {"complicated": complicated}
        data = cpp.INPUTS["ht"](ev.parts[0].inputs, ev.params)
        json.dumps(data)  # plain JSON
        model = data["data"]["model"]
        assert len(data["theta"]) == 26 and np.shape(data["us"]) == ((5, 2) if complicated else (0,))
        assert len(model["bone_names"]) == len(model["parents"]) == 22 and model["is_mirrored"] is False
        assert np.shape(model["base_relatives"]) == (22, 4, 4) and np.shape(model["base_positions"]) == (20, 4)
        assert np.shape(model["weights"]) == (20, 22) and np.shape(data["data"]["points"]) == (5, 3)
        assert np.shape(model["triangles"]) == ((7, 3) if complicated else (0,))
        assert model["base_relatives"][3] == m["base_relatives"][3].tolist()  # row-major, as the bones file
