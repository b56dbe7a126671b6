"""What every gRPC call passes through, whatever its service: one interceptor running a list of stages.

`CallPipeline` is the one `grpc.aio.ServerInterceptor` of the gRPC server. Each
call of a method goes through the stages that apply to its service, in order,
each with a synchronous `enter(call)` (a `ServiceError` raised there refuses
the call) and `exit(call, code)` (its final status code, once it has ended):

- `RequestIds` (every call): the call's request id (its `x-request-id`
  metadata, or a new one) is `logs.request_id` while it runs and goes back in
  its trailing metadata (and, when its answers stream, its initial metadata);
  when it ends, one access line (method, status code, duration), as
  uvicorn's for HTTP.
- `CallMetrics` (every call, refused ones too): its count by final status
  code, its duration, and the messages it read and wrote.
- `Guarding` (the guarded services): API keys and rate limits
  (UNAUTHENTICATED or RESOURCE_EXHAUSTED, with `retry-after`); it sets the
  call's tenant (tenancy.py).
- `Drain` (the services added to the server): UNAVAILABLE once the server is
  stopping; the count of calls in flight that the grace period waits for; and
  each call's cancel token (an engine `Deadline`, `call_token(context)`): the
  call's gRPC deadline, cancelled when the call ends (the client cancels or goes
  away); past the grace period it stops the call's work, which then ends
  UNAVAILABLE (`shutting_down`).

One layer, not one interceptor per concern: grpc awaits each interceptor on
every call, and each layer wrapped the handler in its own coroutine and
context manager; four of them cost a unary call about a tenth of a
millisecond (bench/latency.py). The handler sees one proxy of its context,
which carries the token and counts the messages it writes and reads.
`abort` ends a call with a `ServiceError`'s status (`status.GRPC`), message
and, in the trailing metadata, its code, location and `retry-after`.
"""

import asyncio
import contextlib
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc

from ..engine.deadline import Deadline
from . import logs, status, tenancy
from .errors import ServiceError, stopped
from .security import Guard, presented_key, retry_after_header

access = logging.getLogger("adserve.grpc.access")

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
SHUTTING_DOWN = "the server is shutting down; call again (another replica)"


async def abort(context, error: ServiceError):
    """End the call with the error's status and message; its code (and location, retry-after) join the
    trailing metadata set before (the request id)."""
    metadata = [*(context.trailing_metadata() or ()), ("adserve-error-code", error.code)]
    if error.location is not None:
        metadata.append(("adserve-error-location", json.dumps(error.location)))
    if getattr(error, "retry_after", None) is not None:
        metadata.append(("retry-after", retry_after_header(error.retry_after)))
    await context.abort(status.grpc_code(error), error.message, trailing_metadata=tuple(metadata))


def call_token(context) -> Deadline | None:
    """The call's cancel token (see `Drain`), None for a service the drain does not cover."""
    return getattr(context, "token", None)


def _nothing(*_) -> None:
    pass


@dataclass(eq=False)
class Call:
    """One call as the stages see it. A stage may replace `request` (the request, or the iterator of a stream
    of them), add to `initial_metadata` and `trailing_metadata`, set `token`, and set `received`/`sent`,
    called once per message."""

    service: str
    method: str
    streamed_in: bool
    streamed_out: bool
    request: Any
    context: Any
    started: float = field(default_factory=time.perf_counter)
    initial_metadata: list = field(default_factory=list)
    trailing_metadata: list = field(default_factory=list)
    token: Deadline | None = None
    received: Callable[[], None] = _nothing
    sent: Callable[[], None] = _nothing
    tenant: Any = None  # Guarding's contextvars token
    entered: int = 0  # how many stages the call has entered
    task: Any = None  # the task that runs it (Drain's, to stop it)


class Stage:
    """One concern of every call of the services it `applies` to."""

    def applies(self, service: str) -> bool:
        return True

    def enter(self, call: Call) -> None:
        """The call starts; raising a `ServiceError` refuses it (the stages entered still `exit`)."""

    def exit(self, call: Call, code: str) -> None:
        """The call ended with status `code` (a grpc.StatusCode name)."""

    def stopped(self, call: Call) -> ServiceError | None:
        """The error a call cancelled now ends with when the cancel is this stage's (None: not its)."""
        return None


class _Context:
    """The call's context as the handler sees it: with the call's `token`, counting the messages it writes
    and reads."""

    __slots__ = ("_context", "_call", "token")

    def __init__(self, context, call: Call):
        self._context, self._call, self.token = context, call, call.token

    def __getattr__(self, name):
        return getattr(self._context, name)

    async def write(self, message) -> None:
        await self._context.write(message)
        self._call.sent()

    async def read(self):
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._call.received()
        return message


