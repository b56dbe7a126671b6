"""The Tesseract runtime API under `/tesseract/{name}`: every registered function is a Tesseract.

What `tesseract_core.Tesseract.from_url(base + "/tesseract/" + name)` (and
tesseract-jax's `apply_tesseract` over it) calls: `GET /health`,
`GET /openapi.json` (the document a Tesseract's own server produces, from
which the clients read the input and output schemas and the differentiable
paths), `GET /input_schema`, `GET /output_schema`, `POST /apply`,
`/abstract_eval`, `/jacobian`, `/jacobian_vector_product`,
`/vector_jacobian_product`. The inputs are the function's inputs by name
(float64 ones differentiable); the one output is named `value`. The OpenAPI
document is written by `tesseract_schema.py`.

Arrays are Tesseract's encoded arrays, `{"object_type": "array", "shape",
"dtype", "data": {"buffer", "encoding"}}` with encoding `json` (nested lists)
or `base64` (little-endian bytes); plain numbers and nested lists are taken
too. Answers use the format the `Accept` header names (`application/json` or
`application/json+base64`), else base64 when any array of the request came in
base64, else json. Each endpoint is one service evaluation: `apply` is
`value`, `jacobian` `jacobian`, `jacobian_vector_product` `jvp`,
`vector_jacobian_product` `vjp`, each with `wrt` the inputs named.

Errors are FastAPI's, as a Tesseract's server answers them: `{"detail": ...}`,
and for a request that is wrong (422) the list of `{"type", "loc", "msg"}` that
the SDK raises as pydantic's `ValidationError`; `STATUS` is this protocol's table.
"""

import base64
import binascii
import math

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from . import status, tensors
from .tesseract_schema import FORMATS, OUTPUT, SUMMARIES, differentiable, input_schema, openapi, output_schema
from .errors import BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHENTICATED, UNPROCESSABLE, ServiceError
from .web import JSONOut, parse_json, read_body, stoppable_call

PREFIX = "/tesseract"
# dtypes an input array may arrive in: every one converts to float64 without surprise
INPUT_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                "uint8", "uint16", "uint32", "uint64")

# service error kind -> HTTP status; a 422 carries the validation list the SDK raises as ValidationError
STATUS = {
    BAD_REQUEST: 422,  # as a Tesseract's server: a body that does not parse is a validation error
    UNPROCESSABLE: 422,
    NOT_FOUND: 404,
    TOO_LARGE: 413,
    UNAUTHENTICATED: 401,
    RATE_LIMITED: 429,
}


def mount(server) -> None:
    server.http.include_router(router)
    server.guarded_paths.append(PREFIX + "/")


class Invalid(ServiceError):
    """A request this protocol refuses, with where in the body (`loc`) it went wrong."""

    def __init__(self, loc, message: str, code: str = "invalid_tesseract_request"):
        super().__init__(UNPROCESSABLE, code, message)
        self.loc = ["body", *loc]


class NotAcceptable(ServiceError):
    """An `Accept` header that names no format this server writes: 406, as a Tesseract's server answers it."""

    status_code = 406

    def __init__(self, message: str):
        super().__init__(BAD_REQUEST, "not_acceptable", message)


def _answer(e: ServiceError) -> JSONOut:
    code = getattr(e, "status_code", None) or STATUS.get(e.kind) or status.http(e)
    if code != 422:
        return JSONOut({"detail": e.message}, status_code=code)
    loc = getattr(e, "loc", ["body"])
    return JSONOut({"detail": [{"type": e.code, "loc": loc, "msg": e.message, "ctx": {}}]}, status_code=422)


# -- arrays --------------------------------------------------------------------------------------

def _decode(value, loc) -> tuple[np.ndarray, bool]:
    """(float64 array, whether it came in base64) of an encoded array, a number or nested lists."""
    if not isinstance(value, dict):
        try:
            return tensors.decode(value, ".".join(map(str, loc))), False
        except tensors.TensorError as e:
            raise Invalid(loc, str(e), "invalid_array") from None
    unknown = set(value) - {"object_type", "shape", "dtype", "data"}
    data, shape, dtype = value.get("data"), value.get("shape"), value.get("dtype")
    if unknown or value.get("object_type", "array") != "array" or not isinstance(data, dict):
        raise Invalid(loc, 'an array is {"object_type": "array", "shape": [...], "dtype": "float64", '
                           '"data": {"buffer": ..., "encoding": "json" or "base64"}}', "invalid_array")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise Invalid([*loc, "shape"], f"shape must be a list of sizes, not {tensors.describe(shape)}", "invalid_array")
    if dtype not in INPUT_DTYPES:
        raise Invalid([*loc, "dtype"], f"dtype {dtype!r} is not one of {', '.join(INPUT_DTYPES)}", "invalid_array")
    encoding, buffer = data.get("encoding"), data.get("buffer")
    if data.get("compression") is not None or set(data) - {"encoding", "buffer", "compression"}:
        raise Invalid([*loc, "data"], "only uncompressed json and base64 buffers are accepted here", "invalid_array")
    if encoding == "json":
        try:
            a = tensors.decode(buffer, ".".join(map(str, [*loc, "data", "buffer"])))
        except tensors.TensorError as e:
            raise Invalid([*loc, "data", "buffer"], str(e), "invalid_array") from None
        if list(a.shape) != shape:
            raise Invalid([*loc, "data", "buffer"], f"the buffer has shape {list(a.shape)}, not the shape {shape} "
                                                    "the array declares", "invalid_array")
        return a, False
    if encoding == "base64":
        try:
            raw = base64.b64decode(buffer, validate=True) if isinstance(buffer, str) else None
        except (binascii.Error, ValueError):
            raw = None
        item = np.dtype(dtype).newbyteorder("<")
        if raw is None or len(raw) != math.prod(shape) * item.itemsize:
            raise Invalid([*loc, "data", "buffer"], f"the buffer must be the base64 of {math.prod(shape)} {dtype} "
                                                    "values (little-endian)", "invalid_array")
        return np.frombuffer(raw, dtype=item).astype(np.float64, copy=False).reshape(shape), True  # float64: no copy
    raise Invalid([*loc, "data", "encoding"], f"encoding {encoding!r} is not accepted here: use json or base64",
                  "invalid_array")


