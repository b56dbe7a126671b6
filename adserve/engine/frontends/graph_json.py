"""The canonical node-list form of a function, as JSON: import, export, schema.

    {"nodes": [{"id": "v2", "op": "log", "args": ["x1"]},
               {"id": "n5", "op": "loop", "args": [...], "params": {...},
                "bodies": {"body": {"inputs": [{"name": "v6", "shape": []}, ...],
                                    "nodes": [...], "outputs": ["v9"]}},
                "outputs": ["v10", "v11"]}],
     "outputs": ["v4"]}

An argument is a string (an input name or an earlier node's id), a number,
or a literal object `{"value": v, "shape": [..]}` / `{"data": [...], "shape": [..]}`;
non-finite numbers are the strings "NaN", "Infinity", "-Infinity" inside those
objects. Nodes must come after what they read, so a cycle cannot be written.
Bodies are closed: they read only their own inputs. Export then import gives
the same graph, hence the same function id.
"""

from __future__ import annotations

import math

from ..builder import PRIMS, Budget, Builder, V
from ..errors import DefinitionError, clip
from ..ir import Graph, Lit, Var, sub_graphs


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v):
    return isinstance(v, list) and all(_int(x) for x in v)


# the kinds of parameter a row may declare: kind -> (how users read it, does a JSON value fit)
KINDS = {
    "axes": ("an int, a list of ints, or null for all", lambda v: v is None or _int(v) or _ints(v)),
    "axis": ("an int", _int),
    "axis_or_none": ("an int, or null for all axes (flattened)", lambda v: v is None or _int(v)),
    "shape": ("a list of ints", _ints),
    "perm": ("a list of ints, or null to reverse", lambda v: v is None or _ints(v)),
    "spec": ('a string such as "ij,jk->ik"', lambda v: isinstance(v, str)),
    "index": ("per axis an int or [start, length, step]",
              lambda v: isinstance(v, list) and all(_int(e) or _ints(e) and len(e) == 3 for e in v)),
    "size": ("an int, or null for one entry", lambda v: v is None or _int(v)),
    "count": ("a non-negative int", lambda v: _int(v) and v >= 0),
    "flag": ("true or false", lambda v: isinstance(v, bool)),
}
PARAMS = {name: dict(p.params) for name, p in PRIMS.items()}  # op -> {parameter: kind}
BODIES = {"loop": ("body",), "cond": ("true_body", "false_body"), "while": ("body", "cond")}
MAX_DEPTH = 16
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _num_out(x: float):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _num_in(x, where):
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise DefinitionError(f"{where}: expected a number, got {x!r}"[:200], code="bad_graph")
    try:
        return float(x)
    except OverflowError:  # an int beyond float64
        raise DefinitionError(f"{where}: a number of {x.bit_length()} bits is beyond float64", code="bad_graph") from None


def _shape_in(s, where):
    if not isinstance(s, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s):
        raise DefinitionError(f"{where}: a shape is a list of non-negative integers", code="bad_graph")
    return tuple(s)


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return _num_out(v)
    return v


# -- import ---------------------------------------------------------------------
def lower_graph(graph_json, inputs, max_nodes: int):
    """Build IR from the node-list form; returns (builder, output value)."""
    b = Builder(budget=Budget(max_nodes))
    scope = {name: b.input(shape) for name, shape in inputs}
    if not isinstance(graph_json, dict):
        raise DefinitionError("graph must be an object with 'nodes' and 'outputs'", code="bad_graph")
    outs = _build_body(b, graph_json, scope, depth=0)
    if len(outs) != 1:
        raise DefinitionError(f"a function has one output; the graph lists {len(outs)}", code="bad_graph")
    return b, outs[0]


def _build_body(b: Builder, g: dict, scope: dict, depth: int):
    extra = set(g) - {"nodes", "outputs", "inputs"}
    if extra:
        raise DefinitionError(f"unknown graph field '{clip(sorted(map(str, extra))[0])}'", code="bad_graph")
    nodes, outputs = g.get("nodes", []), g.get("outputs")
    if not isinstance(nodes, list):
        raise DefinitionError("'nodes' must be a list", code="bad_graph")
    if not isinstance(outputs, list) or not outputs:
        raise DefinitionError("'outputs' must be a non-empty list of ids", code="bad_graph")
    later = {n.get("id") for n in nodes if isinstance(n, dict)}
    for i, node in enumerate(nodes):
        _build_node(b, node, i, scope, later, depth)
    return [_arg(b, o, scope, "graph outputs", later) for o in outputs]


