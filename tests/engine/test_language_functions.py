"""Programs with helper functions, closures and derivative operators (grad & co.), against JAX (float64).

Most programs here are also valid Python over `jax.numpy`: the test runs the very same text with
`sin = jnp.sin`, `grad = jax.grad`, ... as the reference, so the program means what Python and JAX
say it means (late binding of closures included), and every `compute` kind of the outer function
(value, gradient, jvp, vjp, hvp, jacobian, hessian) is compared with JAX's, one point and a batch.
Then: perturbation confusion (Siskind and Pearlmutter; the survey's section 3.1 example), the
errors (recursion named at its line, arity, keywords, unknown names), the graph round trip, and the
compiled tiers (numba and the python tier) on a few plans, and random closures with a derivative inside.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest
from engine_helpers import jax, jnp
from hypothesis import given, settings
from hypothesis import strategies as st

from adserve.engine import Engine, main_plan
from adserve.engine.errors import DefinitionError, EngineError, LimitError

engine = Engine()
TOL = dict(rtol=1e-10, atol=1e-10)
ALL = ["value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian"]

JAX_NAMES = {name: getattr(jnp, name) for name in ("sin", "cos", "exp", "log", "tanh", "sqrt", "sum", "dot")}
JAX_NAMES.update({name: getattr(jax, name) for name in ("grad", "value_and_grad", "jvp", "vjp", "jacfwd", "jacrev",
                                                         "hessian")})


@dataclass
class Case:
    name: str
    program: str
    shapes: dict  # input name -> shape, in order
    entry: str = None
    reference: object = None  # a JAX function; default: the program itself run by JAX
    point: dict = field(default_factory=dict)  # fixed input values (default: random)

    def definition(self):
        d = {"inputs": [{"name": n, "shape": list(s)} for n, s in self.shapes.items()],
             "program": textwrap.dedent(self.program)}
        if self.entry:
            d["entry"] = self.entry
        return d

    def jax_fn(self):
        if self.reference is not None:
            return self.reference
        ns = dict(JAX_NAMES)
        exec(textwrap.dedent(self.program), ns)  # the test's own text, as the JAX reference
        if self.entry:
            return ns[self.entry]
        import ast
        return ns[[n.name for n in ast.parse(textwrap.dedent(self.program)).body][-1]]


CASES = [
    Case("helpers", """
        def sq(a):
            return a * a

        def poly(a, b):
            return sq(a) + 3.0 * a * b, a - b

        def f(x, y):
            p, q = poly(x, y)
            r = poly(sin(x), q)
            both = poly(p, 2.0)
            return sum(p * q) + sum(r[0]) + sum(both[1] * sq(q))
        """, {"x": (3,), "y": (3,)}),
    Case("closures", """
        def f(x, w):
            scale = 2.0
            def g(v):
                return scale * v * w
            a = g(x)
            scale = 3.0 * w
            b = g(x)
            def outer(z):
                def inner(u):
                    return u * z + w * scale
                return inner(z) + inner(2.0)
            k = lambda t: t * sum(x)
            return sum(a + b) + outer(w) + k(w)
        """, {"x": (3,), "w": ()}),
    Case("entry-and-defaults", """
        def main(x):
            return helper(x) * 2.0 + scaled(x[0]) + scaled(x[1], 5.0)

        def scaled(v, k=3.0):
            return k * v * v

        def helper(x):
            return sum(sin(x) * x)
        """, {"x": (2,)}, entry="main"),
    Case("grad-argnums-value_and_grad", """
        def energy(q, k):
            return 0.5 * k * sum(q * q) + sum(cos(q)) * k * k

        def f(x, k):
            g = grad(energy)(x, k)
            gk = grad(energy, argnums=1)(x, k)
            gq, gk2 = grad(energy, argnums=(0, 1))(x, k)
            v, gv = value_and_grad(energy)(x, k)
            neg = grad(energy, -1)(x, k)
            return sum(g * g) + gk * v + sum(gq * gv) + gk2 * neg
        """, {"x": (3,), "k": ()}),
    Case("has_aux", """
        def loss(w, x):
            r = tanh(w * x)
            return sum(r * r), r

        def f(w, x):
            g, aux = grad(loss, has_aux=True)(w, x)
            (v, aux2), g2 = value_and_grad(loss, has_aux=True)(w, x)
            return sum(g * aux) + v * sum(g2 + aux2)
        """, {"w": (3,), "x": (3,)}),
    Case("jvp-vjp", """
        def f(x, t):
            def h(v):
                return sin(v) * sum(v * v), exp(v[0])
            (a, b), (ta, tb) = jvp(h, (x,), (t,))
            out, pull = vjp(h, x)
            (ct,) = pull((t, t[0]))
            return sum(a * ta) + b * tb + sum(ct * x) + sum(out[0])
        """, {"x": (3,), "t": (3,)}),
    Case("jacobians-hessian", """
        def field(v, a):
            return sin(v) * a + v[0] * v

        def f(x, a):
            J = jacfwd(field)(x, a)
            K = jacrev(field)(x, a)
            Ja = jacrev(field, argnums=1)(x, a)
            Jf, Jfa = jacfwd(field, argnums=(0, 1))(x, a)
            H = hessian(lambda v: sum(v ** 3) * a)(x)
            (Hxx, Hxa), (Hax, Haa) = hessian(lambda v, b: sum(sin(v)) * b * b, argnums=(0, 1))(x, a)
            return sum(J * K) + sum(Ja) + sum(H * H) + sum(Jf) * Jfa[0] + sum(Hxx) + sum(Hxa) * Haa + sum(Hax)
        """, {"x": (3,), "a": ()}),
    Case("nesting", """
        def f(x):
            def g(y):
                return sin(y) * x * y
            d1 = grad(g)
            d2 = grad(grad(g))
            d3 = grad(lambda y: grad(grad(g))(y) * x)
            return d1(x) + d2(x) * x + d3(2.0 * x) + grad(grad(grad(sin)))(x)
        """, {"x": ()}),
    Case("hessian-of-a-function-using-grad", """
        def pot(v):
            return sum(exp(-v * v)) * sum(v)

        def kinetic(v):
            g = grad(pot)(v)
            return sum(g * g) + pot(v)

        def f(x):
            H = hessian(kinetic)(x)
            return sum(H) + kinetic(x)
        """, {"x": (3,)}),
    Case("loops-inside-grad", """
        def newton_sqrt(a):
            z = a
            for i in range(8):
                z = z - (z * z - a) / (2.0 * z)
            return z

        def f(x, p):
            def loss(q):
                acc = 0.0
                for i in range(len(q)):
                    acc = acc + newton_sqrt(q[i] * q[i] + p) * q[i]
                return acc
            g = grad(loss)(x)
            return sum(g * x) + loss(x)
        """, {"x": (3,), "p": ()}, point={"x": [0.4, -1.2, 0.9], "p": 1.5}),
    Case("bilevel", """
        def f(theta, data):
            def inner_loss(w):
                return sum((w - theta * data) ** 2) + 0.1 * sum(w ** 4)
            w = data * 0.0
            for i in range(15):
                w = w - 0.1 * grad(inner_loss)(w)
            return sum((w - data) ** 2)
        """, {"theta": (), "data": (3,)}),
    Case("derivatives-inside-loops", """
        def f(x, p):
            def h(v):
                acc = v
                for k in range(3):
                    acc = sin(acc) * p + v
                return acc
            out, pull = vjp(h, x)
            total = 0.0
            for i in range(2):
                total = total + grad(h)(x) * total + x
                total = total + pull(total)[0] * out
            return total
        """, {"x": (), "p": ()}),
    Case("branch-inside-grad", """
        def f(x):
            def h(v):
                if v > 0.5:
                    r = v * v
                else:
                    r = sin(v)
                return r
            return grad(h)(x) * x + h(x)
        """, {"x": ()}, reference=lambda x: jax.grad(lambda v: jnp.where(v > 0.5, v * v, jnp.sin(v)))(x) * x
        + jnp.where(x > 0.5, x * x, jnp.sin(x))),
    Case("vector-output", """
        def f(x):
            def g(v):
                return v * sum(sin(v))
            return jacrev(g)(x) @ x + grad(lambda v: sum(g(v)))(x)
        """, {"x": (3,)}, reference=lambda x: jax.jacrev(lambda v: v * jnp.sum(jnp.sin(v)))(x) @ x
        + jax.grad(lambda v: jnp.sum(v * jnp.sum(jnp.sin(v))))(x)),
    Case("tuple_returned_in_a_runtime_if", """
        def split(a, b):
            if a > b:
                return a * b, a - b
            else:
                return sin(a), b * b

        def f(x, y):
            p, q = split(x, y)
            return p * q + split(q, p)[1]
        """, {"x": (), "y": ()},
         reference=lambda x, y: (lambda p, q: p * q + jnp.where(q > p, q - p, p * p))(
             jnp.where(x > y, x * y, jnp.sin(x)), jnp.where(x > y, x - y, y * y))),
]
BY_NAME = {c.name: c for c in CASES}


def point_of(case, rng):
    return {n: np.asarray(case.point[n], dtype=np.float64) if n in case.point else rng.uniform(0.2, 1.3, s)
            for n, s in case.shapes.items()}


def jax_all(jf, xs, t, ct, jit=True):
    """JAX's answer to every compute kind, as the service words it."""
    nums = tuple(range(len(xs)))

    def everything(xs, t, ct):
        value = jf(*xs)
        out = {"value": value, "jvp": jax.jvp(jf, xs, t)[1], "vjp": jax.vjp(jf, *xs)[1](ct),
               "jacobian": jax.jacrev(jf, argnums=nums)(*xs)}
        if jnp.shape(value) == ():
            out["gradient"] = jax.grad(jf, argnums=nums)(*xs)
            out["hvp"] = jax.jvp(lambda *a: jax.grad(jf, argnums=nums)(*a), xs, t)[1]
            out["hessian"] = jax.hessian(jf, argnums=nums)(*xs)
        return out

    # jitted as a whole, which is much faster than eager JAX, except where XLA compiles unrolled loops
    run = everything if jit is False else jax.jit(everything)
    return run(tuple(jnp.asarray(x) for x in xs), tuple(jnp.asarray(a) for a in t), jnp.asarray(ct))


