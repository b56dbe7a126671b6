"""GradBench's nested-AD evals `particle` and `saddle`, as adserve programs (bench/gradbench_nested.py),
against GradBench's expected outputs and a JAX version written with `lax.while_loop` (the evals' loops
stop on data; the programs bound them by `for` loops with a `go` flag until programs have `while`).

Their loops run hundreds of iterations of derivatives of loops, so the static cost estimate (which
counts every iteration of the bounds) is over the default limits: these run on an engine with a larger
`max_steps`, as a server whose users run such solvers would be configured.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import jax, jnp

from adserve.engine import Engine
from adserve.engine.errors import LimitError
from adserve.engine.limits import Limits
from bench import gradbench_nested as gb

lax = jax.lax
engine = Engine(limits=Limits().updated(max_steps=100_000_000))


# -- the JAX reference: solver.fut's argmin and the evals, with while loops ----------------------------------------
def argmin(f, x):
    g = jax.jacfwd(f)  # forward mode: JAX differentiates while loops only that way

    def step(s):
        x, fx, gx, eta, i, _ = s

        def descend(_):
            xp = x - eta * gx

            def try_step(_):
                fxp = f(xp)
                return lax.cond(fxp < fx, lambda _: (xp, fxp, g(xp), eta, i + 1, True),
                                lambda _: (x, fx, gx, eta / 2, 0, True), None)
            return lax.cond(jnp.sqrt(jnp.sum((x - xp) ** 2)) <= 1e-5, lambda _: (x, fx, gx, eta, i, False),
                            try_step, None)

        def grow(_):
            return lax.cond(i == 10, lambda _: (x, fx, gx, 2 * eta, 0, True), descend, None)
        return lax.cond(jnp.sqrt(jnp.sum(gx * gx)) <= 1e-5, lambda _: (x, fx, gx, eta, i, False), grow, None)
    return lax.while_loop(lambda s: s[5], step, (x, f(x), g(x), 1e-5, 0, True))[0]


def naive_euler(w):
    charges = [jnp.stack([10.0, 10.0 - w]), jnp.array([10.0, 0.0])]

    def p(x):
        return sum(1.0 / jnp.sqrt(jnp.sum((x - c) ** 2)) for c in charges)

    def body(s):
        x, xdot, _ = s
        x_new = x + 0.1 * xdot
        return lax.cond(x_new[1] > 0, lambda _: (x_new, xdot - 0.1 * jax.grad(p)(x), True),
                        lambda _: (x, xdot, False), None)
    x, xdot, _ = lax.while_loop(lambda s: s[2], body, (jnp.array([0.0, 8.0]), jnp.array([0.75, 0.0]), True))
    x_t_f = x + (-x[1] / xdot[1]) * xdot
    return x_t_f[0] ** 2


@jax.jit
def jax_particle(w):
    return argmin(lambda v: naive_euler(v[0]), w)


@jax.jit
def jax_saddle(start):
    def cost(p1, p2):
        return (p1[0] ** 2 + p1[1] ** 2) - (p2[0] ** 2 + p2[1] ** 2)

    def argmax(f, x):
        return argmin(lambda z: -f(z), x)

    r1 = argmin(lambda p1: cost(p1, argmax(lambda p2: cost(p1, p2), start)), start)
    return jnp.stack([r1, argmax(lambda p2: cost(r1, p2), start)])


# -- the evals ----------------------------------------------------------------------------------------------------
def test_particle_gives_gradbenchs_answer():
    fn = engine.compile_definition(gb.particle())
    got = engine.evaluate(fn, {"w": [0.0]})["value"]
    np.testing.assert_allclose(got, [gb.EXPECTED["particle"]], rtol=1e-10)
    np.testing.assert_allclose(got, np.asarray(jax_particle(jnp.array([0.0]))), rtol=1e-10)


@pytest.mark.parametrize("start", [[1.0, 1.0], [0.5, -1.5]])
def test_saddle_agrees_with_jax(start):
    fn = engine.compile_definition(gb.saddle())
    got = engine.evaluate(fn, {"start": start})["value"]
    np.testing.assert_allclose(got, np.asarray(jax_saddle(jnp.array(start))), rtol=1e-10, atol=1e-15)
    if start == [1.0, 1.0]:
        np.testing.assert_allclose(got, np.full((2, 2), gb.EXPECTED["saddle"]), rtol=1e-10)


def test_the_default_limits_refuse_the_bounded_loops_and_say_why():
    with pytest.raises(LimitError) as e:
        Engine().compile_definition(gb.particle())
    assert "operation executions" in e.value.message
