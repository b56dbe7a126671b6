"""The engine's public face: compile a definition, evaluate what a caller asks for.

`compile_definition` turns a JSON definition into a `Function` whose id is the
hash of its canonical IR. `evaluate` validates a request and runs *plans*:
one graph that computes every requested value, gradient, JVP, VJP and HVP
(built by inlining the transforms into one builder, so CSE shares the primal
work), plus Jacobian and Hessian sweeps that push a basis through the batch
axis (reverse or forward mode, whichever needs fewer sweeps; Hessians as HVPs
against a basis, never by differentiating twice in reverse).
"""

from __future__ import annotations

import math
import re
import threading

import numpy as np

from . import control, primitives  # noqa: F401  (fill the primitive table)
from .backend import Interpreter
from .builder import Builder, inline
from .errors import DefinitionError, EngineError, EvaluationError, LimitError
from .frontends.expr import lower_expression
from .frontends.graph_json import export_graph, graph_schema, lower_graph
from .frontends.program import lower_program
from .ir import Graph, canonical_text, structural_hash
from .limits import check_function, check_request
from .jvp import jvp_graph
from .trace import trace_graph
from .vjp import vjp_graph

COMPUTE_KINDS = ("value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian", "trace")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SWEEP_ROWS = 200_000  # batch points x basis vectors in one Jacobian/Hessian sweep
MAX_BASIS = 20_000
SOURCE_TRANSFORMS = {"primal": "value", "gradient": "gradient", "jvp": "jvp", "vjp": "vjp", "hvp": "hvp"}
_backend = Interpreter()


def set_backend(backend):
    """Choose who runs plans: `backend.Interpreter()` (default) or `backend.Tiered(cache_dir)`."""
    global _backend
    _backend = backend


def get_backend():
    return _backend


class Function:
    def __init__(self, graph: Graph, inputs):
        self.graph = graph
        self.input_names = [n for n, _ in inputs]
        self.input_shapes = {n: tuple(s) for n, s in inputs}
        self.output_shape = tuple(graph.outputs[0].shape)
        self.id = structural_hash(graph, self.input_names)
        self.n_nodes = graph.n_nodes()
        self.steps, self.work = check_function(graph)
        self._plans: dict = {}
        self._lock = threading.RLock()  # plans are built from other plans

    def info(self) -> dict:
        return {"id": self.id, "inputs": [{"name": n, "shape": list(self.input_shapes[n])} for n in self.input_names],
                "output_shape": list(self.output_shape), "n_nodes": self.n_nodes}

    def export(self) -> dict:
        return {"inputs": self.info()["inputs"], "graph": export_graph(self.graph, self.input_names)}

    def text(self) -> str:
        return canonical_text(self.graph, self.input_names)

    def plan(self, key, make):
        with self._lock:
            if key not in self._plans:
                self._plans[key] = make()
            return self._plans[key]


def _parse_inputs(defn) -> list:
    specs = defn.get("inputs")
    if not isinstance(specs, list):
        raise DefinitionError("'inputs' must be a list of {\"name\", \"shape\"}", code="bad_definition")
    out, seen = [], set()
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise DefinitionError(f"inputs[{i}] must be {{\"name\": str, \"shape\": [int, ...]}}", code="bad_definition")
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


def compile_definition(defn) -> Function:
    if not isinstance(defn, dict):
        raise DefinitionError("a definition is an object with 'inputs' and one of 'expr', 'program', 'graph'",
                              code="bad_definition")
    inputs = _parse_inputs(defn)
    forms = [k for k in ("expr", "program", "graph") if k in defn]
    if len(forms) != 1:
        raise DefinitionError("a definition needs exactly one of 'expr', 'program', 'graph'"
                              + (f" (got {', '.join(forms)})" if forms else ""), code="bad_definition")
    form = forms[0]
    body = defn[form]
    if form != "graph" and not isinstance(body, str):
        raise DefinitionError(f"'{form}' must be a string", code="bad_definition")
    try:
        if form == "expr":
            b, out = lower_expression(body, inputs)
        elif form == "program":
            b, out = lower_program(body, inputs)
        else:
            b, out = lower_graph(body, inputs)
        graph = b.build([out])
    except RecursionError:
        raise LimitError(f"the {form} is nested too deeply", code="too_deep") from None
    return Function(graph, inputs)


