"""The compiled tiers run checkpointed reverse mode through `while` loops as the interpreter does: the plans
(value, gradient, HVP) of test_while_checkpoint's fixed programs and of programs its hypothesis strategy wrote,
on the python tier and the compiled tier (the direct-LLVM back end for these plans: test_llvm_control checks its
bits against numba's), checked against the interpreter (which test_while_checkpoint checks against JAX).
So do they forward mode (the value-and-JVP plan). Those are the plans every compute kind runs: a Jacobian is the
VJP plan (or the JVP plan) over a basis, a Hessian the HVP plan over a basis (plans.jacobian, plans.hessian).
A file of its own: its compiles were a minute and a half of CPU on numba (15 s on LLVM), which a test process
runs beside the rest of the suite."""

from __future__ import annotations

import numpy as np
import pytest
from test_while_checkpoint import CONFUSION, GRAD_GRAD, NESTED, _fixed_random_programs, _random_case, engine, stride

from adserve.engine import main_plan
from adserve.engine.codegen import llvm_ir


def _plan_and_args(case, point, k, points=3, kinds=("value", "gradient", "hvp")):
    """The plan of `kinds` (its inputs: the points, then a tangent per input) and `points` points near `point`."""
    with stride(k):
        fn = engine.compile_definition(case.definition())
        graph, _ = main_plan(fn, frozenset(kinds))
    rng = np.random.default_rng(3)
    args = [np.stack([np.asarray(point[n]) + 0.05 * rng.standard_normal(fn.input_shapes[n]) for _ in range(points)])
            for n in fn.input_names]
    args += [rng.standard_normal((points, *fn.input_shapes[n])) for n in fn.input_names]
    return graph, args


def assert_numba_agrees(graph, args, title):
    """The compiled tier's answers (numba's, or the LLVM back end's, which are numba's bits) are the interpreter's
    to 1e-12 (measured: bit for bit), so they agree with JAX to the 1e-10 that test_while_checkpoint checks the
    interpreter's at: test_codegen's `assert_same` allows 1e-9."""
    from engine_helpers import run
    from test_codegen import compile_kernel, run_kernel

    want = run(graph, args)
    got = run_kernel(compile_kernel(graph, title.splitlines()[0]), graph, args)
    for j, (w, g) in enumerate(zip(want, got)):
        np.testing.assert_allclose(g, np.broadcast_to(w, g.shape), rtol=1e-12, atol=0, equal_nan=True,
                                   err_msg=f"{title}: output {j}")


@pytest.mark.compiled
@pytest.mark.timeout(900)
def test_compiled_tiers_run_the_checkpointed_schedule_as_the_interpreter():
    """The compiled tier and the python tier run the checkpointed plans (value, gradient, HVP) of the fixed programs
    and of random while programs as the interpreter does (whose answers test_while_checkpoint checks against JAX):
    both tiers all of them (the compiled tier could not the two large random ones on numba)."""
    from test_python_tier import python_or_declined

    cases = [(NESTED, {"x": np.array([0.3, 0.9, -0.2]), "w": np.array(0.8)}, 3),
             (GRAD_GRAD, {"x": np.array(0.7)}, 2), (CONFUSION, {"x": np.array(1.3)}, 2)]
    programs = _fixed_random_programs(12)
    # the 10th: nested while, break, continue, grad inside; the 12th: grad(grad). Too large for numba: their
    # plans are 5,800 and 11,700 lines of kernel, which took over 15 minutes to compile on a busy 2-core machine;
    # the LLVM back end compiles them in 3 and 7 s of CPU
    large = [(9, 11), (11, 12)]
    # numba's, of 380-1,400 lines (4-33 s of CPU to compile): the 8th, break and continue; the 4th, a while
    # nested in a while of a three-part condition; the 9th, grad of the loop inside f, so the HVP is third order
    small = [(7, 11), (3, 11), (8, 11)]
    for case, point, k in cases + [(*_random_case(programs[i], s), 2) for i, s in large]:
        graph, args = _plan_and_args(case, point, k)
        assert python_or_declined(graph, args, f"checkpointed {case.name}")
        assert not llvm_ir.declined(graph)  # on numba, the large ones would take many minutes
        assert_numba_agrees(graph, args, f"checkpointed {case.name}")
    for i, s in small:
        graph, args = _plan_and_args(*_random_case(programs[i], s), 2)
        assert python_or_declined(graph, args, f"checkpointed random while program {i}")
        assert_numba_agrees(graph, args, f"checkpointed random while program {i}:\n{programs[i]}")
        graph, args = _plan_and_args(*_random_case(programs[i], s), 2, kinds=("value", "jvp"))
        assert python_or_declined(graph, args, f"forward mode, random while program {i}")
        assert_numba_agrees(graph, args, f"forward mode, random while program {i}:\n{programs[i]}")
