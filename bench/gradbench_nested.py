"""GradBench's nested-AD evals `particle` and `saddle` (Pearlmutter and Siskind), as adserve programs, beside
JAX versions of the same computations.

Each is one program with helper functions, closures and `grad` inside, written from the eval descriptions
and the reference tools in github.com/gradbench/gradbench (evals/particle, evals/saddle,
tools/futhark/solver.fut). Both stop on data: the argmin solver is a gradient descent that runs until the
gradient or the step is small, and particle's Euler integration runs until the particle crosses the x axis:
`while` loops, here and in JAX (`lax.while_loop`).

The evals' four variants (ff, fr, rf, rr: forward or reverse mode for each level) are one program here: the
derivative is the same whichever mode computes it, and `grad` picks one (reverse mode, forward for a function
of one number, as particle's argmin over w is). JAX differentiates a `while_loop` only in forward mode, so its
argmin takes `jacfwd`.

A definition's cost is checked before it runs, counting every `while` loop at its bound
(`max_while_iterations`), and these nest loops of derivatives of loops: at the default bound of 100,000
they are refused. `LIMITS` is what a server whose users run such solvers would set (a bound of 1,000
iterations per loop; GradBench's inputs need a bound of 170 for saddle, 355 for particle); the bench and the
tests use it.
"""

from __future__ import annotations

LIMITS = {"max_while_iterations": 1_000, "max_steps": 1_000_000_000, "max_request_steps": 1_000_000_000}

ARGMIN = """
def dist(u, v):
    return sqrt(sum((u - v) ** 2))


def argmin(f, x):
    # solver.fut's multivariate_argmin: gradient descent, doubling the step after 10 good ones
    fx = f(x)
    gx = grad(f)(x)
    eta = 1e-5
    i = 0.0
    go = 1.0
    while go > 0.5:
        if sqrt(sum(gx * gx)) <= 1e-5:
            go = 0.0
        elif i == 10.0:
            eta = 2.0 * eta
            i = 0.0
        else:
            x_prime = x - eta * gx
            if dist(x, x_prime) <= 1e-5:
                go = 0.0
            else:
                fx_prime = f(x_prime)
                if fx_prime < fx:
                    x = x_prime
                    fx = fx_prime
                    gx = grad(f)(x_prime)
                    i = i + 1.0
                else:
                    eta = eta / 2.0
                    i = 0.0
    return x


def argmax(f, x):
    return argmin(lambda z: -f(z), x)
"""

PARTICLE = ARGMIN + """

def naive_euler(w):
    def p(x):
        # the potential of the two fixed charges, at (10, 10 - w) and (10, 0)
        return 1.0 / dist(x, stack([10.0, 10.0 - w])) + 1.0 / dist(x, stack([10.0, 0.0]))
    x = stack([0.0, 8.0])
    xdot = stack([0.75, 0.0])
    go = 1.0
    while go > 0.5:
        xddot = -grad(p)(x)
        x_new = x + 0.1 * xdot
        if x_new[1] > 0.0:
            x = x_new
            xdot = xdot + 0.1 * xddot
        else:
            go = 0.0
    delta_t_f = -x[1] / xdot[1]
    x_t_f = x + delta_t_f * xdot
    return x_t_f[0] ** 2


def particle(w):
    return argmin(lambda v: naive_euler(v[0]), w)
"""

SADDLE = ARGMIN + """

def cost(p1, p2):
    return (p1[0] ** 2 + p1[1] ** 2) - (p2[0] ** 2 + p2[1] ** 2)


def saddle(start):
    def r1_cost(p1):
        return cost(p1, argmax(lambda p2: cost(p1, p2), start))
    r1 = argmin(r1_cost, start)
    r2 = argmax(lambda p2: cost(r1, p2), start)
    return stack([r1, r2])
"""



EXPECTED = {"particle": 0.2071918746486116, "saddle": 8.246324826140356e-06}  # GradBench's validators


def particle() -> dict:
    """The definition: input `w` (shape [1], GradBench sends w = 0), output the argmin w (shape [1])."""
    return {"inputs": [{"name": "w", "shape": [1]}], "entry": "particle", "program": PARTICLE}


def saddle() -> dict:
    """The definition: input `start` (shape [2], GradBench sends [1, 1]), output [r1, r2] (shape [2, 2])."""
    return {"inputs": [{"name": "start", "shape": [2]}], "entry": "saddle", "program": SADDLE}


# -- JAX: solver.fut's argmin and the evals, with while loops ----------------------------------------------------
def _argmin(f, x):
    import jax
    import jax.numpy as jnp
    lax = jax.lax
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


def _naive_euler(w):
    import jax
    import jax.numpy as jnp
    lax = jax.lax
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


def jax_particle(w):
    """particle in JAX (to be jitted): the argmin w from `w`."""
    return _argmin(lambda v: _naive_euler(v[0]), w)


def jax_saddle(start):
    """saddle in JAX (to be jitted): [r1, r2] from `start`."""
    import jax.numpy as jnp

    def cost(p1, p2):
        return (p1[0] ** 2 + p1[1] ** 2) - (p2[0] ** 2 + p2[1] ** 2)

    def argmax(f, x):
        return _argmin(lambda z: -f(z), x)

    r1 = _argmin(lambda p1: cost(p1, argmax(lambda p2: cost(p1, p2), start)), start)
    return jnp.stack([r1, argmax(lambda p2: cost(r1, p2), start)])


def evals() -> list:
    """Both, as bench.gradbench's evals: one part each (the eval's only function), at GradBench's inputs."""
    from .gradbench.common import Eval, Part, _f, _fresh
    p, s = _f(w=[0.0]), _f(start=[1.0, 1.0])
    return [Eval("particle", "w=0", [Part("primal", particle(), ["value"], p, lambda r: r["value"],
                                          _fresh(jax_particle, p["w"]), limits=LIMITS)]),
            Eval("saddle", "start=(1, 1)", [Part("primal", saddle(), ["value"], s, lambda r: r["value"],
                                                 _fresh(jax_saddle, s["start"]), limits=LIMITS)])]