def compare(case, got, want, names, what=""):
    for kind, w in want.items():
        g = got[kind]
        if isinstance(g, dict):
            for i, a in enumerate(names):
                if isinstance(g[a], dict):
                    for j, b in enumerate(names):
                        np.testing.assert_allclose(g[a][b], w[i][j], err_msg=f"{case.name} {what}{kind}[{a}][{b}]",
                                                   **TOL)
                else:
                    np.testing.assert_allclose(g[a], w[i], err_msg=f"{case.name} {what}{kind}[{a}]", **TOL)
        else:
            np.testing.assert_allclose(g, w, err_msg=f"{case.name} {what}{kind}", **TOL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_compute_kind_agrees_with_jax(case):
    fn = engine.compile_definition(case.definition())
    rng = np.random.default_rng(1)
    x = point_of(case, rng)
    names = list(case.shapes)
    t = {n: rng.standard_normal(case.shapes[n]) for n in names}
    ct = rng.standard_normal(fn.output_shape)
    kinds = ALL if fn.output_shape == () else ["value", "jvp", "vjp", "jacobian"]
    got = engine.evaluate(fn, x, kinds, tangent=t, cotangent=ct)
    want = jax_all(case.jax_fn(), [x[n] for n in names], [t[n] for n in names], ct, jit="for " not in case.program)
    compare(case, got, want, names)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_batch_mode_answers_each_point_as_alone(case):
    """A batch of points gives what each point gives alone (which the test above checks against JAX)."""
    fn = engine.compile_definition(case.definition())
    rng = np.random.default_rng(2)
    names = list(case.shapes)
    points = [{n: v + 0.01 * k for n, v in point_of(case, rng).items()} for k in range(3)]
    ts = [{n: rng.standard_normal(case.shapes[n]) for n in names} for _ in points]
    cts = [rng.standard_normal(fn.output_shape) for _ in points]
    kinds = ALL if fn.output_shape == () else ["value", "jvp", "vjp", "jacobian"]
    got = engine.evaluate(fn, {n: np.stack([p[n] for p in points]) for n in names}, kinds,
                          tangent={n: np.stack([t[n] for t in ts]) for n in names}, cotangent=np.stack(cts),
                          batch=True)
    for k, (p, t, ct) in enumerate(zip(points, ts, cts)):
        alone = engine.evaluate(fn, p, kinds, tangent=t, cotangent=ct)
        for kind in kinds:
            want, have = alone[kind], got[kind]
            if not isinstance(want, dict):
                np.testing.assert_allclose(have[k], want, err_msg=f"{case.name} point {k} {kind}", **TOL)
                continue
            for a in names:
                if isinstance(want[a], dict):
                    for b in names:
                        np.testing.assert_allclose(have[a][b][k], want[a][b], err_msg=f"{case.name} {kind}", **TOL)
                else:
                    np.testing.assert_allclose(have[a][k], want[a], err_msg=f"{case.name} point {k} {kind}", **TOL)


# -- perturbation confusion ---------------------------------------------------------------------------------
def _scalar(program, x, kinds=("value", "gradient", "hessian")):
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "program": textwrap.dedent(program)})
    return engine.evaluate(fn, {"x": x}, list(kinds))


