"""Logging: the request id of the call a log line belongs to, and JSON lines for log collectors.

Every HTTP request and gRPC call has a request id: the one the caller sent
(`X-Request-ID` header, `x-request-id` metadata) when it is a reasonable token,
else a new one. It goes back to the caller (a response header; gRPC trailing
metadata, and initial metadata too when the answers stream) and is in
`request_id` while the call runs: contexts follow the request into its worker
threads, so every line logged on its behalf (uvicorn's access line included)
carries it. `configure` sets up the process's logging: the classic text lines,
or with `ADSERVE_LOG_FORMAT=json` one JSON object per line with `request_id`
for the lines logged within a call; a writer thread formats and writes them a
batch at a time, so a call only queues its lines.
"""

import atexit
import contextvars
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from queue import Empty, SimpleQueue

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("adserve_request_id", default=None)

HEADER = "x-request-id"
# what a proxy or a client's tracing might send (uuids, hex, base64, dotted ids); anything else is replaced,
# so a log line cannot be forged or bloated through the header
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def accept(presented: str | None) -> str:
    """The request id for a call that presented `presented`: it, when it is a reasonable token, else a new one."""
    if presented and _ACCEPTED.fullmatch(presented):
        return presented
    return os.urandom(16).hex()  # 32 hex digits, as a uuid4's hex; a quarter of its cost


class RequestIdFilter(logging.Filter):
    """Puts the current call's request id (or None) on each record, as `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id when in a call,
    the fields of an access line (uvicorn's), and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
                f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        rid = getattr(record, "request_id", None)
        if rid is not None:
            line["request_id"] = rid
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status_code = record.args
            line.update(client=client, method=method, path=path, status=status_code)
        for extra in ("grpc_method", "grpc_code", "duration_ms"):
            if hasattr(record, extra):
                line[extra] = getattr(record, extra)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Handoff(logging.handlers.QueueHandler):
    """Hands each record to the writer thread as it is (its request id set by the filter, on the caller's
    thread): QueueHandler's own `prepare` would format it here, which is the cost this saves the caller."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Writer:
    """The thread that formats and writes the queued records, in the order logged, a batch at a time: woken by
    a record, it waits `LINGER` seconds for the lines logged meanwhile, then writes them all with one write.
    A thread woken for every line took the interpreter's lock from the event loop on every call: that cost a
    gRPC call 80 us of its 0.7 ms (bench/latency.py with a C client)."""

    LINGER = 0.02

    def __init__(self, queue: SimpleQueue, handler: logging.Handler):
        self.queue, self.handler = queue, handler
        self._thread = threading.Thread(target=self._run, name="adserve-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        queue, stopping = self.queue, False
        while not stopping:
            batch = [queue.get()]
            time.sleep(self.LINGER)
            while True:
                try:
                    batch.append(queue.get_nowait())
                except Empty:
                    break
            stopping = _STOP in batch
            self._write([r for r in batch if r is not _STOP])

    def _write(self, records: list) -> None:
        handler, lines = self.handler, []
        for record in records:
            try:
                lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)
        if lines:
            try:
                handler.stream.write("".join(lines))
                handler.stream.flush()
            except Exception:
                handler.handleError(records[-1])

    def stop(self) -> None:
        """Write what is queued, and end the thread."""
        self.queue.put(_STOP)
        self._thread.join()


_STOP = object()
_writer: _Writer | None = None


def configure(level: str, fmt: str = "text") -> None:
    """The process's logging: to stderr at `level`, as text lines or (`fmt` "json") JSON lines.

    A line is formatted and written by a writer thread (`_Writer`), in the order logged, at most `LINGER`
    seconds later: the thread that logs it (the event loop, for every access line) only queues the record.
    Formatting a line and writing it to stderr cost a gRPC call a tenth of a millisecond on the loop
    (bench/latency.py). `close_writer()` (and the interpreter's exit) writes what is queued."""
    global _writer
    close_writer()
    # what neither format shows is not gathered for every record: the caller's frame (a stack walk), thread
    # and process (the logging HOWTO's optimisations)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    queue = SimpleQueue()
    handoff = _Handoff(queue)
    handoff.addFilter(RequestIdFilter())
    _writer = _Writer(queue, handler)
    logging.basicConfig(level=level.upper(), handlers=[handoff], force=True)


def close_writer() -> None:
    """Write every line queued, and stop the writer thread (a later line would wait for the next `configure`)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


atexit.register(close_writer)  # registered after logging's own: runs before logging.shutdown


class RequestIdMiddleware:
    """Plain ASGI, outermost: the request's id (`X-Request-ID`, or a new one) is `request_id` while the app
    answers, and the response's `X-Request-ID`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        presented = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        rid = accept(presented)
        encoded = rid.encode()

        async def with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", encoded)]}
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, with_id)
        finally:
            request_id.reset(token)
