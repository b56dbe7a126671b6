"""The HTTP transport: `create_app` builds the FastAPI app every HTTP protocol mounts its routes on.

It holds what all HTTP routes share and no protocol's routes: the bounded
body reader and JSON (orjson) in and out, the error handlers (a `ServiceError`
leaves as `{"error": {"code", "message", "location"?}}` with its status from
`status.HTTP`), the operations routes (`/healthz`, `/readyz`, `/metrics`) and
the browser demo, `/docs` (Swagger UI) and `/redoc` served from the package's
own copies of their scripts (static/vendor/docs, scripts/vendor-js.sh: no CDN,
so they work offline and behind strict egress), and ASGI middlewares: `MetricsMiddleware` counts every
request per route template, `GuardMiddleware` applies the `Guard` (API
keys, rate limits) to the path prefixes the protocols put in `guarded`, and
sets the call's tenant (tenancy.py) from its key, and `HeadMiddleware` answers
HEAD wherever GET is answered (FastAPI routes GET only), and Starlette's
`GZip` (Starlette's `GZipMiddleware`) compresses what is worth it for clients
that accept gzip, except streams and binary bodies (`GZIP_EXCLUDED`).
`stoppable` runs a request's work in a worker thread under a cancel token (an
engine `Deadline`): the client's disconnecting stops it, and so does the end of
the shutdown's grace period (that request is answered 503 `shutting_down`).
The app takes its service, metrics and guard from `app.build`; it makes none.
"""

import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware, GZipResponder, IdentityResponder
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..engine.deadline import Deadline
from . import logs, schemas, status, tenancy, tensors
from .errors import BAD_REQUEST, TOO_LARGE, UNAUTHENTICATED, ServiceError, error_body, stopped
from .security import Guard, presented_key, retry_after_header
from .service import Service
from .settings import Settings

log = logging.getLogger("adserve.rest")

# Not gzipped: NDJSON is a stream (minimize's progress lines): gzip would hold each line in the compressor
# until enough follow, so a client would see progress late; octet-stream bodies (the OIP binary extension,
# raw tensors) are float64 bytes that barely compress, and their readers take byte offsets literally.
GZIP_EXCLUDED = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-ndjson", "application/octet-stream")
GZIP_MIN_BYTES = 1024  # below it, the header and the CPU cost more than the bytes saved
# zlib level 1: on a 3.7 MiB answer of floats it keeps 49 % of the bytes at 60 MB/s, where level 6 keeps 46 % at
# 11 MB/s (a third of a second of CPU per answer); on Plotly's bundle, 38 % against 33 %
GZIP_LEVEL = 1

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class JSONOut(JSONResponse):
    """JSON via orjson; finite ndarrays from `tensors.encode` are written natively.

    A JSONResponse, so the OpenAPI document says JSON objects (not strings) for the routes' answers."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return tensors.dumps(content)


def error(status_code: int, code: str, message: str, location=None, headers=None) -> JSONOut:
    return JSONOut(error_body(code, message, location), status_code=status_code, headers=headers)


async def read_body(request: Request) -> bytes:
    """The raw body, refused with 413 past `max_body_bytes` (declared or actually sent)."""
    limit = request.app.state.settings.max_body_bytes
    declared = next((v for k, v in request.scope["headers"] if k == b"content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if chunk:
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> ServiceError:
    return ServiceError(TOO_LARGE, "body_too_large", f"the request body is over the limit of {limit} bytes")


def parse_json(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ServiceError(BAD_REQUEST, "malformed_json", f"the body is not valid JSON: {e}") from None


DISCONNECT_POLL_SECONDS = 0.1


async def stoppable(request: Request, work, *args):
    """`work(*args, token)` in a worker thread, where `token` (an engine `Deadline`) stops the evaluation when
    the client disconnects (polled while the thread runs) or when the server's shutdown grace period ends
    (uvicorn then cancels the request's task, the only thing that cancels one here): that request is answered
    503 `shutting_down` with Retry-After, and its thread stops at its next check instead of computing on."""
    token = Deadline()
    task = asyncio.ensure_future(run_in_threadpool(work, *args, token))
    try:
        while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS))[0]:
            if await request.is_disconnected():
                token.cancel("cancelled", "was cancelled: the client went away")
        return task.result()
    except asyncio.CancelledError:
        token.cancel("shutting_down", "was stopped: the server is shutting down")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its error is nobody's to read
        raise stopped("shutting_down", "the server is shutting down and stopped this evaluation; send it again "
                                       "(another replica answers)") from None
    finally:
        token.close()


class Cancellable:
    """A service whose evaluations run under one request's cancel token (`stoppable`'s), for adapters whose
    helpers call `service.evaluate` further down (the peer protocols): everything else is the service's."""

    __slots__ = ("_service", "_token")

    def __init__(self, service, token):
        self._service, self._token = service, token

    def evaluate(self, target, body, meta=None, deadline=None):
        return self._service.evaluate(target, body, meta, self._token if deadline is None else deadline)

    def __getattr__(self, name):
        return getattr(self._service, name)


