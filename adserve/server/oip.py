"""The Open Inference Protocol (v2) over REST: the `/v2` routes KServe and Triton clients call.

Server live, ready and metadata; model metadata and ready; inference, with or
without a version in the path (a function's only version is "1"). A request's
tensors are JSON `data` or, with Triton's binary tensor extension, raw
little-endian bytes after the JSON header (`Inference-Header-Content-Length`,
`binary_data_size`); outputs come back as bytes when the request asks for it
(`binary_data` on an output, `binary_data_output` on the request), as
`tritonclient.http` does by default. A gzip or deflate request body is
inflated (bounded by the body limit).

What the names mean is `oip_codec`'s; the service computes. Every error
under `/v2`, whoever raised it (the service, the body limit, the guard, the
router), leaves as the protocol's `{"error": "<message>"}`: `ErrorForm`
rewrites the app's error body on the way out, keeping its status, and puts
the snake_case code in the `x-adserve-error-code` header.
"""

import zlib

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .. import __version__
from . import oip_codec, tensors
from .errors import BAD_REQUEST, TOO_LARGE, ServiceError
from .oip_codec import Model
from .service import Service
from .web import JSONOut, RawBody, ServiceDep, document, parse_json, security, stoppable_call

PREFIX = "/v2"
DOCUMENT_DESCRIPTION = (
    "The Open Inference Protocol's REST routes as adserve serves them: a model is a registered function, by "
    "name or id. The protocol: https://github.com/kserve/open-inference-protocol; how adserve maps it: "
    "docs/peers.md.")
HEADER_LENGTH = "inference-header-content-length"


def mount(server) -> None:
    # the model routes are behind the guard: documented so (API keys) when the server has keys
    models = APIRouter(routes=[r for r in router.routes if r.path.startswith(PREFIX + "/models/")])
    protocol = APIRouter()
    protocol.include_router(APIRouter(routes=[r for r in router.routes if r not in models.routes]))
    protocol.include_router(models, dependencies=security(server.guard))
    # described by their own document, as the protocol's specification describes them, not in adserve's
    # /openapi.json: that one is adserve's API, which its clients and client generators read (docs/peers.md)
    server.http.include_router(protocol, include_in_schema=False)
    spec = {}

    @server.http.get(PREFIX + "/openapi.json", include_in_schema=False)
    def openapi():
        if not spec:
            spec.update(document(protocol.routes, COMPONENTS, title="adserve: Open Inference Protocol (v2)",
                                 version=__version__, description=DOCUMENT_DESCRIPTION))
        return JSONOut(spec)

    server.http.add_middleware(ErrorForm)
    server.guarded_paths.append(PREFIX + "/models/")  # health and server metadata stay open, as /readyz is


def _malformed(code: str, message: str) -> ServiceError:
    return ServiceError(BAD_REQUEST, code, message)


class ProtocolError(BaseModel):
    """The protocol's error body: one message for a person."""

    error: str


_ERRORS = {code: {"model": ProtocolError} for code in (400, 401, 404, 413, 422, 429)}
def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


# named once in the components of the protocol's OpenAPI document (`mount`), so both infer routes share them
COMPONENTS = {
    "OipDatatype": {"type": "string", "enum": list(oip_codec.DATATYPES)},
    "OipInputTensor": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": _ref("OipDatatype"),
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array", "items": {}, "description": "the elements, row-major (flat or nested)"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}},
    "OipRequestedOutput": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}},
    "OipInferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"batch": {"type": "boolean"},
                                                        "binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "items": _ref("OipInputTensor")},
        "outputs": {"type": "array", "items": _ref("OipRequestedOutput")}}},
}
_INFER_REQUEST = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": _ref("OipInferRequest")}}}}
_INFER_ANSWER = {200: {"description": "the outputs: JSON, or a JSON header and the binary outputs after it",
                       "content": {"application/json": {}, "application/octet-stream": {}}}}

