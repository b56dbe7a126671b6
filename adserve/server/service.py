"""The one service object every protocol adapter shares (the data plane).

Plain data in and out: definitions and evaluations are dicts as decoded from
JSON (tensors may already be arrays), results are dicts of float64 arrays.
It keeps the registry of compiled functions (an LRU bounded by count and
estimated bytes; an evicted function is compiled again from its definition,
kept in a smaller byte-bounded LRU) and a byte-bounded LRU of results, checks
the service's own limits (text length and nesting, batch size) before any
work, and turns engine errors into `ServiceError`s. Every evaluation runs
under a deadline: the earliest of its `timeout_ms`, `max_eval_seconds`
(ADSERVE_MAX_EVAL_SECONDS) and the caller's token (an engine `Deadline`: a
gRPC deadline, cancelled when the client leaves or the server stops); past it
the engine stops (TIMED_OUT; UNAVAILABLE when cancelled). It owns the optimiser
capacity: `minimize` admits a run under `ADSERVE_MAX_OPTIMIZERS` (or refuses
it at once), and the `optimize.Run` it returns holds its place until the call
and the optimiser are both over.
With a `SharedStore` (Redis) both are also shared between replicas: a
registration is published, an unknown id is looked up there and compiled, and
results are read and written there after the local LRU.

Tenants (tenancy.py: one per API key, one in all without keys) share compiled
functions, which are keyed by content, and nothing else: each has its own
registry of ids and names (registry.py) and its own held tensors (held.py).
Wherever a function id is taken, a name is taken too: `_lookup` resolves both,
for the calling tenant, in one place.
"""

import asyncio
import hashlib
import math
import logging
import threading
import time

import numpy as np
import orjson

from adserve.engine.deadline import DEADLINE_EXCEEDED, Deadline, Stopped
from adserve.engine.errors import EngineError, LimitError
from adserve.engine.isolation import request_cost

from . import evaluation, optimize, tenancy, tensors
from .cache import LRU, result_nbytes
from .errors import NOT_FOUND, TIMED_OUT, TOO_LARGE, UNAVAILABLE, UNPROCESSABLE, ServiceError, stopped
from .heap import NoKeeper
from .held import HeldTensors
from .registry import Registry, page, split_name
from .settings import default_max_optimizers

# estimated memory of one compiled function: IR, plans and their kernels grow with its operations
FUNCTION_BASE_BYTES = 64 << 10
FUNCTION_NODE_BYTES = 8 << 10


# An evaluation whose cost-model bound (isolation.request_cost: loops at their max_iter, times the derivative's
# factor; about 1 ns per element operation on the interpreter, the slowest tier) is at most this takes well
# under a millisecond: less than a hop to a worker thread and back costs a transport, so it may run on the
# event loop (`Service.brief`). The survey example's gradient is 2e4.
BRIEF_WORK = 1e5


def function_nbytes(fn) -> int:
    return FUNCTION_BASE_BYTES + FUNCTION_NODE_BYTES * int(getattr(fn, "n_nodes", 1))

__all__ = ["Service", "ServiceError"]
_BACKEND = "\0backend"  # kept beside a cached result: the tier that computed it (never sent)
log = logging.getLogger("adserve.service")


