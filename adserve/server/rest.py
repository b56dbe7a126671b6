"""The REST adapter of `ad.v1`: the `/v1` routes, mounted on the HTTP app by `mount(server)`.

Handlers only translate: read the raw body (bounded), parse it with orjson,
call the service in a worker thread, encode tensors back. An evaluation runs
there under the transport's cancel token (`web.stoppable`: the client's leaving
or the end of the shutdown's grace period stops it), unless it is brief
(`Service.brief`: a small body, a known function, a cost-model bound well under
a millisecond): then it is answered on the event loop, as the hop to a thread
and back would cost more than the evaluation. Errors are the service's,
answered by the app's handlers (`web.py`, `status.HTTP`).
"""

import contextlib
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route

from . import schemas, status, tensors
from .errors import UNPROCESSABLE, ServiceError, error_body
from .optimize import Run
from .service import Service
from .web import JSONOut, RawBody, ServiceDep, parse_json, read_body, stoppable
from .web import security as web_security

log = logging.getLogger("adserve.rest")

PREFIX = "/v1/"


def mount(server) -> None:
    server.http.include_router(router, dependencies=web_security(server.guard))
    # The evaluate routes once more, as plain Starlette routes ahead of every other: FastAPI's way to one of
    # its routes (matching through the included routers, solving the path parameter and the documentation's
    # security dependencies) took 0.1 ms, a third of a brief evaluation's time in the app (bench/layers.py).
    # Same paths, methods, handlers and route templates (the metrics' labels); the FastAPI routes behind them,
    # never reached, stay for the OpenAPI document.
    server.http.router.routes[0:0] = [
        _Route("/v1/functions/{function_id}/evaluate", _evaluate_by_id, methods=["POST"], include_in_schema=False),
        _Route("/v1/evaluate", _evaluate_definition, methods=["POST"], include_in_schema=False)]
    server.guarded_paths.append(PREFIX)


class _Route(Route):
    """A plain Starlette route that puts itself in the scope as FastAPI's routes do: the metrics label a
    request with its route's template."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


async def _evaluate_by_id(request: Request) -> JSONOut:
    return await _evaluation(request, request.path_params["function_id"])


async def _evaluate_definition(request: Request) -> JSONOut:
    return await _evaluation(request, None)


def _wants_b64(body) -> bool:
    """Answer in base64 when any tensor of the request came in base64."""
    if not isinstance(body, dict):
        return False
    maps = [m for m in (body.get("inputs"), body.get("tangent")) if isinstance(m, dict)]
    return _large(body.get("cotangent")) or any(_large(v) for m in maps for v in m.values())


def _large(tensor) -> bool:
    """Sent in base64, or as the ref of a held tensor (large data: the answer comes in base64 too)."""
    return tensors.is_b64(tensor) or (isinstance(tensor, dict) and "ref" in tensor)


def _shape(text: str | None) -> list:
    """`?shape=3,4` as [3, 4]; empty (or absent) is a scalar."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if len(parts) > tensors.MAX_DIMS or not all(p.isdigit() for p in parts):
        raise ServiceError(UNPROCESSABLE, "invalid_parameter",
                           f"shape must be sizes separated by commas, such as ?shape=3,4 (empty for a scalar), "
                           f"not {(text or '')[:80]!r}")
    return [int(p) for p in parts]


# A body up to this size is parsed on the event loop (tens of microseconds with orjson): then a brief
# evaluation (`Service.brief`) is answered there too, without the hop to a worker thread and back
BRIEF_BODY_BYTES = 16 << 10


async def _evaluation(request: Request, function_id: str | None) -> JSONOut:
    """The answer to an evaluate route: on the event loop when the body is small and the service says the
    evaluation is brief, else in a worker thread under the transport's cancel token (`stoppable`)."""
    started = time.perf_counter()
    raw, service = await read_body(request), request.app.state.service
    if len(raw) > BRIEF_BODY_BYTES:
        encoded, headers = await stoppable(request, _evaluate, service, function_id, raw, started)
    else:
        target, body = _target(function_id, parse_json(raw))
        if service.brief(target, body):
            encoded, headers = _evaluate(service, target, body, started)
        else:
            encoded, headers = await stoppable(request, _evaluate, service, target, body, started)
    return JSONOut(encoded, headers=headers)


def _target(function_id: str | None, body) -> tuple:
    """(what to evaluate, the evaluation): the path's function, else the body's "function", taken out of it."""
    if function_id is None and isinstance(body, dict):
        return body.get("function"), {k: v for k, v in body.items() if k != "function"}
    return function_id, body


