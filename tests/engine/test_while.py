"""`while`, `break` and `continue` in programs: values and every derivative against JAX (x64) at 1e-10,
the iteration limit (422 while_limit naming the line), memory of reverse mode, and hostile programs.

JAX references are Python loops over concrete values (the path taken), or `lax.while_loop` for values.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import test_while_fast

from adserve.engine import Engine, Limits
from adserve.server.service import Service, ServiceError
from adserve.server.status import http

jax.config.update("jax_enable_x64", True)
TOL = dict(rtol=1e-10, atol=1e-10)
ALL = ["value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian"]


@pytest.fixture(scope="module")
def service():
    s = Service(Engine())
    yield s
    s.close()


def check_all(service, definition, jf, inputs, tangent):
    """Every compute kind against JAX; `jf` takes the inputs in order (Python control flow on values)."""
    fid = service.register(definition)[0]["id"]
    r = service.evaluate(fid, {"inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}, "compute": ALL,
                               "tangent": {k: np.asarray(v).tolist() for k, v in tangent.items()}, "cotangent": 2.0})
    names = list(inputs)
    xs = [jnp.asarray(inputs[n]) for n in names]
    ts = [jnp.asarray(tangent[n]) for n in names]
    argn = tuple(range(len(names)))
    np.testing.assert_allclose(r["value"], jf(*xs), **TOL)
    g = jax.grad(jf, argn)(*xs)
    _, jv = jax.jvp(jf, xs, ts)
    _, hv = jax.jvp(lambda *a: jax.grad(jf, argn)(*a), xs, ts)
    h = jax.hessian(jf, argn)(*xs)
    np.testing.assert_allclose(r["jvp"], jv, **TOL)
    for i, n in enumerate(names):
        np.testing.assert_allclose(r["gradient"][n], g[i], **TOL)
        np.testing.assert_allclose(r["vjp"][n], 2.0 * g[i], **TOL)
        np.testing.assert_allclose(r["jacobian"][n], g[i], **TOL)
        np.testing.assert_allclose(r["hvp"][n], hv[i], **TOL)
        for k, m in enumerate(names):
            np.testing.assert_allclose(r["hessian"][n][m], h[i][k], **TOL)
    return r


NEWTON = {"inputs": [{"name": "a", "shape": []}, {"name": "x0", "shape": []}], "program": """
def f(a, x0):
    x = x0
    n = 0
    while abs(x * x - a) > 1e-12:
        x = 0.5 * (x + a / x)
        n += 1
    return x * n + sin(x0) * x
"""}


def j_newton(a, x0):
    x, n = x0, 0
    while abs(x * x - a) > 1e-12:
        x = 0.5 * (x + a / x)
        n += 1
    return x * n + jnp.sin(x0) * x


def test_newton_square_root_every_derivative(service):
    r = check_all(service, NEWTON, j_newton, {"a": 2.0, "x0": 1.3}, {"a": 0.7, "x0": -0.4})
    assert abs(r["gradient"]["a"]) > 0


STATE = {"inputs": [{"name": "x", "shape": [4]}, {"name": "w", "shape": [4]}], "program": """
def f(x, w):
    y = x
    k = 0
    while sum(y * y) > 0.1 and k < 50:
        y = y * 0.8 + 0.05 * sin(w * y)
        k += 1
    total = 0.0
    for i in range(4):
        if y[i] < 0:
            continue
        total = total + y[i] * w[i]
        if total > 0.2:
            break
    return total + sum(y * w)
"""}


def j_state(x, w):
    y, k = x, 0
    while jnp.sum(y * y) > 0.1 and k < 50:
        y = y * 0.8 + 0.05 * jnp.sin(w * y)
        k += 1
    total = 0.0
    for i in range(4):
        if y[i] < 0:
            continue
        total = total + y[i] * w[i]
        if total > 0.2:
            break
    return total + jnp.sum(y * w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_while_with_array_state_break_and_continue_every_derivative(service, seed):
    rng = np.random.default_rng(seed)
    check_all(service, STATE, j_state, {"x": rng.standard_normal(4), "w": rng.uniform(0.5, 1.5, 4)},
              {"x": rng.standard_normal(4), "w": rng.standard_normal(4)})


BREAK_IN_WHILE = {"inputs": [{"name": "x", "shape": []}], "program": """
def f(x):
    y = x
    while True:
        y = y * 1.5 + 0.1
        if y > 10:
            break
    return y
