"""Fuzzing that reaches the engine, bounded in time: hypothesis over the three front ends (expr, program,
graph) and every evaluation (`compute` kinds, `wrt` subsets, `batch`, tangents and cotangents, used or not),
and schemathesis against the app's own /openapi.json and the Open Inference Protocol's /v2/openapi.json.

Graph nodes are drawn from the primitive table itself (`PRIMS`: arity and parameter kinds), so most graphs are
valid and get built, compiled and evaluated; a share of them is mutated (parameters of the wrong type, wrong
arity, wrong shapes, outputs naming a structured node, ...). Each attempt may only end in success or a
`ServiceError` of a 4xx kind, never anything else, and a good request made after each bad one still gets the
right answer. `test_report` prints, per front end, what was tried, the share that compiled a function
(reached the engine) and the share evaluated, and holds those shares above floors: a fuzzer that only
exercises the parsers' first refusals fails it.
"""

import math
import os
import string
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks

from adserve.engine import COMPUTE_KINDS
from adserve.engine.builder import PRIMS
from adserve.server.app import build
from adserve.server.service import Service, ServiceError
from adserve.server.settings import Settings

# no per-example deadline: CI may run beside a CPU hog, and a slow example is not a wrong one
# ADSERVE_FUZZ_EXAMPLES=2000 ADSERVE_FUZZ_SEED=random: a longer, new search (the report's floors still hold)
EXAMPLES = int(os.environ.get("ADSERVE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=os.environ.get("ADSERVE_FUZZ_SEED") != "random", database=None)
INPUTS = {"x": (), "y": (3,), "m": (2, 3)}
SPECS = [{"name": n, "shape": list(s)} for n, s in INPUTS.items()]
POINT = {"x": 0.5, "y": [1.0, -2.0, 3.0], "m": [[0.5, 1.5, -1.0], [2.0, 0.25, 1.0]]}
SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
GOOD = math.log(2.0) + 10.0 - math.sin(5.0)
FOUR_XX = ("bad_request", "unprocessable", "too_large", "not_found")

service = Service(result_cache_bytes=1 << 20)
tried = {front: Counter() for front in ("expr", "program", "graph", "text", "other")}


def attempt(front, definition, evaluation=None):
    """Register, then evaluate (`evaluation`: a dict, or a function of the function's info giving one).
    Counts what happened; anything but success or a 4xx ServiceError fails the test."""
    count = tried[front]
    count["inputs"] += 1
    try:
        info, _ = service.register(definition)
        count["compiled"] += 1
        if evaluation is not None:
            body = evaluation(info) if callable(evaluation) else evaluation
            count["evaluations"] += 1
            service.evaluate(info["id"], body)
            count["evaluated"] += 1
    except ServiceError as e:
        assert e.kind in FOUR_XX, (e.kind, e.code, e.message)
        assert e.message and e.code and len(e.message) <= 2100
        count[f"refused:{e.code}"] += 1
    finally:  # a bad request never changes what a good one gets
        r = service.evaluate(SURVEY, {"inputs": {"x1": 2.0, "x2": 5.0}})
        assert np.isclose(r["value"], GOOD)


# -- evaluations: every compute kind, wrt subsets, batch, tangents and cotangents ----------------------
def _tensor(shape, batch, value=0.5):
    return np.full(((2,) if batch else ()) + tuple(shape), value).tolist()


@st.composite
def evaluations(draw, info):
    """An evaluation of the function `info` describes: mostly right, sometimes with a wrong or unused part."""
    names = [i["name"] for i in info["inputs"]]
    shapes = {i["name"]: tuple(i["shape"]) for i in info["inputs"]}
    out_shape = tuple(info["output_shape"])
    batch = draw(st.integers(0, 5)) == 0
    compute = draw(st.lists(st.sampled_from(COMPUTE_KINDS), max_size=3, unique=True))
    body = {"inputs": {n: (np.asarray(POINT[n]) if not batch else np.stack([POINT[n]] * 2)).tolist()
                       for n in names if n in POINT}, "batch": batch}
    if compute:
        body["compute"] = compute
    wrt = None
    if names and draw(st.booleans()):
        wrt = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        body["wrt"] = wrt
    kind = draw(st.sampled_from(["right", "right", "right", "all inputs", "none", "wrong shape", "unused"]))
    tangent_names = wrt or names
    if kind == "right" or kind == "unused":
        body["tangent"] = {n: _tensor(shapes[n], batch, 1.0) for n in tangent_names}
        body["cotangent"] = _tensor(out_shape, batch, 1.0)
    elif kind == "all inputs":
        body["tangent"] = {n: _tensor(shapes[n], batch, 1.0) for n in names}
        body["cotangent"] = _tensor(out_shape, batch, 1.0)
    elif kind == "wrong shape":
        body["tangent"] = {n: _tensor((*shapes[n], 2), batch) for n in tangent_names}
        body["cotangent"] = _tensor((*out_shape, 2), batch)
    if kind == "unused":
        body["compute"] = [k for k in compute if k not in ("jvp", "hvp", "vjp", "trace")] or ["value"]
        if draw(st.booleans()):
            body["cotangent"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    return body


# -- graphs from the primitive table ---------------------------------------------------------------
STRUCTURED = {"loop", "cond"}
OPS = sorted(op for op in PRIMS if op not in STRUCTURED)
BAD_VALUES = ["0", "i,j->ij", [0, "a"], [[0, 1]], 1.5, None, -1, -(10 ** 30), 10 ** 30, 2 ** 63, True, {}, [None],
              [-5], [10 ** 20], [1.5], [[0, 10 ** 30, 1]], [[0, -2, 1]], [[0, 1, 0]]]


def _shape_of(op, shapes, params):
    """The node's output shape by the op's own rules, or None when it does not build."""
    p = PRIMS[op]
    try:
        norm = p.normalize(shapes, dict(params)) if p.normalize else params
        return tuple(p.shape(*shapes, **norm))
    except Exception:
        return None


def _params(draw, op, shapes):
    """Valid parameters for `op` on arguments of `shapes`, by each parameter's kind."""
    s = shapes[0] if shapes else ()
    r, size = len(s), math.prod(s)
    out = {}
    for name, kind in PRIMS[op].params:
        if kind == "axes":
            out[name] = draw(st.one_of(st.none(), st.integers(-r, r - 1) if r else st.none(),
                                       st.lists(st.integers(0, max(r - 1, 0)), max_size=r, unique=True)))
        elif kind == "axis":
            out[name] = draw(st.integers(-r, r - 1)) if r else 0
        elif kind == "perm":
            out[name] = draw(st.one_of(st.none(), st.permutations(list(range(r)))))
        elif kind == "shape" and op == "reshape":
            out[name] = draw(st.sampled_from([[size], [1, size], list(s), [size, 1]] + ([[]] if size == 1 else [])))
        elif kind == "shape" and op == "broadcast_to":
            out[name] = draw(st.sampled_from([[2, *s], list(s), [1, *s]]))
        elif kind == "shape":  # sum_to
            out[name] = draw(st.sampled_from([[], list(s), [1] * r]))
        elif kind == "spec":
            letters = "abcd"[:r]
            other = "".join(draw(st.sampled_from([letters[i], "e"])) if i < r else "f"
                            for i in range(len(shapes[1]) if len(shapes) > 1 else 0))
            used = sorted(set(letters + other))
            keep = draw(st.lists(st.sampled_from(used), unique=True)) if used else []
            out[name] = f"{letters},{other}->{''.join(keep)}"
        elif kind == "index":
            idx = []
            for d in s:
                if d and draw(st.booleans()):
                    idx.append(draw(st.integers(0, d - 1)))
                else:
                    start = draw(st.integers(0, max(d - 1, 0)))
                    step = draw(st.integers(1, 2))
                    length = draw(st.integers(0, (d - 1 - start) // step + 1 if d else 0))
                    idx.append([start, length, step])
            out[name] = idx
        elif kind == "size":
            out[name] = draw(st.one_of(st.none(), st.integers(1, max(s[0], 1)) if r else st.none()))
    return out


@st.composite
def graph_definitions(draw):
    """A node list over the inputs x, y, m, drawn op by op from the primitive table; mostly valid."""
    scope = dict(INPUTS)
    nodes, mutated = [], False
    for i in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(OPS))
        arity = PRIMS[op].arity or draw(st.integers(1, 3))
        pool = sorted(scope)
        args = [draw(st.sampled_from(pool))]
        for _ in range(arity - 1):  # later arguments: mostly the same shape as the first, or a scalar
            same = [a for a in pool if scope[a] == scope[args[0]]]
            args.append(draw(st.sampled_from(same + ["x"] + (["lit"] if op in ("update_slice", "dyn_update") else []))))
        shapes = [scope.get(a, ()) for a in args]
        params = _params(draw, op, shapes)
        if op in ("dyn_slice", "dyn_update"):  # the last argument is a run-time index: a literal in range
            args[-1], shapes[-1] = 0.0, ()
        if op in ("update_slice", "dyn_update"):  # the value written has the slice's shape
            part = _shape_of("slice" if op == "update_slice" else "dyn_slice",
                             [shapes[0]] + ([()] if op == "dyn_update" else []), params)
            if part is not None:
                args[1], shapes[1] = {"value": 2.0, "shape": list(part)}, part
        args = [{"value": 1.5, "shape": []} if a == "lit" else a for a in args]
        node = {"id": f"n{i}", "op": op, "args": args}
        if params:
            node["params"] = params
        if draw(st.integers(0, 7)) == 0:
            node, mutated = _mutate(draw, node, sorted(scope)), True
        nodes.append(node)
        shape = _shape_of(op, shapes, params)
        if shape is not None and not mutated:
            scope[node["id"]] = shape
    out = nodes[-1]["id"] if draw(st.integers(0, 9)) else draw(st.sampled_from(["x", "n9", 2.5, {"value": 1.0, "shape": [2]}]))
    return {"inputs": SPECS, "graph": {"nodes": nodes, "outputs": [out]}}


def _mutate(draw, node, pool):
    how = draw(st.sampled_from(["param", "param", "param", "extra param", "drop arg", "add arg", "op", "arg"]))
    node = dict(node)
    if how == "param":
        names = [n for n, _ in PRIMS[node["op"]].params] or ["axes"]
        node["params"] = {**node.get("params", {}), draw(st.sampled_from(names)): draw(st.sampled_from(BAD_VALUES))}
    elif how == "extra param":
        node["params"] = {**node.get("params", {}), "nope": 1}
    elif how == "drop arg":
        node["args"] = node["args"][:-1]
    elif how == "add arg":
        node["args"] = [*node["args"], draw(st.sampled_from(pool))]
    elif how == "op":
        node["op"] = draw(st.sampled_from(OPS + ["loop", "cond"]))
    else:
        node["args"] = [draw(st.sampled_from(pool + ["zz", None, [1], {"value": "NaN", "shape": [3]},
                                                   {"data": [1, 2], "shape": [3]}, 10 ** 400]))] + node["args"][1:]
    return node


@FUZZ
@given(graph_definitions(), st.data())
def test_graphs_from_the_primitive_table(definition, data):
    attempt("graph", definition, lambda info: data.draw(evaluations(info)))


# structured nodes: programs with loops and branches, exported as graphs, then mutated
SEEDS = [
    "def f(x, y, m):\n    s = x\n    for i in range(3):\n        s = s * 0.5 + y[i]\n    return s",
    "def f(x, y, m):\n    if x > 0:\n        s = sin(x)\n    else:\n        s = cos(x)\n    return s * sum(y)",
    "def f(x, y, m):\n    z = zeros(3)\n    for i in range(3):\n        z[i] = y[i] * x\n    return z",
]


@FUZZ
@given(st.sampled_from(SEEDS), st.sampled_from(["none", "output the node", "param", "body", "outputs"]),
       st.sampled_from(BAD_VALUES), st.data())
def test_structured_graphs(seed, how, bad, data):
    graph = service.graph(service.register({"inputs": SPECS, "program": seed})[0]["id"])["graph"]
    nodes = [dict(n) for n in graph["nodes"]]
    structured = [n for n in nodes if n["op"] in STRUCTURED]
    node = structured[0]
    if how == "output the node":  # a structured node's own id names no value
        graph = {**graph, "outputs": [node["id"]]}
    elif how == "param":
        node["params"] = {**node.get("params", {}), data.draw(st.sampled_from(sorted(node.get("params", {})) or ["length"])): bad}
    elif how == "body":
        body = data.draw(st.sampled_from(sorted(node["bodies"])))
        node["bodies"] = {**node["bodies"], body: {**node["bodies"][body], "outputs": [bad]}}
    elif how == "outputs":
        node["outputs"] = node["outputs"][:-1] if data.draw(st.booleans()) else [*node["outputs"], bad]
    attempt("graph", {"inputs": SPECS, "graph": {**graph, "nodes": nodes}}, lambda info: data.draw(evaluations(info)))


# -- expressions ----------------------------------------------------------------------------------
ALPHABET = string.ascii_letters[:8] + string.digits + "xy_ ()[]{},.:+-*/@%<>=!~^&|\n\t'\"#\\" + "é∂\x00"
FUNCS1 = sorted({name for p in PRIMS.values() if p.arity == 1 and not p.params for name in p.lang}) + ["transpose"]
FUNCS2 = sorted({name for p in PRIMS.values() if p.arity == 2 and not p.params for name in p.lang}) + ["dot", "matmul"]
INTS = st.sampled_from([0, 1, 2, -1, 3, 2 ** 62, 2 ** 63, 10 ** 30, -(10 ** 30)])
leaves = st.sampled_from(["x", "y", "m", "y[0]", "y[1:]", "y[-1]", "m[1]", "m[0, :]", "0", "1", "2.5", "1e308",
                          "-0.0", "1e-320", "x", "y", "len(y)", "m.shape[1]"])


def extend(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**", "@"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(FUNCS1), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(FUNCS2), children, children).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.tuples(children, children, children, st.sampled_from(["<", ">=", "=="])).map(
            lambda t: f"where({t[0]} {t[3]} {t[1]}, {t[1]}, {t[2]})"),
        st.tuples(st.sampled_from(["sum", "max", "mean", "logsumexp"]), children, st.integers(-2, 2)).map(
            lambda t: f"{t[0]}({t[1]}, axis={t[2]})"),
        st.tuples(st.sampled_from(["stack", "concatenate"]), children, children).map(lambda t: f"{t[0]}([{t[1]}, {t[2]}])"),
        st.tuples(children, st.one_of(st.integers(-4, 4), INTS)).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(children, INTS).map(lambda t: f"({t[0]} + {t[1]})"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"reshape({c}, (3, 1))"),
    )


expressions = st.recursive(leaves, extend, max_leaves=10)


@FUZZ
@given(expressions, st.data())
def test_expressions(expr, data):
    attempt("expr", {"inputs": SPECS, "expr": expr}, lambda info: data.draw(evaluations(info)))


@settings(FUZZ, max_examples=EXAMPLES * 2 // 3)
@given(st.text(ALPHABET, max_size=80))
def test_random_text_as_expr(text):
    attempt("text", {"inputs": SPECS, "expr": text}, {"inputs": POINT})


# -- programs -------------------------------------------------------------------------------------
BOUND = st.one_of(st.integers(-3, 5), INTS.map(str), st.sampled_from(["len(y)", "m.shape[0]", "2 ** 70", "n"]))
statements = st.one_of(
    expressions.map(lambda e: f"s = s + sum({e})"),
    st.tuples(BOUND, expressions).map(lambda t: f"for i in range({t[0]}):\n        s = s * 0.5 + sum({t[1]})"),
    st.tuples(BOUND, BOUND, st.sampled_from(["1", "2", "-1", str(10 ** 30)])).map(
        lambda t: f"for i in range({t[0]}, {t[1]}, {t[2]}):\n        s = s + y[i % 3] * i"),
    expressions.map(lambda e: f"if x > 0:\n        s = sum({e})\n    else:\n        s = -s"),
    st.tuples(st.one_of(st.integers(-4, 4), INTS), expressions).map(lambda t: f"y[{t[0]}] = sum({t[1]})"),
    st.sampled_from(["z = zeros(3)", "z = ones((2, 2))", "s += len(y)", "s = s + y.shape[0]", "n = 3",
                     "n *= 4611686018427387904", "z = zeros(n)"]),
)


@FUZZ
@given(st.lists(statements, max_size=4), st.sampled_from(["s", "sum(y) + s", "y", "z", "m * s"]), st.data())
def test_programs(body, result, data):
    lines = ["s = x", "n = 2", *body, f"return {result}"]
    attempt("program", {"inputs": SPECS, "program": "def f(x, y, m):\n" + "\n".join("    " + line for line in lines)},
            lambda info: data.draw(evaluations(info)))


@settings(FUZZ, max_examples=EXAMPLES * 2 // 3)
@given(st.text(ALPHABET, max_size=120))
def test_random_text_as_program(text):
    attempt("text", {"inputs": SPECS, "program": "def f(x, y, m):\n" + text})


# -- arbitrary JSON as definitions and evaluations ----------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False, width=32),
                      st.sampled_from(["x", "y", "add", "sin", "loop", "n0", "value", "gradient", "NaN"]))
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["op", "id", "inputs", "args", "shape", "value", "params", "nodes", "outputs", "compute",
                     "tangent", "cotangent", "batch", "wrt", "x"]), c, max_size=4), max_leaves=20)


@settings(FUZZ, max_examples=EXAMPLES * 2 // 3)
@given(json_values)
def test_random_definitions_and_evaluations(value):
    attempt("other", value if isinstance(value, dict) else {"inputs": value, "expr": "x"})
    attempt("other", SURVEY, value)


FLOORS = {"expr": (0.3, 0.15), "program": (0.3, 0.15), "graph": (0.4, 0.25)}  # (compiled, evaluated) shares


def test_report():
    """Print what was tried (pytest -s shows it) and hold the shares that reached the engine above floors."""
    lines = ["", "fuzz report (front end: inputs, compiled a function, evaluated; most frequent refusals)"]
    for front, count in tried.items():
        n = max(count["inputs"], 1)
        refusals = sorted(((v, k[8:]) for k, v in count.items() if k.startswith("refused:")), reverse=True)[:4]
        lines.append(f"  {front:8s} {count['inputs']:5d} inputs, {count['compiled'] / n:6.1%} compiled, "
                     f"{count['evaluated'] / n:6.1%} evaluated; " + ", ".join(f"{c} {k}" for k, c in refusals))
    lines.append("  no outcome other than success or a 4xx")
    print("\n".join(lines))
    for front, (compiled, evaluated) in FLOORS.items():
        count = tried[front]
        if count["inputs"] < 50:
            pytest.skip("run with the whole file: the fuzz tests fill the counts")
        assert count["compiled"] / count["inputs"] >= compiled, (front, count)
        assert count["evaluated"] / count["inputs"] >= evaluated, (front, count)


# -- schemathesis against the OpenAPI documents ----------------------------------------------
app = build(Settings(grpc_port=0), service=Service(result_cache_bytes=1 << 20)).http
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
oip_schema = schemathesis.openapi.from_asgi("/v2/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi(case):
    conforms(case)


@oip_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_oip_openapi(case):
    conforms(case)


def conforms(case):
    response = case.call()
    case.validate_response(response, checks=[st_checks.not_a_server_error, st_checks.status_code_conformance,
                                             st_checks.content_type_conformance,
                                             st_checks.response_schema_conformance])
