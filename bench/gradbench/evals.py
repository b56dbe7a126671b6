"""GradBench's evals (github.com/gradbench/gradbench, `evals/*` and `cpp/gradbench/evals/*.hpp`), written in
adserve's language, each beside a JAX (float64, `jit`) version of the same computation.

An eval is a list of `Part`s, one per GradBench function (`primal`/`gradient`, `objective`/`jacobian`,
`cost`/`dir`, `square`/`double`). A part holds our definition and request (`compute`, `wrt`, `tangent`,
`batch`), how to read GradBench's output from our result (`out`), and a factory `jax()` that returns a
zero-argument call of a freshly jitted JAX function giving the same output (blocked until ready).

Inputs follow GradBench's generators (seed 31337 where it draws random numbers); where GradBench reads data
files, see the notes on `ba`, `ht` and `lstm`. Written here: hello, lse, llsq, det, kmeans, ode, gmm, lstm,
ba, and ht (in ht.py). particle and saddle, programs with nested derivatives, are in bench/gradbench_nested.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .common import Eval, Part, _f, _fresh, _inputs, _jax  # noqa: F401  (Part, Eval: re-exported)
from .ht import ht, model


# -- hello ---------------------------------------------------------------------------------------------------
def hello(x=1.0) -> Eval:
    """`square` is x*x, `double` its derivative."""
    inputs = _f(x=x)
    d = {"inputs": _inputs(**inputs), "expr": "x * x"}

    def sq(x):
        return x * x

    def dbl(x):
        return _jax().grad(sq)(x)
    return Eval("hello", f"x={x}", params={"x": x}, parts=[
        Part("square", d, ["value"], inputs, lambda r: r["value"], _fresh(sq, inputs["x"])),
        Part("double", d, ["gradient"], inputs, lambda r: r["gradient"]["x"], _fresh(dbl, inputs["x"])),
    ])


# -- lse -----------------------------------------------------------------------------------------------------
LSE = "max(x) + log(sum(exp(x - max(x))))"  # the eval asks for the primitives, not a built-in logsumexp


def lse(n: int, seed=31337) -> Eval:
    np.random.seed(seed)
    inputs = _f(x=np.random.rand(n))
    d = {"inputs": _inputs(**inputs), "expr": LSE}

    def prim(x):
        import jax.numpy as jnp
        m = jnp.max(x)
        return jnp.log(jnp.sum(jnp.exp(x - m))) + m

    def grad(x):
        return _jax().grad(prim)(x)
    return Eval("lse", f"n={n}", params={"n": n}, parts=[
        Part("primal", d, ["value"], inputs, lambda r: r["value"], _fresh(prim, inputs["x"])),
        Part("gradient", d, ["gradient"], inputs, lambda r: r["gradient"]["x"], _fresh(grad, inputs["x"])),
    ])


# -- llsq ----------------------------------------------------------------------------------------------------
def llsq(n: int, m: int = 128, seed=31337, loop: bool = False) -> Eval:
    """y(x) = 1/2 sum_i (s_i - sum_j x_j t_i^j)^2, t_i = -1 + 2i/(n-1), s_i = sign(t_i); t and s are computed
    inside the function from n (as GradBench's tools do), only x is sent."""
    np.random.seed(seed)
    inputs = _f(x=np.random.rand(m))
    expr = (f"0.5 * sum((sign(-1 + 2 * arange({n}) / {n - 1}) - dot(reshape(-1 + 2 * arange({n}) / {n - 1}, "
            f"({n}, 1)) ** reshape(arange({m}), (1, {m})), x)) ** 2)")
    d = {"inputs": _inputs(**inputs), "expr": expr}
    if loop:  # the powers by repeated multiplication, as the JAX tool's cumprod (the expression uses pow)
        d = {"inputs": _inputs(**inputs), "program": "\n".join([
            "def f(x):",
            f"    t = -1 + 2 * arange({n}) / {n - 1}",
            f"    p = ones({n})",
            "    r = sign(t) - x[0]",
            f"    for j in range(1, {m}):",
            "        p = p * t",
            "        r = r - x[j] * p",
            "    return 0.5 * sum(r * r)"])}

    def prim(x):
        import jax
        import jax.numpy as jnp

        def f(i):  # GradBench's JAX tool
            ti = -1.0 + (i * 2.0) / (n - 1.0)
            muls = jnp.cumprod(jnp.full(m, ti).at[0].set(1))
            return (jnp.sign(ti) + jnp.sum(-x * muls)) ** 2
        return jnp.sum(jax.vmap(f)(jnp.arange(n))) / 2.0

    def grad(x):
        return _jax().grad(prim)(x)
    return Eval("llsq", f"n={n}, m={m}" + (", loop" if loop else ""), params={"n": n, "m": m}, parts=[
        Part("primal", d, ["value"], inputs, lambda r: r["value"], _fresh(prim, inputs["x"])),
        Part("gradient", d, ["gradient"], inputs, lambda r: r["gradient"]["x"], _fresh(grad, inputs["x"])),
    ])


# -- det -----------------------------------------------------------------------------------------------------
def _minor_tables(ell):
    """Expansion by minors along the first row, memoised: the minor on rows ell-s.. and the column set S
    (|S| = s) is sum_t (-1)^t A[ell-s, S_t] minor(S without S_t). Per level s: for each S (in a fixed
    order), the flat index into A of each term's entry and the position of each sub-minor in level s-1."""
    levels, prev = [], {(): 0}
    for s in range(1, ell + 1):
        subsets = list(itertools.combinations(range(ell), s))
        flat = np.array([[(ell - s) * ell + j for j in S] for S in subsets], dtype=np.int64)
        sub = np.array([[prev[S[:t] + S[t + 1:]] for t in range(s)] for S in subsets], dtype=np.int64)
        levels.append((flat, sub))
        prev = {S: i for i, S in enumerate(subsets)}
    return levels


def det(ell: int, seed=31337) -> Eval:
    """Determinant by expansion by minors. GradBench's reference recurses (ell! products); one definition
    cannot recurse, and ell! terms pass the language's limits at ell = 11, so this is the same expansion with
    each sub-minor computed once (2^ell ell products): the same terms, summed in the same order; JAX runs the
    same memoised form. Index tables are int64 inputs; `sg` holds the signs +1, -1, ..."""
    np.random.seed(seed)
    levels = _minor_tables(ell)
    arrays = {"A": np.random.rand(ell * ell), "sg": (-1.0) ** np.arange(ell)}
    for s, (flat, sub) in enumerate(levels, 1):
        arrays[f"e{s}"], arrays[f"m{s}"] = flat, sub
    inputs = _f(**arrays)
    lines = [f"def f({', '.join(inputs)}):", "    d0 = ones(1)"]
    for s in range(1, ell + 1):
        lines.append(f"    d{s} = sum(sg[0:{s}] * take(A, e{s}) * d{s - 1}[m{s}], axis=1)")
    lines.append(f"    return d{ell}[0]")
    d = {"inputs": _inputs(**inputs), "program": "\n".join(lines)}
    tables = [inputs[k] for k in inputs if k not in ("A", "sg")]

    def prim(A, sg, *tabs):
        import jax.numpy as jnp
        dm = jnp.ones(1)
        for s in range(1, ell + 1):
            flat, sub = tabs[2 * s - 2], tabs[2 * s - 1]
            dm = jnp.sum(sg[:s] * A[flat] * dm[sub], axis=1)
        return dm[0]

    def grad(A, sg, *tabs):
        return _jax().grad(prim)(A, sg, *tabs)
    args = (inputs["A"], inputs["sg"], *tables)
    return Eval("det", f"ell={ell}", params={"ell": ell}, parts=[
        Part("primal", d, ["value"], inputs, lambda r: r["value"], _fresh(prim, *args)),
        Part("gradient", d, ["gradient"], inputs, lambda r: r["gradient"]["A"], _fresh(grad, *args), wrt=("A",)),
    ])


# -- kmeans --------------------------------------------------------------------------------------------------
def kmeans(k: int, n: int, d: int, seed=31337) -> Eval:
    """cost = sum_i min_j |C_j - P_i|^2 (as |P|^2 + |C|^2 - 2 P.C, like GradBench's JAX tool); dir = J / H
    with H the Hessian's diagonal, here the HVP with a tangent of ones (the Hessian is diagonal)."""
    np.random.seed(seed)
    points = np.random.rand(n, d)
    inputs = _f(points=points, centroids=points[-k:].copy())
    expr = (f"sum(min(reshape(sum(points * points, axis=1), ({n}, 1)) + reshape(sum(centroids * centroids, "
            f"axis=1), (1, {k})) - 2 * dot(points, centroids.T), axis=1))")
    defn = {"inputs": _inputs(**inputs), "expr": expr}

    def cost(points, centroids):
        import jax.numpy as jnp
        a_sqr = jnp.sum(points ** 2, 1)[None, :]
        b_sqr = jnp.sum(centroids ** 2, 1)[:, None]
        return jnp.sum(jnp.min(a_sqr + b_sqr - 2 * jnp.matmul(points, centroids.T).T, axis=0))

    def dir_(points, centroids):
        import jax.numpy as jnp
        jax = _jax()
        g, h = jax.jvp(jax.grad(lambda c: cost(points, c)), [centroids], [jnp.ones(centroids.shape)])
        return g / h
    args = (inputs["points"], inputs["centroids"])
    return Eval("kmeans", f"k={k}, n={n}, d={d}", params={"k": k, "n": n, "d": d}, parts=[
        Part("cost", defn, ["value"], inputs, lambda r: r["value"], _fresh(cost, *args)),
        Part("dir", defn, ["gradient", "hvp"], inputs,
             lambda r: r["gradient"]["centroids"] / r["hvp"]["centroids"], _fresh(dir_, *args),
             wrt=("centroids",), tangent={"centroids": np.ones((k, d))}),
    ])


# -- ode -----------------------------------------------------------------------------------------------------
def _ode_program(s: int, last: bool) -> str:
    h = 2.0 / s
    return "\n".join([
        "def f(x):",
        "    y = zeros(len(x))",
        f"    for step in range({s}):",
        "        k1 = x * concatenate([ones(1), y[:-1]])",
        f"        t = y + {h!r} * k1 / 2",
        "        k2 = x * concatenate([ones(1), t[:-1]])",
        f"        t = y + {h!r} * k2 / 2",
        "        k3 = x * concatenate([ones(1), t[:-1]])",
        f"        t = y + {h!r} * k3",
        "        k4 = x * concatenate([ones(1), t[:-1]])",
        f"        y = y + {h!r} * (k1 + 2 * k2 + 2 * k3 + k4) / 6",
        "    return y[len(x) - 1]" if last else "    return y",
    ])


def ode(n: int, s: int, seed=31337) -> Eval:
    """Runge-Kutta (s steps, tf = 2) on y0' = x0, yi' = xi y(i-1); `primal` is y(tf), `gradient` the gradient
    of its last entry (two definitions)."""
    np.random.seed(seed)
    inputs = _f(x=np.random.rand(n))
    prim_d = {"inputs": _inputs(**inputs), "program": _ode_program(s, last=False)}
    last_d = {"inputs": _inputs(**inputs), "program": _ode_program(s, last=True)}

    def prim(x):
        import jax
        import jax.numpy as jnp
        h = 2.0 / s

        def f(y):
            return x * jnp.concatenate([jnp.ones(1), y[:-1]])

        def body(y, _):
            k1 = f(y)
            k2 = f(y + h * k1 / 2)
            k3 = f(y + h * k2 / 2)
            k4 = f(y + h * k3)
            return y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6, None
        return jax.lax.scan(body, jnp.zeros_like(x), None, length=s)[0]

    def grad(x):
        return _jax().grad(lambda x: prim(x)[-1])(x)
    return Eval("ode", f"n={n}, s={s}", params={"n": n, "s": s}, parts=[
        Part("primal", prim_d, ["value"], inputs, lambda r: r["value"], _fresh(prim, inputs["x"])),
        Part("gradient", last_d, ["gradient"], inputs, lambda r: r["gradient"]["x"], _fresh(grad, inputs["x"])),
    ])


# -- gmm -----------------------------------------------------------------------------------------------------
def _multigammaln(a, p):
    return p * (p - 1) / 4 * math.log(math.pi) + sum(math.lgamma(a + (1 - j) / 2) for j in range(1, p + 1))


def gmm(d: int, k: int, n: int = 1000, m: int = 0, gamma: float = 1.0, seed=31337) -> Eval:
    """GradBench's gmm (the log posterior of a Gaussian mixture with a Wishart prior), inputs as its
    generator makes them; `l` holds each Cholesky-like factor's strict lower triangle column by column, which
    the definition unpacks with a gather (`lidx`, int64: 0 for a zero, p + 1 for l[:, p])."""
    rng = np.random.default_rng(seed=seed)
    x = rng.normal(size=(n, d))
    alpha = rng.normal(size=k)
    mu = rng.uniform(size=(k, d))
    q = rng.normal(size=(k, d))
    l = rng.normal(size=(k, d * (d - 1) // 2))
    lidx = np.zeros((d, d), dtype=np.int64)
    p = 0
    for c in range(d - 1):
        for r in range(c + 1, d):
            lidx[r, c] = p + 1
            p += 1
    inputs = _f(alpha=alpha, mu=mu, q=q, l=l, x=x, lidx=lidx.reshape(-1))
    nu = d + m + 1
    const = -n * d * 0.5 * math.log(2 * math.pi)
    prior_c = k * (nu * d * math.log(gamma / math.sqrt(2)) - _multigammaln(0.5 * nu, d))
    program = f"""def f(alpha, mu, q, l, x, lidx):
    Qd = exp(q)
    sum_qs = sum(q, axis=1)
    L = reshape(take(concatenate([zeros(({k}, 1)), l], axis=1), lidx, axis=1), ({k}, {d}, {d}))
    xc = transpose(reshape(x, ({n}, 1, {d})) - reshape(mu, (1, {k}, {d})), (1, 0, 2))
    Lx = reshape(Qd, ({k}, 1, {d})) * xc + matmul(xc, transpose(L, (0, 2, 1)))
    inner = reshape(alpha + sum_qs, ({k}, 1)) - 0.5 * sum(Lx * Lx, axis=2)
    slse = sum(logsumexp(inner, axis=0))
    prior = {prior_c!r} - sum({0.5 * gamma * gamma!r} * (sum(Qd * Qd, axis=1) + sum(l * l, axis=1)) - {m} * sum_qs)
    return {const!r} + slse - {n} * logsumexp(alpha) + prior"""
    defn = {"inputs": _inputs(**inputs), "program": program}
    wrt = ("alpha", "mu", "q", "l")

    def obj(alpha, mu, q, l, x):  # GradBench's JAX tool (gmm_objective.py)
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp
        Qdiags, sum_qs = jnp.exp(q), jnp.sum(q, axis=1)
        cols = np.repeat(np.arange(d - 1), np.arange(d - 1, 0, -1))
        rows = np.concatenate([np.arange(c + 1, d) for c in range(d - 1)]) if d > 1 else np.zeros(0, int)
        Ls = jnp.zeros((k, d, d)).at[:, rows, cols].set(l)
        xcentered = x[:, None, :] - mu[None, ...]
        Lxc = Qdiags * xcentered + jnp.einsum("ijk,mik->mij", Ls, xcentered)
        slse = jnp.sum(logsumexp(alpha + sum_qs - 0.5 * jnp.sum(Lxc ** 2, axis=2), axis=1))
        out = jnp.sum(0.5 * gamma * gamma * (jnp.sum(Qdiags ** 2, axis=1) + jnp.sum(l ** 2, axis=1)) - m * sum_qs)
        return const + slse - n * logsumexp(alpha, axis=0) - out + prior_c

    def jac(alpha, mu, q, l, x):
        return _jax().grad(obj, argnums=(0, 1, 2, 3))(alpha, mu, q, l, x)
    args = tuple(inputs[w] for w in (*wrt, "x"))
    return Eval("gmm", f"d={d}, k={k}, n={n}", params={"d": d, "k": k, "n": n, "m": m, "gamma": gamma}, parts=[
        Part("objective", defn, ["value"], inputs, lambda r: r["value"], _fresh(obj, *args)),
        Part("jacobian", defn, ["gradient"], inputs, lambda r: tuple(r["gradient"][w] for w in wrt),
             _fresh(jac, *args), wrt=wrt),
    ])


# -- lstm ----------------------------------------------------------------------------------------------------
def lstm(l: int, c: int, b: int = 7, seed=31337) -> Eval:
    """GradBench's lstm: `objective` is the loss, `jacobian` its gradient in main_params and extra_params.
    GradBench encodes a text (evals/lstm/data, not in the stored snapshot) as b-bit characters; here the
    sequence is random bits with b = 7 (ASCII), and the parameters and state uniform as in its generator."""
    np.random.seed(seed)
    inputs = _f(main=np.random.random((2 * l, 4 * b)), extra=np.random.random((3, b)),
                state=np.random.random((2 * l, b)), seq=(np.random.random((c, b)) < 0.5).astype(np.float64))
    program = f"""def f(main, extra, state, seq):
    st = state
    total = 0.0
    for t in range({c - 1}):
        inp = seq[t] * extra[0]
        for i in range({l}):
            W = main[2 * i]
            B = main[2 * i + 1]
            hid = st[2 * i]
            cel = st[2 * i + 1]
            forget = sigmoid(inp * W[0:{b}] + B[0:{b}])
            ingate = sigmoid(hid * W[{b}:{2 * b}] + B[{b}:{2 * b}])
            outgate = sigmoid(inp * W[{2 * b}:{3 * b}] + B[{2 * b}:{3 * b}])
            change = tanh(hid * W[{3 * b}:{4 * b}] + B[{3 * b}:{4 * b}])
            cel = cel * forget + ingate * change
            hid = outgate * tanh(cel)
            st[2 * i] = hid
            st[2 * i + 1] = cel
            inp = hid
        ypred = inp * extra[1] + extra[2]
        total += sum(seq[t + 1] * (ypred - log(sum(exp(ypred)) + 2)))
    return -total / {(c - 1) * b}"""
    defn = {"inputs": _inputs(**inputs), "program": program}
    wrt = ("main", "extra")

    def obj(main, extra, state, seq):
        import jax
        import jax.numpy as jnp

        def step(st, t):
            inp, new = seq[t] * extra[0], []
            for i in range(l):
                W, B, hid, cel = main[2 * i], main[2 * i + 1], st[2 * i], st[2 * i + 1]
                forget = jax.nn.sigmoid(inp * W[:b] + B[:b])
                ingate = jax.nn.sigmoid(hid * W[b:2 * b] + B[b:2 * b])
                outgate = jax.nn.sigmoid(inp * W[2 * b:3 * b] + B[2 * b:3 * b])
                change = jnp.tanh(hid * W[3 * b:] + B[3 * b:])
                cel = cel * forget + ingate * change
                hid = outgate * jnp.tanh(cel)
                new += [hid, cel]
                inp = hid
            ypred = inp * extra[1] + extra[2]
            return jnp.stack(new), jnp.sum(seq[t + 1] * (ypred - jnp.log(jnp.sum(jnp.exp(ypred)) + 2)))
        _, terms = jax.lax.scan(step, state, jnp.arange(c - 1))
        return -jnp.sum(terms) / ((c - 1) * b)

    def jac(main, extra, state, seq):
        return _jax().grad(obj, argnums=(0, 1))(main, extra, state, seq)
    args = tuple(inputs[k] for k in ("main", "extra", "state", "seq"))
    return Eval("lstm", f"l={l}, c={c}", params={"l": l, "c": c, "b": b}, parts=[
        Part("objective", defn, ["value"], inputs, lambda r: r["value"], _fresh(obj, *args)),
        Part("jacobian", defn, ["gradient"], inputs, lambda r: tuple(r["gradient"][w] for w in wrt),
             _fresh(jac, *args), wrt=wrt),
    ])


# -- ba ------------------------------------------------------------------------------------------------------
BA_FILES = {  # evals/ba/data: every file holds the same camera, point, weight and feature, repeated
    1: (49, 7776, 31843), 2: (21, 11315, 36455), 3: (161, 48126, 182072), 5: (257, 65132, 225911),
    10: (1197, 126327, 563734), 14: (356, 226730, 1255268)}
BA_CAM = [-0.758453, -1.109613, -0.845551, 34.556073, 39.676747, 53.881673, 419.194514, 5.864426, -8.518870,
          0.087812, 0.002739]
BA_X, BA_W, BA_FEAT = [7.203245, 0.001144, 3.023326], 0.417022, [271.760969, 834.209256]


def _ba_body(cam, X, w, feat) -> list:
    """The reprojection error (cpp/gradbench/evals/ba.hpp) over columns; `cam(i)` etc. are index forms."""
    return [
        f"    r0, r1, r2 = {cam(0)}, {cam(1)}, {cam(2)}",
        f"    x0, x1, x2 = {X(0)} - {cam(3)}, {X(1)} - {cam(4)}, {X(2)} - {cam(5)}",
        "    sq = r0 * r0 + r1 * r1 + r2 * r2",
        "    theta = sqrt(where(sq != 0, sq, 1.0))",
        "    c, s, ti = cos(theta), sin(theta), 1.0 / theta",
        "    w0, w1, w2 = r0 * ti, r1 * ti, r2 * ti",
        "    tmp = (w0 * x0 + w1 * x1 + w2 * x2) * (1.0 - c)",
        "    y0 = where(sq != 0, x0 * c + (w1 * x2 - w2 * x1) * s + w0 * tmp, x0 + (r1 * x2 - r2 * x1))",
        "    y1 = where(sq != 0, x1 * c + (w2 * x0 - w0 * x2) * s + w1 * tmp, x1 + (r2 * x0 - r0 * x2))",
        "    y2 = where(sq != 0, x2 * c + (w0 * x1 - w1 * x0) * s + w2 * tmp, x2 + (r0 * x1 - r1 * x0))",
        "    p0, p1 = y0 / y2, y1 / y2",
        "    rsq = p0 * p0 + p1 * p1",
        f"    Lr = 1.0 + {cam(9)} * rsq + {cam(10)} * rsq * rsq",
        f"    e0 = {w} * (p0 * Lr * {cam(6)} + {cam(7)} - {feat(0)})",
        f"    e1 = {w} * (p1 * Lr * {cam(6)} + {cam(8)} - {feat(1)})",
    ]


def _ba_xp(xp, cam, X, w, feat):
    """The same, over an array module, last axis the components."""
    r0, r1, r2 = cam[..., 0], cam[..., 1], cam[..., 2]
    x0, x1, x2 = X[..., 0] - cam[..., 3], X[..., 1] - cam[..., 4], X[..., 2] - cam[..., 5]
    sq = r0 * r0 + r1 * r1 + r2 * r2
    theta = xp.sqrt(xp.where(sq != 0, sq, 1.0))
    c, s, ti = xp.cos(theta), xp.sin(theta), 1.0 / theta
    w0, w1, w2 = r0 * ti, r1 * ti, r2 * ti
    tmp = (w0 * x0 + w1 * x1 + w2 * x2) * (1.0 - c)
    y0 = xp.where(sq != 0, x0 * c + (w1 * x2 - w2 * x1) * s + w0 * tmp, x0 + (r1 * x2 - r2 * x1))
    y1 = xp.where(sq != 0, x1 * c + (w2 * x0 - w0 * x2) * s + w1 * tmp, x1 + (r2 * x0 - r0 * x2))
    y2 = xp.where(sq != 0, x2 * c + (w0 * x1 - w1 * x0) * s + w2 * tmp, x2 + (r0 * x1 - r1 * x0))
    p0, p1 = y0 / y2, y1 / y2
    rsq = p0 * p0 + p1 * p1
    Lr = 1.0 + cam[..., 9] * rsq + cam[..., 10] * rsq * rsq
    return w * (p0 * Lr * cam[..., 6] + cam[..., 7] - feat[..., 0]), w * (p1 * Lr * cam[..., 6] + cam[..., 8]
                                                                          - feat[..., 1])


def ba(n: int, m: int, p: int, name: str = "", whole_jacobian: bool = False, blocks: bool = True,
       seed: int | None = None) -> Eval:
    """Bundle adjustment, data as GradBench's ba files describe it (one camera, point, weight and feature
    repeated; observation i sees camera i % n and point i % m; with a `seed`, each entry is moved by up to 1%
    so that no two blocks are equal). `objective` is one definition of (cams, X, w, obs, cam_idx, pt_idx) over
    all cameras and points, gathering by the observations' int64 indices; it returns reproj_err (flattened)
    then w_err. Its Jacobian, in cams, X and w, is block sparse: one 3x15 block per observation (the two
    reprojection errors and the weight error in its camera, point and weight). Two ways to get it:

    * `jacobian`, whole (`whole_jacobian=True`): the Jacobian of that one definition, dense (3p x (11n + 3m
      + p)); JAX is `jacrev` of the same objective. Only for small sizes: the dense matrix is mostly zeros.
    * `jacobian (blocks)`: a batch over the observations of the one-observation function (rows gathered by
      the caller, untimed, for both contenders); JAX is `vmap(jacrev)` of the same. This is the sparse
      Jacobian GradBench asks for, at GradBench's sizes."""
    cams, X = np.tile(BA_CAM, (n, 1)), np.tile(BA_X, (m, 1))
    w, obs = np.full(p, BA_W), np.tile(BA_FEAT, (p, 1))
    if seed is not None:
        rng = np.random.default_rng(seed)
        cams, X, w, obs = (a * (1 + 0.01 * rng.uniform(-1, 1, size=a.shape)) for a in (cams, X, w, obs))
    cam_idx, pt_idx = np.arange(p) % n, np.arange(p) % m
    inputs = _f(cams=cams, X=X, w=w, obs=obs, cam_idx=cam_idx, pt_idx=pt_idx)
    body = _ba_body(lambda i: f"cam[:, {i}]", lambda i: f"pt[:, {i}]", "w", lambda i: f"obs[:, {i}]")
    program = "\n".join(["def f(cams, X, w, obs, cam_idx, pt_idx):", "    cam = cams[cam_idx]",
                         "    pt = X[pt_idx]", *body,
                         "    return concatenate([reshape(stack([e0, e1], axis=1), (-1,)), 1.0 - w * w])"])
    obj_d = {"inputs": _inputs(**inputs), "program": program}
    one = {"cam": cams[cam_idx], "X": X[pt_idx], "w": w, "feat": obs}
    body1 = _ba_body(lambda i: f"cam[{i}]", lambda i: f"X[{i}]", "w", lambda i: f"feat[{i}]")
    jac_d = {"inputs": [{"name": "cam", "shape": [11]}, {"name": "X", "shape": [3]}, {"name": "w", "shape": []},
                        {"name": "feat", "shape": [2]}],
             "program": "\n".join(["def f(cam, X, w, feat):", *body1, "    return stack([e0, e1, 1.0 - w * w])"])}
    wrt = ("cam", "X", "w")
    whole_wrt = ("cams", "X", "w")
    names = ("cams", "X", "w", "obs", "cam_idx", "pt_idx")

    def obj(cams, X, w, obs, cam_idx, pt_idx):
        import jax.numpy as jnp
        e0, e1 = _ba_xp(jnp, cams[cam_idx], X[pt_idx], w, obs)
        return jnp.concatenate([jnp.stack([e0, e1], axis=1).reshape(-1), 1.0 - w * w])

    def whole(*a):
        return _jax().jacrev(obj, argnums=(0, 1, 2))(*a)

    def jac(cam, X, w, feat):
        import jax.numpy as jnp
        jax = _jax()

        def f1(cam, X, w, feat):
            e0, e1 = _ba_xp(jnp, cam, X, w, feat)
            return jnp.stack([e0, e1, 1.0 - w * w])
        return jax.vmap(jax.jacrev(f1, argnums=(0, 1, 2)))(cam, X, w, feat)
    parts = [Part("objective", obj_d, ["value"], inputs, lambda r: r["value"],
                  _fresh(obj, *(inputs[k] for k in names)))]
    if whole_jacobian:
        parts.append(Part("jacobian", obj_d, ["jacobian"], inputs,
                          lambda r: tuple(r["jacobian"][k] for k in whole_wrt),
                          _fresh(whole, *(inputs[k] for k in names)), wrt=whole_wrt))
    if blocks:
        parts.append(Part("jacobian (blocks)", jac_d, ["jacobian"], one,
                          lambda r: tuple(r["jacobian"][k] for k in wrt),
                          _fresh(jac, *(one[k] for k in ("cam", "X", "w", "feat"))), wrt=wrt, batch=True))
    return Eval("ba", name or f"n={n}, m={m}, p={p}", parts,
                params={"n": n, "m": m, "p": p, "seeded": seed is not None})


def tiny() -> list:
    """Every eval at sizes small enough for a correctness test on the interpreter."""
    return [hello(), lse(7), llsq(9, 4), llsq(9, 4, loop=True), det(4), kmeans(3, 12, 2), ode(6, 3), gmm(3, 2, 8), lstm(2, 5, b=3),
            ba(3, 4, 10, whole_jacobian=True, seed=1), ht(model(30, 40), c=6), ht(model(30, 40), c=5, complicated=True)]
