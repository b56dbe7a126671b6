"""Evaluation: a request checked (names, shapes, batch sizes, integers, cost, memory) and run.

`evaluate` validates what a caller asks of a `Function` and runs the plans of
plans.py through the `execute` an `Engine` gives it (its backend), within the
caller's `deadline` (deadline.py) if one is given: past it, or once it is
cancelled, the work stops with `Stopped`. Every array it returns is the
caller's own (see `_finish`).
"""

from __future__ import annotations

import math

import numpy as np

from .backend import Fresh
from .deadline import Stopped
from .definition import Function
from .errors import EvaluationError, LimitError, clip
from .inputs import check_ints, plain as _plain
from .limits import DEFAULT_LIMITS, check_bytes, check_request, check_steps, check_tape
from .memory import request_bytes, request_plans, request_steps
from .plans import full, hessian, jacobian, main_plan, sweeps
from .trace import trace_graph

# each compute kind, what the answer's key of that name holds (the OpenAPI document describes each kind with it)
KIND_DOCS = {
    "value": "the function's value, of its output shape",
    "gradient": "{input: gradient}, each of the input's shape; needs a scalar output",
    "jvp": "the Jacobian times `tangent` (forward mode), of the output's shape",
    "vjp": "{input: `cotangent` times the Jacobian} (reverse mode), each of the input's shape",
    "hvp": "{input: the Hessian times `tangent`}, forward-over-reverse, never a full Hessian; needs a scalar output",
    "jacobian": "{input: Jacobian}, each of shape output_shape + the input's shape",
    "hessian": "{input a: {input b: Hessian block}}, each of shape shape(a) + shape(b); needs a scalar output",
    "trace": "the evaluation trace: one row per variable (name, expr, shape, output, value, tangent?, adjoint?)"}
COMPUTE_KINDS = tuple(KIND_DOCS)
SOURCE_TRANSFORMS = {"primal": "value", "gradient": "gradient", "jvp": "jvp", "vjp": "vjp", "hvp": "hvp"}


# -- validation ------------------------------------------------------------------------
def _check(fn, values, what, batch, names=None):
    """Validate a dict of per-input arrays (for `names`, default all inputs); returns the batch size."""
    names = fn.input_names if names is None else names
    if not isinstance(values, dict):
        raise EvaluationError(f"'{what}' must be an object with one entry per input", code="bad_evaluation")
    missing = [n for n in names if n not in values]
    if missing:
        raise EvaluationError(f"{what}: missing input '{clip(missing[0])}' (needed: {clip(list(names), 200)})", code="missing_input")
    extra = [n for n in values if n not in names]
    if extra:
        why = "not in 'wrt'" if extra[0] in fn.input_shapes else f"the function takes {clip(fn.input_names, 200)}"
        raise EvaluationError(f"{what}: unexpected entry '{clip(extra[0])}' ({why})", code="unknown_input")
    sizes = set()
    for n in names:
        sizes.add(_check_shape(np.asarray(values[n]), fn.input_shapes[n], f"{what}.{n}", batch))
    return _one_batch(sizes, what)


def _check_shape(a, want, where, batch):
    if a.dtype == object or not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise EvaluationError(f"{where} is not numeric", code="bad_evaluation")
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


def _wrt(fn, wrt) -> tuple:
    """The inputs to differentiate, in input order: by default every float64 one (int64 inputs never are)."""
    if wrt is None:
        return tuple(n for n in fn.input_names if n not in fn.int_inputs)
    if isinstance(wrt, str) or not isinstance(wrt, (list, tuple)) or not wrt:
        raise EvaluationError("'wrt' must be a non-empty list of input names", code="bad_evaluation")
    bad = [w for w in wrt if w not in fn.input_shapes]
    if bad or len(set(wrt)) != len(wrt):
        raise EvaluationError(f"'wrt': {clip(repr(bad[0]))} is not an input (the function takes {clip(fn.input_names, 200)})" if bad
                              else "'wrt' lists an input twice", code="bad_evaluation")
    ints = [w for w in wrt if w in fn.int_inputs]
    if ints:
        raise EvaluationError(f"'wrt': {ints[0]!r} is an int64 input, which is never differentiated",
                              code="bad_evaluation")
    return tuple(n for n in fn.input_names if n in wrt)


# -- evaluation ------------------------------------------------------------------------
_MAIN_KINDS = frozenset({"value", "gradient", "jvp", "vjp", "hvp"})
_F64 = np.dtype(np.float64)


