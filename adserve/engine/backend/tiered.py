"""The tiered backend: the interpreter until a plan's numba kernel is ready, then the fastest tier by timing.

`Tiered` composes the pieces of this package: the kernel store (store.py: compiles in worker processes, the
disk cache, preload), the python tier (python_tier.py), the timing policy (policy.py) and the threading
layer (threads.py, for parallel batch variants). What it adds is when background work happens: a plan's
first run is answered by the interpreter at once, and its key (a hash of the whole plan) and the request for
its kernel are left to a background thread that waits for a quiet moment, a moment with no call or run in
progress (`busy`) and none ended within QUIET_SECONDS (its answer is being encoded and sent). Source writing
waits for one at most INTRODUCE_WAIT_SECONDS (a burst of new functions back to back is answered first), and
no longer once the plan is asked for again (a function in use, not one of a burst) or its first run has run
INTRODUCE_LONG_SECONDS (its kernel saves more than the introduction costs it); a kernel load waits at most
the store's LOAD_WAIT_SECONDS, and not at all when a run is waiting for it.

A run on a lower tier while its plan's kernel is on its way gives way to the kernel when it arrives mid-run,
and the plan runs again on it (give_way.py). Before such a run, the thread sleeps MAKE_WAY_SECONDS: the
background threads bringing the kernel (introduction, the compile worker's pipe, the load) each need the
interpreter's lock dozens of times, and a thread running the interpreter releases and retakes it at every NumPy
operation on 500 elements or more. CPython's lock then goes to the releasing thread nearly every time (the
waiter's wait is restarted by every switch, so it never asks for the lock: the convoy effect), and a kernel
compiled in 0.3 s took 1-1.5 s more to load while a caller ran GradBench's small ba objective back to back. A
sleep is a moment the lock is surely free. The compile workers are started with the backend (store.py), so
the first kernel does not wait for a process to start.

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

from .give_way import Waiting, superseded
from .interpreter import PYTHON, Interpreter
from .plan import call_kernel, is_parallel_key, known_meta, plan_key, serial_key
from .policy import TimingPolicy
from .python_tier import PythonTier
from .store import KernelStore

log = logging.getLogger("adserve.engine")


class InFlight:
    """Calls and runs in progress (`marks`: one entry each), and when the last one ended. A lost update of the
    count would leave background work waiting its full time for a quiet moment that never comes: the count is
    the length of a list, whose append and pop are each atomic (no lock to take twice per run)."""

    def __init__(self):
        self.marks: list = []
        self.last_end = 0.0  # time.monotonic() of the last exit

    @property
    def count(self) -> int:
        return len(self.marks)

    def __enter__(self):  # `with in_flight:` around a call (`Tiered.busy`) or a run
        self.marks.append(None)

    def __exit__(self, *exc):
        self.marks.pop()
        self.last_end = time.monotonic()

    enter, exit = __enter__, __exit__

    def wait_quiet(self, quiet_seconds, wait, due=None):
        """Wait (at most `wait` seconds) for nothing in flight and nothing ended within `quiet_seconds`, or until
        `due()` is true."""
        deadline = time.monotonic() + wait
        while (self.marks or time.monotonic() - self.last_end < quiet_seconds) and time.monotonic() < deadline:
            if due is not None and due():
                return
            time.sleep(0.002)


class _Introduction:
    """A plan waiting for its introduction: whether it was asked for again, how many of its first runs are
    running and since when the first began."""
    __slots__ = ("again", "graph", "running", "since")

    def __init__(self, graph):
        self.graph, self.again, self.running, self.since = graph, False, 0, time.monotonic()

    def due(self, long_seconds) -> bool:
        return self.again or self.running > 0 and time.monotonic() - self.since >= long_seconds


class Tiered(Interpreter):
    INTRODUCE_WAIT_SECONDS = 0.5
    INTRODUCE_LONG_SECONDS = 0.05
    QUIET_SECONDS = 0.003
    MAKE_WAY_SECONDS = 1e-4

    def __init__(self, cache_dir: str, compile_timeout: float = 300.0, workers: int | None = None, compile=True,
                 parallel=True, python=True, clock=time.perf_counter, compile_memory: int = 1 << 30, llvm=True):
        """Kernels live in `<cache_dir>/kernels`; `compile=False` only loads what is on disk; `parallel` and
        `python` turn those tiers on; `clock` times runs for the tier choice (tests pass a fake one);
        `compile_memory`: the address space a compile worker may use (0: no limit); `llvm`: plans in the direct-LLVM
        back end's scope are compiled by it, not numba (store.py)."""
        super().__init__()
        self.in_flight = InFlight()
        self.waiting = Waiting()  # runs on lower tiers that give way to their kernels
        self._introductions: dict = {}  # id(graph) -> _Introduction, for plans run but not introduced yet
        self._introductions_lock = threading.Lock()
        self.store = KernelStore(cache_dir, self.stats, compile_timeout, workers, compile, parallel,
                                 quiet=self._quiet_moment, on_load=self._loaded, memory=compile_memory, llvm=llvm,
                                 on_optimised=lambda key: self.policy.reopen(key),
                                 wanted=self.waiting.wanted)
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
        self.waiting.arrived(key)
        self.python.drop(key)
        if is_parallel_key(key):
            self.policy.retime(serial_key(key))

    # -- quiet moments -----------------------------------------------------------------
    def busy(self):
        return self.in_flight  # a context manager itself: no generator made per call

    def _quiet_moment(self, wait):
        self.in_flight.wait_quiet(self.QUIET_SECONDS, wait)

    def _after_request(self, due=None):
        """Wait for a quiet moment (at most INTRODUCE_WAIT_SECONDS), or until `due()` says not to wait more."""
        time.sleep(self.QUIET_SECONDS)  # the request that brought it is still encoding and sending its answer
        self.in_flight.wait_quiet(self.QUIET_SECONDS, self.INTRODUCE_WAIT_SECONDS, due)

    def _first_run(self, graph, args, meta, deadline=None):
        """A plan never run here: the interpreter answers now. Its key (a hash of the whole plan, a few ms
        for a big one) and the request for its kernel (which writes the kernel's source, a few ms more) are
        left to a background thread that waits for a quiet moment, so they do not share the interpreter's
        lock with the first answer; the run gives way to the kernel if it arrives meanwhile."""
        with self._introductions_lock:
            intro = self._introductions.get(id(graph))
            if intro is None:
                intro = self._introductions[id(graph)] = _Introduction(graph)
                self._introducer.submit(self.introduce, graph)
            else:
                intro.again = True  # run again before its introduction: a function in use
            intro.running += 1
        if meta is not None and self.store.compile_enabled:
            meta["compile"] = "pending"
        if self.store.compile_enabled:
            time.sleep(self.MAKE_WAY_SECONDS)  # the introduction's threads get the interpreter's lock
        try:
            with self.waiting.run(graph, deadline, lambda: self._ready(graph)) as check:
                return Interpreter.run(self, graph, args, meta, check)
        except Exception as e:
            if not superseded(e):
                raise
        finally:
            with self._introductions_lock:
                intro.running -= 1
            self.in_flight.last_end = time.monotonic()
        return self.run(graph, args, meta, deadline)  # on its kernel, which arrived during the run

    def _ready(self, graph) -> bool:
        plan = known_meta(graph)
        return plan is not None and plan.key in self.store.ready

    def introduce(self, graph):
        """Hash a plan and ask for its kernel: the background job after the plan's first run. A kernel ready
        already (loaded for an equal plan) is handed to the runs waiting for it."""
        intro = self._introductions.get(id(graph))
        self._after_request(None if intro is None else lambda: intro.due(self.INTRODUCE_LONG_SECONDS))
        try:
            if self.kernel(graph) is not None:
                self.waiting.arrived(known_meta(graph).key)
        except Exception as e:  # never a request's problem: the plan stays on the interpreter
            log.warning("plan not introduced: %s: %s", type(e).__name__, e)
        finally:
            with self._introductions_lock:
                if intro is not None and self._introductions.get(id(graph)) is intro:
                    del self._introductions[id(graph)]

    # -- run -------------------------------------------------------------------------
    def run(self, graph, args, meta=None, deadline=None):
        """The plan's outputs, each of shape (B, ...); from a kernel (a `Fresh` list) once one is ready,
        on the tier timing chose for this plan and batch size (see policy.py), which stops at the `deadline`."""
        plan = known_meta(graph)
        if plan is None:
            return self._first_run(graph, args, meta, deadline)
        with self.in_flight:
            try:
                return self.policy.run(graph, plan, args, meta, deadline)
            except Exception as e:
                if not superseded(e):
                    raise
        return self.run(graph, args, meta, deadline)  # its kernel arrived during a run on a lower tier

    def run_on(self, tier, module, graph, plan, B, args, meta, deadline=None):
        """Run the plan on `tier` with its loaded `module`; module None: the lower tiers (python or interpreter).
        Every tier stops at the `deadline`."""
        if module is None:
            return self._lower(graph, plan, B, args, meta, deadline)
        return self._call(module.kernel, module, tier, plan, B, args, meta, deadline)

    def _lower(self, graph, plan, B, args, meta, deadline=None):
        """The plan on the python tier where it has a kernel there that pays for this batch, else the
        interpreter (also when the python run meets a domain error: NumPy's error model answers it). While the
        plan's kernel is on its way, the run gives way to it when it arrives (`Stopped`, SUPERSEDED)."""
        if plan.key in self.store.pending:
            time.sleep(self.MAKE_WAY_SECONDS)  # the threads bringing its kernel get the interpreter's lock
            with self.waiting.run(graph, deadline, lambda: plan.key in self.store.ready) as check:
                return self._lowest(graph, plan, B, args, meta, check)
        return self._lowest(graph, plan, B, args, meta, deadline)

    def _lowest(self, graph, plan, B, args, meta, deadline=None):
        k = self.python.kernel(graph, plan, B)
        if k is not None:
            from ..codegen.python import Unsupported
            try:
                return self._call(k.run, k, PYTHON, plan, B, args, meta, deadline)
            except Unsupported as e:
                self.python.declined(k, plan, e)
        return Interpreter.run(self, graph, args, meta, deadline)

    def _call(self, kernel, module, tier, plan, B, args, meta, deadline=None):
        timed = meta is not None and "kernel_ms" in meta  # asked for (the server's Server-Timing)
        started = time.perf_counter() if timed else 0.0
        outs = call_kernel(kernel, module.ERRORS, plan, B, args, deadline, getattr(module, "LOOPS", ()), tier)
        self.stats.runs[tier] += 1
        if meta is not None:
            meta["backend"] = tier
            if timed:  # the kernel calls' own time, summed
                meta["kernel_ms"] += (time.perf_counter() - started) * 1e3
            if getattr(module, "quick", False):  # a large kernel's quick one (llvm_kernel.QUICK_LINES)
                meta["kernel"] = "quick"
                if plan.key in self.store.optimising:
                    meta["compile"] = "optimising"
        return outs

