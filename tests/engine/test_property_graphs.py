"""Random graphs, built with the Builder, against JAX.

A program is a list of instructions over a pool of values (inputs x:[3], y:[3], s:[]),
each reading earlier pool entries; the same program is interpreted once into the engine's
Builder and once into JAX. The objective is sum_i c_i * sum(pool_i), so every value matters.
Element-wise unary/binary ops (broadcasting scalars against vectors), reductions, where,
small scans (carry, constant, scanned input, loop counter, both directions) and conds.
Unary ops are composed to stay in their domains (log1p(v*v), sqrt(1+v*v), exp(sin v)).

Hypothesis runs derandomized: the examples are the same on every run and machine.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

from engine_helpers import (Builder, assert_close, cond, hvp_point, jax, jnp, jvp_point, op, run_batch, run_point,
                            scan, value_and_grad_graph, vdot, vjp_point)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

INPUT_SHAPES = [(3,), (3,), ()]

# name -> (engine, jax); arguments are V values / jax arrays
UNARY = {
    "sin": (op.sin, jnp.sin),
    "cos": (op.cos, jnp.cos),
    "tanh": (op.tanh, jnp.tanh),
    "sigmoid": (op.sigmoid, jax.nn.sigmoid),
    "softplus": (op.softplus, jax.nn.softplus),
    "arctan": (op.arctan, jnp.arctan),
    "neg": (lambda v: -v, lambda v: -v),
    "sq": (lambda v: v * v, lambda v: v * v),
    "log1p_sq": (lambda v: op.log1p(v * v), lambda v: jnp.log1p(v * v)),
    "sqrt1p_sq": (lambda v: op.sqrt(1.0 + v * v), lambda v: jnp.sqrt(1.0 + v * v)),
    "exp_sin": (lambda v: op.exp(op.sin(v)), lambda v: jnp.exp(jnp.sin(v))),
    "cube": (lambda v: v ** 3.0, lambda v: v ** 3.0),
}
BINARY = {
    "add": (lambda a, b: a + b, jnp.add),
    "sub": (lambda a, b: a - b, jnp.subtract),
    "mul": (lambda a, b: a * b, jnp.multiply),
    "maximum": (op.maximum, jnp.maximum),
    "minimum": (op.minimum, jnp.minimum),
    "div_safe": (lambda a, b: a / (1.0 + b * b), lambda a, b: a / (1.0 + b * b)),
    "hypot_safe": (lambda a, b: op.hypot(a, 1.0 + b * b), lambda a, b: jnp.hypot(a, 1.0 + b * b)),
    "pow_safe": (lambda a, b: (1.0 + a * a) ** op.tanh(b), lambda a, b: (1.0 + a * a) ** jnp.tanh(b)),
}
REDUCE = {
    "reduce_sum": (op.reduce_sum, jnp.sum),
    "reduce_max": (op.reduce_max, jnp.max),
    "reduce_min": (op.reduce_min, jnp.min),
    "logsumexp": (op.logsumexp, jax.scipy.special.logsumexp),
}


# -- programs ----------------------------------------------------------------------------------------
@st.composite
def programs(draw, control_flow=False, max_len=8):
    n = draw(st.integers(2, max_len))
    prog = []
    kinds = ["un", "bin", "bin", "red", "where"] + (["scan", "scan", "cond"] if control_flow else [])
    for _ in range(n):
        pick = st.integers(0, 10 ** 6)  # pool index, taken modulo the pool's size
        kind = draw(st.sampled_from(kinds))
        if kind == "un":
            prog.append(("un", draw(st.sampled_from(sorted(UNARY))), draw(pick)))
        elif kind == "bin":
            prog.append(("bin", draw(st.sampled_from(sorted(BINARY))), draw(pick), draw(pick)))
        elif kind == "red":
            prog.append(("red", draw(st.sampled_from(sorted(REDUCE))), draw(pick)))
        elif kind == "where":
            prog.append(("where", draw(pick), draw(pick), draw(pick), draw(pick)))
        elif kind == "scan":
            prog.append(("scan", draw(st.sampled_from(sorted(UNARY))), draw(pick), draw(pick), draw(pick),
                         draw(st.booleans())))
        else:
            prog.append(("cond", draw(pick), draw(pick), draw(st.sampled_from(sorted(UNARY))),
                         draw(st.sampled_from(sorted(UNARY)))))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return prog, seed


class _Engine:
    """Interprets a program with the engine's ops."""

    un = {k: v[0] for k, v in UNARY.items()}
    bin = {k: v[0] for k, v in BINARY.items()}
    red = {k: v[0] for k, v in REDUCE.items()}

    @staticmethod
    def shape(v):
        return tuple(v.shape)

    @staticmethod
    def where(c, a, b):
        return op.where(op.gt(c, 0.0), a, b)

    @staticmethod
    def broadcast3(v):
        return v if tuple(v.shape) == (3,) else op.broadcast_to(v, shape=(3,))

    @classmethod
    def scan(cls, u, c0, w, xs, reverse):
        uf = cls.un[u]
        match = tuple(w.shape) == tuple(c0.shape)

        def body(k, consts, carries, x):
            (w,), (c,), (xk,) = consts, carries, x
            ww = w if match else op.reduce_sum(w)
            new = uf(c * ww + xk * 0.5 + 0.1 * k)
            return [new], [new * c]

        (c,), (ys,) = scan(body, [w], [c0], [xs], 3, reverse)
        return c, op.reduce_sum(ys, axes=(0,))

    @classmethod
    def cond(cls, p, v, ut, uf):
        t, f = cls.un[ut], cls.un[uf]
        (out,) = cond(op.gt(op.reduce_sum(p), 0.0), [v], lambda v: [t(v) * 2.0], lambda v: [f(v) + v])
        return out