class _Request:
    """What a request's `compute` and `wrt` settle, checked once per function and kept (see `_request`)."""

    __slots__ = ("bytes", "forward", "kinds", "limit_kinds", "main", "passed", "plan", "steps", "sweep_kinds",
                 "tangent_names", "trace", "vjp", "wrt")

    def __init__(self, fn, compute, wrt):
        if isinstance(compute, str) or not isinstance(compute, (list, tuple)):
            raise EvaluationError("'compute' must be a list, e.g. [\"value\", \"gradient\"]", code="bad_evaluation")
        unknown = [c for c in compute if c not in COMPUTE_KINDS]
        if unknown:
            raise EvaluationError(f"unknown compute kind {clip(repr(unknown[0]))}; choose from {list(COMPUTE_KINDS)}",
                                  code="invalid_compute")
        kinds = frozenset(compute) or frozenset({"value"})
        wrt = _wrt(fn, wrt)
        scalar_only = sorted(kinds & {"gradient", "hvp", "hessian"})
        if scalar_only and fn.output_shape != ():
            raise EvaluationError(f"{scalar_only[0]} needs a scalar output, but this function's output has shape "
                                  f"{list(fn.output_shape)} (use vjp or jacobian)", code="not_scalar")
        self.kinds, self.wrt, self.main, self.plan = kinds, wrt, kinds & _MAIN_KINDS, None
        self.steps, self.bytes = None, {}  # its plans' steps; its peak bytes as a line in B (see _peak_bytes)
        self.passed: dict = {}  # B -> (limits, peak bytes): the limit checks B passed under those limits
        self.limit_kinds = kinds - {"jacobian", "hessian"}
        self.sweep_kinds = sorted(kinds & {"jacobian", "hessian"})
        # what each call asks of its tangent and cotangent, settled here rather than per call
        self.forward, self.trace, self.vjp = bool(kinds & {"jvp", "hvp"}), "trace" in kinds, "vjp" in kinds
        self.tangent_names = fn.input_names if self.trace and not self.forward else wrt


_MAX_REQUEST_FORMS = 64  # per function: distinct (compute, wrt) kept
_MAX_PASSED = 16  # per request form: batch sizes whose checks are kept


def _request(fn, compute, wrt) -> _Request:
    """The checked request form, from the function's small cache when this (compute, wrt) was seen before."""
    try:
        key = (tuple(compute) if type(compute) in (list, tuple) else None,
               wrt if wrt is None else tuple(wrt) if type(wrt) in (list, tuple) else None)
        req = fn._requests.get(key) if key[0] is not None and (wrt is None or key[1] is not None) else None
    except TypeError:  # unhashable entries: the full check says what is wrong
        key = req = None
    if req is None:
        req = _Request(fn, compute, wrt)
        if key is not None and len(fn._requests) < _MAX_REQUEST_FORMS:
            fn._requests[key] = req
    return req


def evaluate(fn: Function, inputs, compute=("value",), tangent=None, cotangent=None, batch=False, meta=None,
             wrt=None, deadline=None, *, execute, limits: Limits) -> dict:
    """`Engine.evaluate`, its backend's runner (`execute(graph, args, meta, deadline)`) and its limits given
    explicitly."""
    try:
        return _evaluate(fn, inputs, compute, tangent, cotangent, batch, meta, wrt, deadline, execute, limits)
    except Stopped as err:
        raise err.about(f"the evaluation ({describe_kinds(compute)}) of function {fn.id}") from None


def describe_kinds(compute) -> str:
    kinds = ", ".join(c for c in COMPUTE_KINDS if c in (compute if isinstance(compute, (list, tuple)) else ()))
    return kinds or "value"


def request_points(inputs, batch) -> int:
    """The batch size the inputs hold (1 without batch), for the cost estimate: the largest leading axis."""
    if not batch or not isinstance(inputs, dict):
        return 1
    sizes = [len(v) if isinstance(v, (list, tuple)) else v.shape[0] for v in inputs.values()
             if isinstance(v, (list, tuple)) or isinstance(v, np.ndarray) and v.ndim]
    return max(sizes, default=1)