def _arg(b, a, scope, where, later=()):
    if isinstance(a, str):
        if a in scope:
            if scope[a] is None:
                raise DefinitionError(f"{where} reads '{clip(a)}', a node with several results: read one of the ids "
                                      f"in its 'outputs'", code="bad_reference")
            return scope[a]
        if a in later:
            raise DefinitionError(f"{where} reads '{clip(a)}', which is defined later: nodes must come after what they read "
                                  f"(a cycle is not allowed)", code="cycle")
        raise DefinitionError(f"{where} reads '{clip(a)}', which is not an input or an earlier node", code="unknown_reference")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return b.lit(_num_in(a, where))
    if isinstance(a, dict):
        shape = _shape_in(a.get("shape", []), where)
        if "value" in a:
            return V(b, Lit.scalar(_num_in(a["value"], where), shape))
        data = a.get("data")
        if isinstance(data, list) and len(data) == math.prod(shape) and len(data) > 0:
            return V(b, Lit(shape, tuple(_num_in(x, where) for x in data)))
        raise DefinitionError(f"{where}: a literal needs 'value', or 'data' with {math.prod(shape)} numbers", code="bad_graph")
    raise DefinitionError(f"{where}: an argument is an id, a number or a literal object, got {a!r}"[:200], code="bad_graph")


def _build_node(b, node, i, scope, later, depth):
    if not isinstance(node, dict):
        raise DefinitionError(f"node #{i} must be an object", code="bad_graph")
    nid = node.get("id")
    loc = {"node": clip(nid, 256) if isinstance(nid, str) else f"#{i}"}
    try:
        if not isinstance(nid, str) or not nid:
            raise DefinitionError(f"node #{i} needs a string 'id'", code="bad_graph")
        if nid in scope:
            raise DefinitionError(f"id '{clip(nid)}' is defined twice", code="duplicate_id")
        prim = node.get("op")
        if prim not in PRIMS:
            raise DefinitionError(f"unknown op '{clip(prim)}'", code="unknown_op")
        allowed = {"id", "op", "args", "params", "bodies", "outputs"}
        if set(node) - allowed:
            raise DefinitionError(f"unknown node field '{sorted(set(node) - allowed)[0]}'", code="bad_graph")
        args = node.get("args", [])
        if not isinstance(args, list):
            raise DefinitionError("'args' must be a list", code="bad_graph")
        vals = [_arg(b, a, scope, f"node '{clip(nid)}'", later) for a in args]
        params = node.get("params", {}) or {}
        if not isinstance(params, dict) or set(params) - set(PARAMS[prim]):
            bad = sorted(set(params) - set(PARAMS[prim])) if isinstance(params, dict) else ["?"]
            raise DefinitionError(f"op '{prim}' has no parameter '{clip(bad[0])}'", code="bad_graph")
        for k, v in params.items():
            what, fits = KINDS[PARAMS[prim][k]]
            if not fits(v):
                raise DefinitionError(f"op '{prim}': parameter '{k}' is {what}, got {v!r}"[:200], code="bad_graph")
        params = {k: _tuplify(v) for k, v in params.items()}
        for name in BODIES.get(prim, ()):
            params[name] = _body(node, name, depth, b.budget)
        with b.at(loc):
            res = b.emit(prim, vals, params)
        if PRIMS[prim].multiple_results:
            names = node.get("outputs")
            if not isinstance(names, list) or len(names) != len(res) or not all(isinstance(n, str) for n in names):
                raise DefinitionError(f"'{prim}' gives {len(res)} results: list their ids in 'outputs'", code="bad_graph")
            for n in names:
                if n in scope:
                    raise DefinitionError(f"id '{clip(n)}' is defined twice", code="duplicate_id")
                scope[n] = res[names.index(n)]
            scope[nid] = None  # the node's own id names no value
        else:
            scope[nid] = res
    except DefinitionError as e:
        raise e.at(loc)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise DefinitionError(f"bad parameters for '{node.get('op')}': {e}", loc, code="bad_graph") from None


def _body(node, name, depth, budget) -> Graph:
    if depth >= MAX_DEPTH:
        raise DefinitionError(f"bodies nested deeper than {MAX_DEPTH}", code="limit_exceeded")
    bodies = node.get("bodies")
    if not isinstance(bodies, dict) or not isinstance(bodies.get(name), dict):
        raise DefinitionError(f"'{node.get('op')}' needs bodies.{name}", code="bad_graph")
    g = bodies[name]
    ins = g.get("inputs")
    if not isinstance(ins, list):
        raise DefinitionError(f"bodies.{name} needs 'inputs': [{{\"name\", \"shape\"}}, ...]", code="bad_graph")
    nb = Builder(budget=budget)
    scope = {}
    for j, spec in enumerate(ins):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise DefinitionError(f"bodies.{name}.inputs[{j}] needs a name and a shape", code="bad_graph")
        scope[spec["name"]] = nb.input(_shape_in(spec.get("shape"), f"bodies.{name}.inputs[{j}]"))
    outs = _build_body(nb, g, scope, depth + 1)
    return nb.build(outs)


