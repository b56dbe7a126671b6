"""The REST adapter: `create_app(service, settings)` builds the FastAPI app.

Handlers only translate: read the raw body (bounded), parse it with orjson,
call the service in a worker thread, encode tensors back. Every error leaves
as `{"error": {"code", "message", "location"?}}`; the status of a service
error comes from `STATUS`, the one table of this protocol.
"""

import contextlib
import logging
import time
from importlib import resources
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from .. import __version__
from . import optimize, schemas, tensors
from .errors import (BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHENTICATED, UNPROCESSABLE, ServiceError,
                     error_body)
from .metrics import Metrics, MetricsMiddleware
from .security import Guard, GuardMiddleware, retry_after_header
from .service import Service
from .settings import Settings

log = logging.getLogger("adserve.rest")

STATUS = {BAD_REQUEST: 400, NOT_FOUND: 404, TOO_LARGE: 413, UNPROCESSABLE: 422, UNAUTHENTICATED: 401,
          RATE_LIMITED: 429}
INTERNAL_MESSAGE = "internal error: this is a bug in the server, and it has been logged"
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class JSONOut(JSONResponse):
    """JSON via orjson; finite ndarrays from `tensors.encode` are written natively.

    A JSONResponse, so the OpenAPI document says JSON objects (not strings) for the routes' answers."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return tensors.dumps(content)


def _error(status: int, code: str, message: str, location=None, headers=None) -> JSONOut:
    return JSONOut(error_body(code, message, location), status_code=status, headers=headers)


async def read_body(request: Request) -> bytes:
    """The raw body, refused with 413 past `max_body_bytes` (declared or actually sent)."""
    limit = request.app.state.settings.max_body_bytes
    too_large = ServiceError(TOO_LARGE, "body_too_large", f"the request body is over the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ServiceError(BAD_REQUEST, "malformed_json", f"the body is not valid JSON: {e}") from None


def _service(request: Request) -> Service:
    return request.app.state.service


RawBody = Annotated[bytes, Depends(read_body)]
ServiceDep = Annotated[Service, Depends(_service)]


def _wants_b64(body) -> bool:
    """Answer in base64 when any tensor of the request came in base64."""
    if not isinstance(body, dict):
        return False
    maps = [m for m in (body.get("inputs"), body.get("tangent")) if isinstance(m, dict)]
    return tensors.is_b64(body.get("cotangent")) or any(tensors.is_b64(v) for m in maps for v in m.values())


def _evaluate(service: Service, function_id: str | None, raw: bytes) -> tuple:
    """Parse, evaluate and encode: the CPU-bound part, run in a worker thread.

    Returns the encoded result and the response headers that say what ran: `x-adserve-backend`
    (interpreter, python or numba; for a cached result, the tier that computed it) and `Server-Timing`:
    `compute` (`;desc=parallel` for a parallel batch kernel) or `cache;desc=hit`, `compile;desc=pending`
    while the plan's kernel is being compiled in the background, and `total` with parsing and encoding."""
    started = time.perf_counter()
    body, target = parse_json(raw), function_id
    if function_id is None and isinstance(body, dict):
        target, body = body.get("function"), {k: v for k, v in body.items() if k != "function"}
    meta = {}
    encoded = tensors.encode_tree(service.evaluate(target, body, meta), _wants_b64(body))
    backend = meta.get("backend", "interpreter")
    if meta.get("cache_hit"):
        timing = ["cache;desc=hit"]
    else:  # the kernel's variant, when it is not the serial one, as the compute entry's description
        variant = backend.partition("-")[2]
        timing = [f"compute;dur={meta.get('compute_ms', 0.0):.3f}" + (f";desc={variant}" if variant else "")]
    if meta.get("compile"):
        timing.append(f"compile;desc={meta['compile']}")
    timing.append(f"total;dur={(time.perf_counter() - started) * 1e3:.3f}")
    return encoded, {"x-adserve-backend": backend.partition("-")[0], "Server-Timing": ", ".join(timing)}


