"""The gRPC clients: `GrpcClient` (blocking) and `AsyncGrpcClient` (asyncio), the same calls as the
REST clients, plus `stream()`.

`stream()` opens one `EvaluateStream` call and evaluates in lockstep on it
(send one request, read its answer): the path for a client-driven optimisation
loop, with no per-step call set-up. The asyncio client's stream is the faster
of the two: the blocking one hands each request to grpc's own thread.

`tls=True` (or `root_certificates=`, the PEM of a private CA or a self-signed
certificate) makes the channel TLS; `api_key` goes with every call as
`authorization: Bearer` metadata, beside any `metadata` given. A call the
server refuses for now (UNAVAILABLE; RESOURCE_EXHAUSTED with `retry-after`,
that is a rate limit or the optimiser cap, not a message over the size limit)
is made again after a backoff (`retries`, retry.py); a stream only before its
first answer.
"""

import asyncio
import json
import math
import queue
import time

import grpc
import numpy as np
from google.protobuf import struct_pb2

from . import errors
from .grpc_gen import ad_pb2 as pb
from .grpc_gen import ad_pb2_grpc
from .retry import Retry, policy, seconds
from .types import FunctionInfo, FunctionPage, HeldTensor, Progress, Result

DEFAULT_TARGET = "127.0.0.1:50051"
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_END = object()


# -- numpy and definitions to messages -------------------------------------------------
def _tensor(a) -> pb.Tensor:
    if isinstance(a, HeldTensor):
        return pb.Tensor(ref=a.ref)
    if isinstance(a, dict) and "ref" in a:  # a held tensor, by its ref
        return pb.Tensor(ref=a["ref"])
    a = np.asarray(a, dtype=np.float64)
    return pb.Tensor(shape=a.shape, data=a.ravel().tolist())


def _tensors(tensors: dict) -> dict:
    return {name: _tensor(a) for name, a in tensors.items()}


def _array(t: pb.Tensor) -> np.ndarray:
    return np.array(t.data, dtype=np.float64).reshape(tuple(t.shape))


def _arrays(tensors) -> dict:
    return {name: _array(t) for name, t in tensors.items()}


def _specs(specs) -> list:
    return [pb.InputSpec(name=s["name"], shape=s.get("shape", []), dtype=s.get("dtype", "")) for s in specs]


def definition(d: dict) -> pb.Definition:
    """A definition dict (inputs and one of expr, program, graph) as a message."""
    out = pb.Definition(inputs=_specs(d["inputs"]), name=d.get("name", ""), entry=d.get("entry", ""))
    if "graph" in d:
        out.graph.CopyFrom(_graph(d["graph"]))
    elif "program" in d:
        out.program = d["program"]
    else:
        out.expr = d["expr"]
    return out


def _graph(g: dict) -> pb.Graph:
    return pb.Graph(inputs=_specs(g.get("inputs", [])), nodes=[_node(n) for n in g.get("nodes", [])],
                    outputs=[_arg(a) for a in g["outputs"]])


def _node(n: dict) -> pb.Node:
    node = pb.Node(id=n["id"], op=n["op"], args=[_arg(a) for a in n.get("args", [])], outputs=n.get("outputs", []),
                   bodies={name: _graph(body) for name, body in n.get("bodies", {}).items()})
    if n.get("params"):
        node.params.CopyFrom(_struct(n["params"]))
    return node