@pytest.mark.parametrize("inner", ["grad(g)(x)", "jvp(g, (x,), (1.0,))[1]", "jacfwd(g)(x)", "jacrev(g)(x)",
                                   "value_and_grad(g)(x)[1]", "vjp(g, x)[1](1.0)[0]"])
def test_no_perturbation_confusion_through_a_closure(inner):
    """d/dx [x * d/dy (x*y)] = d/dx x^2 = 2x, whichever operator takes the inner derivative."""
    r = _scalar(f"""
        def f(x):
            def g(y):
                return x * y
            return x * {inner}
        """, 1.7)
    assert r["value"] == pytest.approx(1.7 ** 2, rel=1e-14)
    assert r["gradient"]["x"] == pytest.approx(2 * 1.7, rel=1e-14)
    assert r["hessian"]["x"]["x"] == pytest.approx(2.0, rel=1e-14)


def test_the_surveys_section_3_1_example():
    """d/dx [x * (d/dy (x + y))|_{y=1}]|_{x=1} = 1; an implementation that confuses perturbations says 2."""
    for inner in ("grad(lambda y: x + y)(1.0)", "jvp(lambda y: x + y, (1.0,), (1.0,))[1]"):
        r = _scalar(f"""
            def f(x):
                return x * {inner}
            """, 1.0)
        assert r["gradient"]["x"] == 1.0