class _RunStream(StreamingResponse):
    """NDJSON of a minimisation: once the response is over, however it ended (finished, the client gone,
    or before its body ever started), the run is stopped and its call's hold on the slot given back."""

    def __init__(self, content, run: optimize.Run, slot: optimize.Slot):
        super().__init__(content, media_type="application/x-ndjson")
        self._run, self._slot = run, slot

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._run.cancel()
            self._slot.release()


async def _minimize(service: Service, function_id: str, raw: bytes,
                    optimizers: optimize.Capacity) -> StreamingResponse:
    """Take a slot under the optimiser cap (else 429 at once), check and start in a worker thread (so a bad
    request is a plain 4xx), then stream NDJSON.

    An error after the first line can only be told in the stream: a last line `{"error": {...}}`."""
    slot = optimizers.admit()
    try:
        body = parse_json(raw)
        if isinstance(body, dict) and "id" in body:  # a field of MinimizeRequest; here the path names the function
            body = dict(body)
            given = body.pop("id")
            if given != function_id:
                raise ServiceError(UNPROCESSABLE, "invalid_field",
                                   f'"id" in the body ({str(given)[:100]!r}) is not the id in the path')
        run = await run_in_threadpool(optimize.start, service, function_id, body, slot)
    except BaseException:
        slot.release()
        raise
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
                yield tensors.dumps(error_body("internal_error", INTERNAL_MESSAGE)) + b"\n"

    return _RunStream(lines(), run, slot)


