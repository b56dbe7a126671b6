"""The one service object the REST (and later gRPC) adapters share.

Plain data in and out: definitions and evaluations are dicts as decoded from
JSON (tensors may already be arrays), results are dicts of float64 arrays.
It keeps the registry of compiled functions (id -> function, in memory) and a
byte-bounded LRU of results, and turns engine errors into `ServiceError`s.
With a `SharedStore` (Redis) both are also shared between replicas: a
registration is published, an unknown id is looked up there and compiled, and
results are read and written there after the local LRU.
"""

import contextlib
import hashlib
import logging
import threading
import time

import numpy as np
import orjson

from adserve.engine.errors import EngineError, LimitError

from . import evaluation, tensors
from .cache import LRU, result_nbytes
from .errors import NOT_FOUND, TOO_LARGE, UNPROCESSABLE, ServiceError

__all__ = ["Service", "ServiceError"]
log = logging.getLogger("adserve.service")


class Service:
    def __init__(self, engine=None, result_cache_bytes: int = 256 << 20, alias_capacity: int = 4096,
                 shared=None):
        if engine is None:
            from adserve.engine import api as engine
        self._engine = engine
        self._functions: dict = {}
        self._lock = threading.Lock()
        # definition text -> id, so a definition sent with every request compiles once
        self._aliases = LRU(alias_capacity)
        self._results = LRU(result_cache_bytes, result_nbytes)
        self._graph_schema = None
        self._shared = shared
        if shared is not None:
            shared.start(republish=self._exports)

    def register(self, definition) -> tuple[dict, bool]:
        """Compile and keep a definition; the function's info, and whether it is new."""
        fn, created = self._register(definition)
        return fn.info(), created

    def info(self, function_id: str) -> dict:
        return self._lookup(function_id).info()

    def graph(self, function_id: str) -> dict:
        """The definition in canonical graph form, which `register` takes back."""
        return self._lookup(function_id).export()

    def source(self, function_id: str, transform: str) -> str:
        """The generated kernel source of one transform (primal, gradient, jvp, vjp, hvp)."""
        fn = self._lookup(function_id)
        with self._engine_errors():
            return self._engine.source(fn, transform)

    def evaluate(self, target, body, meta=None) -> dict:
        """Evaluate `target` (a function id, or a definition to register on the way).

        The result holds the arrays asked for in `compute`, and `cached`. `meta`, if given,
        receives how it was answered: `backend` (interpreter, numba or cache) and `compute_ms`."""
        meta = {} if meta is None else meta
        request = evaluation.parse(body, self._engine.COMPUTE_KINDS)
        if target is None:
            raise ServiceError(UNPROCESSABLE, "missing_field",
                               '"function" is required: the definition to evaluate '
                               '(or evaluate a registered one at /v1/functions/{id}/evaluate)')
        fn = self._lookup(target) if isinstance(target, str) else self._register(target)[0]
        key = request.cache_key(fn.id)
        result = self._results.get(key)
        if result is None and self._shared is not None:
            shared = self._shared.get_result(key)
            if shared is not None:
                result = _frozen(shared)
                self._results.put(key, result)
        if result is not None:
            meta["backend"] = "cache"
            return {**result, "cached": True}
        started = time.perf_counter()
        with self._engine_errors():
            raw = self._engine.evaluate(fn, request.inputs, list(request.compute), request.tangent,
                                        request.cotangent, request.batch, meta=meta,
                                        **({"wrt": list(request.wrt)} if request.wrt else {}))
        meta["compute_ms"] = (time.perf_counter() - started) * 1e3
        result = _frozen(raw)
        self._results.put(key, result)
        if self._shared is not None:
            self._shared.put_result(key, result)
        return {**result, "cached": False}

    def graph_schema(self) -> dict:
        if self._graph_schema is None:
            self._graph_schema = self._engine.graph_schema()
        return self._graph_schema

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        """Stop background engine work (kernel compiles in progress)."""
        shutdown = getattr(self._engine.get_backend(), "shutdown", None)
        if shutdown is not None:
            shutdown()
        if self._shared is not None:
            self._shared.close()

    def stats(self) -> dict:
        tier = self._engine.get_backend().stats
        return {"functions": len(self._functions), "cache_hits": self._results.hits,
                "cache_misses": self._results.misses, "cache_entries": len(self._results),
                "cache_bytes": self._results.size, "runs": dict(tier.runs), "compiles": tier.compiles,
                "compile_failures": tier.compile_failures + tier.compile_timeouts,
                "shared": None if self._shared is None else self._shared.stats()}

    def _lookup(self, function_id: str):
        fn = self._functions.get(function_id) or self._fetch(function_id)
        if fn is None:
            raise ServiceError(NOT_FOUND, "function_not_found",
                               f"no function with id {function_id[:100]!r}; register it with POST /v1/functions")
        return fn

    def _fetch(self, function_id: str):
        """A function another replica registered: its definition from the shared registry, compiled here."""
        definition = None if self._shared is None else self._shared.get_definition(function_id)
        if definition is None:
            return None
        try:
            fn = self._engine.compile_definition(definition)
        except EngineError as e:
            log.warning("the shared definition of %s does not compile here: %s", function_id[:100], e)
            return None
        if fn.id != function_id:  # another engine version; its id is not this one
            log.warning("the shared definition of %s compiles to %s here; ignoring it", function_id[:100], fn.id)
            return None
        with self._lock:
            return self._functions.setdefault(fn.id, fn)

    def _exports(self):
        """(id, definition) of every local function, for the shared registry to take back after an outage."""
        with self._lock:
            functions = list(self._functions.values())
        return [(fn.id, fn.export()) for fn in functions]

    def _register(self, definition):
        if not isinstance(definition, dict):
            raise ServiceError(UNPROCESSABLE, "invalid_definition",
                               'a definition must be a JSON object with "inputs" and one of "expr", "program", "graph"')
        alias = _digest(definition)
        known = alias and self._aliases.get(alias)
        if known:
            return self._functions[known], False
        with self._engine_errors():
            fn = self._engine.compile_definition(definition)
        with self._lock:
            existing = self._functions.get(fn.id)
            created = existing is None
            if created:
                self._functions[fn.id] = fn
            else:
                fn = existing
        if alias:
            self._aliases.put(alias, fn.id)
        if created and self._shared is not None:
            # already in the shared registry: another replica registered it first
            created = self._shared.put_definition(fn.id, fn.export()) is not False
        return fn, created

    @contextlib.contextmanager
    def _engine_errors(self):
        try:
            yield
        except EngineError as e:
            kind = TOO_LARGE if isinstance(e, LimitError) else UNPROCESSABLE
            raise ServiceError(kind, e.code, e.message, e.location) from e


def _digest(definition: dict) -> bytes | None:
    try:
        return hashlib.blake2b(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS), digest_size=20).digest()
    except orjson.JSONEncodeError:  # too deep or not JSON data: skip the shortcut, the engine decides
        return None


def _frozen(tree):
    """A private copy with read-only float64 arrays, so a cached result cannot change under anyone.

    Results are nested dicts and lists whose tensors are arrays (or floats);
    other leaves (names, formulas, shapes in a trace) are plain data. Lists become tuples."""
    if isinstance(tree, dict):
        return {k: _frozen(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return tuple(_frozen(v) for v in tree)
    if not isinstance(tree, tensors.TENSOR_TYPES):
        return tree
    a = np.array(tree, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a