class CallPipeline(grpc.aio.ServerInterceptor):
    """Runs every call through the `stages` that apply to its service (see the module's docstring)."""

    def __init__(self, stages: list):
        self.stages = stages
        self._handlers: dict = {}  # full method name -> its handler, wrapped

    async def intercept_service(self, continuation, details):
        # a method's handler is wrapped once, not on every call: the continuation gives the same handler for a
        # method each time; unknown methods (None) are not kept, so what callers make up takes no room
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped(await continuation(details), details.method)
            if wrapped is not None:
                self._handlers[details.method] = wrapped
        return wrapped

    def _wrapped(self, handler, full_method: str):
        service, _, method = full_method.lstrip("/").rpartition("/")
        stages = tuple(s for s in self.stages if s.applies(service))
        if handler is None or not stages:
            return handler
        for kind in _KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: _wrap(behaviour, stages, service, method,
                                                       kind.startswith("stream"), kind.endswith("stream"))})
        return handler


def _wrap(behaviour, stages: tuple, service: str, method: str, streamed_in: bool, streamed_out: bool):
    if inspect.isasyncgenfunction(behaviour):  # responses yielded (reflection); grpc writes each
        async def wrapped_gen(request, context):
            call = Call(service, method, streamed_in, streamed_out, request, context)
            async with _Ending(stages, call):
                await _enter(stages, call)
                async with contextlib.aclosing(behaviour(call.request, _Context(context, call))) as out:
                    async for response in out:
                        yield response
                        call.sent()
        return wrapped_gen

    async def wrapped(request, context):
        call = Call(service, method, streamed_in, streamed_out, request, context)
        async with _Ending(stages, call):
            await _enter(stages, call)
            response = await behaviour(call.request, _Context(context, call))
            if response is not None:  # a unary answer (stream handlers write theirs and return None)
                call.sent()
            return response
    return wrapped


class _Ending:
    """Around a call's whole run, its stages entered included: when it ends, however it ends, its final status
    code is worked out and the stages it entered exit (`_exit`). A class, not a generator-based context manager:
    this runs on every call."""

    __slots__ = ("stages", "call")

    def __init__(self, stages: tuple, call: Call):
        self.stages, self.call = stages, call

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, kind, error, traceback) -> bool:
        code = None
        try:
            if isinstance(error, asyncio.CancelledError):
                code = await _cancelled(self.stages, self.call)
            elif error is not None:
                code = _ended_by(error, self.call.context)
        finally:
            _exit(self.stages, self.call, code)
        return False  # what ended the call goes on


async def _enter(stages: tuple, call: Call) -> None:
    """Enter the stages in order (counting them in `call.entered`) and set the call's metadata; a stage's
    refusal then ends the call (`abort`, which raises grpc's AbortError)."""
    refusal = None
    try:
        for stage in stages:
            stage.enter(call)
            call.entered += 1
    except ServiceError as e:
        refusal = e
    context = call.context
    if call.trailing_metadata:
        context.set_trailing_metadata(call.trailing_metadata)
    if call.initial_metadata:
        await context.send_initial_metadata(call.initial_metadata)
    if refusal is not None:
        await abort(context, refusal)


async def _cancelled(stages: tuple, call: Call) -> str:
    """The status code of a call cancelled from outside. When a stage says the cancel is its stop, the call
    ends with that stage's error instead (`abort` raises grpc's AbortError)."""
    for stage in stages[:call.entered]:
        error = stage.stopped(call)
        if error is not None:
            await abort(call.context, error)
    return _cut_short(call.context)


def _exit(stages: tuple, call: Call, code: str | None) -> None:
    """Exit the stages entered, innermost first, with the call's final status code."""
    code = code or _returned(call.context)
    for stage in reversed(stages[:call.entered]):
        stage.exit(call, code)


def _code_name(code) -> str:
    return getattr(code, "name", None) or str(code)


def _returned(context) -> str:
    """The status of a call whose handler returned (or was aborted): the code it set; the call's end when it
    was over before (a stream whose write failed returns quietly), else OK."""
    code = context.code()
    if code is not None:
        return _code_name(code)
    return _cut_short(context) if context.cancelled() else "OK"


def _ended_by(error: BaseException, context) -> str:
    """The status of a call whose handler raised `error`."""
    if isinstance(error, grpc.aio.AbortError):
        return _code_name(context.code() or grpc.StatusCode.UNKNOWN)
    if isinstance(error, GeneratorExit):
        return _cut_short(context)
    return "UNKNOWN"  # what grpc answers for an exception no handler mapped


# A client whose deadline passes cancels the call itself, a little before the server's copy of the
# deadline expires (that copy starts when the call arrives): a cancel this close to it is the deadline.
DEADLINE_SLACK_SECONDS = 0.1


