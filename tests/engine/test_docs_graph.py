"""docs/graph.md stays true: its examples compile, and mean what the text says."""

import json
import pathlib
import re

from adserve.engine import Engine

engine = Engine()

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "graph.md"


def examples():
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]


def test_the_survey_graph_is_the_survey_expression():
    survey = engine.compile_definition(examples()[0])
    expr = engine.compile_definition({"inputs": examples()[0]["inputs"], "expr": "log(x1) + x1*x2 - sin(x2)"})
    assert survey.id == expr.id


def test_the_loop_example_is_the_logistic_map():
    fn = engine.compile_definition(examples()[1])
    r = engine.evaluate(fn, {"x": 0.3}, ["value", "gradient"])
    l, d = 0.3, 1.0
    for _ in range(3):
        l, d = 4 * l * (1 - l), d * 4 * (1 - 2 * l)
    assert abs(r["value"] - l) < 1e-15 and abs(r["gradient"]["x"] - d) < 1e-12


def test_every_op_in_the_table_exists():
    from adserve.engine.builder import PRIMS
    table = DOC.read_text().split("## Operations")[1].split("## Loops")[0]
    named = {word for quoted in re.findall(r"`([^`]+)`", table) for word in quoted.replace(",", " ").split()}
    assert set(PRIMS) <= named, f"ops missing from docs/graph.md: {set(PRIMS) - named}"