async def stoppable_call(request: Request, service, work, *args):
    """`work(service, *args)` as `stoppable` runs it: its evaluations stop when the client disconnects or the
    shutdown's grace period ends."""
    return await stoppable(request, lambda *a: work(Cancellable(service, a[-1]), *a[:-1]), *args)


async def _service(request: Request) -> Service:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request for an attribute
    return request.app.state.service


RawBody = Annotated[bytes, Depends(read_body)]
ServiceDep = Annotated[Service, Depends(_service)]


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"], summary="200 while the process is alive", operation_id="healthz")
    async def healthz():  # async, as readyz: a plain def route is run in a worker thread
        return JSONOut({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="200 when ready to serve", operation_id="readyz",
             responses={503: {"model": schemas.ErrorBody, "description": "starting, or a backend is lost"}})
    async def readyz(service: ServiceDep):
        if service.ready():
            return JSONOut({"status": "ready"})
        return error(503, "not_ready", "the service is starting or lost a backend")

    @app.get("/metrics", tags=["operations"], summary="Prometheus text format (OpenMetrics when the Accept header "
             "asks for application/openmetrics-text)", response_class=PlainTextResponse, operation_id="metrics")
    def metrics(request: Request):
        body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def index():
        return HTMLResponse(page)

    static = StaticFiles(packages=[(__package__, "static")])

    @app.get("/static/{path:path}", include_in_schema=False)
    async def static_file(path: str, request: Request):
        return await static.get_response(path, request.scope)

    _docs(app)


DOCS_ASSETS = "/static/vendor/docs"


def _docs(app: FastAPI) -> None:
    """FastAPI's /docs and /redoc pages, their scripts served from here rather than from jsDelivr."""
    title = f"{app.title} {app.version}"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title}: Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
                                   oauth2_redirect_url="/docs/oauth2-redirect",
                                   # no badge asking validator.swagger.io about the document
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect():
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{title}: ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png", with_google_fonts=False)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        retry = getattr(exc, "retry_after", None)  # a limit that frees up: when to call again
        headers = None if retry is None else {"Retry-After": retry_after_header(retry)}
        return JSONOut(exc.body(), status_code=status.http(exc), headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is described at /docs"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
        else:
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, "internal_error", status.INTERNAL_MESSAGE)


_VALIDATION_ERROR = "#/components/schemas/HTTPValidationError"


def document(routes, components: dict, **info) -> dict:
    """The OpenAPI document of `routes` (title, version, description in `info`), in the form of the app's own:
    for a protocol that has its own document rather than a place in the app's (Open Inference Protocol)."""
    spec = get_openapi(routes=routes, **info)
    _tidy(spec, components)
    return spec


def _tidy(spec: dict, components: dict) -> None:
    """`components` (JSON Schemas that routes name in their openapi_extra) added; FastAPI's additions undone."""
    spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
    _no_validation_errors(spec)
    _no_type_beside_refs(spec)


