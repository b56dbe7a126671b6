"""The tiered backend: the interpreter until a plan's numba kernel is ready, then the fastest tier by timing.

`Tiered` composes the pieces of this package: the kernel store (store.py: compiles in worker processes, the
disk cache, preload), the python tier (python_tier.py), the timing policy (policy.py) and the threading
layer (threads.py, for parallel batch variants). What it adds is when background work happens: a plan's
first run is answered by the interpreter at once, and its key (a hash of the whole plan) and the request for
its kernel are left to a background thread that waits for a quiet moment, a moment with no call or run in
progress (`busy`) and none ended within QUIET_SECONDS (its answer is being encoded and sent). Source writing
waits for one at most INTRODUCE_WAIT_SECONDS (a burst of new functions back to back is answered first), a
kernel load at most the store's LOAD_WAIT_SECONDS.

Kernel outputs are fresh arrays per run (a `Fresh` list), which the engine hands out without copying. A
compile failure or timeout leaves the plan on the interpreter (a parallel variant's: on the serial kernel);
it never fails a request.

A run with a deadline (deadline.py) stops at it on every tier: the deadline is passed down explicitly
(through the timing policy) to whichever tier answers; the interpreter checks it between equations and loop
iterations, a generated kernel (numba's, its parallel variant, the python tier's) reads its flag at the top
of every batch point and loop iteration (codegen/runtime.py).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .interpreter import PYTHON, Interpreter
from .plan import call_kernel, is_parallel_key, known_meta, plan_key, serial_key
from .policy import TimingPolicy
from .python_tier import PythonTier
from .store import KernelStore

log = logging.getLogger("adserve.engine")


class InFlight:
    """Calls and runs in progress, and when the last one ended. Every change of the count is under one lock:
    a lost update would leave background work waiting its full time for a quiet moment that never comes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0
        self.last_end = 0.0  # time.monotonic() of the last exit

    @property
    def count(self) -> int:
        return self._count

    def enter(self):
        with self._lock:
            self._count += 1

    def exit(self):
        with self._lock:
            self._count -= 1
        self.last_end = time.monotonic()

    def __enter__(self):  # `with in_flight:` around a call (`Tiered.busy`)
        self.enter()

    def __exit__(self, *exc):
        self.exit()

    def wait_quiet(self, quiet_seconds, wait):
        """Wait (at most `wait` seconds) for nothing in flight and nothing ended within `quiet_seconds`."""
        deadline = time.monotonic() + wait
        while (self._count or time.monotonic() - self.last_end < quiet_seconds) and time.monotonic() < deadline:
            time.sleep(0.002)


