"""The engine's public face: an `Engine` compiles definitions and evaluates what a caller asks for.

An `Engine` owns what used to be process-wide: its backend (the NumPy
interpreter, or `backend.Tiered`: numba kernels once ready), its `Limits`, and
the backend's counters (`stats()`, one plain dict). It is passed to whoever
needs it, never global: two engines in one process share nothing.

Definitions are compiled into `Function`s by definition.py; requests are
checked and run by evaluation.py on the engine's backend, or, when the cost
model expects them to be long, in an isolation worker process (isolation.py).
"""

from __future__ import annotations

import dataclasses

from . import primitives  # noqa: F401  (fill the primitive table)
from .allocator import keep_freed_memory
from .backend import Interpreter, Tiered, stats_dict
from .blas import single_threaded
from .deadline import Stopped
from .definition import Function, compile_definition
from .errors import EngineError, EvaluationError, LimitError
from .evaluation import COMPUTE_KINDS, SOURCE_TRANSFORMS, describe_kinds, evaluate, request_points
from .frontends.graph_json import graph_schema
from .isolation import WorkerPool, WorkerSpec
from .limits import DEFAULT_LIMITS, Limits
from .plans import main_plan


class Engine:
    """Compiles definitions and evaluates requests on its own backend, within its own limits.

    `Engine()` is the NumPy interpreter with the default limits; `Engine.from_settings(settings)` is what a
    server runs. Nothing is shared between engines."""

    COMPUTE_KINDS = COMPUTE_KINDS
    # every array `evaluate` returns is the caller's alone (no input, other result or engine state shares its
    # memory), so a caller that keeps results may freeze them in place instead of copying (the service does)
    RESULTS_ARE_OWNED = True

    out_of_memory = "out of memory evaluating this request"  # the message of a MemoryError (isolation_worker's)

    def __init__(self, backend=None, limits: Limits | None = None, isolation: WorkerPool | None = None):
        """`backend`: who runs plans, `backend.Interpreter()` (default) or `backend.Tiered(cache_dir)`.
        `isolation`: the worker processes that evaluate requests the cost model expects to be long (None: all
        run in the calling thread)."""
        single_threaded()  # BLAS: one thread, the caller's (blas.py)
        self.backend = Interpreter() if backend is None else backend
        self.limits = DEFAULT_LIMITS if limits is None else limits
        self.isolation = isolation

    @classmethod
    def from_settings(cls, settings) -> Engine:
        """The engine a server's settings (`adserve.server.settings.Settings`) describe: plans run on the
        interpreter until their numba kernel, compiled in the background, is ready (unless `compile` is off);
        the `max_*` limits that are set replace the defaults. Requests the cost model expects to cost at least
        `isolate_work` run in up to `isolate_workers` worker processes (0: none), each limited to
        `worker_memory_bytes` (isolation.py). The process, and each worker, keeps up to `malloc_keep_bytes` of
        freed memory for reuse (allocator.py)."""
        limits = Limits.from_settings(settings)
        keep_freed_memory(settings.malloc_keep_bytes)  # the process's allocator, for its kernels and requests
        if settings.compile:
            backend = Tiered(str(settings.cache_dir), compile_timeout=settings.compile_timeout_seconds,
                             python=settings.python_tier, compile_memory=settings.compile_memory_bytes,
                             llvm=settings.llvm_kernels)
        else:
            backend = Interpreter()
        pool = None
        if settings.isolate_workers > 0:
            spec = WorkerSpec(limits, str(settings.cache_dir) if settings.compile else None, settings.compile,
                              settings.compile_timeout_seconds, settings.python_tier, settings.compile_memory_bytes,
                              settings.worker_memory_bytes, settings.isolate_nice, settings.llvm_kernels,
                              settings.malloc_keep_bytes)
            pool = WorkerPool(spec, settings.isolate_workers, settings.isolate_work)
        return cls(backend, limits, pool)

    def compile_definition(self, defn, max_depth: int | None = None) -> Function:
        """A definition (inputs and one of expr, program, graph) compiled into a `Function`; `max_depth` caps
        the nesting of an expr or program (default: the limits' `max_expr_depth`)."""
        return compile_definition(defn, self.limits, max_depth)

    def evaluate(self, fn: Function, inputs, compute=("value",), tangent=None, cotangent=None, batch=False,
                 meta=None, wrt=None, deadline=None) -> dict:
        """Values and derivatives as float64 arrays, derivatives for the inputs in `wrt` (default all).

        Every array returned is the caller's own (none is shared with the inputs, another result or the engine).
        `meta` (a dict), if given, receives which backend ran. A `deadline` (`deadline.Deadline`) stops the
        work when it passes or is cancelled: `deadline.Stopped`, saying which function and how far it got.
        A request the cost model expects to be long runs in an isolation worker process, when there are some."""
        if self.isolation is not None and self.isolation.wants(fn, compute, request_points(inputs, batch)):
            call = {"inputs": inputs, "compute": compute, "tangent": tangent, "cotangent": cotangent,
                    "batch": batch, "wrt": wrt}
            try:
                return self.isolation.evaluate(fn, call, meta, deadline)
            except Stopped as err:
                if err.what == "the evaluation":  # stopped here, not in the worker (which names the function)
                    err.about(f"the evaluation ({describe_kinds(compute)}) of function {fn.id}")
                raise
        return evaluate(fn, inputs, compute, tangent, cotangent, batch, meta, wrt, deadline, execute=self._run,
                        limits=self.limits)

    def source(self, fn: Function, transform: str) -> str:
        """The generated kernel source for one transform of `fn`, as the numba tier compiles it."""
        if transform not in SOURCE_TRANSFORMS:
            raise EvaluationError(f"unknown transform {transform!r}; choose from {list(SOURCE_TRANSFORMS)}",
                                  code="unknown_transform")
        kind = SOURCE_TRANSFORMS[transform]
        if kind in ("gradient", "hvp") and fn.output_shape != ():
            raise EvaluationError(f"{transform} needs a scalar output", code="not_scalar")
        graph, _ = main_plan(fn, {kind})
        return self.backend.source(graph, f"function {fn.id}, {transform}")

    @staticmethod
    def graph_schema() -> dict:
        return graph_schema()

    def busy(self):
        """`with engine.busy():` around a call: the backend's background work (kernel source, loads) waits for a
        moment with none in progress, so it does not share the interpreter's lock with a request's parsing."""
        return self.backend.busy()

    def settle(self, timeout: float = 600.0) -> bool:
        """Block until the backend's background work (plans to introduce, kernels to load or compile) is done;
        True if it was within `timeout` (for tests and benchmarks)."""
        return self.backend.settle(timeout)

    def preload(self, limit: int = 32):
        """Start the isolation workers, and loading the kernels used last in the background; the thread doing
        that, or None (nothing to load)."""
        if self.isolation is not None:
            self.isolation.start()
        return self.backend.preload(limit)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the isolation workers `preload` started have done their imports (at most `timeout`
        seconds), so the first long request does not wait for them; True if they have (or there are none)."""
        return self.isolation is None or self.isolation.wait_ready(timeout)

    def stats(self) -> dict:
        """The backend's counters as one plain dict (`backend.TierStats`' fields), and the limits in force."""
        return {**stats_dict(self.backend.stats), "limits": dataclasses.asdict(self.limits),
                "isolation": None if self.isolation is None else self.isolation.stats()}

    def close(self) -> None:
        """Stop background work (kernel compiles in progress) and the isolation workers."""
        self.backend.shutdown()
        if self.isolation is not None:
            self.isolation.close()

    def _run(self, graph, args, meta=None, deadline=None):
        try:
            return self.backend.run(graph, args, meta, deadline)
        except EngineError:
            raise
        except MemoryError:
            raise LimitError(self.out_of_memory, code="too_large") from None


__all__ = ["COMPUTE_KINDS", "Engine", "Function", "compile_definition", "evaluate"]