# -- plans --------------------------------------------------------------------------
def _grad_graph(fn: Function) -> Graph:
    """x -> (f(x), gradient...)."""
    def make():
        n = len(fn.input_names)
        return _wrap(fn.graph, lambda b, xs: inline(b, vjp_graph(fn.graph, [True] * n, [True]), [*xs, 1.0]))
    return fn.plan("grad", make)


def _wrap(graph, body):
    b = Builder()
    xs = [b.input(v.shape) for v in graph.inputs]
    return b.build(body(b, xs))


def _main_plan(fn: Function, kinds: frozenset):
    """One graph for value/gradient/jvp/vjp/hvp; returns (graph, input layout, output slots)."""
    def make():
        n = len(fn.input_names)
        b = Builder()
        xs = [b.input(v.shape) for v in fn.graph.inputs]
        ts = [b.input(v.shape) for v in fn.graph.inputs] if kinds & {"jvp", "hvp"} else []
        ct = [b.input(fn.output_shape)] if "vjp" in kinds else []
        slots = {}
        if "hvp" in kinds:
            hg, mask = jvp_graph(_grad_graph(fn), [True] * n)
            res = inline(b, hg, [*xs, *ts])
            slots["value"], slots["gradient"] = res[0], res[1:1 + n]
            tangents = iter(res[1 + n:])
            t_all = [next(tangents) if m else None for m in mask]
            slots["jvp"] = t_all[0]
            slots["hvp"] = t_all[1:]
        elif "gradient" in kinds:
            res = inline(b, _grad_graph(fn), xs)
            slots["value"], slots["gradient"] = res[0], res[1:]
        if "jvp" in kinds and "jvp" not in slots:
            jg, mask = jvp_graph(fn.graph, [True] * n)
            res = inline(b, jg, [*xs, *ts])
            slots["value"] = res[0]
            slots["jvp"] = res[1] if mask[0] else None
        if "vjp" in kinds:
            res = inline(b, vjp_graph(fn.graph, [True] * n, [True]), [*xs, *ct])
            slots["value"], slots["vjp"] = res[0], res[1:]
        if "value" not in slots:
            slots["value"] = inline(b, fn.graph, xs)[0]
        order, outs = [], []
        for k in ("value", "gradient", "jvp", "vjp", "hvp"):
            if k in kinds or (k == "value"):
                v = slots.get(k)
                vals = v if isinstance(v, list) else [v]
                shapes = [fn.input_shapes[nm] for nm in fn.input_names] if isinstance(v, list) else [fn.output_shape]
                for val, shape in zip(vals, shapes):
                    outs.append(val if val is not None else b.lit(0.0, shape))
                order.append((k, len(vals) if isinstance(v, list) else None))
        return b.build(outs), order
    return fn.plan(("main", kinds), make)


# -- evaluation ----------------------------------------------------------------------
def _check(fn, values, what, batch):
    """Validate a dict of per-input arrays; returns the batch size (or None)."""
    if not isinstance(values, dict):
        raise EvaluationError(f"'{what}' must be an object with one entry per input", code="bad_evaluation")
    missing = [n for n in fn.input_names if n not in values]
    if missing:
        raise EvaluationError(f"{what}: missing input '{missing[0]}' (the function takes {fn.input_names})",
                              code="missing_input")
    extra = [n for n in values if n not in fn.input_shapes]
    if extra:
        raise EvaluationError(f"{what}: unknown input '{extra[0]}' (the function takes {fn.input_names})",
                              code="unknown_input")
    sizes = set()
    for n in fn.input_names:
        sizes.add(_check_shape(np.asarray(values[n]), fn.input_shapes[n], f"{what}.{n}", batch))
    return _one_batch(sizes, what)


def _check_shape(a, want, where, batch):
    if batch:
        if a.ndim == 0 or tuple(a.shape[1:]) != tuple(want):
            raise EvaluationError(f"{where} has shape {list(a.shape)}; with batch it must be [B] + {list(want)}",
                                  code="shape_mismatch")
        return a.shape[0]
    if tuple(a.shape) != tuple(want):
        raise EvaluationError(f"{where} has shape {list(a.shape)}, expected {list(want)}", code="shape_mismatch")
    return None


def _one_batch(sizes, what):
    sizes.discard(None)
    if len(sizes) > 1:
        raise EvaluationError(f"{what}: batch sizes differ: {sorted(sizes)}", code="batch_mismatch")
    return sizes.pop() if sizes else None