def test_perturbation_confusion_nested_operators_both_orders():
    """grad of a function whose closure is itself differentiated outside, and the other way round."""
    r = _scalar("""
        def f(x):
            def outer(u):
                def g(y):
                    return u * y * y
                return u * grad(g)(u)
            return grad(outer)(x) + outer(x)
        """, 0.8)
    # outer(u) = u * 2u^2 = 2u^3: outer' = 6u^2; f = 6x^2 + 2x^3, f' = 12x + 6x^2, f'' = 12 + 12x
    x = 0.8
    assert r["value"] == pytest.approx(6 * x ** 2 + 2 * x ** 3, rel=1e-14)
    assert r["gradient"]["x"] == pytest.approx(12 * x + 6 * x ** 2, rel=1e-14)
    assert r["hessian"]["x"]["x"] == pytest.approx(12 + 12 * x, rel=1e-14)


# -- errors --------------------------------------------------------------------------------------------------
def _error(program, shapes=None, entry=None):
    d = {"inputs": [{"name": "x", "shape": []}] if shapes is None else shapes, "program": textwrap.dedent(program)}
    if entry is not None:
        d["entry"] = entry
    with pytest.raises(EngineError) as e:
        engine.compile_definition(d)
    return e.value


def test_direct_recursion_is_refused_at_its_call():
    e = _error("""
        def f(x):
            if x > 0:
                return f(x - 1.0)
            return x
        """)
    assert isinstance(e, DefinitionError) and e.code == "recursion"
    assert e.location == {"line": 4, "column": 16} and "'f'" in e.message