def _routes(app: FastAPI) -> None:
    # 401 and 429 only when API keys or rate limits are configured
    err = {status: {"model": schemas.ErrorBody} for status in (400, 401, 413, 422, 429)}
    not_found = {status: {"model": schemas.ErrorBody} for status in (401, 404, 429)}

    @app.post("/v1/functions", status_code=201, tags=["functions"], summary="Register a function",
              responses={200: {"model": schemas.FunctionInfo, "description": "already registered"},
                         201: {"model": schemas.FunctionInfo, "description": "registered now"}, **err},
              openapi_extra=schemas.request_body(schemas.Definition))
    async def register(raw: RawBody, service: ServiceDep):
        info, created = await run_in_threadpool(lambda: service.register(parse_json(raw)))
        return JSONOut(info, status_code=201 if created else 200)

    @app.get("/v1/functions/{function_id}", tags=["functions"], summary="A function's metadata",
             responses={200: {"model": schemas.FunctionInfo}, **not_found})
    def function_info(function_id: str, service: ServiceDep):
        return JSONOut(service.info(function_id))

    @app.get("/v1/functions/{function_id}/graph", tags=["functions"], responses=not_found,
             summary="The definition in canonical graph form (POST-able back, same id)")
    def function_graph(function_id: str, service: ServiceDep):
        return JSONOut(service.graph(function_id))

    @app.get("/v1/functions/{function_id}/source", tags=["functions"], response_class=PlainTextResponse,
             summary="Generated kernel source of one transform: primal, gradient, jvp, vjp or hvp (text/plain)",
             responses={status: {"description": "an error", "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/ErrorBody"}}}} for status in (404, 422)})
    async def function_source(function_id: str, service: ServiceDep, transform: str = "primal"):
        return PlainTextResponse(await run_in_threadpool(service.source, function_id, transform))

    @app.post("/v1/functions/{function_id}/evaluate", tags=["evaluate"], summary="Evaluate a registered function",
              responses={200: {"model": schemas.EvaluationResult}, **err, **not_found},
              openapi_extra=schemas.request_body(schemas.Evaluation))
    async def evaluate_by_id(function_id: str, raw: RawBody, service: ServiceDep):
        encoded, headers = await run_in_threadpool(_evaluate, service, function_id, raw)
        return JSONOut(encoded, headers=headers)

    @app.post("/v1/evaluate", tags=["evaluate"], summary="Evaluate a definition (registering it on the way)",
              responses={200: {"model": schemas.EvaluationResult}, **err, **not_found},
              openapi_extra=schemas.request_body(schemas.EvaluationWithFunction))
    async def evaluate(raw: RawBody, service: ServiceDep):
        encoded, headers = await run_in_threadpool(_evaluate, service, None, raw)
        return JSONOut(encoded, headers=headers)

    @app.post("/v1/functions/{function_id}/minimize", tags=["optimize"],
              summary="Minimise a function on the server: every iterate, as NDJSON",
              responses={200: {"description": "one MinimizeProgress per line; the last has done true",
                               "content": {"application/x-ndjson": {"schema": {
                                   "$ref": "#/components/schemas/MinimizeProgress"}}}}, **err, **not_found},
              openapi_extra=schemas.request_body(schemas.Minimization))
    async def minimize(function_id: str, raw: RawBody, service: ServiceDep, request: Request):
        return await _minimize(service, function_id, raw, request.app.state.optimizers)

    @app.get("/v1/schema/graph", tags=["functions"], summary='JSON Schema of the "graph" form')
    def graph_schema(service: ServiceDep):
        return JSONOut(service.graph_schema())

    @app.get("/healthz", tags=["operations"], summary="200 while the process is alive")
    def healthz():
        return JSONOut({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="200 when ready to serve")
    def readyz(service: ServiceDep):
        if service.ready():
            return JSONOut({"status": "ready"})
        return _error(503, "not_ready", "the service is starting or lost a backend")

    @app.get("/metrics", tags=["operations"], summary="Prometheus text format", response_class=PlainTextResponse)
    def metrics(request: Request):
        m = request.app.state.metrics
        return Response(m.render(), media_type=m.content_type)

    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def index():
        return HTMLResponse(page)

    static = StaticFiles(packages=[(__package__, "static")])

    @app.get("/static/{path:path}", include_in_schema=False)
    async def static_file(path: str, request: Request):
        return await static.get_response(path, request.scope)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        retry = getattr(exc, "retry_after", None)  # a limit that frees up: when to call again
        headers = None if retry is None else {"Retry-After": retry_after_header(retry)}
        return JSONOut(exc.body(), status_code=STATUS[exc.kind], headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is described at /docs"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
        else:
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", INTERNAL_MESSAGE)


def create_app(service: Service, settings: Settings, guard: Guard | None = None,
               optimizers: optimize.Capacity | None = None) -> FastAPI:
    """The app; `guard` (API keys, rate limits) defaults to one from `settings` with buckets in memory,
    `optimizers` (the cap on Minimize runs, `app.state.optimizers`: give it to the gRPC server too) to one of
    `settings.max_optimizers`."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="adserve", version=__version__, default_response_class=JSONOut, lifespan=lifespan,
                  description="Automatic differentiation as a service. Register a function (expr, program or "
                              "graph), then ask for value, gradient, jvp, vjp, hvp, jacobian and hessian.")
    app.state.service, app.state.settings = service, settings
    app.state.optimizers = optimizers or optimize.Capacity(settings.max_optimizers)
    app.state.metrics = Metrics(service, app.state.optimizers)
    if guard is None:
        guard = Guard(settings.api_keys, settings.rate_limit_per_second, settings.rate_limit_burst)
    app.state.guard = guard
    if guard.active:  # inside the metrics, so 401 and 429 are counted
        app.add_middleware(GuardMiddleware, guard=guard)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:  # outermost: preflights are answered before the key check
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"],
                           expose_headers=["Retry-After", "x-adserve-backend", "Server-Timing"], max_age=600)
    _error_handlers(app)
    _routes(app)

    plain_openapi = app.openapi

    def openapi():
        spec = plain_openapi()
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas.request_components())
        return spec

    app.openapi = openapi
    return app