def _encode(a, b64: bool) -> dict:
    a = np.asarray(a, dtype=np.float64)
    if b64:
        buffer = base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")
    else:
        buffer = tensors.encode(a)  # non-finite values as "NaN", "Infinity": NumPy reads them back
    return {"object_type": "array", "shape": list(a.shape), "dtype": "float64",
            "data": {"buffer": buffer, "encoding": "base64" if b64 else "json"}}


def _format(accept: str | None, any_b64: bool) -> bool:
    """Whether to answer in base64: what `Accept` asks for, else what the request used."""
    for media_range in (accept or "").split(","):
        media_type, *params = (p.strip().lower() for p in media_range.split(";"))
        options = dict(p.partition("=")[::2] for p in params)
        if options.get("gpu_transport", "none") != "none" or options.get("compression", "none") != "none":
            continue
        if media_type in ("application/json", "application/json+base64"):
            return media_type.endswith("base64")
        if media_type in ("*/*", "application/*"):
            return any_b64
    if accept and accept.strip():
        raise NotAcceptable(f"cannot produce any encoding accepted by {accept!r}; the formats are "
                            f"application/{', application/'.join(FORMATS)}, without compression or GPU transport")
    return any_b64


# -- requests --------------------------------------------------------------------------------------

def _fields(body, required: tuple, optional: tuple = ()) -> dict:
    if not isinstance(body, dict):
        raise Invalid([], f"the body must be a JSON object with {', '.join(required)}")
    for key in body:
        if key not in required + optional:
            raise Invalid([key], f"unknown field {key!r}; the fields are {', '.join(required + optional)}",
                          "extra_forbidden")
    for key in required:
        if key not in body:
            raise Invalid([key], f"{key!r} is required", "missing")
    return body


def _inputs(info, value, field="inputs") -> tuple[dict, bool]:
    specs = [s["name"] for s in info["inputs"]]
    if not isinstance(value, dict):
        raise Invalid([field], f"{field} must be an object with {', '.join(specs)}")
    for name in value:
        if name not in specs:
            raise Invalid([field, name], f"{name!r} is not an input; the inputs are {', '.join(specs)}",
                          "extra_forbidden")
    decoded, any_b64 = {}, False
    for name in specs:
        if name not in value:
            raise Invalid([field, name], f"input {name!r} is missing", "missing")
        decoded[name], b64 = _decode(value[name], [field, name])
        any_b64 |= b64
    return decoded, any_b64


def _names(info, value, field: str, allowed: list) -> list:
    if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value):
        raise Invalid([field], f"{field} must be a non-empty list of distinct names from {', '.join(allowed)}")
    for i, name in enumerate(value):
        if name not in allowed:
            raise Invalid([field, i], f"{name!r} is not one of {', '.join(allowed)}", "literal_error")
    return value


# -- endpoints --------------------------------------------------------------------------------------

def _apply(service, info, body, accept):
    inputs, b64 = _inputs(info, _fields(body, ("inputs",))["inputs"])
    value = service.evaluate(info["target"], {"inputs": inputs})["value"]
    return {OUTPUT: _encode(value, _format(accept, b64))}


def _abstract_eval(service, info, body, accept):
    given = _fields(body, ("inputs",))["inputs"]
    names = [s["name"] for s in info["inputs"]]
    if not isinstance(given, dict) or set(given) != set(names):
        raise Invalid(["inputs"], f"inputs must be an object with exactly {', '.join(names)}, each "
                                  '{"shape": [...], "dtype": "..."}')
    for spec in info["inputs"]:
        aval = given[spec["name"]]
        if not isinstance(aval, dict) or aval.get("shape") != list(spec["shape"]) or \
                aval.get("dtype") not in INPUT_DTYPES:
            raise Invalid(["inputs", spec["name"]], f"input {spec['name']!r} has shape {list(spec['shape'])}: "
                                                    f'send {{"shape": {list(spec["shape"])}, "dtype": "float64"}}')
    return {OUTPUT: {"shape": list(info["output_shape"]), "dtype": "float64"}}