def test_mutual_recursion_is_refused_naming_the_chain():
    e = _error("""
        def even(x):
            return odd(x) + 1.0

        def odd(x):
            return even(x) * 2.0

        def f(x):
            return even(x)
        """)
    assert e.code == "recursion" and e.location == {"line": 6, "column": 12}
    assert "line 6" in e.message and "even -> odd -> even" in e.message


def test_recursion_through_grad_is_refused():
    e = _error("""
        def f(x):
            return grad(f)(x)
        """)
    assert e.code == "recursion" and e.location["line"] == 3


@pytest.mark.parametrize("program, code, line, words", [
    ("def g(a, b):\n    return a * b\ndef f(x):\n    return g(x)\n", "bad_arguments", 4, "takes 2"),
    ("def g(a, b=2.0):\n    return a * b\ndef f(x):\n    return g(x, x, x)\n", "bad_arguments", 4, "1 to 2"),
    ("def g(a):\n    return a\ndef f(x):\n    return g(a=x)\n", "bad_arguments", 4, "keyword"),
    ("def f(x):\n    return nothing(x)\n", "unknown_function", 2, "nothing"),
    ("def f(x):\n    return x + nothing\n", "undefined_name", 2, "nothing"),
    ("def f(x):\n    def g(y):\n        return y\n    return g\n", "bad_value", 4, "'g'"),
    ("def f(x):\n    def g(y):\n        return y * v\n    w = g(x)\n    v = 2.0\n    return w\n", "undefined_name", 3,
     "before it is assigned in 'f'"),
    ("def f(x):\n    def g(y):\n        t = x * t\n        return t\n    return g(x)\n", "undefined_name", 3,
     "before it is assigned in 'g'"),
    ("def f(x):\n    return grad(lambda y: y * ones(2))(x)\n", "not_scalar", 2, "shape [2]"),
    ("def f(x):\n    return grad(x)(x)\n", "bad_arguments", 2, "function"),
    ("def f(x):\n    return grad(sin, argnums=1)(x)\n", "bad_arguments", 2, "out of range"),
    ("def f(x):\n    return grad(sin, wrt=1)(x)\n", "bad_arguments", 2, "wrt"),
    ("def f(x):\n    return jvp(sin, (x,), (ones(2),))[1]\n", "shape_mismatch", 2, "tangent 0"),
    ("def g(y):\n    if y > 0:\n        return y, y\n    return y\ndef f(x):\n    return g(x)[0]\n",
     "shape_mismatch", 2, "a tuple of 2 and one array"),
    ("def g(y):\n    return y\ndef g(y):\n    return -y\ndef f(x):\n    return g(x)\n", "bad_program", 3, "twice"),
    ("x = 1\ndef f(x):\n    return x\n", "bad_program", 1, "function definitions"),
    ("def f(x):\n    return x, x\n", "bad_program", 1, "one array"),
])
def test_errors_name_their_line(program, code, line, words):
    e = _error(program)
    assert e.code == code, (e.code, e.message)
    assert e.location is not None and e.location["line"] == line, (e.location, e.message)
    assert words in e.message, e.message