def evaluate(fn: Function, inputs, compute=("value",), tangent=None, cotangent=None, batch=False, meta=None) -> dict:
    """Values and derivatives as float64 arrays; `meta` (a dict) receives which backend ran."""
    if isinstance(compute, str) or not isinstance(compute, (list, tuple)):
        raise EvaluationError("'compute' must be a list, e.g. [\"value\", \"gradient\"]", code="bad_evaluation")
    unknown = [c for c in compute if c not in COMPUTE_KINDS]
    if unknown:
        raise EvaluationError(f"unknown compute kind {unknown[0]!r}; choose from {list(COMPUTE_KINDS)}",
                              code="unknown_compute")
    kinds = frozenset(compute) or frozenset({"value"})
    scalar_only = sorted(kinds & {"gradient", "hvp", "hessian"})
    if scalar_only and fn.output_shape != ():
        raise EvaluationError(f"{scalar_only[0]} needs a scalar output, but this function's output has shape "
                              f"{list(fn.output_shape)} (use vjp or jacobian)", code="not_scalar")
    sizes = {_check(fn, inputs, "inputs", batch)}
    if kinds & {"jvp", "hvp"} or ("trace" in kinds and tangent is not None):
        if tangent is None:
            raise EvaluationError("jvp and hvp need 'tangent' (one entry per input)", code="missing_tangent")
        sizes.add(_check(fn, tangent, "tangent", batch))
    if "vjp" in kinds or ("trace" in kinds and cotangent is not None):
        if cotangent is None:
            raise EvaluationError(f"vjp needs 'cotangent' of the output's shape {list(fn.output_shape)}",
                                  code="missing_cotangent")
        sizes.add(_check_shape(np.asarray(cotangent), fn.output_shape, "cotangent", batch))
    B = _one_batch(sizes, "request") if batch else 1
    if batch and B == 0:
        raise EvaluationError("a batch needs at least one point", code="empty_batch")
    n_in = sum(math.prod(s) for s in fn.input_shapes.values())
    check_request(fn.work, kinds - {"jacobian", "hessian"}, B)
    if "jacobian" in kinds:
        check_request(fn.work, {"vjp"}, B, min(n_in, math.prod(fn.output_shape)))
    if "hessian" in kinds:
        check_request(fn.work, {"hvp"}, B, n_in)

    def batched(a):
        a = np.asarray(a, dtype=np.float64)
        return a if batch else a[None]

    xs = [batched(inputs[n]) for n in fn.input_names]
    out = {}
    main = kinds & {"value", "gradient", "jvp", "vjp", "hvp"}
    if main:
        graph, order = _main_plan(fn, frozenset(main))
        args = xs + ([batched(tangent[n]) for n in fn.input_names] if main & {"jvp", "hvp"} else []) + \
            ([batched(cotangent)] if "vjp" in main else [])
        res = iter(_run(graph, args, meta))
        for k, count in order:
            if count is None:
                val = next(res)
                if k in kinds:
                    out[k] = val
            else:
                out[k] = {n: next(res) for n in fn.input_names}
    if "jacobian" in kinds:
        out["jacobian"] = _jacobian(fn, xs, B)
    if "hessian" in kinds:
        out["hessian"] = _hessian(fn, xs, B)
    result = _finish(out, B, batch)
    if "trace" in kinds:
        result["trace"] = _trace(fn, xs, tangent, cotangent, batched, B, batch)
    return result


def _trace(fn, xs, tangent, cotangent, batched, B, batch):
    """Rows of the evaluation trace; adjoints when the output is scalar or a cotangent is given."""
    with_t, with_a = tangent is not None, cotangent is not None or fn.output_shape == ()
    graph, rows = fn.plan(("trace", with_t, with_a), lambda: trace_graph(fn, with_t, with_a))
    args = list(xs)
    if with_t:
        args += [batched(tangent[n]) for n in fn.input_names]
    if with_a:
        args.append(batched(cotangent) if cotangent is not None else np.ones((1,)))
    res = iter(_run(graph, args))
    out = []
    for row in rows:
        row = dict(row)
        fields = ["value"] + (["tangent"] if with_t else []) + (["adjoint"] if with_a else [])
        row.update(_finish({f: next(res) for f in fields}, B, batch))
        out.append(row)
    return out


