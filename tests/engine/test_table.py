"""The primitive table is complete: every row says everything the rest of the engine derives from it.

A row that leaves something out fails here, naming the row and what is missing, rather than an op that
works in graph form but not in expressions, or on the interpreter but not in kernels. The lists that
used to repeat op names (language functions, code templates, graph-JSON parameters, kernel imports,
python-tier stand-ins) are checked to be what the rows say.
"""

import math
import re

import numpy as np
import pytest
from engine_helpers import PRIMS

from adserve.engine.codegen import module, plain, python, runtime
from adserve.engine.codegen.templates import FORMATS, GENERATORS
from adserve.engine.frontends import functions, graph_json

ROWS = sorted(PRIMS)


@pytest.mark.parametrize("name", ROWS)
def test_row_is_complete(name):
    p = PRIMS[name]
    assert p.doc.strip(), f"'{name}': no doc line (docs/language.md and docs/graph.md are made from it)"
    assert p.nondiff or (p.jvp is not None and p.vjp is not None), f"'{name}': no derivative rule and not nondiff"
    assert name in GENERATORS, f"'{name}': no code template and no generator in codegen/templates.py"
    for param, kind in p.params:
        assert kind in graph_json.KINDS, f"'{name}': parameter '{param}' has unknown kind '{kind}'"
    if p.template is not None:
        _check_template(p)
    if p.helper is not None:
        assert p.template and re.search(rf"\b{p.helper.__name__}\(", p.template), \
            f"'{name}': its helper {p.helper.__name__} is not called by its template"
    for word in p.lang:
        assert word in functions.TABLE, f"'{name}': language name '{word}' has no handler"
        assert p.template or p.name in functions._CALLS, \
            f"'{name}': not element-wise, so '{word}' needs a handler in functions._CALLS"


def _check_template(p):
    assert p.arity is not None, f"'{p.name}': a template needs a fixed arity"
    used = {int(i) for i in re.findall(r"\{(\d+)\}", p.template)}
    assert used == set(range(p.arity)), f"'{p.name}': template reads {sorted(used)}, arity {p.arity}"
    for module_name, attr in re.findall(r"\b(math|np)\.(\w+)", p.template):
        assert hasattr({"math": math, "np": np}[module_name], attr), f"'{p.name}': {module_name}.{attr} does not exist"
    for fn in re.findall(r"(?<![.\w])(\w+)\(", p.template):
        assert fn == "abs" or fn in runtime.HELPERS, f"'{p.name}': template calls '{fn}', which no row's helper defines"


def test_derived_lists_are_what_the_rows_say():
    assert set(FORMATS) == {n for n, p in PRIMS.items() if p.template}
    assert graph_json.PARAMS == {n: dict(p.params) for n, p in PRIMS.items()}
    assert set(runtime.HELPERS) == {p.helper.__name__ for p in PRIMS.values() if p.helper}
    for helper in runtime.HELPERS:
        assert getattr(runtime, helper) is runtime.HELPERS[helper]
        original = plain.HELPERS[helper]
        assert getattr(python, helper) is original
        if hasattr(original, "ir_function"):  # mathlib's exp and log: numba calls their IR
            assert runtime.HELPERS[helper] is runtime.IR_HELPERS[helper]
        else:  # compiled from the same code (with the IR helpers where it calls them)
            assert runtime.HELPERS[helper].py_func.__code__ is original.__code__
    text = module.kernel_module(_identity(), "imports")
    assert f"import {', '.join(sorted([*runtime.HELPERS, *module.KERNEL_RUNTIME]))}  # noqa" in text
    lang = {w for p in PRIMS.values() for w in p.lang}
    assert set(functions.TABLE) == lang | set(functions.COMPOSITES)


def test_helper_names_are_unique():
    names = [p.helper.__name__ for p in PRIMS.values() if p.helper]
    assert len(names) == len(set(names)), names


def _identity():
    from engine_helpers import make_graph
    return make_graph(lambda x: x, [()])
