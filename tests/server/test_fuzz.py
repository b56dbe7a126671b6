"""Fuzzing, bounded in time: schemathesis against the app's own /openapi.json (no 5xx, responses match the
schema), and hypothesis on the expr and program parsers (random text, random syntax trees) and on graph JSON.

Each property may only end in a `ServiceError` (a 4xx), never anything else, and a good request made after
each bad one still gets the right answer."""

import math
import string

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks

from adserve.engine import COMPUTE_KINDS
from adserve.server.app import build
from adserve.server.service import Service, ServiceError
from adserve.server.settings import Settings

# no per-example deadline: CI may run beside a CPU hog, and a slow example is not a wrong one
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
XY = [{"name": "x", "shape": []}, {"name": "y", "shape": [3]}]
SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
GOOD = math.log(2.0) + 10.0 - math.sin(5.0)

service = Service(result_cache_bytes=1 << 20)
tried = {"inputs": 0, "rejected": 0}


def attempt(definition, evaluation=None):
    """Register (and evaluate); True if accepted, False if refused with a 4xx. Anything else fails the test."""
    tried["inputs"] += 1
    try:
        info, _ = service.register(definition)
        if evaluation is not None:
            service.evaluate(info["id"], evaluation)
        return True
    except ServiceError as e:
        assert e.kind in ("bad_request", "unprocessable", "too_large", "not_found"), e.kind
        assert e.message and e.code
        tried["rejected"] += 1
        return False
    finally:  # a bad request never changes what a good one gets
        r = service.evaluate(SURVEY, {"inputs": {"x1": 2.0, "x2": 5.0}})
        assert np.isclose(r["value"], GOOD)


# -- random text ---------------------------------------------------------------------------
ALPHABET = string.ascii_letters[:8] + string.digits + "xy_ ()[]{},.:+-*/@%<>=!~^&|\n\t'\"#\\" + "é∂\x00"


@FUZZ
@given(st.text(ALPHABET, max_size=80))
def test_random_text_as_expr(text):
    attempt({"inputs": XY, "expr": text}, {"inputs": {"x": 0.5, "y": [1.0, 2.0, 3.0]}})


@FUZZ
@given(st.text(ALPHABET, max_size=120))
def test_random_text_as_program(text):
    attempt({"inputs": XY, "program": "def f(x, y):\n" + text})


# -- random syntax trees -------------------------------------------------------------------
FUNCS1 = ["sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "exp", "expm1", "log",
          "log1p", "sqrt", "abs", "sigmoid", "softplus", "sum", "mean", "prod", "max", "min", "logsumexp", "transpose"]
FUNCS2 = ["pow", "arctan2", "hypot", "maximum", "minimum", "dot", "matmul"]
leaves = st.sampled_from(["x", "y", "y[0]", "y[1:]", "y[-1]", "0", "1", "2.5", "1e308", "-0.0", "1e-320", "x"])


def extend(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**", "@"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(FUNCS1), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(FUNCS2), children, children).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.tuples(children, children, children, st.sampled_from(["<", ">=", "=="])).map(
            lambda t: f"where({t[0]} {t[3]} {t[1]}, {t[1]}, {t[2]})"),
        st.tuples(st.sampled_from(["sum", "max", "logsumexp"]), children, st.integers(-2, 2)).map(
            lambda t: f"{t[0]}({t[1]}, axis={t[2]})"),
        st.tuples(st.sampled_from(["stack", "concatenate"]), children, children).map(lambda t: f"{t[0]}([{t[1]}, {t[2]}])"),
        st.tuples(children, st.integers(-4, 4)).map(lambda t: f"{t[0]}[{t[1]}]"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"reshape({c}, (3, 1))"),
    )


expressions = st.recursive(leaves, extend, max_leaves=12)
COMPUTE = st.lists(st.sampled_from([k for k in COMPUTE_KINDS if k != "trace"]), min_size=1, max_size=3, unique=True)