def _evaluate(fn, inputs, compute, tangent, cotangent, batch, meta, wrt, deadline, execute, limits) -> dict:
    req = _request(fn, compute, wrt)
    kinds, wrt, tangent_names, trace = req.kinds, req.wrt, req.tangent_names, req.trace

    def batched(a):
        a = np.asarray(a, dtype=np.float64)
        return a if batch else a[None]

    plain = _plain(fn, inputs, fn.input_names, batch)
    if plain is None:
        sizes = {_check(fn, inputs, "inputs", batch)}
    else:
        xs, size, _ = plain
        sizes = {size}
    ts = None
    if req.forward or (trace and tangent is not None):
        if tangent is None:
            raise EvaluationError(f"jvp and hvp need 'tangent' (one entry per input in {list(wrt)})",
                                  code="missing_tangent")
        plain_t = _plain(fn, tangent, tangent_names, batch)
        if plain_t is None:
            sizes.add(_check(fn, tangent, "tangent", batch, tangent_names))
        else:
            ts, size, _ = plain_t
            sizes.add(size)
    if req.vjp or (trace and cotangent is not None):
        if cotangent is None:
            raise EvaluationError(f"vjp needs 'cotangent' of the output's shape {list(fn.output_shape)}",
                                  code="missing_cotangent")
        sizes.add(_check_shape(np.asarray(cotangent), fn.output_shape, "cotangent", batch))
    elif cotangent is not None:  # unused, but a wrong one is a mistake worth saying
        _check_shape(np.asarray(cotangent), fn.output_shape, "cotangent", batch)
    if tangent is not None and ts is None and not req.forward and not trace:
        _check(fn, tangent, "tangent", batch, [n for n in fn.input_names if n in tangent]
               if isinstance(tangent, dict) else None)
    if batch:
        B = _one_batch(sizes, "request")
        if B is None:
            raise EvaluationError("with \"batch\": true the batch size comes from the inputs, and this function "
                                  "has none; send \"batch\": false", code="empty_batch")
        if B == 0:
            raise EvaluationError("a batch needs at least one point", code="empty_batch")
    else:
        B = 1
    passed = req.passed.get(B)
    if passed is not None and passed[0] is limits:  # what the checks depend on is (req, B, limits): all the same
        if meta is not None:
            meta["steps"], meta["estimated_bytes"] = req.steps, passed[1]
    else:
        _check_limits(fn, req, B, tangent_names, meta, limits)
    if deadline is not None:
        deadline.check()

    if plain is None:
        xs = [batched(inputs[n]) for n in fn.input_names]
    if fn.int_inputs and (plain is None or not plain[2]):  # (the plain path checked its integer arrays)
        check_ints(fn, xs, inputs if type(inputs) is dict else None)
    out = {}
    main = req.main
    if main:
        if req.plan is None:
            req.plan = main_plan(fn, main, wrt)
        graph, order = req.plan
        args = xs
        if req.forward:
            args = args + (ts if ts is not None else [batched(tangent[n]) for n in wrt])
        if req.vjp:
            args = args + [batched(cotangent)]
        res = execute(graph, args, meta, deadline)
        # a kernel's outputs are fresh arrays of (B, ...): handed out as they are, without the batch axis
        # when there is none; the interpreter's may be shared (an input passed through) and are copied
        own = isinstance(res, Fresh)
        res = iter(res)
        for kind, names in order:
            if names is None:
                val = next(res)
                if kind in kinds:
                    out[kind] = _own(val, batch) if own else _fix(val, B, batch)
            else:
                out[kind] = {n: _own(next(res), batch) if own else _fix(next(res), B, batch) for n in names}
    if req.sweep_kinds:
        fresh = {}  # id -> array: kernel outputs of the sweeps, nobody else's (see _finish)

        def run(graph, args):
            res = execute(graph, args, meta, deadline)
            if isinstance(res, Fresh):
                fresh.update((id(a), a) for a in res)
            return res
        if "jacobian" in kinds:
            out["jacobian"] = _finish(jacobian(fn, xs, B, wrt, run, limits.max_sweep_rows), B, batch, fresh)
        if "hessian" in kinds:
            out["hessian"] = _finish(hessian(fn, xs, B, wrt, run, limits.max_sweep_rows), B, batch, fresh)
    if trace:
        out["trace"] = _trace(fn, xs, tangent, cotangent, batched, B, batch, execute, deadline)
    return out