"""}


def test_while_true_with_break_matches_lax_while_loop(service):
    fid = service.register(BREAK_IN_WHILE)[0]["id"]
    for x in (0.3, 2.0, 20.0):
        want = jax.lax.while_loop(lambda y: y[1], lambda y: (y[0] * 1.5 + 0.1, y[0] * 1.5 + 0.1 <= 10),
                                  (jnp.asarray(x), True))[0]
        r = service.evaluate(fid, {"inputs": {"x": x}, "compute": ["value", "gradient"]})
        np.testing.assert_allclose(r["value"], want, **TOL)
        steps = 1
        y = x * 1.5 + 0.1
        while y <= 10:
            y, steps = y * 1.5 + 0.1, steps + 1
        np.testing.assert_allclose(r["gradient"]["x"], 1.5 ** steps, **TOL)


def test_batched_points_run_their_own_trip_counts(service):
    fid = service.register(NEWTON)[0]["id"]
    a, x0 = np.array([2.0, 9.0, 0.5]), np.array([1.3, 1.0, 3.0])
    r = service.evaluate(fid, {"inputs": {"a": a.tolist(), "x0": x0.tolist()}, "compute": ["value", "gradient"],
                               "batch": True})
    for j in range(3):
        np.testing.assert_allclose(r["value"][j], j_newton(a[j], x0[j]), **TOL)
        np.testing.assert_allclose(r["gradient"]["a"][j], jax.grad(j_newton)(a[j], x0[j]), **TOL)


FOREVER = {"inputs": [{"name": "x", "shape": []}], "program": """
def f(x):
    y = x
    while y > -1:
        y = y + 1
    return y
"""}


def test_a_while_that_never_stops_is_422_while_limit_naming_its_line():
    """Past the bound (here 1,000 iterations; the default's value is the next test's) the service answers 422."""
    service = Service(Engine(limits=Limits().updated(max_while_iterations=1000)))
    fid = service.register(FOREVER)[0]["id"]
    for compute in (["value"], ["gradient"], ["jvp"]):
        with pytest.raises(ServiceError) as e:
            service.evaluate(fid, {"inputs": {"x": 0.0}, "compute": compute, "tangent": {"x": 1.0}})
        assert (http(e.value), e.value.code) == (422, "while_limit")
        assert e.value.location["line"] == 4 and "line 4" in e.value.message


def test_the_limit_is_the_engine_setting():
    assert Limits().max_while_iterations == 100_000  # ADSERVE_MAX_WHILE_ITERATIONS' default
    engine = Engine(limits=Limits().updated(max_while_iterations=5))
    fn = engine.compile_definition(BREAK_IN_WHILE)
    assert float(engine.evaluate(fn, {"x": np.array(5.0)})["value"]) > 10  # 2 iterations
    from adserve.engine.errors import EvaluationError
    with pytest.raises(EvaluationError) as e:
        engine.evaluate(fn, {"x": np.array(1e-9)})  # needs 10
    assert e.value.code == "while_limit"


LONG = {"inputs": [{"name": "x", "shape": [10]}, {"name": "r", "shape": []}], "program": """
def f(x, r):
    y = x
    k = 0
    while k < 100000:
        y = y * r + 0.001 * sin(y)
        k += 1
    return sum(y)
