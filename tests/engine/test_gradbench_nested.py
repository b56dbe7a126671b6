"""GradBench's nested-AD evals `particle` and `saddle`, as adserve programs (bench/gradbench_nested.py),
against GradBench's expected outputs and the JAX versions beside them there (`lax.while_loop`).

Their `while` loops run derivatives of `while` loops, so the cost estimate, which counts each loop at its
bound, is over the default limits: they run on an engine with the limits the bench gives them
(`gradbench_nested.LIMITS`), as a server whose users run such solvers would be configured.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import jax, jnp

from adserve.engine import Engine
from adserve.engine.errors import LimitError
from adserve.engine.limits import Limits
from bench import gradbench_nested as gb

engine = Engine(limits=Limits().updated(**gb.LIMITS))


def test_particle_gives_gradbenchs_answer():
    fn = engine.compile_definition(gb.particle())
    got = engine.evaluate(fn, {"w": [0.0]})["value"]
    np.testing.assert_allclose(got, [gb.EXPECTED["particle"]], rtol=1e-10)
    np.testing.assert_allclose(got, np.asarray(jax.jit(gb.jax_particle)(jnp.array([0.0]))), rtol=1e-10)


@pytest.mark.parametrize("start", [[1.0, 1.0], [0.5, -1.5]])
def test_saddle_agrees_with_jax(start):
    fn = engine.compile_definition(gb.saddle())
    got = engine.evaluate(fn, {"start": start})["value"]
    np.testing.assert_allclose(got, np.asarray(jax.jit(gb.jax_saddle)(jnp.array(start))), rtol=1e-10, atol=1e-15)
    if start == [1.0, 1.0]:
        np.testing.assert_allclose(got, np.full((2, 2), gb.EXPECTED["saddle"]), rtol=1e-10)


def test_the_default_limits_refuse_the_nested_loops_and_say_why():
    with pytest.raises(LimitError) as e:
        Engine().compile_definition(gb.particle())
    assert "operation executions" in e.value.message