router = APIRouter(prefix=PREFIX, tags=["open inference protocol (v2)"])


@router.get("/health/live", summary="200 while the server is alive", operation_id="oipServerLive")
def live():
    return JSONOut({"live": True})


@router.get("/health/ready", summary="200 when the server is ready to infer", operation_id="oipServerReady",
            responses={503: {"description": "not ready"}})
def ready(service: ServiceDep):
    ok = service.ready()
    return JSONOut({"ready": ok}, status_code=200 if ok else 503)


@router.get("", summary="Server metadata", operation_id="oipServerMetadata")
def server_metadata():
    return JSONOut(oip_codec.server_metadata())


@router.get("/models/{name}", summary="Model metadata: a function's inputs and outputs", responses=_ERRORS,
            operation_id="oipModelMetadata")
@router.get("/models/{name}/versions/{version}", summary="Model metadata (version 1)", responses=_ERRORS,
            operation_id="oipModelVersionMetadata")
async def model_metadata(name: str, service: ServiceDep, version: str = ""):
    return JSONOut((await run_in_threadpool(Model.of, service, name, version)).metadata())


@router.get("/models/{name}/ready", summary="200 when the model (function name or id) is there",
            responses=_ERRORS, operation_id="oipModelReady")
@router.get("/models/{name}/versions/{version}/ready", summary="200 when the model is there (version 1)",
            responses=_ERRORS, operation_id="oipModelVersionReady")
async def model_ready(name: str, service: ServiceDep, version: str = ""):
    await run_in_threadpool(Model.of, service, name, version)
    return JSONOut({"name": name, "ready": True})


@router.post("/models/{name}/infer", summary="Infer: the outputs asked for (value, derivatives)",
             responses={**_INFER_ANSWER, **_ERRORS}, openapi_extra=_INFER_REQUEST, operation_id="oipModelInfer")
@router.post("/models/{name}/versions/{version}/infer", summary="Infer (version 1)",
             responses={**_INFER_ANSWER, **_ERRORS}, openapi_extra=_INFER_REQUEST,
             operation_id="oipModelVersionInfer")
async def infer(name: str, request: Request, raw: RawBody, service: ServiceDep, version: str = ""):
    raw = _inflate(raw, request.headers.get("content-encoding", "identity"),
                   request.app.state.settings.max_body_bytes)
    body, headers = await stoppable_call(request, service, _infer, name, version, raw,
                                         request.headers.get(HEADER_LENGTH))
    return Response(body, headers=headers, media_type=headers.pop("content-type"))


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body without its content encoding; inflated past `limit` bytes is a 413, as a plain body would be."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise _malformed("unsupported_encoding", f"Content-Encoding {encoding[:40]!r} is not served; "
                                                 "send gzip, deflate or identity")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as e:
        raise _malformed("invalid_encoding", f"the body is not valid {encoding}: {e}") from None
    if len(out) > limit:
        raise ServiceError(TOO_LARGE, "body_too_large",
                           f"the inflated request body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise _malformed("invalid_encoding", f"the {encoding} body ends early")
    return out


def _infer(service: Service, name: str, version: str, raw: bytes, header_length) -> tuple[bytes, dict]:
    """Parse, evaluate, encode (in a worker thread): the response body and its headers."""
    head, binary = _split(raw, header_length)
    request = parse_json(head)
    if not isinstance(request, dict):
        raise _malformed("invalid_inference_request", "an inference request is a JSON object with inputs")
    parameters = _object(request.get("parameters", {}), "parameters")
    wanted = _list(request.get("outputs", []), "outputs")
    binary_all = parameters.get("binary_data_output", False) is True
    outputs = {}  # name -> binary or not
    for i, o in enumerate(wanted):
        o = _object(o, f"outputs[{i}]")
        params = _object(o.get("parameters", {}), f"outputs[{i}].parameters")
        if "classification" in params:
            raise _malformed("invalid_inference_request", "the classification extension is not served")
        outputs[_string(o.get("name"), f"outputs[{i}].name")] = params.get("binary_data", binary_all) is True
    model = Model.of(service, name, version)
    evaluation, chosen = model.evaluation(_tensors(request.get("inputs"), binary), list(outputs), parameters)
    result = service.evaluate(model.id, evaluation)
    answer = {"model_name": name, "model_version": oip_codec.VERSION, "parameters": {"cached": result["cached"]},
              "outputs": []}
    if "id" in request:
        answer["id"] = request["id"]
    chunks = []
    for out_name, a in oip_codec.outputs(result, chosen):
        tensor = {"name": out_name, "datatype": "FP64", "shape": list(a.shape)}
        if outputs.get(out_name, binary_all):
            chunks.append(a.astype("<f8").tobytes())
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = tensors.encode(a.reshape(-1))
        answer["outputs"].append(tensor)
    head = tensors.dumps(answer)
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(head))}