"""}


def test_reverse_pass_through_a_100000_step_while_loop_of_10_elements_answers():
    engine = Engine()
    fn = engine.compile_definition(LONG)
    x = np.linspace(-1, 1, 10)
    r = engine.evaluate(fn, {"x": x, "r": np.array(0.99999)}, ["value", "gradient"])
    y = x.copy()
    for _ in range(100000):
        y = y * 0.99999 + 0.001 * np.sin(y)
    np.testing.assert_allclose(r["value"], y.sum(), rtol=1e-9)
    assert np.all(np.isfinite(r["gradient"]["x"])) and r["gradient"]["x"].shape == (10,)


def test_a_tape_that_cannot_fit_is_refused_up_front_naming_the_limit():
    """One point's checkpointed tape (every 317th of 100,000 iterations of 11 carried numbers, and one segment of
    317) fits 500,000 elements; 100 points' do not, and are refused before anything runs."""
    engine = Engine(limits=Limits().updated(max_elements=500_000))
    fn = engine.compile_definition(LONG)
    assert fn.tape == 316 * 11 + 317 * 12
    engine.evaluate(fn, {"x": np.zeros(10), "r": np.array(0.5)})  # the value needs no tape
    from adserve.engine.errors import LimitError
    with pytest.raises(LimitError) as e:
        engine.evaluate(fn, {"x": np.zeros((100, 10)), "r": np.full(100, 0.5)}, ["gradient"], batch=True)
    assert "max_elements" in e.value.message and "728,000" in e.value.message


def test_hostile_programs_get_a_4xx_naming_the_line(service):
    gather = {"inputs": [{"name": "x", "shape": [3]}, {"name": "i", "shape": [2], "dtype": "int64"}],
              "program": "def f(x, i):\n    s = 0.0\n    for k in range(2):\n        s = s + x[i[k]]\n    return s"}
    fid = service.register(gather)[0]["id"]
    for bad in ([0, 3], [0, 2 ** 62]):
        with pytest.raises(ServiceError) as e:
            service.evaluate(fid, {"inputs": {"x": [1.0, 2.0, 3.0], "i": bad}})
        assert 400 <= http(e.value) < 500
        assert e.value.location == {"line": 4, "column": 17} if bad[1] == 3 else "inputs.i" in e.value.message
    with pytest.raises(ServiceError) as e:
        service.register({"inputs": [{"name": "x", "shape": []}],
                          "program": "def f(x):\n    while x > 0:\n        y = 1.0\n    return x"})
    assert http(e.value) == 422 and e.value.location["line"] == 2


def test_graph_form_round_trips_with_the_same_id(service):
    for d in (NEWTON, STATE, FOREVER):
        info, _ = service.register(d)
        assert service.register(service.graph(info["id"]))[0]["id"] == info["id"]


def test_compiled_while_matches_the_interpreter_and_stops_at_the_limit(tmp_path):
    from adserve.engine.backend import Tiered
    from adserve.engine.errors import EvaluationError

    engine = Engine(Tiered(str(tmp_path)), limits=Limits().updated(max_while_iterations=1000))
    try:
        fn, forever = engine.compile_definition(NEWTON), engine.compile_definition(FOREVER)
        args = {"a": np.array([2.0, 9.0, 0.5]), "x0": np.array([1.3, 1.0, 3.0])}
        want = engine.evaluate(fn, args, ["value", "gradient"], batch=True)
        with pytest.raises(EvaluationError):
            engine.evaluate(forever, {"x": np.array(0.0)})
        assert engine.settle(900)
        meta = {}
        got = engine.evaluate(fn, args, ["value", "gradient"], batch=True, meta=meta)
        assert meta["backend"] != "interpreter"
        np.testing.assert_allclose(got["value"], want["value"], **TOL)
        np.testing.assert_allclose(got["gradient"]["a"], want["gradient"]["a"], **TOL)
        meta = {}
        with pytest.raises(EvaluationError) as e:
            engine.evaluate(forever, {"x": np.array(0.0)}, meta=meta)
        assert e.value.code == "while_limit" and "line 4" in e.value.message
    finally:
        engine.close()