# -- export ---------------------------------------------------------------------
class _Exporter:
    def __init__(self, locations=None):
        self.names, self.count = {}, 0
        self.locations = locations  # node id -> its equation's source location, when asked for

    def fresh(self, var, prefix="v"):
        name = f"{prefix}{self.count}"
        self.count += 1
        if var is not None:
            self.names[var] = name
        return name

    def ref(self, a):
        if isinstance(a, Var):
            return self.names[a]
        if a.fill is not None and not a.shape and math.isfinite(a.fill):
            return a.fill
        if a.fill is not None:
            return {"value": _num_out(a.fill), "shape": list(a.shape)}
        return {"data": [_num_out(x) for x in a.data], "shape": list(a.shape)}

    def body(self, g: Graph, input_names=None):
        ins = []
        for j, v in enumerate(g.inputs):
            if input_names:
                self.names[v] = input_names[j]
            else:
                ins.append({"name": self.fresh(v), "shape": list(v.shape)})
        nodes = [self.node(e) for e in g.eqns]
        out = {"nodes": nodes, "outputs": [self.ref(a) for a in g.outputs]}
        return out if input_names else {"inputs": ins, **out}

    def node(self, e):
        args = [self.ref(a) for a in e.inputs]
        params = {k: _jsonable(v) for k, v in e.params.items() if not isinstance(v, Graph)}
        n = {"op": e.prim, "args": args}
        if params:
            n["params"] = params
        if sub_graphs(e):
            n["bodies"] = {k: self.body(v) for k, v in sorted(e.params.items()) if isinstance(v, Graph)}
        if PRIMS[e.prim].multiple_results:
            n = {"id": self.fresh(None, "n"), **n, "outputs": [self.fresh(o) for o in e.outputs]}
        else:
            n = {"id": self.fresh(e.out), **n}
        if self.locations is not None and e.loc is not None:
            self.locations[n["id"]] = e.loc
        return n


def export_graph(graph: Graph, input_names, locations: dict | None = None) -> dict:
    """The graph form of `graph`. `locations`, if given, receives {node id: source location} of the equations
    that have one (a program's lines), which the graph form cannot carry: see `restore_locations`."""
    return _Exporter(locations).body(graph, list(input_names))


def restore_locations(graph: Graph, locations: dict) -> None:
    """Give the equations of `graph`, lowered from an exported graph form, the source locations `export_graph`
    gave for their node ids, so errors name the program's line and not a node id (a function sent to another
    process as its graph form: an isolation worker)."""
    for e in graph.eqns:
        loc = e.loc
        if isinstance(loc, dict) and len(loc) == 1 and loc.get("node") in locations:
            e.loc = locations[loc["node"]]
        for g in sub_graphs(e):
            restore_locations(g, locations)


def graph_schema() -> dict:
    """JSON Schema (draft 2020-12) of the graph form."""
    num = {"oneOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    literal = {"type": "object", "required": ["shape"], "additionalProperties": False,
               "properties": {"value": num, "data": {"type": "array", "items": num}, "shape": shape}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "adserve graph",
        "description": __doc__,
        "$ref": "#/$defs/graph",
        "$defs": {
            "arg": {"oneOf": [{"type": "string", "description": "an input name or an earlier node id"},
                              {"type": "number"}, literal]},
            "graph": {"type": "object", "required": ["nodes", "outputs"], "additionalProperties": False,
                      "properties": {"nodes": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                                     "outputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/arg"}}}},
            "body": {"type": "object", "required": ["inputs", "nodes", "outputs"], "additionalProperties": False,
                     "properties": {"inputs": {"type": "array", "items": {
                         "type": "object", "required": ["name", "shape"],
                         "properties": {"name": {"type": "string"}, "shape": shape}}},
                         "nodes": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                         "outputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/arg"}}}},
            "node": {"type": "object", "required": ["id", "op"], "additionalProperties": False,
                     "properties": {
                         "id": {"type": "string", "minLength": 1},
                         "op": {"enum": sorted(PRIMS)},
                         "args": {"type": "array", "items": {"$ref": "#/$defs/arg"}},
                         "params": {"type": "object", "description": "per op: " + "; ".join(
                             f"{k}: {', '.join(f'{n} ({KINDS[kind][0]})' for n, kind in v.items())}"
                             for k, v in PARAMS.items() if v)},
                         "bodies": {"type": "object", "additionalProperties": {"$ref": "#/$defs/body"}},
                         "outputs": {"type": "array", "items": {"type": "string"},
                                     "description": "ids of the results of a multi-result node (loop, cond)"}}},
        },
    }