def _struct(params: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(json.loads(json.dumps(params)))  # tuples to lists
    return s


def _arg(a) -> pb.Arg:
    if isinstance(a, str):
        return pb.Arg(ref=a)
    if isinstance(a, dict):
        lit = pb.Literal(shape=a.get("shape", []))
        if "value" in a:
            lit.value = _number(a["value"])
        else:
            lit.data[:] = [_number(x) for x in a["data"]]
        return pb.Arg(literal=lit)
    return pb.Arg(number=a)


def _number(x) -> float:
    return _SPECIAL[x] if isinstance(x, str) else float(x)


def _target(request, function) -> None:
    if isinstance(function, FunctionInfo):
        request.id = function.id
    elif isinstance(function, str):
        request.id = function
    else:
        request.function.CopyFrom(definition(function))


def evaluate_request(function, inputs, compute=("value",), tangent=None, cotangent=None,
                     batch=False, wrt=None, timeout_ms=None) -> pb.EvaluateRequest:
    request = pb.EvaluateRequest(inputs=_tensors(inputs), compute=compute, batch=batch, wrt=wrt,
                                 timeout_ms=timeout_ms or 0,
                                 tangent=None if tangent is None else _tensors(tangent),
                                 cotangent=None if cotangent is None else _tensor(cotangent))
    _target(request, function)
    return request


def minimize_request(function, x0, method, max_iter, gtol) -> pb.MinimizeRequest:
    request = pb.MinimizeRequest(x0=_tensors(x0), method=method, max_iter=max_iter or 0, gtol=gtol or 0.0)
    _target(request, function)
    return request


def _channel_options(options) -> list:
    return [("grpc.max_receive_message_length", -1), *options]


def _channel(target: str, options, tls, root_certificates: bytes | None, aio: bool):
    """An insecure channel, or a TLS one: `tls` True (the system's roots, or `root_certificates`), or
    `grpc.ChannelCredentials` of your own (client certificates, say)."""
    module = grpc.aio if aio else grpc
    if isinstance(tls, grpc.ChannelCredentials):
        return module.secure_channel(target, tls, options=_channel_options(options))
    if tls or root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return module.secure_channel(target, credentials, options=_channel_options(options))
    return module.insecure_channel(target, options=_channel_options(options))


def _metadata(api_key: str | None, metadata) -> tuple | None:
    pairs = (*((("authorization", f"Bearer {api_key}"),) if api_key is not None else ()), *metadata)
    return pairs or None


# -- messages to numpy ---------------------------------------------------------------
def _info(m: pb.FunctionInfo, registered: bool = False) -> FunctionInfo:
    """`registered`: the answer of Register, whose `created` says whether it was new."""
    inputs = [{"name": s.name, "shape": list(s.shape), **({"dtype": s.dtype} if s.dtype else {})} for s in m.inputs]
    return FunctionInfo(m.id, inputs, tuple(m.output_shape), m.n_nodes, m.created if registered else None,
                        m.name or None)


def _page(m: pb.ListFunctionsResponse) -> FunctionPage:
    return FunctionPage([_info(f) for f in m.functions], m.next or None)


def _held(m: pb.HeldTensor) -> HeldTensor:
    return HeldTensor(m.ref, tuple(m.shape), m.dtype, m.nbytes)


def _result(m: pb.EvaluateResponse) -> Result:
    out = {"cached": m.cached}
    for kind in ("value", "jvp"):
        if m.HasField(kind):
            out[kind] = _array(getattr(m, kind))
    for kind in ("gradient", "vjp", "hvp", "jacobian"):
        if getattr(m, kind):
            out[kind] = _arrays(getattr(m, kind))
    if m.hessian:
        out["hessian"] = {a: _arrays(row.entries) for a, row in m.hessian.items()}
    if m.trace:
        out["trace"] = [{"name": r.name, "expr": r.expr, "shape": list(r.shape), "output": r.output,
                         **{f: _array(getattr(r, f)) for f in ("value", "tangent", "adjoint") if r.HasField(f)}}
                        for r in m.trace]
    return Result(**out)


def _progress(m: pb.MinimizeProgress) -> Progress:
    return Progress(m.iteration, _arrays(m.x), m.value, m.grad_norm, m.done, m.message, m.success)


def _error(e: grpc.RpcError) -> errors.AdserveError:
    """The typed error of a failed call, with the server's message, code and location, and whether calling
    again may succeed: UNAVAILABLE, or RESOURCE_EXHAUSTED with a `retry-after` (a rate limit, the optimiser
    cap; grpc's own refusal of a message over the size limit has none)."""
    meta = dict(e.trailing_metadata() or ())
    location = meta.get("adserve-error-location")
    cls = errors.GRPC.get(e.code().name, errors.AdserveError)
    retry_after = seconds(meta.get("retry-after"))
    retryable = e.code() == grpc.StatusCode.UNAVAILABLE or (
        e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry-after" in meta)
    return cls(e.details() or e.code().name, meta.get("adserve-error-code", e.code().name.lower()), e.code().name,
               None if location is None else json.loads(location), retry_after, retryable)


def _wait(error: errors.AdserveError, attempt: int, retry: Retry) -> float | None:
    """Seconds to wait before calling again after `error`, or None: raise it."""
    if not error.retryable or attempt + 1 >= retry.attempts:
        return None
    return retry.delay(attempt, error.retry_after)


# -- the client ----------------------------------------------------------------------
class GrpcClient:
    """Blocking gRPC client on one channel.

    `timeout` (seconds) is each call's deadline; for `minimize`, the deadline of the whole run, every iterate
    included: give a long optimisation a longer one (`minimize(..., timeout=600)`, or None for none). `tls`,
    `root_certificates`, `api_key`, `metadata` and `retries`: see the module's docstring."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 60.0, options=(), *,
                 tls: bool | grpc.ChannelCredentials = False, root_certificates: bytes | None = None,
                 api_key: str | None = None, metadata=(), retries: int | Retry = 2):
        self._channel = _channel(target, options, tls, root_certificates, aio=False)
        self._stub = ad_pb2_grpc.DifferentiatorStub(self._channel)
        self.timeout = timeout
        self.metadata = _metadata(api_key, metadata)
        self.retry = policy(retries)

    def _call(self, method, request):
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                error = _error(e)
            if (wait := _wait(error, attempt, self.retry)) is None:
                raise error from None
            time.sleep(wait)
            attempt += 1

    def register(self, definition_: dict) -> FunctionInfo:
        return _info(self._call(self._stub.Register, definition(definition_)), True)

    def evaluate(self, function, inputs: dict, compute=("value",), tangent=None, cotangent=None,
                 batch: bool = False, wrt=None, timeout_ms: int | None = None) -> Result:
        request = evaluate_request(function, inputs, compute, tangent, cotangent, batch, wrt, timeout_ms)
        return _result(self._call(self._stub.Evaluate, request))

    def info(self, function) -> FunctionInfo:
        """A registered function's metadata, by id or name."""
        fid = function.id if isinstance(function, FunctionInfo) else function
        return _info(self._call(self._stub.GetFunction, pb.GetFunctionRequest(id=fid)))

    def list_functions(self, limit: int | None = None, after: str | None = None) -> FunctionPage:
        """One page of the registered functions, in id order; pass `page.next` as `after` for the next."""
        return _page(self._call(self._stub.ListFunctions, pb.ListFunctionsRequest(limit=limit or 0, after=after or "")))

    def put_tensor(self, array) -> HeldTensor:
        """Hold an array on the server; the answer (or `{"ref": ...}`) stands for it in later requests."""
        return _held(self._call(self._stub.PutTensor, _tensor(array)))

    _DEFAULT = object()

    def minimize(self, function, x0: dict, method: str = "lbfgs", max_iter: int | None = None,
                 gtol: float | None = None, timeout=_DEFAULT):
        """Iterate over the optimiser's progress; leaving the loop early cancels the call, which stops it.

        `timeout`: the deadline of the whole run in seconds (default: the client's `timeout`; None: none). Past
        it the run stops and DeadlineExceeded is raised after the iterates so far. A run refused before its
        first iterate (the optimiser cap) is started again after a backoff (`retries`)."""
        request = minimize_request(function, x0, method, max_iter, gtol)
        deadline = self.timeout if timeout is self._DEFAULT else timeout
        attempt = 0
        while True:
            call = self._stub.Minimize(request, timeout=deadline, metadata=self.metadata)
            started = False
            try:
                for m in call:
                    started = True
                    yield _progress(m)
                return
            except grpc.RpcError as e:
                error = _error(e)
            finally:
                call.cancel()
            if started or (wait := _wait(error, attempt, self.retry)) is None:
                raise error from None
            time.sleep(wait)
            attempt += 1

    def stream(self, timeout: float | None = None) -> "EvaluationStream":
        """One EvaluateStream call for many evaluations in lockstep (`timeout` bounds the whole stream).
        Not retried: an error ends the stream, as gRPC streams end."""
        return EvaluationStream(self._stub, timeout, self.metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EvaluationStream:
    """`evaluate` as on the client, each on the same open call; use it as a context manager."""

    def __init__(self, stub, timeout, metadata=None):
        self._requests = queue.SimpleQueue()
        self._call = stub.EvaluateStream(iter(self._requests.get, _END), timeout=timeout, metadata=metadata)

    def evaluate(self, function, inputs: dict, compute=("value",), tangent=None, cotangent=None,
                 batch: bool = False, wrt=None, timeout_ms: int | None = None) -> Result:
        self._requests.put(evaluate_request(function, inputs, compute, tangent, cotangent, batch, wrt, timeout_ms))
        try:
            return _result(next(self._call))
        except grpc.RpcError as e:
            raise _error(e) from None

    def close(self) -> None:
        self._requests.put(_END)
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncGrpcClient:
    """The same calls as `GrpcClient`, as coroutines on a grpc.aio channel (`minimize` is an async iterator)."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 60.0, options=(), *,
                 tls: bool | grpc.ChannelCredentials = False, root_certificates: bytes | None = None,
                 api_key: str | None = None, metadata=(), retries: int | Retry = 2):
        self._channel = _channel(target, options, tls, root_certificates, aio=True)
        self._stub = ad_pb2_grpc.DifferentiatorStub(self._channel)
        self.timeout = timeout
        self.metadata = _metadata(api_key, metadata)
        self.retry = policy(retries)

    async def _call(self, method, request):
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                error = _error(e)
            if (wait := _wait(error, attempt, self.retry)) is None:
                raise error from None
            await asyncio.sleep(wait)
            attempt += 1

    async def register(self, definition_: dict) -> FunctionInfo:
        return _info(await self._call(self._stub.Register, definition(definition_)), True)

    async def evaluate(self, function, inputs: dict, compute=("value",), tangent=None, cotangent=None,
                       batch: bool = False, wrt=None, timeout_ms: int | None = None) -> Result:
        request = evaluate_request(function, inputs, compute, tangent, cotangent, batch, wrt, timeout_ms)
        return _result(await self._call(self._stub.Evaluate, request))

    async def info(self, function) -> FunctionInfo:
        fid = function.id if isinstance(function, FunctionInfo) else function
        return _info(await self._call(self._stub.GetFunction, pb.GetFunctionRequest(id=fid)))

    async def list_functions(self, limit: int | None = None, after: str | None = None) -> FunctionPage:
        return _page(await self._call(self._stub.ListFunctions,
                                      pb.ListFunctionsRequest(limit=limit or 0, after=after or "")))

    async def put_tensor(self, array) -> HeldTensor:
        return _held(await self._call(self._stub.PutTensor, _tensor(array)))

    _DEFAULT = object()

    async def minimize(self, function, x0: dict, method: str = "lbfgs", max_iter: int | None = None,
                       gtol: float | None = None, timeout=_DEFAULT):
        """As `GrpcClient.minimize`: `timeout` is the deadline of the whole run."""
        request = minimize_request(function, x0, method, max_iter, gtol)
        deadline = self.timeout if timeout is self._DEFAULT else timeout
        attempt = 0
        while True:
            call = self._stub.Minimize(request, timeout=deadline, metadata=self.metadata)
            started = False
            try:
                async for m in call:
                    started = True
                    yield _progress(m)
                return
            except grpc.RpcError as e:
                error = _error(e)
            finally:
                call.cancel()
            if started or (wait := _wait(error, attempt, self.retry)) is None:
                raise error from None
            await asyncio.sleep(wait)
            attempt += 1

    def stream(self, timeout: float | None = None) -> "AsyncEvaluationStream":
        return AsyncEvaluationStream(self._stub, timeout, self.metadata)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


class AsyncEvaluationStream:
    """`await evaluate(...)` in lockstep on one open call; use it as an async context manager."""

    def __init__(self, stub, timeout, metadata=None):
        self._call = stub.EvaluateStream(timeout=timeout, metadata=metadata)

    async def evaluate(self, function, inputs: dict, compute=("value",), tangent=None, cotangent=None,
                       batch: bool = False, wrt=None, timeout_ms: int | None = None) -> Result:
        call = self._call
        try:
            if call.done():  # ended (an error, its deadline): its status again, as the blocking stream raises it,
                # not the "RPC already finished" that grpc.aio's write raises
                raise grpc.aio.AioRpcError(await call.code(), await call.initial_metadata(),
                                           await call.trailing_metadata(), await call.details())
            await call.write(evaluate_request(function, inputs, compute, tangent, cotangent, batch, wrt, timeout_ms))
            return _result(await call.read())
        except grpc.RpcError as e:
            raise _error(e) from None

    async def close(self) -> None:
        self._call.cancel()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