def source(fn: Function, transform: str) -> str:
    """The generated kernel source for one transform of `fn`, as the numba tier compiles it."""
    if transform not in SOURCE_TRANSFORMS:
        raise EvaluationError(f"unknown transform {transform!r}; choose from {list(SOURCE_TRANSFORMS)}",
                              code="unknown_transform")
    kind = SOURCE_TRANSFORMS[transform]
    if kind in ("gradient", "hvp") and fn.output_shape != ():
        raise EvaluationError(f"{transform} needs a scalar output", code="not_scalar")
    graph, _ = _main_plan(fn, frozenset({kind}))
    return _backend.source(graph, f"function {fn.id}, {transform}")


def _run(graph, args, meta=None):
    try:
        return _backend.run(graph, args, meta)
    except EngineError:
        raise
    except MemoryError:
        raise LimitError("out of memory evaluating this request", code="too_large") from None


def _sizes(fn):
    sizes = [math.prod(fn.input_shapes[n]) for n in fn.input_names]
    return sizes, np.cumsum([0, *sizes])


def _sweep_guard(B, rows):
    if rows > MAX_BASIS or B * rows > MAX_SWEEP_ROWS:
        raise LimitError(f"this needs {B} x {rows} derivative sweeps; the limit is {MAX_SWEEP_ROWS} "
                         f"(at most {MAX_BASIS} per point)", code="too_many_sweeps")


def _jacobian(fn, xs, B):
    sizes, offsets = _sizes(fn)
    n, m = int(offsets[-1]), math.prod(fn.output_shape)
    names = fn.input_names
    if m <= n:  # reverse: one VJP per output component
        _sweep_guard(B, m)
        g = fn.plan("vjp_all", lambda: vjp_graph(fn.graph, [True] * len(names), [True]))
        basis = np.tile(np.eye(m).reshape(m, *fn.output_shape), (B,) + (1,) * len(fn.output_shape))
        res = _run(g, [np.repeat(_full(x, B), m, axis=0) for x in xs] + [basis])[1:]
        return {nm: _full(r, B * m).reshape(B, *fn.output_shape, *fn.input_shapes[nm]) for nm, r in zip(names, res)}
    _sweep_guard(B, n)
    g, mask = fn.plan("jvp_all", lambda: jvp_graph(fn.graph, [True] * len(names)))
    eye = np.eye(n)
    ts = [np.tile(eye[:, o:o + s].reshape(n, *fn.input_shapes[nm]), (B,) + (1,) * len(fn.input_shapes[nm]))
          for nm, o, s in zip(names, offsets, sizes)]
    res = _run(g, [np.repeat(_full(x, B), n, axis=0) for x in xs] + ts)
    d = _full(res[1], B * n).reshape(B, n, m) if mask[0] else np.zeros((B, n, m))
    return {nm: np.swapaxes(d[:, o:o + s], 1, 2).reshape(B, *fn.output_shape, *fn.input_shapes[nm])
            for nm, o, s in zip(names, offsets, sizes)}


def _hessian(fn, xs, B):
    sizes, offsets = _sizes(fn)
    n = int(offsets[-1])
    names = fn.input_names
    _sweep_guard(B, n)
    graph, order = _main_plan(fn, frozenset({"hvp"}))
    eye = np.eye(n)
    ts = [np.tile(eye[:, o:o + s].reshape(n, *fn.input_shapes[nm]), (B,) + (1,) * len(fn.input_shapes[nm]))
          for nm, o, s in zip(names, offsets, sizes)]
    res = _run(graph, [np.repeat(_full(x, B), n, axis=0) for x in xs] + ts)
    hvps = res[-len(names):]
    out = {}
    for a, oa, sa in zip(names, offsets, sizes):
        out[a] = {}
        for b_name, h in zip(names, hvps):
            h = _full(h, B * n).reshape(B, n, *fn.input_shapes[b_name])[:, oa:oa + sa]
            out[a][b_name] = h.reshape(B, *fn.input_shapes[a], *fn.input_shapes[b_name])
    return out


def _full(a, B):
    return np.broadcast_to(a, (B, *a.shape[1:])) if a.shape[0] != B else a


def _finish(out, B, batch):
    def fix(a):
        a = _full(np.asarray(a, dtype=np.float64), B)
        return np.array(a if batch else a[0], dtype=np.float64, order="C")

    def walk(v):
        return {k: walk(x) for k, x in v.items()} if isinstance(v, dict) else fix(v)
    return {k: walk(v) for k, v in out.items()}


__all__ = ["Function", "compile_definition", "evaluate", "source", "graph_schema", "set_backend", "COMPUTE_KINDS"]
