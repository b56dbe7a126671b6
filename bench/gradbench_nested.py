"""GradBench's nested-AD evals `particle` and `saddle` (Pearlmutter and Siskind), as adserve programs.

Each is one program with helper functions, closures and `grad` inside, written from the eval
descriptions and the reference tools in github.com/gradbench/gradbench (evals/particle,
evals/saddle, tools/futhark/solver.fut). Both evals stop on data: the argmin solver is a
gradient descent that runs until the gradient or the step is small, and particle's Euler
integration runs until the particle crosses the x axis. Until programs have `while`, each of
those loops is a `for` loop over an upper bound on its trip count whose body does nothing once a
`go` flag drops (`if go > 0.5:`): the same iterations, the same result, as long as the bound is
not reached (the tests check the answers against a JAX `while_loop` version and GradBench's
expected outputs). With `while`, `for step in range(N): if go > 0.5:` becomes `while go > 0.5:`.

The evals' four variants (ff, fr, rf, rr: forward or reverse mode for each level) are one program
here: `grad` is reverse mode, and the derivative is the same whichever mode computes it.
"""

from __future__ import annotations

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
    for step in range({steps}):
        if go > 0.5:
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
    for step in range({euler_steps}):
        if go > 0.5:
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


def particle(steps=200, euler_steps=600) -> dict:
    """The definition: input `w` (shape [1], GradBench sends w = 0), output the argmin w (shape [1])."""
    return {"inputs": [{"name": "w", "shape": [1]}], "entry": "particle",
            "program": PARTICLE.replace("{steps}", str(steps)).replace("{euler_steps}", str(euler_steps))}


def saddle(steps=250) -> dict:
    """The definition: input `start` (shape [2], GradBench sends [1, 1]), output [r1, r2] (shape [2, 2])."""
    return {"inputs": [{"name": "start", "shape": [2]}], "entry": "saddle",
            "program": SADDLE.replace("{steps}", str(steps))}


EXPECTED = {"particle": 0.2071918746486116, "saddle": 8.246324826140356e-06}  # GradBench's validators
