"""docs/language.md and the operations table of docs/graph.md are what the primitive table says, and the
language reference's examples compile."""

import re

import numpy as np

from adserve.engine import Engine, docgen


def test_generated_docs_are_up_to_date():
    for name in docgen.FILES:
        text = (docgen.DOCS / name).read_text()
        assert docgen.render(text) == text, f"docs/{name} is stale: run python -m adserve.engine.docgen"


def test_every_language_function_is_documented():
    from adserve.engine.frontends import functions
    text = (docgen.DOCS / "language.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)\(", text, re.M))
    assert documented == set(functions.TABLE), set(functions.TABLE) ^ documented


def test_the_examples_compile_and_run():
    blocks = re.findall(r"```(python)?\n(.*?)```", (docgen.DOCS / "language.md").read_text(), re.S)
    exprs = [line for lang, b in blocks if not lang for line in b.strip().splitlines()]
    programs = [b for lang, b in blocks if lang]
    assert len(exprs) == 2 and len(programs) == 4
    inputs = {"x1": [], "x2": [], "x": [6]}
    engine = Engine()
    for e in exprs:
        names = sorted(set(re.findall(r"\b(x1|x2|x)\b", e)))
        fn = engine.compile_definition({"inputs": [{"name": n, "shape": inputs[n]} for n in names], "expr": e})
        engine.evaluate(fn, {n: np.full(inputs[n], 0.7) for n in names}, ["value", "gradient"])
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [4]}, {"name": "w", "shape": []}],
                                 "program": programs[0]})
    r = engine.evaluate(fn, {"x": [0.3, 0.9, 0.0, 2.0], "w": 1.5}, ["value", "gradient"])
    assert np.isfinite(r["value"]) and np.all(np.isfinite(r["gradient"]["x"]))
    fn = engine.compile_definition({"inputs": [{"name": "a", "shape": []}, {"name": "x0", "shape": []}],
                                    "program": programs[1]})  # the while example
    r = engine.evaluate(fn, {"a": 2.0, "x0": 1.0}, ["value", "gradient"])
    assert abs(r["value"] - 2 ** 0.5) < 1e-12 and abs(r["gradient"]["a"] - 0.5 / 2 ** 0.5) < 1e-9
    for program in programs[2:]:  # helper functions and derivatives: f(x, <a scalar>)
        scalar = re.findall(r"^def f\(x, (\w+)\):", program, re.M)[-1]
        fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}, {"name": scalar, "shape": []}],
                                        "program": program})
        r = engine.evaluate(fn, {"x": [0.3, 0.9, -0.5], scalar: 1.5}, ["value", "gradient", "hessian"])
        assert np.isfinite(r["value"]) and np.all(np.isfinite(r["hessian"]["x"]["x"]))
