"""UM-Bridge 1.0 under `/umbridge`: every registered function is a UM-Bridge model, by name or id.

What the `umbridge` clients (Python, R, Julia, C++) send: `GET /Info`, then
`POST /ModelInfo`, `/InputSizes`, `/OutputSizes`, `/Evaluate`, `/Gradient`,
`/ApplyJacobian`, `/ApplyHessian`, each a JSON object with the model's `name`
and an optional `config` (adserve's models take no options: `{}`, or `[]` as R's
jsonlite writes an empty list). A model's inputs are the function's inputs in
declaration order, each flattened row-major into one vector (a scalar is a
vector of length 1); its one output (`outWrt` 0) is the function's output,
flattened the same way. The calls map onto one service evaluation each:

* `Evaluate` is `value`; `Gradient(outWrt, inWrt, sens)` the `vjp` of `sens`
  for input `inWrt`; `ApplyJacobian(outWrt, inWrt, vec)` the `jvp` along `vec`
  in input `inWrt`;
* `ApplyHessian(outWrt, inWrt1, inWrt2, sens, vec)` the `hvp` of the scalar
  `sens . output` (`Service.weighted`) with `vec` as the tangent of input
  `inWrt2`, read for input `inWrt1`: forward over reverse, never a Hessian.

Errors are UM-Bridge's own `{"error": {"type", "message"}}` with adserve's
message; `ERRORS` gives each service error kind its type and status (UM-Bridge's
reference servers answer 400 to every bad request; the Python client reads the
body whatever the status, the R client shows the message of any 4xx).
"""

import math

import numpy as np
from fastapi import APIRouter, Request

from . import status, tensors
from .errors import BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHENTICATED, UNPROCESSABLE, ServiceError
from .web import JSONOut, parse_json, read_body, stoppable_call

PREFIX = "/umbridge"
PROTOCOL_VERSION = 1.0

# service error kind -> (UM-Bridge error type, HTTP status); a kind not listed keeps its adserve status
ERRORS = {
    BAD_REQUEST: ("InvalidInput", 400),
    UNPROCESSABLE: ("InvalidInput", 400),
    NOT_FOUND: ("ModelNotFound", 400),
    TOO_LARGE: ("InvalidInput", 413),
    UNAUTHENTICATED: ("Unauthorized", 401),
    RATE_LIMITED: ("TooManyRequests", 429),
}
UNSUPPORTED = "UnsupportedFeature"  # a path that is not part of the protocol


def mount(server) -> None:
    server.http.include_router(router)
    server.guarded_paths.append(PREFIX + "/")


def error(type_: str, message: str, status_code: int = 400) -> JSONOut:
    return JSONOut({"error": {"type": type_, "message": message}}, status_code=status_code)


def _answer(e: ServiceError) -> JSONOut:
    type_, code = ERRORS.get(e.kind, ("ModelError", None))
    return error(type_, e.message, code or status.http(e))


def _bad(message: str) -> ServiceError:
    return ServiceError(UNPROCESSABLE, "invalid_umbridge_request", message)


# -- reading a request ---------------------------------------------------------------------

def _body(raw: bytes) -> dict:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise _bad('a UM-Bridge request is a JSON object such as {"name": "f", "input": [[1.0, 2.0]]}')
    _config(body.get("config"))
    return body


def _config(config) -> None:
    # R's jsonlite writes the default empty config as []
    if config is None or config == {} or config == []:
        return
    if isinstance(config, dict):
        raise _bad(f"config: unknown option {next(iter(config))!r}; adserve's models take no options "
                       "(send {} or leave config out)")
    raise _bad(f"config must be a JSON object (adserve's models take no options), not {tensors.describe(config)}")


def _model(service, body) -> dict:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f'"name" must be the model\'s name (a function name or id), not {tensors.describe(name)}')
    return service.info(name) | {"model": name}


def _sizes(shapes) -> list[int]:
    return [math.prod(s) for s in shapes]


def _index(body, field: str, count: int, what: str) -> int:
    value = body.get(field)
    if type(value) is not int or not 0 <= value < count:
        raise _bad(f"{field} must be an index of the model's {what}s, 0 to {count - 1}, "
                       f"not {tensors.describe(value)}")
    return value


def _vector(value, where: str, size: int, shape) -> np.ndarray:
    """A UM-Bridge vector of `size` numbers, reshaped row-major to `shape`."""
    if not isinstance(value, list):
        raise _bad(f"{where} must be a list of {size} numbers, not {tensors.describe(value)}")
    try:
        a = tensors.decode(value, where)
    except tensors.TensorError as e:
        raise _bad(str(e)) from None
    if a.ndim != 1 or a.size != size:
        raise _bad(f"{where} has {'shape ' + str(list(a.shape)) if a.ndim != 1 else str(a.size) + ' numbers'}; "
                       f"this model expects {size} numbers")
    return a.reshape(shape)


