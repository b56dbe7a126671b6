"""Definitions: a JSON definition (inputs and one of expr, program, graph) compiled into a `Function`.

`compile_definition` checks the definition's keys and input specs, lowers its
body through the front ends into one IR graph, and checks the static limits;
the `Function`'s id is the hash of its canonical IR (with int64 inputs typed),
so the same definition sent twice, or by two clients, is one function.
"""

from __future__ import annotations

import re
import threading

from . import control
from .errors import DefinitionError, LimitError
from .frontends.expr import lower_expression
from .frontends.graph_json import export_graph, lower_graph
from .frontends.program import lower_program
from .ir import Graph, canonical_text, structural_hash
from .limits import DEFAULT_LIMITS, Limits, check_function, tape_elements

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Function:
    def __init__(self, graph: Graph, inputs, limits: Limits = DEFAULT_LIMITS, dtypes=None):
        self.graph = graph
        self.input_names = [n for n, _ in inputs]
        self.input_shapes = {n: tuple(s) for n, s in inputs}
        self.dtypes = {n: (dtypes or {}).get(n, "float64") for n in self.input_names}
        self.int_inputs = frozenset(n for n, d in self.dtypes.items() if d == "int64")
        self.output_shape = tuple(graph.outputs[0].shape)
        self.id = structural_hash(graph, self._typed_names())
        self.n_nodes, self.steps, self.work = check_function(graph, limits)
        self.tape = tape_elements(graph)  # per point, for reverse mode through while loops
        self._plans: dict = {}
        self._requests: dict = {}  # (compute, wrt) -> checked request form (see _request)
        self._int_record = None  # the int64 inputs' float64 layout (inputs.py), made at first use
        self._usual_form = None  # what the usual inputs of a call look like (inputs.py), made at first use
        self._lock = threading.RLock()  # plans are built from other plans

    def _typed_names(self):
        """Input names as hashed: an int64 input's dtype is part of the id (float64 ids are unchanged)."""
        return [f"{n}:int64" if n in self.int_inputs else n for n in self.input_names]

    def _spec(self, n) -> dict:
        spec = {"name": n, "shape": list(self.input_shapes[n])}
        if n in self.int_inputs:
            spec["dtype"] = "int64"
        return spec

    def info(self) -> dict:
        return {"id": self.id, "inputs": [self._spec(n) for n in self.input_names],
                "output_shape": list(self.output_shape), "n_nodes": self.n_nodes}

    def export(self, locations: dict | None = None) -> dict:
        """The definition in graph form; `locations` receives its nodes' source locations (export_graph)."""
        return {"inputs": self.info()["inputs"], "graph": export_graph(self.graph, self.input_names, locations)}

    def text(self) -> str:
        return canonical_text(self.graph, self._typed_names())

    def plan(self, key, make):
        with self._lock:
            if key not in self._plans:
                self._plans[key] = make()
            return self._plans[key]


DEFINITION_KEYS = ("inputs", "expr", "program", "graph", "name", "entry")  # name: the service's; entry: helpers'
INPUT_KEYS = ("name", "shape", "dtype")
DTYPES = ("float64", "int64")


def _parse_inputs(defn, dtypes=None) -> list:
    """The input specs as [(name, shape)]; `dtypes`, if given, receives {name: dtype} for every input."""
    specs = defn.get("inputs")
    if not isinstance(specs, list):
        raise DefinitionError("'inputs' must be a list of {\"name\", \"shape\"}", code="bad_definition")
    out, seen = [], set()
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise DefinitionError(f"inputs[{i}] must be {{\"name\": str, \"shape\": [int, ...]}}", code="bad_definition")
        unknown = [k for k in s if k not in INPUT_KEYS]
        if unknown:
            raise DefinitionError(f"inputs[{i}]: unknown key {unknown[0]!r} (an input spec has "
                                  f"{', '.join(INPUT_KEYS)})", {"field": f"inputs[{i}].{unknown[0]}"},
                                  code="unknown_key")
        dtype = s.get("dtype", "float64")
        if dtype not in DTYPES:
            raise DefinitionError(f"inputs[{i}].dtype is {dtype!r}; an input's dtype is \"float64\" (the default) "
                                  f"or \"int64\"", {"field": f"inputs[{i}].dtype"}, code="bad_dtype")
        if dtypes is not None:
            dtypes[s["name"]] = dtype
        name, shape = s["name"], s.get("shape", [])
        if not _NAME.match(name):
            raise DefinitionError(f"inputs[{i}]: '{name}' is not a valid name (letters, digits, _)", code="bad_definition")
        if name in seen:
            raise DefinitionError(f"inputs[{i}]: duplicate input name '{name}'", code="bad_definition")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise DefinitionError(f"inputs[{i}] ('{name}'): shape must be a list of non-negative integers",
                                  code="bad_definition")
        seen.add(name)
        out.append((name, tuple(shape)))
    return out


def compile_definition(defn, limits: Limits = DEFAULT_LIMITS, max_depth: int | None = None) -> Function:
    """Compile a definition (inputs and one of expr, program, graph) into a `Function` within `limits`.

    `max_depth` caps the nesting of an expr or program (default: `limits.max_expr_depth`)."""
    if not isinstance(defn, dict):
        raise DefinitionError("a definition is an object with 'inputs' and one of 'expr', 'program', 'graph'",
                              code="bad_definition")
    unknown = [k for k in defn if k not in DEFINITION_KEYS]
    if unknown:
        raise DefinitionError(f"unknown key {unknown[0]!r} in the definition (its keys are inputs, one of expr, "
                              f"program and graph, and optionally name)", {"field": str(unknown[0])},
                              code="unknown_key")
    dtypes: dict = {}
    inputs = _parse_inputs(defn, dtypes)
    forms = [k for k in ("expr", "program", "graph") if k in defn]
    if len(forms) != 1:
        raise DefinitionError("a definition needs exactly one of 'expr', 'program', 'graph'"
                              + (f" (got {', '.join(forms)})" if forms else ""), code="bad_definition")
    form = forms[0]
    body = defn[form]
    if form != "graph" and not isinstance(body, str):
        raise DefinitionError(f"'{form}' must be a string", code="bad_definition")
    entry = defn.get("entry")  # which function of a program is the entry (default: the last one)
    if entry is not None and (form != "program" or not isinstance(entry, str)):
        raise DefinitionError("'entry' is the name of a function of a 'program'", code="bad_definition")
    limit = control.WHILE_LIMIT.set(limits.max_while_iterations)  # the bound of the while loops lowered here
    try:
        depth = limits.max_expr_depth if max_depth is None else max_depth
        if form == "expr":
            b, out = lower_expression(body, inputs, depth, limits.max_nodes)
        elif form == "program":
            b, out = lower_program(body, inputs, depth, limits.max_nodes, entry)
        else:
            b, out = lower_graph(body, inputs, limits.max_nodes)
        graph = b.build([out])
    except RecursionError:
        raise LimitError(f"the {form} is nested too deeply", code="too_deep") from None
    finally:
        control.WHILE_LIMIT.reset(limit)
    return Function(graph, inputs, limits, dtypes)