def test_entry_must_name_a_function_of_the_program():
    e = _error("def f(x):\n    return x\n", entry="g")
    assert e.code == "bad_program" and "'g'" in e.message and "f" in e.message
    with pytest.raises(DefinitionError) as e:
        engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "expr": "x", "entry": "f"})
    assert e.value.code == "bad_definition"


def test_exponential_inlining_is_refused_quickly():
    lines = ["def f0(x):\n    return sin(x)\n"]
    for k in range(1, 40):
        lines.append(f"def f{k}(x):\n    return f{k - 1}(x) + f{k - 1}(x * 1.0)\n")
    lines.append("def f(x):\n    return f39(x)\n")
    with pytest.raises(LimitError) as e:
        engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "program": "".join(lines)})
    assert e.value.code == "limit_exceeded" and e.value.location is not None


def test_repeated_calls_share_their_work():
    """Calls are inlined and hash-consed: calling a helper twice with the same arguments costs nothing."""
    once = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "program": textwrap.dedent("""
        def h(v):
            return sum(exp(sin(v)) * v)
        def f(x):
            return h(x)
        """)})
    twice = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "program": textwrap.dedent("""
        def h(v):
            return sum(exp(sin(v)) * v)
        def f(x):
            return h(x) * h(x)
        """)})
    assert twice.n_nodes == once.n_nodes + 1



@pytest.mark.parametrize("shape", [[], [1]])
def test_the_grad_of_one_number_is_taken_forward_without_a_tape(shape):
    """grad of a function of one number (a scalar, or an array of one) is its JVP with tangent 1: one pass,
    keeping nothing, where reverse mode through the `while` would keep the loop's iterations (tape=True).
    Its value is the reverse-mode gradient of g, and its own gradient is g's Hessian-vector product."""
    g = textwrap.dedent("""
        def g(t):
            y = t
            while y < 10.0:
                y = y * 1.5 + sin(y)
            return y * t
        """)
    one = "x" if not shape else "x[0]"
    inner = engine.compile_definition({"inputs": [{"name": "x", "shape": shape}],
                                       "program": g + f"def f(x):\n    return grad(g)({one})\n"})
    assert "while(" in inner.text() and "tape=True" not in inner.text()
    outer = engine.compile_definition({"inputs": [{"name": "t", "shape": []}], "program": g, "entry": "g"})
    for x in (0.3, 0.7, 2.5):
        got = engine.evaluate(inner, {"x": x if not shape else [x]}, ["value", "gradient"])
        want = engine.evaluate(outer, {"t": x}, ["gradient", "hvp"], tangent={"t": 1.0})
        np.testing.assert_allclose(np.ravel(got["value"]), want["gradient"]["t"], rtol=1e-12)
        np.testing.assert_allclose(np.ravel(got["gradient"]["x"]), want["hvp"]["t"], rtol=1e-10)

def test_an_array_named_like_a_builtin_does_not_hide_it():
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [2]}], "program": textwrap.dedent("""
        def f(x):
            sum = 2.0
            return sum * max(x)
        """)})
    assert engine.evaluate(fn, {"x": [1.0, 3.0]})["value"] == 6.0


# -- the graph form and the compiled tiers ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["jacobians-hessian", "bilevel"])
def test_the_graph_form_round_trips(name):
    fn = engine.compile_definition(BY_NAME[name].definition())
    again = engine.compile_definition(fn.export())
    assert again.id == fn.id


COMPILED = ["grad-argnums-value_and_grad", "jacobians-hessian", "nesting", "bilevel"]