DRIFT = {"inputs": [{"name": "x", "shape": []}, {"name": "a", "shape": []}], "program": """
def f(x, a):
    y = x
    n = 0
    while n < 3000 + 1000 * a:
        y = y + 0.001 * sin(a * y)
        n += 1
    return y * y + n
"""}


def test_a_loop_begun_while_the_generator_loads_is_handed_off_once_it_has_loaded(monkeypatch):
    """The first long loop of a process starts before the code generator has loaded (a thread loads it): the
    loop looks again every ESCALATE_AFTER iterations, and goes on in generated code once it can."""
    from adserve.engine.codegen import while_kernel
    assert while_kernel.generator_loaded(timeout=None)
    looks, handed = [], []
    monkeypatch.setattr(while_kernel, "generator_loaded", lambda timeout=0.0: looks.append(1) or len(looks) > 1)
    finish = while_kernel.finish
    monkeypatch.setattr(while_kernel, "finish", lambda *a, **k: handed.append(1) or finish(*a, **k))
    engine = Engine()
    fn = engine.compile_definition(DRIFT)
    point = {"x": np.array(0.3), "a": np.array(1.5)}  # 4,500 iterations: looks at 2,000 (loading) and 4,000
    got = engine.evaluate(fn, point, ["value", "gradient"])
    assert len(looks) == 2 and handed == [1]
    monkeypatch.setattr(while_kernel, "ESCALATE_AFTER", 10 ** 9)  # the interpreter all the way
    want = engine.evaluate(fn, point, ["value", "gradient"])
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
    for n in ("x", "a"):
        np.testing.assert_allclose(got["gradient"][n], want["gradient"][n], rtol=1e-12, atol=1e-12)