def _split(raw: bytes, header_length) -> tuple[bytes, memoryview]:
    """(JSON header, binary tensor data) of a body, split where `Inference-Header-Content-Length` says."""
    if header_length is None:
        return raw, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise _malformed("invalid_binary_data", f"Inference-Header-Content-Length is {header_length[:20]!r}: "
                                                f"it must be a length within the body's {len(raw)} bytes")
    n = int(header_length)
    return raw[:n], memoryview(raw)[n:]


def _tensors(inputs, binary: memoryview) -> list:
    """The request's input tensors, each from its JSON `data` or its slice of the binary data."""
    found, offset = [], 0
    for i, t in enumerate(_list(inputs, "inputs")):
        t = _object(t, f"inputs[{i}]")
        name = _string(t.get("name"), f"inputs[{i}].name")
        params = _object(t.get("parameters", {}), f"inputs[{i}].parameters")
        if "shared_memory_region" in params:
            raise _malformed("invalid_inference_request", f"input {name!r}: shared memory is not served; send data")
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in t:
                raise _malformed("invalid_inference_request", f"input {name!r} has neither data nor binary_data_size")
            found.append(oip_codec.from_values(name, t.get("datatype"), t.get("shape"), t["data"]))
            continue
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise _malformed("invalid_binary_data", f"input {name!r}: binary_data_size {str(size)[:20]} is not "
                                                    f"within the {len(binary) - offset} bytes of binary data left")
        found.append(oip_codec.from_bytes(name, t.get("datatype"), t.get("shape"), binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise _malformed("invalid_binary_data", f"{len(binary) - offset} bytes of binary data belong to no input")
    return found


def _expect(v, kind: type, what: str, where: str):
    """`v` if it is a `kind`, else the protocol's 400 saying where and what it is instead."""
    if not isinstance(v, kind):
        raise _malformed("invalid_inference_request", f"{where} must be {what}, not {tensors.describe(v)}")
    return v


def _object(v, where: str) -> dict:
    return _expect(v, dict, "a JSON object", where)


def _list(v, where: str) -> list:
    return _expect(v, list, "a JSON list", where)


def _string(v, where: str) -> str:
    return _expect(v, str, "a string", where)


class ErrorForm:
    """Plain ASGI: under `/v2`, an error answer `{"error": {"code", "message", ...}}` (the app's form, from
    any handler or middleware inside) leaves as `{"error": "<message>"}`, with its status kept and its code
    in `x-adserve-error-code`. Successful answers pass untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            return await self.app(scope, receive, send)
        start, parts = None, []

        async def rewrite(message):
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is complete
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body, extra = _flat(b"".join(parts))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode()), *extra]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def _flat(body: bytes) -> tuple[bytes, list]:
    """(the protocol's error body, extra headers) of the app's error body; anything else stays as it is."""
    try:
        error = orjson.loads(body)["error"]
        message, code = error["message"], error["code"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return body, []
    return orjson.dumps({"error": message}), [(b"x-adserve-error-code", str(code).encode())]