def _jacobian(service, info, body, accept):
    _fields(body, ("inputs", "jac_inputs", "jac_outputs"))
    inputs, b64 = _inputs(info, body["inputs"])
    wrt = _names(info, body["jac_inputs"], "jac_inputs", differentiable(info))
    _names(info, body["jac_outputs"], "jac_outputs", [OUTPUT])
    jac = service.evaluate(info["target"], {"inputs": inputs, "compute": ["jacobian"], "wrt": wrt})["jacobian"]
    b64 = _format(accept, b64)
    return {OUTPUT: {name: _encode(jac[name], b64) for name in wrt}}


def _jvp(service, info, body, accept):
    _fields(body, ("inputs", "jvp_inputs", "jvp_outputs", "tangent_vector"))
    inputs, b64 = _inputs(info, body["inputs"])
    wrt = _names(info, body["jvp_inputs"], "jvp_inputs", differentiable(info))
    _names(info, body["jvp_outputs"], "jvp_outputs", [OUTPUT])
    tangent = body["tangent_vector"]
    if not isinstance(tangent, dict) or set(tangent) != set(wrt):
        raise Invalid(["tangent_vector"], f"tangent_vector must hold one array for each of {', '.join(wrt)}")
    tangent, t64 = _inputs({"inputs": [{"name": n} for n in wrt]}, tangent, "tangent_vector")
    jvp = service.evaluate(info["target"], {"inputs": inputs, "compute": ["jvp"], "tangent": tangent,
                                            "wrt": wrt})["jvp"]
    return {OUTPUT: _encode(jvp, _format(accept, b64 or t64))}


def _vjp(service, info, body, accept):
    _fields(body, ("inputs", "vjp_inputs", "vjp_outputs", "cotangent_vector"))
    inputs, b64 = _inputs(info, body["inputs"])
    wrt = _names(info, body["vjp_inputs"], "vjp_inputs", differentiable(info))
    _names(info, body["vjp_outputs"], "vjp_outputs", [OUTPUT])
    cotangent = body["cotangent_vector"]
    if not isinstance(cotangent, dict) or set(cotangent) != {OUTPUT}:
        raise Invalid(["cotangent_vector"], f'cotangent_vector must be {{"{OUTPUT}": <array of the output\'s shape '
                                            f'{list(info["output_shape"])}>}}')
    ct, c64 = _decode(cotangent[OUTPUT], ["cotangent_vector", OUTPUT])
    vjp = service.evaluate(info["target"], {"inputs": inputs, "compute": ["vjp"], "cotangent": ct,
                                            "wrt": wrt})["vjp"]
    b64 = _format(accept, b64 or c64)
    return {name: _encode(vjp[name], b64) for name in wrt}


ENDPOINTS = {"apply": _apply, "abstract_eval": _abstract_eval, "jacobian": _jacobian,
             "jacobian_vector_product": _jvp, "vector_jacobian_product": _vjp}
assert set(ENDPOINTS) == set(SUMMARIES)


# -- routes ------------------------------------------------------------------------------------------

def _model(service, name: str) -> dict:
    return {**service.info(name), "target": name}


async def _post(request: Request, name: str, endpoint) -> JSONOut:
    try:
        raw = await read_body(request)
        service, accept = request.app.state.service, request.headers.get("accept")

        def work(service):
            info = _model(service, name)
            return endpoint(service, info, parse_json(raw), accept)
        return JSONOut(await stoppable_call(request, service, work))
    except ServiceError as e:
        return _answer(e)


async def _get(request: Request, name: str, what) -> JSONOut:
    try:
        return JSONOut(await run_in_threadpool(lambda: what(_model(request.app.state.service, name))))
    except ServiceError as e:
        return _answer(e)


# not in adserve's OpenAPI document: each function's Tesseract has its own at /tesseract/{name}/openapi.json
router = APIRouter(prefix=PREFIX, include_in_schema=False)
GETS = {
    "health": lambda info: {"status": "ok"},
    "openapi.json": lambda info: openapi(info, info["target"]),
    "input_schema": input_schema,
    "output_schema": output_schema,
}


def _routes() -> None:
    for path, what in GETS.items():
        async def get(name: str, request: Request, what=what):
            return await _get(request, name, what)
        router.add_api_route(f"/{{name}}/{path}", get, methods=["GET"], name=f"tesseract_{path}")
    for path, endpoint in ENDPOINTS.items():
        async def post(name: str, request: Request, endpoint=endpoint):
            return await _post(request, name, endpoint)
        router.add_api_route(f"/{{name}}/{path}", post, methods=["POST"], name=f"tesseract_{path}")


_routes()


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def not_found(rest: str, request: Request):
    known = [f"GET /{p}" for p in GETS] + [f"POST /{p}" for p in ENDPOINTS]
    return JSONOut({"detail": f"{request.method} {PREFIX}/{rest} is not an endpoint of a Tesseract here; under "
                              f"{PREFIX}/{{name}} they are {', '.join(known)}"}, status_code=404)