def test_a_long_while_finishes_in_generated_code_with_the_interpreters_answers(monkeypatch):
    """Past while_kernel.ESCALATE_AFTER iterations the interpreter hands a scalar loop to generated code (the
    python tier's), from the carries it reached; every compute kind and a batch whose points run different
    trip counts (one stops before the hand-over) equal the interpreter's own answers."""
    from adserve.engine.codegen import while_kernel
    assert while_kernel.generator_loaded(timeout=None)  # loops stay on the interpreter while it loads
    handed = []
    finish = while_kernel.finish
    monkeypatch.setattr(while_kernel, "finish", lambda *a, **k: handed.append(1) or finish(*a, **k))
    x, a = np.array([0.3, 1.1, -0.4]), np.array([0.5, 1.5, -2.9])  # 3500, 4500 and 100 iterations
    req = dict(compute=ALL, tangent={"x": np.ones(3), "a": np.ones(3)}, cotangent=np.full(3, 2.0), batch=True)

    def run():
        engine = Engine()
        return engine.evaluate(engine.compile_definition(DRIFT), {"x": x, "a": a}, **req)
    fast = run()
    assert handed
    monkeypatch.setattr(while_kernel, "ESCALATE_AFTER", 10 ** 9)
    slow = run()
    for kind in ALL:
        a_, b_ = fast[kind], slow[kind]
        if isinstance(a_, dict):
            for k in a_:
                if isinstance(a_[k], dict):
                    for m in a_[k]:
                        np.testing.assert_allclose(a_[k][m], b_[k][m], rtol=1e-12, atol=1e-12)
                else:
                    np.testing.assert_allclose(a_[k], b_[k], rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_allclose(a_, b_, rtol=1e-12, atol=1e-12)
    y = 0.3
    for _ in range(3500):
        y = y + 0.001 * np.sin(0.5 * y)
    np.testing.assert_allclose(fast["value"][0], y * y + 3500, rtol=1e-12)


def test_a_while_that_never_stops_at_the_default_limit_is_422_naming_its_line(service):
    """At the default bound (100,000 iterations), for a value and a gradient: 422 while_limit naming line 4."""
    fid = service.register(FOREVER)[0]["id"]
    for compute in (["value"], ["value", "gradient"]):
        with pytest.raises(ServiceError) as e:
            service.evaluate(fid, {"inputs": {"x": 0.5}, "compute": compute})
        assert (http(e.value), e.value.code) == (422, "while_limit")
        assert "line 4" in e.value.message and "100,000" in e.value.message


STUCK = {"inputs": [{"name": "a", "shape": []}], "program": """
def f(a):
    x = a
    while abs(x * x - a) > 0:
        x = 0.5 * (x + a / x)
    return x
"""}


def test_a_while_whose_variables_stop_changing_is_refused_at_once_naming_its_line(service):
    """Newton's iteration for sqrt(2) reaches a fixed point where x*x - 2 is not exactly 0: the loop could
    never end, and says so after a few iterations rather than at the limit (a = 4 ends normally)."""
    fid = service.register(STUCK)[0]["id"]
    assert service.evaluate(fid, {"inputs": {"a": 4.0}})["value"] == 2.0
    for compute in (["value"], ["gradient"]):
        with pytest.raises(ServiceError) as e:
            service.evaluate(fid, {"inputs": {"a": 2.0}, "compute": compute})
        assert (http(e.value), e.value.code) == (422, "while_limit")
        assert e.value.location["line"] == 4 and "line 4" in e.value.message
        assert "stopped changing" in e.value.message
        assert int(e.value.message.split("after ")[1].split(" ")[0]) <= 32


def test_recursion_and_a_gather_out_of_range_name_the_line_in_the_message(service):
    with pytest.raises(ServiceError) as e:
        service.register({"inputs": [{"name": "x", "shape": []}], "entry": "f",
                          "program": "def f(x):\n    return g(x)\n\ndef g(y):\n    return 2.0 * f(y)"})
    assert (http(e.value), e.value.code) == (422, "recursion") and "line 5" in e.value.message
    fid = service.register({"inputs": [{"name": "x", "shape": [4]}, {"name": "i", "shape": [2], "dtype": "int64"}],
                            "program": "def f(x, i):\n    y = 2.0 * x\n    return sum(y[i])"})[0]["id"]
    with pytest.raises(ServiceError) as e:
        service.evaluate(fid, {"inputs": {"x": [1.0, 2.0, 3.0, 4.0], "i": [1, 7]}})
    assert (http(e.value), e.value.code) == (422, "index_out_of_range") and "line 3" in e.value.message
    assert service.evaluate(fid, {"inputs": {"x": [1.0, 2.0, 3.0, 4.0], "i": [1, 3]}})["value"] == 12.0


SWAP = {"inputs": [{"name": "x", "shape": []}, {"name": "y", "shape": []}], "program": test_while_fast.SWAP}
VIEW = {"inputs": [{"name": "x", "shape": [4]}], "program": """
def f(x):
    y = x
    w = x * 2.0
    c = 0.0
    while c < 5.0:
        y = w[::-1]
        w = y * 0.5 + c
        c = c + 1.0
    return y * 100.0 + w
"""}


def test_carries_that_swap_or_view_each_other_answer_as_python_does():
    """A body may give one carry's old array as another's new value (a swap) or a view of it (`w[::-1]`): each
    new value is from the old carries, never from one already updated (the loop wrote its carries back in
    place one after another, and answered 22 for the swap)."""
    engine = Engine()
    fn = engine.compile_definition(SWAP)
    assert engine.evaluate(fn, {"x": 1.0, "y": 2.0})["value"] == 21.0  # 3 swaps
    got = engine.evaluate(fn, {"x": [1.0, 2.0], "y": [2.0, 3.0]}, batch=True)["value"]
    np.testing.assert_array_equal(got, [21.0, 23.0])  # 3 and 6 swaps
    x = np.array([0.5, 1.0, -2.0, 3.0])
    y, w, c = x, x * 2.0, 0.0
    while c < 5.0:
        y = w[::-1]
        w = y * 0.5 + c
        c = c + 1.0
    fn = engine.compile_definition(VIEW)
    np.testing.assert_array_equal(engine.evaluate(fn, {"x": x})["value"], y * 100.0 + w)