def _evaluate(service: Service, target, body, started: float, deadline=None) -> tuple:
    """Evaluate `target` and encode: the CPU-bound part. `body` may still be the raw bytes: then it is parsed
    here, and `target` is the path's function id (None: the body's "function").

    Returns the encoded result and the response headers that say what ran: `x-adserve-backend`
    (interpreter, python or numba; for a cached result, the tier that computed it) and `Server-Timing`:
    `compute` (`;desc=parallel` for a parallel batch kernel) or `cache;desc=hit`, `kernel` (of compute, the
    compiled kernels' own calls: the rest is the engine's Python around them; `;desc=quick` for a large
    kernel's quick one), `compile;desc=pending` while the plan's kernel is being compiled in the background
    (`compile;desc=optimising` while its optimised kernel is), and `total` from the body's arrival, with
    parsing and encoding."""
    if isinstance(body, bytes):
        target, body = _target(target, parse_json(body))
    meta = {"kernel_ms": 0.0}  # asks the engine for its kernel calls' time
    encoded = tensors.encode_tree(service.evaluate(target, body, meta, deadline=deadline), _wants_b64(body))
    backend = meta.get("backend", "interpreter")
    if meta.get("cache_hit"):
        timing = ["cache;desc=hit"]
    else:  # the kernel's variant, when it is not the serial one, and an isolation worker, as its description
        variant = " ".join(filter(None, (backend.partition("-")[2], "isolated" if meta.get("isolated") else "")))
        timing = [f"compute;dur={meta.get('compute_ms', 0.0):.3f}" + (f";desc=\"{variant}\"" if " " in variant
                                                                     else f";desc={variant}" if variant else "")]
    if meta["kernel_ms"] and not meta.get("cache_hit"):
        timing.append(f"kernel;dur={meta['kernel_ms']:.3f}" + (";desc=quick" if meta.get("kernel") == "quick" else ""))
    if meta.get("compile"):
        timing.append(f"compile;desc={meta['compile']}")
    timing.append(f"total;dur={(time.perf_counter() - started) * 1e3:.3f}")
    return encoded, {"x-adserve-backend": backend.partition("-")[0], "Server-Timing": ", ".join(timing)}


class _RunStream(StreamingResponse):
    """NDJSON of a minimisation: once the response is over, however it ended (finished, the client gone,
    or before its body ever started), the run is closed."""

    media_type = "application/x-ndjson"  # what the OpenAPI document gives as the answer's only type

    def __init__(self, content, run: Run):
        super().__init__(content, media_type=self.media_type)
        self._run = run

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._run.close()


async def _minimize(service: Service, function_id: str, raw: bytes) -> StreamingResponse:
    """Start the run (a bad request, or one over the optimiser cap, is a plain 4xx), then stream NDJSON.

    An error after the first line can only be told in the stream: a last line `{"error": {...}}`."""
    body = parse_json(raw)
    if isinstance(body, dict) and "id" in body:  # a field of MinimizeRequest; here the path names the function
        body = dict(body)
        given = body.pop("id")
        if given != function_id:
            raise ServiceError(UNPROCESSABLE, "invalid_field",
                               f'"id" in the body ({str(given)[:100]!r}) is not the id in the path')
    run = await service.minimize(function_id, body)
    b64 = any(tensors.is_b64(v) for v in body["x0"].values())

    async def lines():
        async with contextlib.aclosing(run.progress()) as progress:
            try:
                async for p in progress:
                    yield tensors.dumps(tensors.encode_tree(p, b64)) + b"\n"
            except ServiceError as e:
                yield tensors.dumps(e.body()) + b"\n"
            except Exception:
                log.exception("internal error while minimizing %s", function_id)
                yield tensors.dumps(error_body("internal_error", status.INTERNAL_MESSAGE)) + b"\n"

    return _RunStream(lines(), run)


router = APIRouter()
# 401 and 429 only when API keys or rate limits are configured
_err = {code: schemas.error_response(code) for code in (400, 401, 413, 422, 429)}
_not_found = {code: schemas.error_response(code) for code in (401, 404, 429)}
_stopped = {code: schemas.error_response(code) for code in (503, 504)}  # shutting down; past its deadline
_evaluated = {200: {"model": schemas.EvaluationResult, "headers": schemas.EVALUATION_HEADERS}}


@router.post("/v1/functions", status_code=201, tags=["functions"], summary="Register a function",
             operation_id="registerFunction",
             responses={200: {"model": schemas.FunctionInfo, "description": "already registered"},
                        201: {"model": schemas.FunctionInfo, "description": "registered now"}, **_err},
             openapi_extra=schemas.request_body(schemas.Definition))
