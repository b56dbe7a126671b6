"""A function's id is its structure: spelling does not change it, meaning does."""

import pytest

from adserve.engine import Engine

engine = Engine()

X = [{"name": "x", "shape": [3]}]


def fid(**form):
    return engine.compile_definition({"inputs": X, **form}).id


LOGISTIC = "def f(x):\n    l = x\n    for i in range(4):\n        l = 4.0 * l * (1.0 - l)\n    return sum(l)\n"


def test_whitespace_and_local_names_do_not_change_the_id():
    respelled = ("def g(x):\n    # a comment\n    value   =  x\n    for step in range(0, 4):\n"
                 "        value = (4.0 * value) * (1.0 - value)\n\n    return sum( value )\n")
    assert fid(program=LOGISTIC) == fid(program=respelled)
    assert fid(expr="sum(x*x)") == fid(expr="  sum( x * x )  ")


def test_the_same_function_as_expr_program_and_graph_has_one_id():
    e = fid(expr="sum(sin(x) * 2.0)")
    p = fid(program="def f(x):\n    y = sin(x)\n    return sum(y * 2.0)\n")
    g = engine.compile_definition({"inputs": X, "expr": "sum(sin(x) * 2.0)"}).export()["graph"]
    assert e == p == fid(graph=g)


@pytest.mark.parametrize("other", [
    {"expr": "sum(x*x) + 1.0"},                                     # a different constant
    {"expr": "sum(x*x*x)"},                                          # a different op
    {"program": LOGISTIC.replace("range(4)", "range(5)")},           # a different trip count
])
def test_a_different_function_has_a_different_id(other):
    assert fid(expr="sum(x*x)") != fid(**other)


def test_input_names_and_shapes_are_part_of_the_id():
    base = engine.compile_definition({"inputs": X, "expr": "sum(x*x)"}).id
    renamed = engine.compile_definition({"inputs": [{"name": "y", "shape": [3]}], "expr": "sum(y*y)"}).id
    reshaped = engine.compile_definition({"inputs": [{"name": "x", "shape": [4]}], "expr": "sum(x*x)"}).id
    assert len({base, renamed, reshaped}) == 3


def test_an_oversized_definition_is_refused_while_it_is_built():
    """The node limit stops the front end at the limit (with where), not after building everything."""
    from adserve.engine import Limits
    from adserve.engine.errors import LimitError

    small = Engine(limits=Limits(max_nodes=500))
    body = "".join(f"        s = s + sin(x * {j}.25)\n" for j in range(5000))
    with pytest.raises(LimitError, match="more than 500 operations") as err:
        small.compile_definition({"inputs": [{"name": "x", "shape": []}],
                                  "program": "def f(x):\n    s = 0.0\n    for i in range(3):\n" + body +
                                             "    return s\n"})
    assert err.value.location["line"] < 400  # stopped near the 500th operation, not at the end
