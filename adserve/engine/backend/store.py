"""The kernel store: plan kernels compiled in worker processes, kept on disk, loaded into this process.

A plan's kernel is compiled in a worker process (time-limited and killable; numba's compile lock never stalls
the server; kept warm for the next compile: compile_workers.py), single flight per key, into
`<cache_dir>/kernels/`. Compiles go in two lanes, each with its own threads and workers, so neither waits behind
the other. A plan's first kernel, which its callers wait for, is compiled at the server's own CPU priority: at a
lowered one, a busy machine (a CPU hog beside the server, requests back to back) left it a tenth of a core, and a
kernel due in a second took minutes. Work that improves on a kernel already answering (a large kernel's optimised
compile, a parallel batch variant) goes in the background lane, at the priority `ADSERVE_COMPILE_NICE` lowers it
to (worker.NICE by default), and takes only CPU time requests leave idle. The
module is then imported here, which loads numba's on-disk cache in milliseconds. After a restart, kernels
already on disk load on first use without compiling again, and `preload` loads the most recently used ones
at start (preload.py). A compile failure or timeout is logged and counted and leaves the key failed; it never
reaches a request. A large LLVM kernel is compiled quickly first and answers at once; its optimised compile
follows in the background and takes its place (`optimising`; llvm_kernel.QUICK_LINES).

Which compiler builds a plan's kernel is decided per plan before any code is written: the direct-LLVM back end
(codegen/llvm_ir.py, llvm_kernel.py: seconds where numba takes minutes) for plans in its scope, when `llvm` is on
(ADSERVE_LLVM_KERNELS), numba for every other plan. Both are compiled in the same worker process and cached on
disk under the plan's key; both run as the tier users see as `numba`. An LLVM plan's parallel batch variant is its
serial kernel on chunks of the batch on threads (llvm_kernel.LlvmChunks): nothing to compile.

`ready`, `failed`, `pending` and `optimising` (key -> module, key -> why, keys in progress, keys answering
with their quick kernel) are for reading; they change through `request` (load or compile in the background)
and `add` (a loaded module).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import threads
from .compile_workers import Workers
from .interpreter import NUMBA, PARALLEL
from .plan import is_parallel_key, plan_meta, serial_key
from .preload import Preload

log = logging.getLogger("adserve.engine")


def _source(graph, title, parallel=False):
    from ..codegen.module import kernel_module
    return kernel_module(graph, title, parallel=parallel)


def _llvm_usable() -> bool:
    """Whether this process can run the LLVM back end's kernels (llvmlite, NumPy's array struct as they read it)."""
    try:
        import llvmlite.binding  # noqa: F401

        from ..codegen.llvm_kernel import numpy_layout
        return numpy_layout()
    except Exception as e:
        log.warning("the LLVM back end is off: %s: %s", type(e).__name__, e)
        return False


@dataclass
class _Lane:
    """One lane of compiles: its threads and its warm workers (the module's docstring says which compiles)."""
    pool: ThreadPoolExecutor
    workers: Workers

    def shutdown(self):
        self.workers.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)