@FUZZ
@given(expressions, COMPUTE, st.sampled_from([0.5, -1.0, 0.0, 1e300]))
def test_random_expression_trees(expr, compute, x):
    attempt({"inputs": XY, "expr": expr},
            {"inputs": {"x": x, "y": [1.0, -2.0, 3.0]}, "compute": compute,
             "tangent": {"x": 1.0, "y": [0.0, 1.0, 0.0]}, "cotangent": 1.0})


statements = st.one_of(
    expressions.map(lambda e: f"s = s + {e}"),
    st.tuples(st.integers(-3, 5), expressions).map(lambda t: f"for i in range({t[0]}):\n        s = s * 0.5 + {t[1]}"),
    expressions.map(lambda e: f"if x > 0:\n        s = {e}\n    else:\n        s = -s"),
    st.tuples(st.integers(-4, 4), expressions).map(lambda t: f"y[{t[0]}] = {t[1]}"),
    st.sampled_from(["z = zeros(3)", "z = ones((2, 2))", "s += len(y)", "s = s + y.shape[0]", "return y"]),
)


@FUZZ
@given(st.lists(statements, max_size=4), st.sampled_from(["s", "sum(y) + s", "y", "z"]))
def test_random_programs(body, result):
    lines = ["s = x", *body, f"return {result}"]
    attempt({"inputs": XY, "program": "def f(x, y):\n" + "\n".join("    " + line for line in lines)},
            {"inputs": {"x": 0.5, "y": [1.0, 2.0, 3.0]}, "compute": ["value", "gradient"]})


# -- graph JSON ----------------------------------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False, width=32),
                      st.sampled_from(["x", "y", "add", "mul", "sin", "sum", "loop", "cond", "n0", "n1", "out"]))
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["op", "id", "inputs", "args", "shape", "value", "params", "body", "nodes", "outputs", "axis"]),
    c, max_size=4), max_leaves=20)
node = st.fixed_dictionaries({"id": st.sampled_from(["n0", "n1", "n2", "x"]),
                              "op": st.sampled_from(["add", "mul", "sin", "sum", "input", "const", "loop", "nope"]),
                              "inputs": st.lists(st.sampled_from(["x", "y", "n0", "n1", "n2"]), max_size=3)},
                             optional={"value": json_values, "shape": st.lists(st.integers(-1, 4), max_size=2),
                                       "params": json_values})


@FUZZ
@given(st.one_of(json_values, st.fixed_dictionaries({"nodes": st.lists(node, max_size=5), "outputs": json_values}),
                 st.fixed_dictionaries({"nodes": st.lists(node, max_size=5),
                                        "output": st.sampled_from(["n0", "n1", "n2", "x"])})))
def test_random_graph_json(graph):
    attempt({"inputs": XY, "graph": graph}, {"inputs": {"x": 0.5, "y": [1.0, 2.0, 3.0]}})


@FUZZ
@given(json_values)
def test_random_definitions_and_evaluations(value):
    attempt(value if isinstance(value, dict) else {"inputs": value, "expr": "x"})
    tried["inputs"] += 1
    try:
        service.evaluate(SURVEY, value if isinstance(value, dict) else {"inputs": value})
    except ServiceError:
        tried["rejected"] += 1


def test_report_what_was_tried():
    print(f"\nfuzz: {tried['inputs']} inputs tried, {tried['rejected']} rejected with a 4xx, none failed")
    assert tried["inputs"] >= 0


# -- schemathesis against the OpenAPI document -----------------------------------------------
app = build(Settings(grpc_port=0), service=Service(result_cache_bytes=1 << 20)).http
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi(case):
    response = case.call()
    case.validate_response(response, checks=[st_checks.not_a_server_error, st_checks.status_code_conformance,
                                             st_checks.content_type_conformance,
                                             st_checks.response_schema_conformance])