def _cut_short(context) -> str:
    """A call ended from outside: its deadline passed, or else the client cancelled it or went away."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS else "CANCELLED"


# -- the stages ---------------------------------------------------------------------
class RequestIds(Stage):
    """The request id (`logs.request_id`, the call's trailing metadata and, when its answers stream, its
    initial metadata too) and the access line.

    A unary answer carries the id in its trailers only: initial metadata sent ahead of the answer is a
    batch of its own, whose completion the call waited for (0.1 ms of a 0.65 ms call, bench/latency.py),
    where the trailers go with the answer. A stream's id comes first, so a client knows it while the
    stream runs."""

    def enter(self, call: Call) -> None:
        presented = next((v for k, v in call.context.invocation_metadata() or ()
                          if k.lower() == logs.HEADER and isinstance(v, str)), None)
        rid = logs.accept(presented)
        logs.request_id.set(rid)  # each call is its own task: the id ends with it
        call.trailing_metadata.append((logs.HEADER, rid))
        if call.streamed_out:
            call.initial_metadata.append((logs.HEADER, rid))

    def exit(self, call: Call, code: str) -> None:
        method = f"/{call.service}/{call.method}"
        ms = round((time.perf_counter() - call.started) * 1000, 1)
        access.info("%s %s %.1f ms", method, code, ms, extra={"grpc_method": method, "grpc_code": code,
                                                            "duration_ms": ms})


class CallMetrics(Stage):
    """Counts every call (by service, method and final status code), its duration, and the messages it read
    and wrote, into `metrics` (a `metrics.Metrics`). Unknown methods are grpc's own UNIMPLEMENTED and not
    counted."""

    def __init__(self, metrics):
        self.metrics = metrics

    def enter(self, call: Call) -> None:
        received, sent = self.metrics.grpc_messages(call.service, call.method)
        if call.streamed_in:
            call.request = _counted(call.request, received)
        else:
            received.inc()
        call.received, call.sent = received.inc, sent.inc

    def exit(self, call: Call, code: str) -> None:
        self.metrics.observe_grpc(call.service, call.method, code, time.perf_counter() - call.started)


async def _counted(requests, received):
    async for r in requests:
        received.inc()
        yield r


class Guarding(Stage):
    """Each call of a guarded service passes the guard first, or ends UNAUTHENTICATED or RESOURCE_EXHAUSTED
    (with `retry-after` in the trailing metadata).

    The key is checked when a call starts. A token is taken then for a call with one request message;
    for a stream of requests, one as each message is read (through the request iterator, which is how the
    stream handlers read), and a message over the limit ends the stream with RESOURCE_EXHAUSTED: the
    responses before it stand, as for any error on a stream."""

    def __init__(self, guard: Guard, guarded: set):
        self.guard, self.guarded = guard, guarded

    def applies(self, service: str) -> bool:
        return service in self.guarded

    def enter(self, call: Call) -> None:
        context = call.context
        md = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        client = self.guard.identify(presented_key(md.get("authorization"), md.get("x-api-key")),
                                     _peer(context.peer()))
        if call.streamed_in:
            call.request = self._charged(call.request, context, client)
        else:
            self.guard.charge(client)
        call.tenant = tenancy.enter(tenancy.of_client(client))  # the key's names, functions and tensors

    def exit(self, call: Call, code: str) -> None:
        tenancy.leave(call.tenant)

    async def _charged(self, requests, context, client: str):
        async for request in requests:
            try:
                self.guard.charge(client)
            except ServiceError as e:
                await abort(context, e)
            yield request


def _peer(peer: str | None) -> str:
    """The address of a grpc peer string (`ipv4:127.0.0.1:5555`, `ipv6:[::1]:5555`), without the port."""
    if not peer:
        return "unknown"
    _, _, rest = peer.partition(":")
    host, _, _ = rest.rpartition(":")
    return host.strip("[]") or rest


class Drain(Stage):
    """Once `draining`, new calls of the added services end UNAVAILABLE; `in_flight` counts the others, each
    with its token: the call's deadline, cancelled when the call ends or by `stop_calls`."""

    def __init__(self, services: set):
        self.services, self.draining, self.stopping, self.in_flight = services, False, False, 0
        self._calls: dict = {}  # the task of each call in flight -> its token

    def applies(self, service: str) -> bool:
        return service in self.services

    def enter(self, call: Call) -> None:
        if self.draining:
            raise stopped("shutting_down", SHUTTING_DOWN)
        context = call.context
        token = call.token = Deadline(context.time_remaining(), "the call's gRPC deadline")
        context.add_done_callback(lambda _: token.cancel("cancelled", "was cancelled: the call ended"))
        call.task = asyncio.current_task()
        self._calls[call.task] = token
        self.in_flight += 1

    def exit(self, call: Call, code: str) -> None:
        self._calls.pop(call.task, None)
        call.token.close()
        self.in_flight -= 1

    def stopped(self, call: Call) -> ServiceError | None:
        return stopped("shutting_down", SHUTTING_DOWN) if self.stopping else None

    def stop_calls(self) -> None:
        """The grace period is over: stop every call's work (UNAVAILABLE) and end the calls."""
        self.stopping = True
        for task, token in list(self._calls.items()):
            token.cancel("shutting_down", "was stopped: the server is shutting down")
            task.cancel()