class Tiered(Interpreter):
    INTRODUCE_WAIT_SECONDS = 0.5
    QUIET_SECONDS = 0.003

    def __init__(self, cache_dir: str, compile_timeout: float = 300.0, workers: int | None = None, compile=True,
                 parallel=True, python=True, clock=time.perf_counter, compile_memory: int = 1 << 30, llvm=True):
        """Kernels live in `<cache_dir>/kernels`; `compile=False` only loads what is on disk; `parallel` and
        `python` turn those tiers on; `clock` times runs for the tier choice (tests pass a fake one);
        `compile_memory`: the address space a compile worker may use (0: no limit); `llvm`: plans in the direct-LLVM
        back end's scope are compiled by it, not numba (store.py)."""
        super().__init__()
        self.in_flight = InFlight()
        self.store = KernelStore(cache_dir, self.stats, compile_timeout, workers, compile, parallel,
                                 quiet=self._quiet_moment, on_load=self._loaded, memory=compile_memory, llvm=llvm)
        # plans seen for the first time are hashed (and their kernels asked for) here, after the request
        self._introducer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adserve-plans")
        self.python = PythonTier(self.store, self.stats, self._introducer.submit, self._after_request, python)
        self.policy = TimingPolicy(self.store, self.stats, self.run_on, clock)

    @property
    def workers(self) -> int:
        return self.store.workers

    # -- kernels (see store.py) ------------------------------------------------------
    def kernel(self, graph):
        return self.store.kernel(graph)

    def parallel_kernel(self, graph):
        return self.store.parallel_kernel(graph)

    def module(self, graph, tier):
        return self.store.module(graph, tier)

    def wait(self, graph, timeout=600.0, parallel=False) -> bool:
        return self.store.wait(graph, timeout, parallel)

    def pending(self, graph) -> bool:
        return self.store.in_progress(graph)

    def preload(self, limit: int = 32) -> threading.Thread:
        return self.store.preload(limit)

    def choice(self, graph, batch=1):
        """The tier chosen for the plan at this batch size, None while its first runs still time the tiers."""
        return self.policy.chosen(plan_key(graph), batch)

    def estimates(self, graph, batch=1) -> dict:
        return self.policy.estimates(plan_key(graph), batch)

    def settle(self, timeout=600.0) -> bool:
        """Block until every plan run so far has been introduced and no kernel is being loaded or compiled
        (for tests and benchmarks). True if that happened within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            self._introducer.submit(lambda: None).result(timeout)  # jobs run in order: the earlier ones are done
        except Exception:
            return False
        return self.store.idle(deadline)

    def shutdown(self):
        self.store.shutdown()
        self._introducer.shutdown(wait=False, cancel_futures=True)

    def _loaded(self, key):
        self.python.drop(key)
        if is_parallel_key(key):
            self.policy.retime(serial_key(key))

    # -- quiet moments -----------------------------------------------------------------
    def busy(self):
        return self.in_flight  # a context manager itself: no generator made per call

    def _quiet_moment(self, wait):
        self.in_flight.wait_quiet(self.QUIET_SECONDS, wait)

    def _after_request(self):
        time.sleep(self.QUIET_SECONDS)  # the request that brought it is still encoding and sending its answer
        self._quiet_moment(self.INTRODUCE_WAIT_SECONDS)

    def _first_run(self, graph, args, meta, deadline=None):
        """A plan never run here: the interpreter answers now. Its key (a hash of the whole plan, a few ms
        for a big one) and the request for its kernel (which writes the kernel's source, a few ms more) are
        left to a background thread that waits for a quiet moment, so they do not share the interpreter's
        lock with the first answer."""
        self._introducer.submit(self.introduce, graph)
        if meta is not None and self.store.compile_enabled:
            meta["compile"] = "pending"
        try:
            return Interpreter.run(self, graph, args, meta, deadline)
        finally:
            self.in_flight.last_end = time.monotonic()

    def introduce(self, graph):
        """Hash a plan and ask for its kernel: the background job after the plan's first run."""
        self._after_request()
        try:
            self.kernel(graph)
        except Exception as e:  # never a request's problem: the plan stays on the interpreter
            log.warning("plan not introduced: %s: %s", type(e).__name__, e)

    # -- run -------------------------------------------------------------------------
    def run(self, graph, args, meta=None, deadline=None):
        """The plan's outputs, each of shape (B, ...); from a kernel (a `Fresh` list) once one is ready,
        on the tier timing chose for this plan and batch size (see policy.py), which stops at the `deadline`."""
        plan = known_meta(graph)
        if plan is None:
            return self._first_run(graph, args, meta, deadline)
        self.in_flight.enter()
        try:
            return self.policy.run(graph, plan, args, meta, deadline)
        finally:
            self.in_flight.exit()

    def run_on(self, tier, module, graph, plan, B, args, meta, deadline=None):
        """Run the plan on `tier` with its loaded `module`; module None: the lower tiers (python or interpreter).
        Every tier stops at the `deadline`."""
        if module is None:
            return self._lower(graph, plan, B, args, meta, deadline)
        return self._call(module.kernel, module, tier, plan, B, args, meta, deadline)

    def _lower(self, graph, plan, B, args, meta, deadline=None):
        """The plan on the python tier where it has a kernel there that pays for this batch, else the
        interpreter (also when the python run meets a domain error: NumPy's error model answers it)."""
        k = self.python.kernel(graph, plan, B)
        if k is not None:
            from ..codegen.python import Unsupported
            try:
                return self._call(k.run, k, PYTHON, plan, B, args, meta, deadline)
            except Unsupported as e:
                self.python.declined(k, plan, e)
        return Interpreter.run(self, graph, args, meta, deadline)

    def _call(self, kernel, module, tier, plan, B, args, meta, deadline=None):
        started = time.perf_counter()
        outs = call_kernel(kernel, module.ERRORS, plan, B, args, deadline, getattr(module, "LOOPS", ()), tier)
        self.stats.runs[tier] += 1
        if meta is not None:
            meta["backend"] = tier
            if "kernel_ms" in meta:  # asked for (the server's Server-Timing): the kernel calls' own time, summed
                meta["kernel_ms"] += (time.perf_counter() - started) * 1e3
        return outs

