"""The benchmark cases: each function once in adserve's expression language, once over an array module.

A case's `xp_fn(xp, **inputs)` is the same function for JAX (`xp = jax.numpy`)
and autograd (`xp = autograd.numpy`), called with our inputs by name. Data the
caller does not differentiate (the Helmholtz `b` and `A`, a mixture's sample
points, a design matrix) are inputs too, as a client of the service sends
them; every contender differentiates only `wrt` (ours through `wrt=`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

R, T = 8.314, 300.0


@dataclass
class Case:
    bench: str                       # "helmholtz"
    label: str                       # "n=200"
    definition: dict                 # ours
    inputs: dict                     # ours: name -> array ([B, ...] when batch)
    xp_fn: Callable                  # f(xp, **inputs) -> scalar
    kind: str = "gradient"           # the derivative timed: "gradient" or "hvp"
    wrt: tuple = ("x",)              # the inputs every contender differentiates
    tangent: dict | None = None      # hvp only
    batch: bool = False
    targets: dict = field(default_factory=dict)  # ratio name -> upper bound

    @property
    def deriv_compute(self):
        return ["hvp"] if self.kind == "hvp" else ["value", "gradient"]


def _defn(inputs: dict, expr: str, batch=False) -> dict:
    return {"inputs": [{"name": k, "shape": list(np.shape(v)[1 if batch else 0:])} for k, v in inputs.items()],
            "expr": expr}


# -- Helmholtz free energy (Baydin et al. 2018, Table 4) ---------------------------
HELMHOLTZ = (f"{R} * {T} * sum(x * log(x / (1 - dot(b, x))))"
             " - dot(x, dot(A, x)) / (sqrt(8) * dot(b, x))"
             " * log((1 + (1 + sqrt(2)) * dot(b, x)) / (1 + (1 - sqrt(2)) * dot(b, x)))")


def helmholtz_xp(xp, x, b, A):
    bx = xp.dot(b, x)
    return (R * T * xp.sum(x * xp.log(x / (1 - bx)))
            - xp.dot(x, xp.dot(A, x)) / (math.sqrt(8) * bx)
            * xp.log((1 + (1 + math.sqrt(2)) * bx) / (1 + (1 - math.sqrt(2)) * bx)))


def helmholtz(n: int, rng) -> Case:
    b = rng.uniform(0, 1, n)
    A = rng.uniform(-1, 1, (n, n))
    A = (A + A.T) / 2
    x = rng.uniform(0.1, 1, n) / n  # keeps 1 - b.x > 0
    inputs = {"x": x, "b": b, "A": A}
    return Case("helmholtz", f"n={n}", _defn(inputs, HELMHOLTZ), inputs, helmholtz_xp,
                targets={"gradient/primal": 2.0 if n >= 200 else 3.0, "ours/jax": 1.0})


# -- Rosenbrock ----------------------------------------------------------------------
ROSENBROCK = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"


def rosenbrock_xp(xp, x):
    return xp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rosenbrock_hvp(n: int, rng) -> Case:
    x, v = rng.uniform(-1, 1, n), rng.standard_normal(n)
    return Case("rosenbrock-hvp", f"n={n}", _defn({"x": x}, ROSENBROCK), {"x": x}, rosenbrock_xp, kind="hvp",
                tangent={"x": v}, targets={"hvp/primal": 3.0, "ours/jax": 1.0})


def rosenbrock_batch(n: int, points: int, rng) -> Case:
    x = rng.uniform(-1, 1, (points, n))
    return Case("rosenbrock-batch", f"B={points}, n={n}", _defn({"x": x}, ROSENBROCK, batch=True), {"x": x},
                rosenbrock_xp, batch=True, targets={"ours/jax": 1.0})


# -- GradBench-style -----------------------------------------------------------------
def lse(n: int, rng) -> Case:
    x = rng.standard_normal(n)
    return Case("lse", f"n={n}", _defn({"x": x}, "logsumexp(x)"), {"x": x},
                lambda xp, x: _logsumexp(xp, x), targets={"gradient/primal": 3.0})


def _logsumexp(xp, x, axis=None):
    m = xp.max(x, axis=axis, keepdims=True)
    return xp.log(xp.sum(xp.exp(x - m), axis=axis)) + (m[..., 0] if axis is not None else m.reshape(()))


LLSQ = "0.5 * sum((s - dot(t, x)) ** 2)"


def llsq(n: int, m: int, rng) -> Case:
    """GradBench llsq: y(x) = 1/2 sum_i (s_i - sum_j x_j t_i^j)^2, t_i = -1 + 2i/(n-1), s_i = sign(t_i)."""
    ti = -1 + 2 * np.arange(n) / (n - 1)
    inputs = {"x": rng.standard_normal(m), "t": ti[:, None] ** np.arange(m), "s": np.sign(ti)}
    return Case("llsq", f"n={n}, m={m}", _defn(inputs, LLSQ), inputs,
                lambda xp, x, t, s: 0.5 * xp.sum((s - xp.dot(t, x)) ** 2), targets={"gradient/primal": 3.0})


def gmm_expr(N, K, d):
    """Diagonal-covariance mixture: q holds log inverse standard deviations."""
    diff = f"reshape(exp(q), (1, {K}, {d})) * (reshape(X, ({N}, 1, {d})) - reshape(mu, (1, {K}, {d})))"
    per = f"alpha - logsumexp(alpha) + sum(q, axis=1) - 0.5 * sum(({diff}) ** 2, axis=2)"
    return f"sum(logsumexp({per}, axis=1)) - {N * d * 0.5 * math.log(2 * math.pi)!r}"


def gmm_xp(xp, alpha, mu, q, X):
    N, d = X.shape
    K = alpha.shape[0]
    diff = xp.exp(q).reshape(1, K, d) * (X.reshape(N, 1, d) - mu.reshape(1, K, d))
    per = alpha - _logsumexp(xp, alpha) + xp.sum(q, axis=1) - 0.5 * xp.sum(diff ** 2, axis=2)
    return xp.sum(_logsumexp(xp, per, axis=1)) - N * d * 0.5 * math.log(2 * math.pi)


def gmm(N: int, K: int, d: int, rng) -> Case:
    inputs = {"alpha": rng.standard_normal(K), "mu": rng.standard_normal((K, d)),
              "q": 0.1 * rng.standard_normal((K, d)), "X": rng.standard_normal((N, d))}
    return Case("gmm", f"N={N}, K={K}, d={d}", _defn(inputs, gmm_expr(N, K, d)), inputs, gmm_xp,
                wrt=("alpha", "mu", "q"), targets={"gradient/primal": 3.0})


def cases(quick: bool = False, seed: int = 0) -> list[Case]:
    """Every timed case; `quick` shrinks sizes so the whole list runs in seconds (smoke test)."""
    rng = np.random.default_rng(seed)
    if quick:
        return [helmholtz(10, rng), rosenbrock_hvp(10, rng), rosenbrock_batch(10, 20, rng), lse(10, rng),
                llsq(8, 3, rng), gmm(6, 2, 2, rng)]
    return [*(helmholtz(n, rng) for n in (10, 50, 200, 1000)),
            *(rosenbrock_hvp(n, rng) for n in (100, 10_000)),
            rosenbrock_batch(100, 10_000, rng),
            *(lse(n, rng) for n in (1000, 100_000)),
            llsq(1024, 16, rng),
            gmm(1000, 10, 8, rng)]