def _plan_and_args(name, kinds=("value", "gradient", "hvp")):
    case = BY_NAME[name]
    fn = engine.compile_definition(case.definition())
    graph, _ = main_plan(fn, frozenset(kinds))
    rng = np.random.default_rng(3)
    points = [point_of(case, rng) for _ in range(3)]
    args = [np.stack([p[n] for p in points]) for n in fn.input_names]
    if "hvp" in kinds:  # the tangents
        args += [rng.standard_normal((3, *fn.input_shapes[n])) for n in fn.input_names]
    return graph, args


@pytest.mark.parametrize("name", COMPILED)
def test_numba_kernel_equals_interpreter(name):
    """The value, gradient and HVP plan of each (jacobians-hessian: value and gradient, already third
    derivatives; its HVP plan was a 40 s compile, and the python tier runs that plan below)."""
    from test_codegen import assert_same
    kinds = ("value", "gradient") if name == "jacobians-hessian" else ("value", "gradient", "hvp")
    assert_same(*_plan_and_args(name, kinds), f"language functions: {name}")


@pytest.mark.parametrize("name", COMPILED)
def test_python_tier_equals_interpreter(name):
    from test_python_tier import python_or_declined
    assert python_or_declined(*_plan_and_args(name), f"language functions: {name}")


# -- random programs with a derivative inside ---------------------------------------------------------------------
_UNARY = ["sin", "cos", "tanh", "exp"]
_OUTER = ["grad(g)(x)", "grad(g)(x * x)", "jvp(g, (x,), (x,))[1]", "grad(grad(g))(x)", "jacfwd(g)(x)",
          "value_and_grad(g)(x)[0] * grad(g)(0.5)", "hessian(g)(x)"]


@st.composite
def _closure_programs(draw):
    """`def f(x): def g(y): <random expression in x and y>; return <a derivative of g> * <x or 1>`."""
    e = draw(st.sampled_from(["y", "x * y", "y + x"]))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            e = f"{draw(st.sampled_from(_UNARY))}(0.5 * ({e}))"
        else:
            e = f"({e}) {draw(st.sampled_from(['+', '*', '-']))} {draw(st.sampled_from(['x', 'y', '0.7']))}"
    outer = draw(st.sampled_from(_OUTER))
    scale = draw(st.sampled_from(["x", "1.0", "sin(x)"]))
    return f"def f(x):\n    def g(y):\n        return {e}\n    return {outer} * {scale}\n"


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(_closure_programs(), st.floats(-1.5, 1.5))
def test_random_closures_with_a_derivative_inside_agree_with_jax(program, x):
    case = Case("random", program, {"x": ()})
    fn = engine.compile_definition(case.definition())
    got = engine.evaluate(fn, {"x": x}, ["value", "gradient", "hvp", "hessian"], tangent={"x": 1.0})
    want = jax_all(case.jax_fn(), [np.float64(x)], [np.float64(1.0)], np.float64(0.0))
    compare(case, got, {k: want[k] for k in ("value", "gradient", "hvp", "hessian")}, ["x"], program)


NESTED_TUPLE_IFS = {"inputs": [{"name": "x", "shape": []}], "program": textwrap.dedent("""
    def g(x):
        if x > 0:
            return x * x, 2.0 * x
        else:
            if x > -1:
                return -x, sin(x)
            else:
                return x, x * x * x

    def f(x):
        a, b = g(x)
        return a * b + g(2.0 * x)[1]
    """)}


def test_an_early_return_makes_the_rest_of_the_function_the_else():
    """`if c: return a` (or an elif chain of returns) then more statements: the rest is the else branch,
    with tuples too (run-time conditions), and with a static condition only the branch taken is lowered."""
    program = textwrap.dedent("""
        def g(y):
            if y > 1:
                return y, y
            elif y > 0:
                return 2.0 * y, y
            z = -y
            return y, z * y

        def h(n):
            if n > 2:
                return 1.0
            return 2.0

        def f(x):
            a, b = g(x)
            return a * b + h(3) + h(1)
        """)
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "program": program})
    xs = np.array([1.5, 0.5, -0.5])
    r = engine.evaluate(fn, {"x": xs}, ["value", "gradient"], batch=True)
    np.testing.assert_allclose(r["value"], [1.5 * 1.5 + 3, 2 * 0.5 * 0.5 + 3, (-0.5) * (0.5 * -0.5) + 3], rtol=1e-14)
    np.testing.assert_allclose(r["gradient"]["x"], [3.0, 2.0, -3 * 0.25], rtol=1e-14)