class Service:
    def __init__(self, engine=None, result_cache_bytes: int = 256 << 20, alias_capacity: int = 4096,
                 shared=None, max_functions: int = 4096, max_function_bytes: int = 512 << 20,
                 definition_bytes: int = 64 << 20, max_expr_chars: int = 100_000, max_expr_depth: int = 400,
                 max_batch: int = 100_000, heap=None, max_optimizers: int | None = None,
                 max_eval_seconds: float = 30.0, tenants: int = 1, tensor_cache_bytes: int = 256 << 20,
                 max_names: int = 65536, brief_work: float = BRIEF_WORK):
        if engine is None:
            from adserve.engine import Engine
            engine = Engine()
        self.engine = engine
        self._functions = LRU(max_function_bytes, function_nbytes, max_items=max_functions)
        # per tenant: what it registered (the definition as sent, to compile an evicted function again), names
        self._registry = Registry(definition_bytes, tenants, max_names, shared)
        self._definitions = self._registry.definitions
        self.held = HeldTensors(tensor_cache_bytes, tenants, shared)
        self.max_expr_chars, self.max_expr_depth, self.max_batch = max_expr_chars, max_expr_depth, max_batch
        self.max_eval_seconds = max_eval_seconds
        self.computing = 0  # evaluations in the engine now (a stopped one counts until it has stopped)
        self._lock = threading.Lock()
        # definition text -> id, so a definition sent with every request compiles once
        self._aliases = LRU(alias_capacity)
        self._results = LRU(result_cache_bytes, result_nbytes)
        self._graph_schema = None
        self._shared = shared
        if shared is not None:
            shared.start(republish=self._exports, tenants=self._registry.exports)
        self.heap = NoKeeper() if heap is None else heap  # told of every call, to collect garbage between them
        self.brief_work = brief_work
        # (function id, compute, wrt) of unbatched evaluations run here (their plans are built) -> brief or not
        self._plans_run = LRU(alias_capacity)
        self.optimizers = optimize.Capacity(max_optimizers or default_max_optimizers())

    def register(self, definition) -> tuple[dict, bool]:
        """Compile and keep a definition; the function's info, and whether it is new."""
        with self.heap.busy(), self.engine.busy():
            fn, created, name = self._register(definition)
        return {**fn.info(), **({"name": name} if name else {})}, created

    def info(self, function_id: str) -> dict:
        """A function's metadata (by id or name), with "name" when one points at it."""
        fn = self._lookup(function_id)
        name = function_id if function_id != fn.id else self._registry.label(tenancy.current(), fn.id)
        return {**fn.info(), **({"name": name} if name else {})}

    def list_functions(self, after: str | None = None, limit: int | str | None = None) -> tuple[list, str | None]:
        """The calling tenant's functions in id order after `after`: (up to `limit` metadata dicts, the
        cursor of the next page or None). `limit` (an integer or its text) is checked here, for every protocol."""
        return self._registry.list(tenancy.current(), *page(after, limit))

    def put_tensor(self, value) -> dict:
        """Hold a tensor (a JSON tensor or an array) for the calling tenant: its ref, shape, dtype, nbytes."""
        try:
            a = tensors.decode(value, "tensor")
        except tensors.TensorError as e:
            raise ServiceError(UNPROCESSABLE, "invalid_tensor", str(e)) from None
        return self.held.put(tenancy.current(), a, owned=a is not value)

    def put_tensor_bytes(self, data: bytes, shape, dtype: str = "float64") -> dict:
        """Hold raw little-endian bytes as a tensor of `shape` and `dtype`, without copying them."""
        return self.held.put_bytes(tenancy.current(), data, shape, dtype)

    def held_tensor(self, ref: str, where: str = "tensor"):
        """The calling tenant's held tensor `ref` (read-only), or 404 `unknown_tensor`."""
        return self.held.get(tenancy.current(), ref, where)

    def graph(self, function_id: str) -> dict:
        """The definition in canonical graph form, which `register` takes back."""
        return self._lookup(function_id).export()

    def source(self, function_id: str, transform: str) -> str:
        """The generated kernel source of one transform (primal, gradient, jvp, vjp, hvp)."""
        fn = self._lookup(function_id)
        with ENGINE_ERRORS:
            return self.engine.source(fn, transform)

    def weighted(self, function_id: str) -> dict:
        """The info of `(inputs..., w) -> sum(w * f(inputs...))`, registered on the way; `w`, its last input,
        has f's output shape and a name none of f's inputs has.

        Its `gradient` is f's VJP with cotangent w, and its `hvp` (with `wrt` naming f's inputs) is the
        second-order adjoint `d/dt vjp(f, w)(x + t v)`: what a peer protocol asks for as the Hessian of a
        weighted vector output (UM-Bridge's ApplyHessian), through the engine's own forward-over-reverse."""
        fn = self._lookup(function_id)
        definition = _weighted(fn.export(), fn.info()["output_shape"])
        with self.heap.busy(), self.engine.busy():
            return self._register(definition)[0].info()

    def evaluate(self, target, body, meta=None, deadline=None) -> dict:
        """Evaluate `target` (a function id, or a definition to register on the way).

        The result holds the arrays asked for in `compute`, and `cached`. `meta`, if given,
        receives how it was answered: `backend` (interpreter, python or numba: for a cached result, the tier
        that computed it), `cache_hit`, and `compute_ms` when it was computed now.
        The computation stops past the body's `timeout_ms`, `max_eval_seconds`, or `deadline` (the caller's
        `engine.deadline.Deadline`), whichever comes first: a TIMED_OUT (UNAVAILABLE when cancelled)
        `ServiceError`."""
        with self.heap.busy(), self.engine.busy():
            return self._evaluate(target, body, {} if meta is None else meta, deadline)

    def brief(self, target, body) -> bool:
        """Whether evaluating `body` on `target` (as `evaluate` takes them) is sure to take well under a
        millisecond, so that a transport may run it on its event loop rather than hand it to a worker thread.

        Only when nothing in it can wait or grow: the function is compiled and kept here and the calling
        tenant has it (no compile), this request's plans have run here before (no plan to build), there is
        no shared store (no Redis round trip), it is not a batch, and the cost model's bound (loops at their
        max_iter, times the derivative's factor) is at most `brief_work`. It does no work itself and counts
        nothing: `evaluate` then does everything it always does."""
        if self._shared is not None or not self.brief_work or not isinstance(body, dict) or body.get("batch"):
            return False
        fn = self._kept(target)
        if fn is None:
            return False
        compute, wrt = body.get("compute", ["value"]), body.get("wrt")
        try:
            return self._plans_run.peek((fn.id, tuple(compute), tuple(wrt) if wrt else None)) is True
        except TypeError:  # not lists of names: `evaluate` words the error
            return False

    def _ran(self, fn, request) -> None:
        """Remember that the plans of this request's kind ran here, and whether it is brief (`brief`): the
        cost bound depends on the function and the compute kinds only, so it is computed once."""
        key = (fn.id, request.compute, request.wrt)
        if self._plans_run.peek(key) is None:
            # a function without the cost model's counts (a stand-in engine's) is never brief
            cost = request_cost(fn, request.compute, 1) if hasattr(fn, "steps") else math.inf
            # one the engine would send to an isolation worker (ADSERVE_ISOLATE_WORK set that low) waits on a
            # pipe: never on the event loop
            isolation = getattr(self.engine, "isolation", None)
            bounded = cost <= self.brief_work and (isolation is None or cost < isolation.threshold)
            self._plans_run.put(key, bounded)

    def _kept(self, target):
        """The function `target` (an id or name, or a definition) stands for when it is compiled and kept here
        for the calling tenant, without compiling, fetching or registering anything; else None."""
        tenant = tenancy.current()
        if isinstance(target, str):
            function_id = self._resolve(tenant, target)
            return None if function_id is None else self._functions.peek(function_id)
        if not isinstance(target, dict) or "name" in target:  # a name to give: the registry's work
            return None
        alias, _ = _digest(target)
        known = alias and self._aliases.peek(alias)
        fn = self._functions.peek(known) if known else None
        return fn if fn is not None and self._registry.holds(tenant, fn.id) else None

    def _evaluate(self, target, body, meta, deadline) -> dict:
        request = evaluation.parse(body, self.engine.COMPUTE_KINDS, refs=self.held_tensor)
        if target is None:
            raise ServiceError(UNPROCESSABLE, "missing_field",
                               '"function" is required: the definition to evaluate '
                               '(or evaluate a registered one at /v1/functions/{id}/evaluate)')
        fn = self._lookup(target) if isinstance(target, str) else self._register(target)[0]
        if request.batch:
            points = max((a.shape[0] for a in request.inputs.values() if a.ndim), default=0)
            if points > self.max_batch:
                raise ServiceError(TOO_LARGE, "batch_too_large",
                                   f"a batch of {points:,} points is over the limit of {self.max_batch:,} "
                                   f"({points / self.max_batch:.1f}x); split it into smaller requests")
        key = request.cache_key(fn.id)
        result = self._results.get(key)
        if result is None and self._shared is not None:
            shared = self._shared.get_result(key)
            if shared is not None:
                result = _frozen(shared)
                self._results.put(key, result)
        if result is not None:
            meta["cache_hit"] = True
            meta["backend"] = result.get(_BACKEND, "interpreter")  # a replica's entry from before it was kept
            return {**{k: v for k, v in result.items() if k != _BACKEND}, "cached": True}
        started = time.perf_counter()
        with ENGINE_ERRORS:
            limit = self._computing(request.timeout_ms, deadline)
            try:
                raw = self.engine.evaluate(fn, request.inputs, list(request.compute), request.tangent,
                                           request.cotangent, request.batch, meta=meta, deadline=limit,
                                           **({"wrt": list(request.wrt)} if request.wrt else {}))
            finally:
                self._computed(limit)
        meta["compute_ms"] = (time.perf_counter() - started) * 1e3
        if not request.batch:
            self._ran(fn, request)
        result = _frozen(raw, owned=self.engine.RESULTS_ARE_OWNED)
        kept = {**result, _BACKEND: meta.get("backend", "interpreter")}
        self._results.put(key, kept)
        if self._shared is not None:
            self._shared.put_result(key, kept)
        return {**result, "cached": False}

    async def minimize(self, target, body) -> optimize.Run:
        """Start minimising `target` (an id, or a definition to register on the way) from `body`'s x0.

        Over the optimiser cap it raises RATE_LIMITED (with `retry_after`) before any work; then, in a worker
        thread, it checks the request and evaluates at x0, so a bad request fails here. The caller iterates
        `run.progress()` and, once its call is over however it ended, `run.close()`s it: that stops the
        optimiser and gives back the call's hold on its place under the cap. A caller cancelled while the
        run starts leaves it to be closed as soon as it has started."""
        slot = self.optimizers.admit()
        starting = asyncio.ensure_future(asyncio.to_thread(self._start_run, target, body, slot))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_close_started)
            raise

    def _start_run(self, target, body, slot) -> optimize.Run:
        try:
            return optimize.start(self, target, body, slot)
        except BaseException:
            slot.release()
            raise

    def graph_schema(self) -> dict:
        if self._graph_schema is None:
            self._graph_schema = self.engine.graph_schema()
        return self._graph_schema

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        """Stop background engine work (kernel compiles in progress)."""
        self.heap.stop()
        self.engine.close()
        if self._shared is not None:
            self._shared.close()

    def stats(self) -> dict:
        """The service's counts, the engine's (`engine`: `Engine.stats()`) and the shared store's."""
        return {"functions": len(self._functions), "function_evictions": self._functions.evictions,
                "computing": self.computing, "cache_hits": self._results.hits,
                "cache_misses": self._results.misses, "cache_entries": len(self._results),
                "cache_bytes": self._results.size, "engine": self.engine.stats(), **self.held.stats(),
                "shared": None if self._shared is None else self._shared.stats()}

    def _lookup(self, target: str):
        """The function an id or a name stands for, for the calling tenant; 404 when it has none."""
        tenant = tenancy.current()
        function_id = self._resolve(tenant, target)
        fn = None
        if function_id is not None:
            fn = self._functions.get(function_id) or self._fetch(tenant, function_id)
        if fn is None and self._shared is not None and not self._shared.up:
            # Redis may hold it (registered on another replica), and this replica cannot ask: not a 404
            err = ServiceError(UNAVAILABLE, "registry_unavailable",
                               f"no function with id {target[:100]!r}, nor one named so, is known to this replica, "
                               "and the shared registry (Redis) is unreachable, so it cannot tell whether another "
                               f"replica registered it; retry in {self._shared.probe_interval:g} s")
            err.retry_after = self._shared.probe_interval  # the breaker's next look at Redis
            raise err
        if fn is None:
            raise ServiceError(NOT_FOUND, "function_not_found",
                               f"no function with id {target[:100]!r}, nor one named so; "
                               "register it with POST /v1/functions")
        return fn

    def _resolve(self, tenant: str, target: str) -> str | None:
        """The id `target` stands for: an id the tenant registered (kept here, or in Redis), else the id of
        its name. One rule for every tenant, so a call that lost its tenant (a thread started outside the
        call's context) finds nothing rather than another tenant's functions."""
        registry = self._registry
        if registry.holds(tenant, target):
            return target
        named = registry.resolve(tenant, target)
        if named is not None:
            return named
        return target if registry.registered(tenant, target) else None

    def _fetch(self, tenant: str, function_id: str):
        """A function evicted here (its definition kept), or one another replica registered (its
        definition from the shared registry), compiled here."""
        kept = self._registry.definition(tenant, function_id)
        definition = orjson.loads(kept) if kept is not None else None
        if definition is None and self._shared is not None:
            definition = self._shared.get_definition(function_id)
        if definition is None:
            return None
        try:
            fn = self.engine.compile_definition(definition, max_depth=self.max_expr_depth)
        except EngineError as e:
            log.warning("the shared definition of %s does not compile here: %s", function_id[:100], e)
            return None
        if fn.id != function_id:  # another engine version; its id is not this one
            log.warning("the shared definition of %s compiles to %s here; ignoring it", function_id[:100], fn.id)
            return None
        if kept is None:  # registered on another replica: this tenant's here too from now on
            self._registry.remember(tenant, fn.id, orjson.dumps(definition), fn.info())
        return self._keep(fn)[0]

    def _keep(self, fn):
        """(the function kept under fn.id, whether it is fn): the first one compiled stays."""
        with self._lock:
            existing = self._functions.get(fn.id)
            if existing is not None:
                return existing, False
            self._functions.put(fn.id, fn)
            return fn, True

    def _exports(self):
        """(id, definition) of every local function, for the shared registry to take back after an outage."""
        functions = self._functions.values()
        return [(fn.id, fn.export()) for fn in functions]

    def _register(self, definition):
        """(the function, whether it is new for the calling tenant, its name or None).

        The name is taken off first: the id is that of the definition without it."""
        if not isinstance(definition, dict):
            raise ServiceError(UNPROCESSABLE, "invalid_definition",
                               'a definition must be a JSON object with "inputs" and one of "expr", "program", "graph"')
        definition, name = split_name(definition)
        alias, raw = _digest(definition)
        known = alias and self._aliases.get(alias)
        fn = self._functions.get(known) if known else None
        if fn is None:
            self._check_text(definition)
            with ENGINE_ERRORS:
                fn = self.engine.compile_definition(definition, max_depth=self.max_expr_depth)
            fn = self._keep(fn)[0]
            if alias:
                self._aliases.put(alias, fn.id)
        tenant = tenancy.current()
        if name is None and self._registry.holds(tenant, fn.id):  # the definition sent with every request
            return fn, False, None
        # a tight copy: orjson's buffer has slack
        kept = bytes(memoryview(raw)) if raw is not None else orjson.dumps(fn.export())
        created = self._registry.add(tenant, fn.id, kept, fn.info(), name)
        if created and self._shared is not None:  # the definition by content, for every replica and tenant
            self._shared.put_definition(fn.id, fn.export())
        return fn, created, name

    def _check_text(self, definition: dict) -> None:
        """An expr or program over the length limit is refused before the engine parses it (the engine
        refuses nesting over `max_expr_depth` while it lowers, at the place where it is crossed)."""
        for form in ("expr", "program"):
            text = definition.get(form)
            if isinstance(text, str) and len(text) > self.max_expr_chars:
                raise ServiceError(TOO_LARGE, "text_too_long",
                                   f"the {form} is {len(text):,} characters long, over the limit of "
                                   f"{self.max_expr_chars:,} ({len(text) / self.max_expr_chars:.1f}x)")

    def _computing(self, timeout_ms, parent) -> Deadline:
        """This evaluation's deadline, the earliest of timeout_ms, max_eval_seconds and the caller's, counted in
        `computing` until `_computed(it)` (a try/finally, not a context manager: that cost a call 2 us more)."""
        with self._lock:
            self.computing += 1
        try:
            return self._limit(timeout_ms, parent)
        except BaseException:
            with self._lock:
                self.computing -= 1
            raise

    def _computed(self, deadline: Deadline) -> None:
        deadline.close()
        with self._lock:
            self.computing -= 1

    def _limit(self, timeout_ms, parent) -> Deadline:
        if timeout_ms is not None and timeout_ms / 1e3 < self.max_eval_seconds:
            return Deadline(timeout_ms / 1e3, f"timeout_ms {timeout_ms}", parent)
        return Deadline(self.max_eval_seconds, "the server's limit, ADSERVE_MAX_EVAL_SECONDS", parent)