class KernelStore(Preload):
    LOAD_WAIT_SECONDS = 0.1  # a load waits at most this long for a quiet moment (it holds the interpreter's lock)
    # a compile whose worker died of a signal (out of memory, an operator) is tried once more after this; a
    # second death leaves the plan on the lower tiers until the server restarts
    RETRY_KILLED_SECONDS = 30.0

    def __init__(self, cache_dir: str, stats, compile_timeout: float = 300.0, workers: int | None = None,
                 compile=True, parallel=True, quiet=None, on_load=None, memory: int = 1 << 30, llvm=True,
                 wanted=None, spare: int = 1, on_optimised=None):
        """`stats`: the backend's `TierStats`, counted into. `quiet(seconds)`: waits (at most that long) for a
        moment with no request running, before a load. `on_load(key)`: called once a module is ready.
        `memory`: the address space (RLIMIT_AS) of a compile worker, 0 for none. `llvm`: plans in the direct-LLVM
        back end's scope are compiled by it (else every plan by numba). `wanted(key)`: whether a run is waiting for
        that kernel now, or one ran a moment ago (its load then takes no quiet moment: the run gives way to it).
        `spare`: compile workers started at once and kept ready (compile_workers.py), when compiles are on.
        `on_optimised(key)`: called once a large kernel's optimised compile has replaced its quick one
        (llvm_kernel.QUICK_LINES)."""
        self.dir = os.path.join(cache_dir, "kernels")
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:  # a read-only cache: nothing loads or compiles, requests run on the lower tiers
            log.warning("kernel cache %s is not usable (%s): kernels will not be compiled", self.dir, e)
        self.stats = stats
        self.timeout = compile_timeout
        self.memory = memory
        self.compile_enabled = compile
        self.llvm = llvm and _llvm_usable()
        self.compiler: dict = {}  # serial key -> "llvm" for plans the LLVM back end builds (absent: numba)
        self.parallel = parallel
        self.source = _source  # writes a plan's kernel module (tests may break it on purpose)
        self._quiet = quiet or (lambda seconds: None)
        self._on_load = on_load or (lambda key: None)
        self._on_optimised = on_optimised or (lambda key: None)
        self.ready: dict = {}    # module key (a plan's key, or its parallel variant's) -> loaded module
        self.failed: dict = {}   # key -> why
        self.pending: set = set()
        self.optimising: set = set()  # keys answering with their quick kernel while the optimised one compiles
        self._lock = threading.Lock()
        self.workers = workers or threads.default_workers()
        prepare = "llvm" if self.llvm else None
        self._now = _Lane(ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="adserve-compile"),
                          Workers(memory, spare=spare if compile else 0, prepare=prepare, nice=0))
        self._later = _Lane(ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="adserve-compile-later"),
                            Workers(memory, prepare=prepare))  # at ADSERVE_COMPILE_NICE
        self._wanted = wanted or (lambda key: False)
        self._chunk_pool = None  # threads running LLVM kernels' chunks (their parallel variants), made when needed
        self._graphs: dict = {}  # key -> plan, for a kernel loading from disk: compiled again if it is corrupt
        self._reloaded: set = set()  # keys compiled again after a failed load (once each)
        self._retried: set = set()   # keys compiled again after their worker was killed (once each)
        self.closed = False
        self._now.workers.ready()  # the first kernel need not wait for a worker to start

    # -- lookup --------------------------------------------------------------
    def kernel(self, graph):
        """The plan's serial kernel module if loaded; otherwise starts loading or compiling it (once, in the
        background) and returns None."""
        key = plan_meta(graph).key
        mod = self.ready.get(key)
        if mod is not None or key in self.failed:
            return mod
        return self.request(key, graph, False)

    def parallel_kernel(self, graph):
        """The plan's parallel batch variant if loaded; otherwise, once its serial kernel is ready, starts
        loading or compiling it (once, in the background) and returns None. None too when parallel variants are
        off (`parallel=False`, no thread-safe threading layer) or this one failed."""
        plan = plan_meta(graph)
        key = plan.parallel_key
        mod = self.ready.get(key)
        if mod is not None or not self.parallel or key in self.failed or plan.key not in self.ready:
            return mod
        if self.compiler.get(plan.key) == "llvm":
            return self._llvm_chunks(plan, len(graph.inputs))
        if self.stats.parallel_disabled:
            return None
        return self.request(key, graph, True)

    def _llvm_chunks(self, plan, n_in):
        """An LLVM plan's parallel variant: its serial kernel on chunks of the batch on threads, ready at once (no
        numba compile: for a large plan that would take minutes and gigabytes). None on one core."""
        from ..codegen.llvm_kernel import LlvmChunks
        cores = threads.usable_cores()
        with self._lock:
            if cores < 2:
                self.failed[plan.parallel_key] = "one usable core: no parallel variant"
                return None
            if self._chunk_pool is None:
                self._chunk_pool = ThreadPoolExecutor(max_workers=cores, thread_name_prefix="adserve-chunks")
        mod = LlvmChunks(self.ready[plan.key], self._chunk_pool, cores, n_in)
        self.add(plan.parallel_key, mod)
        return mod

    def module(self, graph, tier):
        """The loaded module a tier runs for the plan (None for the interpreter)."""
        plan = plan_meta(graph)
        return {NUMBA: self.ready.get(plan.key), PARALLEL: self.ready.get(plan.parallel_key)}.get(tier)

    def in_progress(self, graph) -> bool:
        """Whether a kernel of the plan (serial or parallel) is being compiled or loaded."""
        plan = plan_meta(graph)
        return plan.key in self.pending or plan.parallel_key in self.pending

    def request(self, key, graph, parallel):
        """The module of `key` if ready; otherwise starts loading it from disk, or compiling it, in the
        background (once: single flight per key) and returns None."""
        with self._lock:
            if key in self.ready or key in self.failed or key in self.pending:
                return self.ready.get(key)
            from ..codegen.templates import interpreter_only
            missing = interpreter_only(graph)
            if missing:  # declined, quietly and once: not a compile failure
                self.failed[key] = f"interpreter only: no kernel template for {', '.join(sorted(missing))}"
                return None
            if self.llvm and not parallel and key not in self.compiler:
                from ..codegen.llvm_ir import declined
                if not declined(graph):
                    self.compiler[key] = "llvm"
            self.pending.add(key)
        if self.on_disk(key):
            self._graphs[key] = graph
            self._now.pool.submit(self._load_only, key)
        elif self.compile_enabled:
            self._lane(parallel).pool.submit(self._compile, key, graph, parallel)
        else:
            with self._lock:
                self.pending.discard(key)
        return None

    def wait(self, graph, timeout=600.0, parallel=False) -> bool:
        """Block until the plan's kernel (or its parallel variant, once asked for) is ready or has failed
        (for tests and benchmarks)."""
        plan = plan_meta(graph)
        key = plan.parallel_key if parallel else plan.key
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.parallel_kernel(graph) if parallel else self.kernel(graph)) is not None:
                return True
            if key in self.failed or parallel and key not in self.pending:
                return False
            time.sleep(0.02)
        return False

    def idle(self, deadline: float) -> bool:
        """Block until nothing is being loaded, compiled or optimised, or `deadline` (time.monotonic) passes; True
        if idle."""
        while (self.pending or self.optimising) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not (self.pending or self.optimising)

    def path(self, key):
        """The file the compile worker is given: the numba module, or the LLVM back end's IR text."""
        if self.compiler.get(key) == "llvm":
            from ..codegen.llvm_kernel import paths
            return paths(self.dir, key)[0]
        return os.path.join(self.dir, f"gen_{key}.py")

    def on_disk(self, key):
        if self.compiler.get(key) == "llvm":
            from ..codegen.llvm_kernel import paths
            return all(os.path.exists(p) for p in paths(self.dir, key))
        return os.path.exists(self.path(key)) and bool(
            glob.glob(os.path.join(self.dir, "__pycache__", f"gen_{key}.kernel-*.nbi")))

    # -- compile and load ----------------------------------------------------
    def _compile(self, key, graph, parallel=False):
        # imported here: `python -m` of the worker module must not find it imported by the package already
        from ..codegen.worker import out_of_memory
        path = self.path(key)
        try:
            if parallel and threads.parallel_layer() is None:
                return self._no_parallel(key)
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    if self.compiler.get(key) == "llvm":
                        from ..codegen.llvm_kernel import module_text
                        f.write(module_text(graph, key, f"plan {key}"))
                    else:
                        f.write(self.source(graph, f"plan {plan_meta(graph).key}", parallel=parallel))
                os.replace(tmp, path)
            quick = self._quick_object(key, path)
            t = time.perf_counter()
            out, why, code, warm = self._run_worker(path, quick=quick, later=parallel)
            if why == "memory" or code and out_of_memory(code, out):
                if warm:  # the worker had compiled before: its memory is not all this kernel's; once more, new
                    out, why, code, warm = self._run_worker(path, fresh=True, quick=quick, later=parallel)
            if why == "timeout":
                self.stats.compile_timeouts += 1
                self._count_failure("timeout")
                return self._fail(key, f"compile timed out after {self.timeout:.0f}s")
            if code:
                self.stats.compile_failures += 1
                memory = why == "memory" or out_of_memory(code, out)
                self._count_failure("memory" if memory else "killed" if code < 0 else "error")
                if memory:
                    return self._fail(key, f"compile worker ran out of memory (its limit: {self.memory:,} bytes of "
                                           f"address space, ADSERVE_COMPILE_MEMORY_BYTES): {out[-1000:]}")
                why = f"signal {-code}" if code < 0 else f"exit status {code}"
                if code < 0 and self._retry_later(key, graph, parallel, why):
                    return
                return self._fail(key, f"compile worker failed ({why}): {out[-2000:]}")
            seconds = self._count_compile(key, t, parallel)
            log.info("kernel %s compiled%s in %.2f s", key, " quickly" if quick else "", seconds)
            if quick:
                with self._lock:  # before the quick kernel is ready: `idle` never sees neither
                    self.optimising.add(key)
            self._load(key, quick)
            if quick:
                self._optimise_later(key)
        except Exception as e:  # a compile problem must never reach a request
            with self._lock:
                self.optimising.discard(key)
            self.stats.compile_failures += 1
            self._count_failure("io" if isinstance(e, OSError) else "load")
            self._fail(key, f"{type(e).__name__}: {e}")

    def _count_compile(self, key, started, parallel=False) -> float:
        """Count a compile of `key` that began at `started` (time.perf_counter) and succeeded; its seconds."""
        seconds = time.perf_counter() - started
        self.stats.compiles += 1
        self.stats.compile_seconds += seconds
        if parallel:
            self.stats.parallel_compiles += 1
            self.stats.parallel_compile_seconds += seconds
        if self.compiler.get(key) == "llvm":
            self.stats.llvm_compiles += 1
            self.stats.llvm_compile_seconds += seconds
        return seconds

    def _quick_object(self, key, path) -> str | None:
        """The file for `key`'s quick kernel when it is compiled quickly first, then optimised
        (llvm_kernel.QUICK_LINES); else None."""
        if self.compiler.get(key) != "llvm":
            return None
        from ..codegen.llvm_kernel import header, quick_object
        return quick_object(path) if header(path).get("quick") else None

    def _optimise_later(self, key):
        """Compile `key`'s optimised kernel (in `optimising`) in the background; it replaces the quick one that
        answers meanwhile."""
        try:
            self._later.pool.submit(self._optimise, key)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self.optimising.discard(key)

    def _optimise(self, key):
        """The optimised compile of a kernel answering with its quick one: loaded in its place when it compiles,
        else the quick kernel stays (logged and counted, never a request's error)."""
        try:
            t = time.perf_counter()
            out, why, code, _ = self._run_worker(self.path(key), later=True)
            if self.closed:  # its worker was killed by the shutdown: no failure
                return
            if why or code:
                self.stats.optimise_failures += 1
                log.warning("kernel %s: its optimised compile failed (%s); the quick kernel stays: %s", key,
                            why or f"exit status {code}", out[-1000:])
                return
            seconds = self._count_compile(key, t)
            module = self._module(key)
            with self._lock:
                if self.closed:
                    return
                self.ready[key] = module
                # an LLVM parallel variant runs the serial kernel it was made with: made again on its next use
                for k in [k for k in self.ready if is_parallel_key(k) and serial_key(k) == key]:
                    del self.ready[k]
            self.stats.optimised += 1
            log.info("kernel %s optimised in %.2f s", key, seconds)
            self._on_optimised(key)
        except Exception as e:
            if not self.closed:
                self.stats.optimise_failures += 1
                log.warning("kernel %s: its optimised compile failed (%s: %s); the quick kernel stays", key,
                            type(e).__name__, e)
        finally:
            with self._lock:
                self.optimising.discard(key)

    def _run_worker(self, path, fresh=False, quick=None, later=False):
        """Compile `path` in a warm worker (`fresh`: a new one; `quick`: the file for an LLVM module's quick
        kernel; `later`: a background lane's worker, at a lowered priority): (its output, why it was stopped or
        None, its exit status if it ended, whether it had compiled before)."""
        workers = self._lane(later).workers
        worker = workers.take(fresh)
        warm = worker.compiles > 0
        try:
            out, why, code = worker.compile(path, self.timeout, quick)
        finally:
            workers.give(worker)
        return out, why, code, warm

    def _lane(self, later: bool) -> _Lane:
        """The background lane for work that improves on a kernel already answering, else the first kernels'."""
        return self._later if later else self._now

    def _retry_later(self, key, graph, parallel, why) -> bool:
        """Compile `key` again after RETRY_KILLED_SECONDS (it stays pending meanwhile), once per key; False
        if it was retried before (or the store is closing)."""
        with self._lock:
            if key in self._retried or self.closed:
                return False
            self._retried.add(key)
        self.stats.compile_retries += 1
        log.warning("kernel %s: compile worker failed (%s); trying once more in %g s", key, why,
                    self.RETRY_KILLED_SECONDS)
        timer = threading.Timer(self.RETRY_KILLED_SECONDS, self._retry, (key, graph, parallel))
        timer.daemon = True
        timer.start()
        return True

    def _retry(self, key, graph, parallel):
        try:
            if self.closed:
                raise RuntimeError("the store is closed")
            self._lane(parallel).pool.submit(self._compile, key, graph, parallel)
        except RuntimeError:  # shut down meanwhile: nothing more to do for it
            with self._lock:
                self.pending.discard(key)

    def _load_only(self, key):
        try:
            if is_parallel_key(key) and threads.parallel_layer() is None:
                return self._no_parallel(key)
            self._load(key)
            self.stats.disk_loads += 1
            self._graphs.pop(key, None)
        except Exception as e:  # corrupt or truncated on disk: set it aside and compile it again
            self.stats.load_failures += 1
            log.warning("kernel %s on disk did not load (%s: %s); compiling it again", key, type(e).__name__,
                        str(e)[:500])
            if not self.compile_enabled or key in self._reloaded or not self._discard(key):
                return self._fail(key, f"load failed: {type(e).__name__}: {e}")
            self._reloaded.add(key)
            graph = self._graphs.pop(key, None)
            if graph is None:  # a preload: no plan at hand; the next request for it compiles it
                with self._lock:
                    self.pending.discard(key)
                return
            self._compile(key, graph, is_parallel_key(key))

    def _discard(self, key) -> bool:
        """Remove a kernel's module and numba cache files; False if they could not all be removed."""
        try:
            from ..codegen.llvm_kernel import paths
            for path in [self.path(key), *paths(self.dir, key),
                         *glob.glob(os.path.join(self.dir, "__pycache__", f"gen_{key}.*"))]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            sys.modules.pop(f"gen_{key}", None)
            return True
        except OSError as e:
            log.warning("kernel %s: cannot remove it from the cache (%s)", key, e)
            return False

    def _count_failure(self, reason):
        reasons = self.stats.compile_failure_reasons
        reasons[reason] = reasons.get(reason, 0) + 1

    def _load(self, key, quick=None):
        """Load `key`'s compiled module and make it the ready one (`quick`: its quick kernel's file)."""
        self.add(key, self._module(key, quick))
        self._mark_used(key)
        log.info("kernel %s ready", key)

    def _module(self, key, quick=None):
        """`key`'s compiled module, loaded here once a run is waiting for it or the moment is quiet (`quick`: its
        quick kernel's file, removed once read: only the optimised kernel is a cache entry)."""
        from ..codegen.worker import load
        if not self._wanted(key):  # loading holds the interpreter's lock for milliseconds
            self._quiet(self.LOAD_WAIT_SECONDS)
        if self.compiler.get(key) != "llvm":
            return load(self.path(key), f"gen_{key}")
        from ..codegen.llvm_kernel import LlvmModule
        try:
            return LlvmModule(self.path(key), quick)
        finally:
            if quick is not None:
                with contextlib.suppress(OSError):
                    os.remove(quick)

    def add(self, key, module):
        """`module` is the loaded kernel of `key` from now on (a load does this; tests hand in fakes)."""
        with self._lock:
            self.ready[key] = module
            self.pending.discard(key)
        self._on_load(key)

    def _no_parallel(self, key):
        self.stats.parallel_disabled = threads.layer_reason() or "no thread-safe threading layer"
        with self._lock:
            self.failed[key] = self.stats.parallel_disabled
            self.pending.discard(key)

    def _fail(self, key, why):
        parallel = is_parallel_key(key)
        if parallel:
            self.stats.parallel_failures += 1
        log.warning("kernel %s: %s stays %s", key, why, "serial" if parallel else "on the interpreter")
        with self._lock:
            self.failed[key] = why
            self.pending.discard(key)

    def shutdown(self):
        self.closed = True
        for lane in (self._now, self._later):
            lane.shutdown()
        if self._chunk_pool is not None:
            self._chunk_pool.shutdown(wait=False, cancel_futures=True)