def test_tuples_returned_inside_nested_runtime_ifs_take_each_points_branch():
    def g(x):
        return (x * x, 2 * x) if x > 0 else (-x, np.sin(x)) if x > -1 else (x, x ** 3)

    def dg(x):  # derivatives of g's parts
        return (2 * x, 2.0) if x > 0 else (-1.0, np.cos(x)) if x > -1 else (1.0, 3 * x * x)
    fn = engine.compile_definition(NESTED_TUPLE_IFS)
    xs = np.array([0.7, -0.3, -2.0, 0.2, -0.6])
    r = engine.evaluate(fn, {"x": xs}, ["value", "gradient"], batch=True)
    for k, x in enumerate(xs):
        (a, b), (da, db), (_, d2) = g(x), dg(x), dg(2 * x)
        np.testing.assert_allclose(r["value"][k], a * b + g(2 * x)[1], rtol=1e-14)
        np.testing.assert_allclose(r["gradient"]["x"][k], da * b + a * db + 2 * d2, rtol=1e-13)


@pytest.mark.parametrize("program,words", [
    ("def f(x):\n    if x > 0:\n        return x, x\n    else:\n        return x\n",
     "return a tuple of 2 and one array"),
    ("def g(x):\n    if x > 0:\n        return x, (x, x)\n    else:\n        return x, (x, x)\n\n"
     "def f(x):\n    return g(x)[0]\n", "must hold arrays"),
])
def test_tuples_returned_inside_a_runtime_if_must_match(program, words):
    with pytest.raises(DefinitionError) as e:
        engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "program": program})
    assert words in e.value.message and e.value.location["line"] in (2, 3)


def test_derivative_operators_work_in_an_expression():
    """`grad`, `jvp`, `hessian` and lambdas in an `expr`, every compute kind against JAX."""
    expr = ("sum(grad(lambda v: sum(v ** 3) * x[0])(x)) + jvp(sin, (x,), (x,))[1][2]"
            " + hessian(lambda v: sum(exp(v * x[1])))(x)[1, 1] + grad(cos)(x[0])")

    def ref(x):
        return (jnp.sum(jax.grad(lambda v: jnp.sum(v ** 3) * x[0])(x)) + jax.jvp(jnp.sin, (x,), (x,))[1][2]
                + jax.hessian(lambda v: jnp.sum(jnp.exp(v * x[1])))(x)[1, 1] + jax.grad(jnp.cos)(x[0]))
    case = Case("expr", "", {"x": (3,)}, reference=ref)
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": expr})
    rng = np.random.default_rng(3)
    x, t = rng.uniform(0.2, 1.3, 3), rng.standard_normal(3)
    got = engine.evaluate(fn, {"x": x}, ALL, tangent={"x": t}, cotangent=np.array(1.5))
    compare(case, got, jax_all(ref, [x], [t], np.array(1.5)), ["x"])


def test_an_expression_with_functions_keeps_its_own_locations():
    with pytest.raises(DefinitionError) as e:
        engine.compile_definition({"inputs": [{"name": "x", "shape": []}], "expr": "grad(lambda v: v * y)(x)"})
    assert (e.value.code, e.value.location) == ("undefined_name", {"line": 1, "column": 20})
    plain = {"inputs": [{"name": "x", "shape": []}], "expr": "sin(x) * x"}
    assert engine.compile_definition(plain).id == engine.compile_definition(
        {**plain, "expr": "(lambda v: sin(v) * v)(x)"}).id  # the same computation, the same function