def _check_limits(fn, req, B, tangent_names, meta, limits) -> int:
    """A request's limit checks (work, tape, sweeps, steps, peak bytes); its peak bytes, kept per B in the request
    form once they pass (a repeated call checks nothing again)."""
    kinds, wrt = req.kinds, req.wrt
    check_request(fn.work, req.limit_kinds, B, limits=limits)
    if fn.tape and kinds & {"gradient", "vjp", "hvp", "jacobian", "hessian"}:
        check_tape(fn.tape, B, limits)
    for kind in req.sweep_kinds:
        check_request(fn.work, {"vjp" if kind == "jacobian" else "hvp"}, B, sweeps(fn, kind, wrt), limits)
        if fn.tape:  # the sweeps run in chunks of at most max_sweep_rows points, each with its own tape
            check_tape(fn.tape, min(B * sweeps(fn, kind, wrt), limits.max_sweep_rows), limits)
    if req.main and req.plan is None:
        req.plan = main_plan(fn, req.main, wrt)
    if req.steps is None:
        req.steps = request_steps(fn, request_plans(fn, req.plan if req.main else None, kinds, wrt))
    check_steps(req.steps, limits)
    estimated = _peak_bytes(fn, req, B, tangent_names)
    if meta is not None:
        meta["steps"], meta["estimated_bytes"] = req.steps, estimated
    check_bytes(estimated, limits)
    if len(req.passed) < _MAX_PASSED:
        req.passed[B] = (limits, estimated)
    return estimated


def _peak_bytes(fn, req, B, tangent_names) -> int:
    """`memory.request_bytes` of the request form `req` on a batch of B, kept per form as a line in B (exact:
    every term is linear in B from B = 2 on, where inputs stop being shared by a sweep's rows)."""
    key = 1 if B == 1 else 2
    line = req.bytes.get(key)
    if line is None:
        def at(b):
            return request_bytes(fn, req.plan if req.main else None, req.kinds, req.wrt, b,
                                 _arg_elements(fn, req.kinds, req.wrt, tangent_names))
        if B == 1:
            line = (0, at(1))
        else:
            two, three = at(2), at(3)
            line = (three - two, 3 * two - 2 * three)
        req.bytes[key] = line
    return line[0] * B + line[1]


def _arg_elements(fn, kinds, wrt, tangent_names) -> int:
    """Elements of one point's inputs, tangents and cotangent."""
    shapes = fn.input_shapes
    n = sum(math.prod(s) for s in shapes.values())
    if kinds & {"jvp", "hvp", "trace"}:
        n += sum(math.prod(shapes[t]) for t in tangent_names)
    if kinds & {"vjp", "trace"}:
        n += math.prod(fn.output_shape)
    return n


def _trace(fn, xs, tangent, cotangent, batched, B, batch, execute, deadline=None):
    """Rows of the evaluation trace; adjoints when the output is scalar or a cotangent is given."""
    with_t, with_a = tangent is not None, cotangent is not None or fn.output_shape == ()
    graph, rows = fn.plan(("trace", with_t, with_a), lambda: trace_graph(fn, with_t, with_a))
    args = list(xs)
    if with_t:  # an input left out of the tangent (not in 'wrt') is held fixed
        args += [batched(tangent[n]) if n in tangent else np.zeros((B if batch else 1, *fn.input_shapes[n]))
                 for n in fn.input_names]
    if with_a:
        args.append(batched(cotangent) if cotangent is not None else np.ones((1,)))
    res = iter(execute(graph, args, None, deadline))
    out = []
    fields = ["value"] + (["tangent"] if with_t else []) + (["adjoint"] if with_a else [])
    for row in rows:
        out.append({**row, **_finish({f: next(res) for f in fields}, B, batch)})
    return out


def _fix(a, B, batch):
    """A private C-ordered float64 copy of a batched result (leading axis B or 1), without the axis unless `batch`."""
    a = full(np.asarray(a, dtype=np.float64), B)
    return np.array(a if batch else a[0], dtype=np.float64, order="C")


def _own(a, batch):
    """A kernel's fresh (B, ...) output: no copy; a view without the batch axis unless `batch`."""
    return a if batch else a[0, ...]


def _finish(out, B, batch, fresh=None):
    """Private float64 results without the batch axis unless `batch`. A result that is a C-ordered view of the
    whole of one of the `fresh` arrays (a kernel output of this request, by id) is handed out as it is, at most
    once per array; anything else is copied."""
    taken = set()

    def fix(a):
        if fresh and isinstance(a, np.ndarray):
            root = a
            while isinstance(root.base, np.ndarray):
                root = root.base
            if (fresh.get(id(root)) is root and id(root) not in taken and a.dtype == _F64 and a.flags.c_contiguous
                    and a.nbytes == root.nbytes and a.ndim and a.shape[0] == B):
                taken.add(id(root))
                return _own(a, batch)
        return _fix(a, B, batch)

    def walk(v):
        return {k: walk(x) for k, x in v.items()} if isinstance(v, dict) else fix(v)
    return {k: walk(v) for k, v in out.items()}
