"""The REST client's half without I/O: request bodies out, JSON answers in.

Tensors go out in the base64 form, so answers come back in it too (exact and
fast); numbers, nested lists and the strings "NaN", "Infinity", "-Infinity"
are read as well.
"""

import base64
import math

import numpy as np

from .errors import from_http
from .types import FunctionInfo, FunctionPage, HeldTensor, Progress, Result

_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_MAPS = ("gradient", "vjp", "hvp", "jacobian")


def tensor_out(a) -> dict:
    if isinstance(a, HeldTensor):
        return a.tensor
    if isinstance(a, dict) and "ref" in a:  # a held tensor, by its ref
        return a
    a = np.asarray(a, dtype="<f8")  # not ascontiguousarray, which makes a scalar 1-d; tobytes is row-major
    return {"dtype": "float64", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def tensor_in(t) -> np.ndarray:
    if isinstance(t, dict):
        return np.frombuffer(base64.b64decode(t["b64"]), dtype="<f8").astype(np.float64).reshape(t["shape"])
    if isinstance(t, str):
        return np.array(_SPECIAL[t])
    if isinstance(t, list):
        return np.array(_special(t), dtype=np.float64)
    return np.array(t, dtype=np.float64)


def _special(v):
    if isinstance(v, list):
        return [_special(x) for x in v]
    return _SPECIAL.get(v, v) if isinstance(v, str) else v


def tensors_out(tensors: dict) -> dict:
    return {name: tensor_out(a) for name, a in tensors.items()}


def _tensors_in(tensors: dict) -> dict:
    return {name: tensor_in(t) for name, t in tensors.items()}


def definition_of(function) -> dict | None:
    """The definition to send, or None when `function` names a registered one."""
    return None if isinstance(function, (str, FunctionInfo)) else function


def function_id(function) -> str:
    return function.id if isinstance(function, FunctionInfo) else function


def evaluation(function, inputs, compute, tangent, cotangent, batch, wrt, timeout_ms=None) -> tuple:
    """(path, body) of an evaluation."""
    body = {"inputs": tensors_out(inputs), "compute": list(compute), "batch": batch}
    if tangent is not None:
        body["tangent"] = tensors_out(tangent)
    if cotangent is not None:
        body["cotangent"] = tensor_out(cotangent)
    if wrt is not None:
        body["wrt"] = list(wrt)
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    definition = definition_of(function)
    if definition is None:
        return f"/v1/functions/{function_id(function)}/evaluate", body
    return "/v1/evaluate", {**body, "function": definition}


def minimization(x0, method, max_iter, gtol) -> dict:
    body = {"x0": tensors_out(x0), "method": method}
    if max_iter is not None:
        body["max_iter"] = max_iter
    if gtol is not None:
        body["gtol"] = gtol
    return body


def answer(status: int, body, retry_after: float | None = None):
    """The JSON body of a 2xx, or the typed error of anything else."""
    if 200 <= status < 300:
        return body
    raise from_http(status, body, retry_after)


def info(body: dict, status: int | None = None) -> FunctionInfo:
    return FunctionInfo(body["id"], body["inputs"], tuple(body["output_shape"]), body["n_nodes"],
                        None if status is None else status == 201, body.get("name"))


def listing(limit, after) -> dict:
    """The query of GET /v1/functions."""
    return {k: v for k, v in (("limit", limit), ("after", after)) if v is not None}


def page(body: dict) -> FunctionPage:
    return FunctionPage([info(f) for f in body["functions"]], body.get("next"))


def upload(array) -> tuple:
    """(query, bytes) of POST /v1/tensors for an array: float64 (or int64) little-endian bytes."""
    a = np.asarray(array)
    a = a.astype("<i8" if a.dtype.kind in "iu" else "<f8", copy=False)
    return {"shape": ",".join(map(str, a.shape)), "dtype": "int64" if a.dtype.kind == "i" else "float64"}, a.tobytes()


def held(body: dict) -> HeldTensor:
    return HeldTensor(body["ref"], tuple(body["shape"]), body["dtype"], body["nbytes"])


def result(body: dict) -> Result:
    out = {"cached": body.get("cached", False)}
    for kind in ("value", "jvp"):
        if kind in body:
            out[kind] = tensor_in(body[kind])
    for kind in _MAPS:
        if kind in body:
            out[kind] = _tensors_in(body[kind])
    if "hessian" in body:
        out["hessian"] = {a: _tensors_in(row) for a, row in body["hessian"].items()}
    if "trace" in body:
        out["trace"] = [{k: tensor_in(v) if k in ("value", "tangent", "adjoint") else v for k, v in row.items()}
                        for row in body["trace"]]
    return Result(**out)


def progress(line: dict) -> Progress:
    if "error" in line:  # an error after the stream began: no status, only its code and message
        raise from_http(0, line)
    return Progress(line["iteration"], _tensors_in(line["x"]), float(tensor_in(line["value"])),
                    float(tensor_in(line["grad_norm"])), line["done"], line["message"], line.get("success", False))