def _no_validation_errors(spec: dict) -> None:
    """FastAPI documents a 422 `HTTPValidationError` on every route with parameters; this app answers its
    own error body (`validation_error` below), and on its GET routes, whose parameters are strings checked by
    hand (documented where they can fail), no such 422 at all."""
    for operations in spec.get("paths", {}).values():
        for method, operation in operations.items():
            answer = operation.get("responses", {}).get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") == _VALIDATION_ERROR:
                if method == "get":
                    del operation["responses"]["422"]
                else:
                    answer.update(description="an invalid request",
                                  content={"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
    for name in ("HTTPValidationError", "ValidationError"):
        spec.get("components", {}).get("schemas", {}).pop(name, None)


def _no_type_beside_refs(node) -> None:
    """FastAPI writes the type it infers (a str parameter, a streamed answer's string) beside a `$ref` given for
    that schema; the referenced schema is the whole truth, and generators read a sibling type as a conflict."""
    if isinstance(node, dict):
        if "$ref" in node:
            node.pop("type", None)
        for value in node.values():
            _no_type_beside_refs(value)
    elif isinstance(node, list):
        for value in node:
            _no_type_beside_refs(value)


def security(guard: Guard) -> list:
    """Dependencies that document the API keys (OpenAPI `securitySchemes`: a bearer token, or the `x-api-key`
    header) on a router's routes when the server has keys. They check nothing: `GuardMiddleware` does."""
    if not guard.keys:
        return []
    return [Depends(HTTPBearer(auto_error=False, description="an API key (ADSERVE_API_KEYS) as a bearer token")),
            Depends(APIKeyHeader(name="x-api-key", auto_error=False, description="an API key (ADSERVE_API_KEYS)"))]


def create_app(service, settings: Settings, metrics, guard: Guard, guarded: list) -> FastAPI:
    """The app over `service`, counting into `metrics`; `guard` applies to paths starting with any prefix in
    `guarded` (a list the protocols fill as they mount). Its shutdown closes the service, once the other
    transports' calls are done (`app.state.drains`: coroutine functions that return when one has drained)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for drained in app.state.drains:  # a gRPC call in its grace period still needs the service
            await drained()
        service.close()

    app = FastAPI(title="adserve", version=__version__, default_response_class=JSONOut, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # served by _docs, from the package
                  description="Automatic differentiation as a service. Register a function (expr, program or "
                              "graph), then ask for its value and derivatives (the `compute` kinds).")
    app.state.service, app.state.settings, app.state.metrics = service, settings, metrics
    app.state.drains = []
    # innermost: a HEAD's headers are those of its GET, Content-Encoding and Content-Length included
    app.add_middleware(GZip, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL,
                       exclude_content_types=GZIP_EXCLUDED)
    app.add_middleware(HeadMiddleware)  # inside the guard and the metrics: they see the HEAD
    if guard.active:  # inside the metrics, so 401 and 429 are counted
        app.add_middleware(GuardMiddleware, guard=guard, prefixes=guarded)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origins:  # outside the guard: preflights are answered before the key check
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
                           expose_headers=["Retry-After", "x-adserve-backend", "Server-Timing", "X-Request-ID"],
                           max_age=600)
    app.add_middleware(logs.RequestIdMiddleware)  # outermost: every answer has its id, and every line logged
    _error_handlers(app)
    _operations(app)

    plain_openapi = app.openapi

    def openapi():
        if app.openapi_schema is None:
            spec = plain_openapi()
            _tidy(spec, schemas.request_components())
        return app.openapi_schema

    app.openapi = openapi
    return app


class GZip(GZipMiddleware):
    """Starlette's GZipMiddleware without its set-up per request: the responder it makes for each request
    normalised the excluded content types again, and the request's headers were all parsed to read one.
    The responders themselves (what is compressed, `Vary`, streams) are Starlette's."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        accepted = next((v for k, v in scope["headers"] if k == b"accept-encoding"), b"")
        if b"gzip" in accepted:
            responder = GZipResponder(self.app, self.minimum_size, compresslevel=self.compresslevel,
                                      thread_minimum_size=self.thread_minimum_size, exclude_content_types=())
        else:
            responder = IdentityResponder(self.app, self.minimum_size, exclude_content_types=())
        responder.exclude_content_types = self.exclude_content_types  # normalised once, in __init__
        await responder(scope, receive, send)


class GuardMiddleware:
    """Plain ASGI: a call under a guarded prefix passes the guard or gets 401 / 429 in the error format."""

    def __init__(self, app, guard: Guard, prefixes: list):
        self.app, self.guard, self.prefixes = app, guard, prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or \
                not any(scope["path"].startswith(p) for p in self.prefixes):
            return await self.app(scope, receive, send)
        headers = {k: v for k, v in scope["headers"] if k in (b"authorization", b"x-api-key")}
        key = presented_key(headers.get(b"authorization", b"").decode("latin-1") or None,
                            headers.get(b"x-api-key", b"").decode("latin-1") or None)
        peer = (scope.get("client") or ("unknown", 0))[0]
        try:
            client = self.guard.check(key, peer)
        except ServiceError as e:
            extra = [(b"www-authenticate", b'Bearer realm="adserve"')] if e.kind == UNAUTHENTICATED else \
                [(b"retry-after", retry_after_header(e.retry_after).encode())]
            body = orjson.dumps(error_body(e.code, e.message))
            await send({"type": "http.response.start", "status": status.http(e),
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), *extra]})
            await send({"type": "http.response.body", "body": body})
            return
        token = tenancy.enter(tenancy.of_client(client))  # the key's names, functions and tensors
        try:
            await self.app(scope, receive, send)
        finally:
            tenancy.leave(token)


class HeadMiddleware:
    """Plain ASGI: HEAD is answered as GET (status and headers, Content-Length included) without the body,
    as HTTP says and as probes, link checkers and `curl -I` expect; FastAPI's GET routes answer 405 to it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        as_get = dict(scope, method="GET")  # a copy: the server's scope still says HEAD, so it sends no body

        async def headers_only(message):
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await self.app(as_get, receive, headers_only)
        finally:
            if "route" in as_get:  # the route template, for the metrics
                scope["route"] = as_get["route"]


class MetricsMiddleware:
    """Plain ASGI, so it sees every response, errors included; routes are labelled by template
    (`/v1/functions/{function_id}`), never by raw path."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, code = time.perf_counter(), 500

        async def send_status(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, code, time.perf_counter() - start)