class _Jax:
    un = {k: v[1] for k, v in UNARY.items()}
    bin = {k: v[1] for k, v in BINARY.items()}
    red = {k: v[1] for k, v in REDUCE.items()}

    @staticmethod
    def shape(v):
        return tuple(jnp.shape(v))

    @staticmethod
    def where(c, a, b):
        return jnp.where(c > 0.0, a, b)

    @staticmethod
    def broadcast3(v):
        return jnp.broadcast_to(v, (3,))

    @classmethod
    def scan(cls, u, c0, w, xs, reverse):
        uf = cls.un[u]
        ww = w if jnp.shape(w) == jnp.shape(c0) else jnp.sum(w)

        def body(c, kx):
            k, xk = kx
            new = uf(c * ww + xk * 0.5 + 0.1 * k)
            return new, new * c

        c, ys = lax.scan(body, c0, (jnp.arange(3.0), xs), reverse=reverse)
        return c, jnp.sum(ys, axis=0)

    @classmethod
    def cond(cls, p, v, ut, uf):
        t, f = cls.un[ut], cls.un[uf]
        return lax.cond(jnp.sum(p) > 0.0, lambda v: t(v) * 2.0, lambda v: f(v) + v, v)


def interpret(prog, B, inputs):
    pool = list(inputs)

    def get(i):
        return pool[i % len(pool)]

    for ins in prog:
        kind = ins[0]
        if kind == "un":
            pool.append(B.un[ins[1]](get(ins[2])))
        elif kind == "bin":
            pool.append(B.bin[ins[1]](get(ins[2]), get(ins[3])))
        elif kind == "red":
            pool.append(B.red[ins[1]](get(ins[2])))
        elif kind == "where":
            pool.append(B.where(get(ins[1]), get(ins[2]), get(ins[3])) if ins[4] % 2 else
                        B.where(get(ins[1]) - get(ins[4]), get(ins[2]), get(ins[3])))
        elif kind == "scan":
            c0, w, xs = get(ins[2]), get(ins[3]), B.broadcast3(get(ins[4]))
            pool.extend(B.scan(ins[1], c0, w, xs, ins[5]))
        elif kind == "cond":
            pool.append(B.cond(get(ins[1]), get(ins[2]), ins[3], ins[4]))
    total = None
    for i, v in enumerate(pool[len(inputs):]):
        term = B.red["reduce_sum"](v) * (1.0 / (i + 1))
        total = term if total is None else total + term
    return total


def engine_graph(prog):
    b = Builder()
    xs = [b.input(s) for s in INPUT_SHAPES]
    return b.build([interpret(prog, _Engine, xs)])


def jax_fn(prog):
    return lambda x, y, s: interpret(prog, _Jax, [x, y, s])


def _point(seed, k=0):
    rng = np.random.default_rng([seed, k])
    return [rng.standard_normal(s) for s in INPUT_SHAPES]


def _check_against_jax(prog, seed):
    g = engine_graph(prog)
    xs = _point(seed)
    ts = _point(seed, 1)
    jf = jax_fn(prog)

    @jax.jit
    def ref(xs, ts):
        grad = jax.grad(lambda a: jf(*a))
        value, g = jax.value_and_grad(lambda a: jf(*a))(xs)
        return value, g, jax.jvp(grad, (xs,), (ts,))[1]

    jvalue, jgrad, jhvp = ref(tuple(map(jnp.asarray, xs)), tuple(map(jnp.asarray, ts)))
    value, *grad = run_point(value_and_grad_graph(g), xs)
    assert_close(value, np.asarray(jvalue), f"value of {prog}", rtol=1e-10, atol=1e-12)
    assert_close(grad, [np.asarray(a) for a in jgrad], f"gradient of {prog}", rtol=1e-8, atol=1e-10)
    _, _, hv = hvp_point(g, xs, ts)
    assert_close(hv, [np.asarray(a) for a in jhvp], f"hvp of {prog}", rtol=1e-7, atol=1e-9)


@SETTINGS
@given(programs(control_flow=False))
def test_elementwise_and_reduction_graphs_match_jax(case):
    _check_against_jax(*case)


@SETTINGS
@given(programs(control_flow=True, max_len=6))
def test_graphs_with_loops_and_branches_match_jax(case):
    _check_against_jax(*case)


@SETTINGS
@given(programs(control_flow=True, max_len=6))
def test_transforms_are_adjoint_and_batch_consistent(case):
    """Engine-only (no JAX): <vjp(ct), t> == ct * jvp(t), and B points in one run == B runs."""
    prog, seed = case
    g = engine_graph(prog)
    xs, ts = _point(seed), _point(seed, 1)
    _, (tout,) = jvp_point(g, xs, ts)
    _, grads = vjp_point(g, xs, [np.array(1.7)])
    lhs, rhs = vdot(grads, ts), 1.7 * float(tout)
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs) + abs(rhs)), (prog, lhs, rhs)
    pts = [_point(seed, 10 + j) for j in range(3)]
    vg = value_and_grad_graph(g)
    batched = run_batch(vg, [np.stack([p[i] for p in pts]) for i in range(3)], 3)
    for j, p in enumerate(pts):
        for bo, so in zip(batched, run_point(vg, p)):
            np.testing.assert_allclose(bo[j], so, rtol=1e-13, atol=1e-14, err_msg=f"{prog} point {j}")
