"""Protobuf messages of `ad.v1` to the service's plain data and back.

Requests become the same dicts REST decodes from JSON (tensors as float64
arrays), so the service checks them with the same messages; results and
progress dicts become responses. A field left at its proto3 default counts as
absent (empty `compute` is `["value"]`, empty `wrt` every input, `timeout_ms = 0`
no time limit of the request's own, `max_iter = 0` the default). A
`Tensor` must hold exactly prod(shape) numbers, or name a held tensor by its
`ref` alone (it becomes `{"ref": R}`, which the service resolves).
"""

import math

import numpy as np
from google.protobuf import json_format

from .errors import UNPROCESSABLE, ServiceError
from .grpc_gen import ad_pb2 as pb
from .tensors import MAX_DIMS


def _invalid(code: str, message: str) -> ServiceError:
    return ServiceError(UNPROCESSABLE, code, message)


# -- tensors ----------------------------------------------------------------------
_FEW = 16
def tensor_in(t: pb.Tensor, where: str):
    if t.ref:
        if t.shape or t.data:
            raise _invalid("invalid_tensor", f"{where} has a ref and data: a ref stands for the whole tensor")
        return {"ref": t.ref}
    shape = list(t.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise _invalid("invalid_tensor", f"{where}.shape is {shape}; expected at most {MAX_DIMS} "
                                         "non-negative integers")
    if len(t.data) != math.prod(shape):
        raise _invalid("invalid_tensor", f"{where} holds {len(t.data)} numbers but shape {shape} needs "
                                         f"{math.prod(shape)}")
    n = len(t.data)
    # np.array of a repeated field reads its buffer (fast for many numbers) after ~5 us of looking for it;
    # a few numbers come quicker through an iterator
    a = np.fromiter(t.data, np.float64, n) if n <= _FEW else np.array(t.data, dtype=np.float64)
    return a.reshape(shape)


def tensors_in(tensors, field: str) -> dict:
    return {name: tensor_in(t, f"{field}.{name}") for name, t in tensors.items()}


def set_tensor(t: pb.Tensor, a) -> None:
    a = np.asarray(a, dtype=np.float64)
    t.SetInParent()
    t.shape[:] = a.shape
    t.data[:] = a.ravel().tolist()


def _set_tensors(field, tensors: dict) -> None:
    for name, a in tensors.items():
        set_tensor(field[name], a)


# -- definitions --------------------------------------------------------------------
def _specs(specs) -> list:
    """Input specs as the JSON form has them: "dtype" only when set (empty means the default, float64)."""
    return [{"name": s.name, "shape": list(s.shape), **({"dtype": s.dtype} if s.dtype else {})} for s in specs]


def _target(request):
    """A request's function: its id, or its definition as a dict."""
    has_function = request.HasField("function")
    if request.id and has_function:
        raise _invalid("invalid_field", 'set "id" or "function", not both')
    if has_function:
        return definition_in(request.function)
    if request.id:
        return request.id
    raise _invalid("missing_field", 'set "id" (a registered function) or "function" (a definition to register '
                                    'on the way)')


def definition_in(d: pb.Definition) -> dict:
    out = {"inputs": _specs(d.inputs)}
    form = d.WhichOneof("form")
    if form == "graph":
        out["graph"] = _graph_in(d.graph, body=False)
    elif form is not None:
        out[form] = getattr(d, form)
    if d.name:
        out["name"] = d.name
    if d.entry:
        out["entry"] = d.entry
    return out


def _graph_in(g: pb.Graph, body: bool) -> dict:
    out = {"nodes": [_node_in(n) for n in g.nodes], "outputs": [_arg_in(a) for a in g.outputs]}
    if body:
        out["inputs"] = _specs(g.inputs)
    return out


def _node_in(n: pb.Node) -> dict:
    node = {"id": n.id, "op": n.op, "args": [_arg_in(a) for a in n.args]}
    if n.HasField("params"):
        node["params"] = _integers(json_format.MessageToDict(n.params))
    if n.bodies:
        node["bodies"] = {name: _graph_in(g, body=True) for name, g in n.bodies.items()}
    if n.outputs:
        node["outputs"] = list(n.outputs)
    return node


def _arg_in(a: pb.Arg):
    kind = a.WhichOneof("kind")
    if kind != "literal":
        return None if kind is None else getattr(a, kind)
    lit = {"shape": list(a.literal.shape)}
    if a.literal.HasField("value"):
        lit["value"] = a.literal.value
    else:
        lit["data"] = list(a.literal.data)
    return lit


def _integers(v):
    """Struct numbers are doubles; every parameter of the graph form is an integer where it is a number."""
    if isinstance(v, dict):
        return {k: _integers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_integers(x) for x in v]
    return int(v) if isinstance(v, float) and v.is_integer() else v


def info_out(info: dict, created: bool = False) -> pb.FunctionInfo:
    return pb.FunctionInfo(id=info["id"], output_shape=info["output_shape"], n_nodes=info["n_nodes"], created=created,
                           inputs=[pb.InputSpec(name=s["name"], shape=s["shape"], dtype=s.get("dtype", ""))
                                   for s in info["inputs"]],
                           name=info.get("name", ""))


def listing_out(functions: list, following: str | None) -> pb.ListFunctionsResponse:
    return pb.ListFunctionsResponse(functions=[info_out(f) for f in functions], next=following or "")


def held_out(held: dict) -> pb.HeldTensor:
    return pb.HeldTensor(ref=held["ref"], shape=held["shape"], dtype=held["dtype"], nbytes=held["nbytes"])


# -- evaluations --------------------------------------------------------------------
def evaluation_in(request: pb.EvaluateRequest) -> tuple:
    """(target, body) for `Service.evaluate`."""
    body = {"inputs": tensors_in(request.inputs, "inputs"), "batch": request.batch}
    if request.compute:
        body["compute"] = list(request.compute)
    if request.tangent:
        body["tangent"] = tensors_in(request.tangent, "tangent")
    if request.HasField("cotangent"):
        body["cotangent"] = tensor_in(request.cotangent, "cotangent")
    if request.wrt:
        body["wrt"] = list(request.wrt)
    if request.timeout_ms:  # 0 (unset): none; a negative one is refused by the service, as REST's
        body["timeout_ms"] = request.timeout_ms
    return _target(request), body


def result_out(result: dict) -> pb.EvaluateResponse:
    out = pb.EvaluateResponse(cached=result["cached"])
    for kind in ("value", "jvp"):
        if kind in result:
            set_tensor(getattr(out, kind), result[kind])
    for kind in ("gradient", "vjp", "hvp", "jacobian"):
        if kind in result:
            _set_tensors(getattr(out, kind), result[kind])
    for name, row in result.get("hessian", {}).items():
        _set_tensors(out.hessian[name].entries, row)
    for row in result.get("trace", ()):
        r = out.trace.add(name=row["name"], expr=row["expr"], shape=row["shape"], output=row["output"])
        for field in ("value", "tangent", "adjoint"):
            if field in row:
                set_tensor(getattr(r, field), row[field])
    return out


# -- minimisation -------------------------------------------------------------------
def minimization_in(request: pb.MinimizeRequest) -> tuple:
    """(target, body) for `optimize.start`."""
    body = {"x0": tensors_in(request.x0, "x0")}
    if request.method:
        body["method"] = request.method
    if request.max_iter:
        body["max_iter"] = request.max_iter
    if request.gtol:
        body["gtol"] = request.gtol
    return _target(request), body


def progress_out(p: dict) -> pb.MinimizeProgress:
    out = pb.MinimizeProgress(iteration=p["iteration"], value=p["value"], grad_norm=p["grad_norm"], done=p["done"],
                              message=p["message"], success=p["success"])
    _set_tensors(out.x, p["x"])
    return out