class _EngineErrors:
    """`with ENGINE_ERRORS:` the engine's errors raised as the `ServiceError`s they are to callers. One object,
    not a generator-made context manager per call."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind, e, tb) -> None:
        if kind is None:
            return
        if issubclass(kind, Stopped):
            if e.code == DEADLINE_EXCEEDED:
                raise ServiceError(TIMED_OUT, "deadline_exceeded", e.message) from None
            raise stopped(e.code, e.message) from None
        if issubclass(kind, EngineError):
            raise ServiceError(TOO_LARGE if isinstance(e, LimitError) else UNPROCESSABLE, e.code, e.message,
                               e.location) from e
        if issubclass(kind, RecursionError):
            raise ServiceError(TOO_LARGE, "too_deep", "the definition is nested too deeply") from None
        if issubclass(kind, MemoryError):
            raise ServiceError(TOO_LARGE, "too_large", "out of memory: the request is too large") from None


ENGINE_ERRORS = _EngineErrors()


def _weighted(definition: dict, shape) -> dict:
    """`definition` (canonical graph form, output of `shape`) with one more input `w` of that shape, returning
    sum(w * output): plain composition, no derivative taken here."""
    inputs, graph = definition["inputs"], definition["graph"]
    taken = {i["name"] for i in inputs} | {n["id"] for n in graph["nodes"]}
    weight, product, total = (_fresh(stem, taken) for stem in ("w", "w_times_f", "w_dot_f"))
    (output,) = graph["outputs"]
    nodes = [*graph["nodes"], {"id": product, "op": "mul", "args": [output, weight]},
             {"id": total, "op": "reduce_sum", "args": [product], "params": {"axes": list(range(len(shape)))}}]
    return {"inputs": [*inputs, {"name": weight, "shape": list(shape)}],
            "graph": {**graph, "nodes": nodes, "outputs": [total]}}


def _fresh(stem: str, taken: set) -> str:
    name = stem
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _close_started(starting) -> None:
    if not starting.cancelled() and starting.exception() is None:
        starting.result().close()


def _digest(definition: dict) -> tuple[bytes | None, bytes | None]:
    """(digest, orjson bytes) of a definition, or (None, None) when it is too deep or not JSON data."""
    try:
        raw = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # skip the shortcut, the engine decides
        return None, None
    return hashlib.blake2b(raw, digest_size=20).digest(), raw


_F64 = np.dtype(np.float64)


def _frozen(tree, owned=False):
    """A private copy with read-only float64 arrays, so a cached result cannot change under anyone.

    Results are nested dicts and lists whose tensors are arrays (or floats);
    other leaves (names, formulas, shapes in a trace) are plain data. Lists become tuples.
    `owned`: the arrays are already private (the engine's `RESULTS_ARE_OWNED`); float64 ones are only made
    read-only, not copied."""
    if owned and type(tree) is np.ndarray and tree.dtype == _F64:  # the common leaf first: a kernel's own output
        tree.flags.writeable = False
        return tree
    if isinstance(tree, dict):
        return {k: _frozen(v, owned) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return tuple(_frozen(v, owned) for v in tree)
    if not isinstance(tree, tensors.TENSOR_TYPES):
        return tree
    a = np.array(tree, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a