def _inputs(info, body) -> dict:
    specs = info["inputs"]
    given = body.get("input")
    if not isinstance(given, list) or len(given) != len(specs):
        raise _bad(f"input must be a list of {len(specs)} vectors (one per input: "
                       f"{', '.join(s['name'] for s in specs)}), not {tensors.describe(given)}")
    return {s["name"]: _vector(v, f"input[{i}]", math.prod(s["shape"]), s["shape"])
            for i, (s, v) in enumerate(zip(specs, given))}


def _out_wrt(info, body) -> None:
    _index(body, "outWrt", 1, "output")


def _flat(a) -> list | np.ndarray:
    return tensors.encode(np.ravel(a))


# -- the calls ---------------------------------------------------------------------------------

def _info(service, body) -> dict:
    """Every function the caller registered (the same set on every replica sharing Redis), by name where it has
    one and by id: the client accepts only a model name listed here."""
    models, after = [], None
    while True:
        page, after = service.list_functions(after, 1000)
        for f in page:
            models += [f["name"], f["id"]] if f.get("name") else [f["id"]]
        if after is None:
            return {"protocolVersion": PROTOCOL_VERSION, "models": models}


def _model_info(service, body) -> dict:
    _model(service, body)
    return {"support": {"Evaluate": True, "Gradient": True, "ApplyJacobian": True, "ApplyHessian": True}}


def _input_sizes(service, body) -> dict:
    return {"inputSizes": _sizes(s["shape"] for s in _model(service, body)["inputs"])}


def _output_sizes(service, body) -> dict:
    return {"outputSizes": _sizes([_model(service, body)["output_shape"]])}


def _evaluate(service, body) -> dict:
    info = _model(service, body)
    value = service.evaluate(info["model"], {"inputs": _inputs(info, body)})["value"]
    return {"output": [_flat(value)]}


def _gradient(service, body) -> dict:
    info = _model(service, body)
    inputs = _inputs(info, body)
    _out_wrt(info, body)
    name = info["inputs"][_index(body, "inWrt", len(inputs), "input")]["name"]
    shape = info["output_shape"]
    sens = _vector(body.get("sens"), "sens", math.prod(shape), shape)
    result = service.evaluate(info["model"], {"inputs": inputs, "compute": ["vjp"], "cotangent": sens, "wrt": [name]})
    return {"output": _flat(result["vjp"][name])}


def _apply_jacobian(service, body) -> dict:
    info = _model(service, body)
    inputs = _inputs(info, body)
    _out_wrt(info, body)
    spec = info["inputs"][_index(body, "inWrt", len(inputs), "input")]
    vec = _vector(body.get("vec"), "vec", math.prod(spec["shape"]), spec["shape"])
    result = service.evaluate(info["model"], {"inputs": inputs, "compute": ["jvp"], "tangent": {spec["name"]: vec},
                                              "wrt": [spec["name"]]})
    return {"output": _flat(result["jvp"])}


def _apply_hessian(service, body) -> dict:
    info = _model(service, body)
    inputs = _inputs(info, body)
    _out_wrt(info, body)
    first = info["inputs"][_index(body, "inWrt1", len(inputs), "input")]
    second = info["inputs"][_index(body, "inWrt2", len(inputs), "input")]
    shape = info["output_shape"]
    sens = _vector(body.get("sens"), "sens", math.prod(shape), shape)
    vec = _vector(body.get("vec"), "vec", math.prod(second["shape"]), second["shape"])
    weighted = service.weighted(info["model"])
    weight = weighted["inputs"][-1]["name"]
    # the tangent moves input inWrt2 only; reading the result for inWrt1 gives the mixed block
    tangent = {first["name"]: np.zeros(first["shape"]), second["name"]: vec}
    result = service.evaluate(weighted["id"], {"inputs": {**inputs, weight: sens}, "compute": ["hvp"],
                                               "tangent": tangent, "wrt": list(tangent)})
    return {"output": _flat(result["hvp"][first["name"]])}


CALLS = {
    "ModelInfo": _model_info,
    "InputSizes": _input_sizes,
    "OutputSizes": _output_sizes,
    "Evaluate": _evaluate,
    "Gradient": _gradient,
    "ApplyJacobian": _apply_jacobian,
    "ApplyHessian": _apply_hessian,
}


async def _call(request: Request, call) -> JSONOut:
    try:
        raw = await read_body(request)
        service = request.app.state.service
        return JSONOut(await stoppable_call(request, service, lambda s: call(s, _body(raw))))
    except ServiceError as e:
        return _answer(e)


# not in adserve's OpenAPI document: these are UM-Bridge's calls, documented by UM-Bridge (and docs/peers.md)
router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/Info")
async def info(request: Request):
    return JSONOut(_info(request.app.state.service, None))


def _route(path: str, call):
    async def handler(request: Request):
        return await _call(request, call)
    handler.__name__ = f"umbridge_{path}"
    router.add_api_route(f"/{path}", handler, methods=["POST"])


for _path, _fn in CALLS.items():
    _route(_path, _fn)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unsupported(path: str, request: Request):
    known = ["GET /Info"] + [f"POST /{p}" for p in CALLS]
    return error(UNSUPPORTED, f"{request.method} {PREFIX}/{path} is not part of UM-Bridge 1.0 here; "
                              f"the calls are {', '.join(known)}", 404)