async def register(raw: RawBody, service: ServiceDep):
    info, created = await run_in_threadpool(lambda: service.register(parse_json(raw)))
    return JSONOut(info, status_code=201 if created else 200)


@router.get("/v1/functions", tags=["functions"], summary="List the registered functions (by id; paged)",
            operation_id="listFunctions",
            responses={200: {"model": schemas.FunctionList}, 422: schemas.error_response(422), **_not_found})
def list_functions(service: ServiceDep, limit: str | None = None, after: str | None = None):
    functions, following = service.list_functions(after, limit)
    return JSONOut({"functions": functions, **({"next": following} if following else {})})


@router.post("/v1/tensors", status_code=201, tags=["tensors"], summary="Hold a tensor: its ref stands for it",
             operation_id="holdTensor",
             responses={201: {"model": schemas.HeldTensor}, **_err},
             openapi_extra=schemas.tensor_upload())
async def put_tensor(request: Request, raw: RawBody, service: ServiceDep, shape: str | None = None,
                     dtype: str = "float64"):
    # raw bytes: so declared, or sent with ?shape= and not declared JSON (curl --data-binary's default type)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/octet-stream" or (shape is not None and kind != "application/json"):
        held = await run_in_threadpool(service.put_tensor_bytes, raw, _shape(shape), dtype)
    else:
        held = await run_in_threadpool(lambda: service.put_tensor(parse_json(raw)))
    return JSONOut(held, status_code=201)


@router.get("/v1/functions/{function_id}", tags=["functions"], summary="A function's metadata",
            operation_id="getFunction",
            responses={200: {"model": schemas.FunctionInfo}, **_not_found})
def function_info(function_id: str, service: ServiceDep):
    return JSONOut(service.info(function_id))


@router.get("/v1/functions/{function_id}/graph", tags=["functions"], responses=_not_found,
            operation_id="getFunctionGraph",
            summary="The definition in canonical graph form (POST-able back, same id)")
def function_graph(function_id: str, service: ServiceDep):
    return JSONOut(service.graph(function_id))


@router.get("/v1/functions/{function_id}/source", tags=["functions"], response_class=PlainTextResponse,
            operation_id="getFunctionSource",
            summary="Generated kernel source of one transform: primal, gradient, jvp, vjp or hvp (text/plain)",
            responses={code: {"description": "an error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}} for code in (404, 422)})
async def function_source(function_id: str, service: ServiceDep, transform: Annotated[str, Query(
        json_schema_extra={"$ref": "#/components/schemas/Transform"})] = "primal"):
    # a str checked by the engine (422 unknown_transform, naming the transforms), documented as the enum
    return PlainTextResponse(await run_in_threadpool(service.source, function_id, transform))


@router.post("/v1/functions/{function_id}/evaluate", tags=["evaluate"], summary="Evaluate a registered function",
             operation_id="evaluateFunction",
             responses={**_evaluated, **_err, **_not_found, **_stopped},
             openapi_extra=schemas.request_body(schemas.Evaluation, refused=["function"]))
async def evaluate_by_id(function_id: str, request: Request):
    # no FastAPI dependencies here: solving them costs more than the brief evaluation itself
    return await _evaluation(request, function_id)


@router.post("/v1/evaluate", tags=["evaluate"], summary="Evaluate a definition (registering it on the way)",
             operation_id="evaluate", responses={**_evaluated, **_err, **_not_found, **_stopped},
             openapi_extra=schemas.request_body(schemas.Evaluation, required=["function"]))
async def evaluate(request: Request):
    return await _evaluation(request, None)


@router.post("/v1/functions/{function_id}/minimize", tags=["optimize"], operation_id="minimizeFunction",
             summary="Minimise a function on the server: every iterate, as NDJSON", response_class=_RunStream,
             status_code=200,
             responses={200: {"description": "one MinimizeProgress per line; the last has done true",
                              "content": {"application/x-ndjson": {
                                  "schema": schemas.stream_line(schemas.MinimizeProgress)}}},
                        **schemas.json_errors({**_err, **_not_found})},
             openapi_extra=schemas.request_body(schemas.Minimization))
async def minimize(function_id: str, raw: RawBody, service: ServiceDep):
    return await _minimize(service, function_id, raw)


@router.get("/v1/schema/graph", tags=["functions"], summary='JSON Schema of the "graph" form',
            operation_id="getGraphSchema")
def graph_schema(service: ServiceDep):
    return JSONOut(service.graph_schema())
