"""Execution tiers: who runs a plan graph.

* `interpreter`: the NumPy reference interpreter; answers at once, any graph.
* `numba`: generated source compiled by numba. A plan's kernel is compiled in
  a worker process (time-limited and killable, at a lowered CPU priority;
  numba's compile lock never stalls the server), single flight per key, into
  `<cache_dir>/kernels/`. The server then imports the module, which loads
  numba's on-disk cache in milliseconds, and later requests run compiled.
  After a restart, kernels already on disk load on first use without
  compiling again; the server also preloads the most recently used ones at
  start (`Tiered.preload`).
* `numba-parallel`: the plan's batch variant (`kernel_module(parallel=True)`:
  chunks of the batch in a numba `prange`), compiled on demand only, as a job
  of its own, once the serial kernel takes long enough on a batch
  (`PARALLEL_SECONDS`) for threads to pay. It needs a thread-safe threading
  layer (OpenMP or TBB: request threads may run kernels at once); without one
  it is disabled (logged once) and plans stay serial.

Kernel outputs are fresh arrays per run (a `Fresh` list), which the API hands
out without copying. Once a kernel is ready, the first runs of its plan (per
batch size class) time each tier and keep the fastest (`Tiered._pick`):
NumPy's vectorised math can beat a scalar loop on large element-wise work, and
threads only pay on large batches of an idle machine. The choice is then
re-examined now and then (a run on another tier, at growing intervals, and
every run timed when runs are long), so a choice made on noisy timings
corrects itself.

A compile failure or timeout leaves the plan on the interpreter (a parallel
variant's: on the serial kernel), logged and counted; it never fails a
request. Keys are the plan's structural hash plus the code generator's
version, so a changed generator never loads stale code.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import EvaluationError
from .interpreter import run as interpret
from .ir import canonical_text
from .limits import cost

log = logging.getLogger("adserve.engine")
_F64 = np.dtype(np.float64)

INTERPRETER, PYTHON, NUMBA, PARALLEL = "interpreter", "python", "numba", "numba-parallel"


def _tiers():
    return {INTERPRETER: 0, PYTHON: 0, NUMBA: 0, PARALLEL: 0}


def _choice_tiers():
    """What timing chooses between (the python tier, where a plan has one, stands in for the interpreter)."""
    return {INTERPRETER: 0, NUMBA: 0, PARALLEL: 0}


@dataclass
class TierStats:
    compiles: int = 0
    compile_seconds: float = 0.0
    compile_failures: int = 0
    compile_timeouts: int = 0
    disk_loads: int = 0
    preloaded: int = 0  # of disk_loads, loaded at start by `Tiered.preload`
    runs: dict = field(default_factory=_tiers)
    # (plan, batch size class) pairs whose tier was chosen by timing, by the tier first chosen
    chosen: dict = field(default_factory=_choice_tiers)
    switches: int = 0          # choices changed later by fresh timings (a probe of another tier, or a new tier)
    probes: int = 0            # runs on a tier other than the chosen one, to re-time it
    parallel_compiles: int = 0   # of compiles, parallel batch variants
    parallel_compile_seconds: float = 0.0  # of compile_seconds, theirs
    parallel_failures: int = 0   # parallel variants that failed, timed out or could not load (plans stay serial)
    parallel_disabled: str = ""  # why parallel variants are off in this process ("" while they are not)
    python_kernels: int = 0      # plans given a python-tier kernel (scalar-heavy plans, while numba compiles)
    python_declined: int = 0     # python-tier runs that met a domain error and were answered by the interpreter


class Interpreter:
    name = "interpreter"

    def __init__(self):
        self.stats = TierStats()

    def run(self, graph, args, meta=None):
        self.stats.runs[INTERPRETER] += 1
        if meta is not None:
            meta["backend"] = INTERPRETER
        return interpret(graph, args)

    def busy(self):
        """Around a whole call (parsing, building plans, running): background work waits for its end."""
        return contextlib.nullcontext()

    def source(self, graph, title, parallel=False):
        from .codegen.module import kernel_module
        return kernel_module(graph, title, parallel=parallel)


class Fresh(list):
    """Outputs written into arrays allocated for this run alone: nothing else refers to them,
    so the caller may hand them out without a copy."""


@dataclass(frozen=True)
class PlanMeta:
    """What running a plan needs besides its graph, computed once per graph and kept on it."""
    key: str             # the kernel's cache key: the plan's structural hash and the generator's version
    out_shapes: tuple    # per output, its shape without the batch axis
    steps: float         # equations the interpreter dispatches per run (loops counted by trips)
    work: float          # element operations per point (limits.cost)

    @property
    def parallel_key(self) -> str:
        """The parallel batch variant's cache key (a module of its own)."""
        from .codegen.module import PARALLEL_VERSION
        return f"{self.key}_par{PARALLEL_VERSION}"


_META = "_adserve_plan_meta"


def plan_meta(graph) -> PlanMeta:
    meta = graph.__dict__.get(_META)
    if meta is None:
        from .codegen.module import CODEGEN_VERSION
        text = f"codegen {CODEGEN_VERSION}\n" + canonical_text(graph)
        meta = PlanMeta(hashlib.sha256(text.encode()).hexdigest()[:32], tuple(tuple(a.shape) for a in graph.outputs),
                        *cost(graph))
        object.__setattr__(graph, _META, meta)  # graphs are frozen dataclasses; this is a cache, not structure
    return meta


def plan_key(graph) -> str:
    return plan_meta(graph).key


def _is_parallel_key(key: str) -> bool:
    return "_par" in key


# -- numba's threading layer ------------------------------------------------------
_layer_lock = threading.Lock()
_layer: list = []  # [name of the launched thread-safe layer, or None with the reason]


def parallel_layer():
    """The thread-safe threading layer numba runs parallel kernels on in this process ("omp" or "tbb"), launched
    on first use; None (logged once) when none can be loaded, or when another layer was launched already
    (the workqueue layer is not safe for kernels called from several threads at once)."""
    with _layer_lock:
        if not _layer:
            _layer.append(_launch_layer())
        return _layer[0][0]


def _launch_layer():
    if usable_cores() < 2:
        why = "one usable core: no thread to spread a batch over"
        log.info("parallel batch kernels off: %s", why)
        return None, why
    try:
        import numba
        from numba.np.ufunc import parallel

        from .codegen.worker import threadsafe_layer
        threadsafe_layer()  # numba reads it when it launches its threads, just below
        if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
            # OpenMP threads sleep between parallel kernels instead of spinning for a while: a spinning thread
            # takes a core from request threads (measured here: JAX beside it 0.8 -> 1.6 ms), and on a busy
            # machine the next parallel region waits for it (5x the serial time); sleeping costs ~10% (read by
            # libgomp when it loads, just below)
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        parallel._launch_threads()
        name = numba.threading_layer()
    except Exception as e:
        why = f"no thread-safe numba threading layer could be loaded ({type(e).__name__}: {str(e).strip()[:300]})"
        log.warning("parallel batch kernels disabled: %s", why)
        return None, why
    if name not in ("omp", "tbb"):
        why = f"numba's threading layer is {name!r}, not thread-safe (configured: {numba.config.THREADING_LAYER!r})"
        log.warning("parallel batch kernels disabled: %s", why)
        return None, why
    log.info("parallel batch kernels run on numba's %r threading layer, %d threads", name, numba.get_num_threads())
    return name, ""


def _layer_reason() -> str:
    with _layer_lock:
        return _layer[0][1] if _layer else ""


def usable_cores(cgroup="/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None),  # cgroup v2: "<quota> <period>", or "max <period>"
                                    ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):  # cgroup v1
        try:
            with open(os.path.join(cgroup, quota_file)) as f:
                quota, *rest = f.read().split()
            if period_file is not None:
                with open(os.path.join(cgroup, period_file)) as f:
                    rest = f.read().split()
            if quota not in ("max", "-1"):
                cores = min(cores, max(1, math.ceil(int(quota) / int(rest[0]))))
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
        break
    return max(1, cores)


def default_workers() -> int:
    """Concurrent compiles: one usable core is left to requests (a compile is CPU-bound)."""
    return max(1, usable_cores() - 1)


class _Choice:
    """Timings of one (plan, batch size class) and the tier they chose.

    `on` is (tier, module) once chosen, else None (the first runs, trials of every tier).
    `times` holds each tier's most recent run times; a tier's estimate is their median (the lower one of an
    even count): a spike of load is shed, and so is a tier's rare fast run (OpenMP threads under load are fast
    now and then and slow mostly)."""
    __slots__ = ("due", "every", "gap", "last", "made", "next_probe", "on", "pair", "probed", "runs", "times")

    def __init__(self):
        self.on = None
        self.times: dict = {}
        self.runs = 0
        self.next_probe = 0  # the run count at which the next probe is due (see `Tiered._probe`)
        self.gap: dict = {}  # per other tier, the runs between its probes (grows while probes confirm the choice)
        self.due: dict = {}  # per other tier, the run count at which its next probe is due
        self.probed = None   # the tier the last probe ran on
        self.pair = False    # the run after a probe times the chosen tier, a paired sample
        self.every = False   # runs are long: every run is timed
        self.made = False    # a choice was made once (a later one is a switch)
        self.last = None     # the tier chosen before the choice was reopened

    def estimate(self, tier) -> float | None:
        t = self.times.get(tier)
        return sorted(t)[(len(t) - 1) // 2] if t else None


class Tiered(Interpreter):
    """The interpreter until a plan's numba kernel is ready, then the fastest tier by timing."""

    def __init__(self, cache_dir: str, compile_timeout: float = 300.0, workers: int | None = None, compile=True,
                 parallel=True, python=True):
        super().__init__()
        self.python_enabled = python
        self._python: OrderedDict = OrderedDict()  # plan key -> PythonKernel, while no numba kernel is loaded
        self._python_asked: set = set()
        self.dir = os.path.join(cache_dir, "kernels")
        os.makedirs(self.dir, exist_ok=True)
        self.timeout = compile_timeout
        self.compile_enabled = compile
        self.parallel = parallel
        self._ready: dict = {}    # module key (a plan's key, or its parallel variant's) -> loaded module
        self._failed: dict = {}
        self._pending: set = set()
        self._lock = threading.Lock()
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="adserve-compile")
        self._procs: set = set()
        self._closed = False
        self._choices: dict = {}  # (plan key, batch size class) -> _Choice (see `_pick`)
        self._clock = time.perf_counter
        # plans seen for the first time are hashed (and their kernels asked for) here, after the request
        self._introducer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adserve-plans")
        self._running = 0  # calls and runs in progress: the introducer waits for a moment with none
        self._busy_lock = threading.Lock()
        self._last_run = 0.0

    # -- lookup --------------------------------------------------------------
    def kernel(self, graph):
        """The plan's serial kernel module if loaded; otherwise starts loading or compiling it (once, in the
        background) and returns None."""
        key = plan_meta(graph).key
        mod = self._ready.get(key)
        if mod is not None or key in self._failed:
            return mod
        return self._request(key, graph, False)

    def parallel_kernel(self, graph):
        """The plan's parallel batch variant if loaded; otherwise, once its serial kernel is ready, starts
        loading or compiling it (once, in the background) and returns None. None too when parallel variants are
        off (`parallel=False`, no thread-safe threading layer) or this one failed."""
        plan = plan_meta(graph)
        key = plan.parallel_key
        mod = self._ready.get(key)
        if mod is not None or not self.parallel or key in self._failed or plan.key not in self._ready:
            return mod
        if self.stats.parallel_disabled:
            return None
        return self._request(key, graph, True)

    def _request(self, key, graph, parallel):
        with self._lock:
            if key in self._ready or key in self._failed or key in self._pending:
                return self._ready.get(key)
            self._pending.add(key)
        if self._on_disk(key):
            self._pool.submit(self._load_only, key)
        elif self.compile_enabled:
            self._pool.submit(self._compile, key, graph, parallel)
        else:
            with self._lock:
                self._pending.discard(key)
        return None

    def settle(self, timeout=600.0) -> bool:
        """Block until every plan run so far has been introduced and no kernel is being loaded or compiled
        (for tests and benchmarks). True if that happened within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            self._introducer.submit(lambda: None).result(timeout)  # jobs run in order: the earlier ones are done
        except Exception:
            return False
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._pending

    def wait(self, graph, timeout=600.0, parallel=False) -> bool:
        """Block until the plan's kernel (or its parallel variant, once asked for) is ready or has failed
        (for tests and benchmarks)."""
        plan = plan_meta(graph)
        key = plan.parallel_key if parallel else plan.key
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.parallel_kernel(graph) if parallel else self.kernel(graph)) is not None:
                return True
            if key in self._failed or parallel and key not in self._pending:
                return False
            time.sleep(0.02)
        return False

    def pending(self, graph) -> bool:
        """Whether a kernel of the plan (serial or parallel) is being compiled or loaded."""
        plan = plan_meta(graph)
        return plan.key in self._pending or plan.parallel_key in self._pending

    def choice(self, graph, batch=1):
        """The tier chosen for the plan at this batch size, None while its first runs still time the tiers."""
        c = self._choices.get((plan_meta(graph).key, max(1, batch).bit_length()))
        on = c.on if c is not None else None
        return on[0] if on is not None else None

    def estimates(self, graph, batch=1) -> dict:
        """Per tier, the median of its recent timed runs for the plan at this batch size (what the choice compares)."""
        c = self._choices.get((plan_meta(graph).key, max(1, batch).bit_length()))
        return {} if c is None else {t: b for t in (NUMBA, PARALLEL, INTERPRETER) if (b := c.estimate(t)) is not None}

    def module(self, graph, tier):
        """The loaded module a tier runs for the plan (None for the interpreter)."""
        plan = plan_meta(graph)
        return {NUMBA: self._ready.get(plan.key), PARALLEL: self._ready.get(plan.parallel_key)}.get(tier)

    def _path(self, key):
        return os.path.join(self.dir, f"gen_{key}.py")

    def _on_disk(self, key):
        return os.path.exists(self._path(key)) and bool(
            glob.glob(os.path.join(self.dir, "__pycache__", f"gen_{key}.kernel-*.nbi")))

    # -- compile and load ----------------------------------------------------
    def _compile(self, key, graph, parallel=False):
        path = self._path(key)
        try:
            if parallel and parallel_layer() is None:
                return self._no_parallel(key)
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(self.source(graph, f"plan {plan_meta(graph).key}", parallel=parallel))
                os.replace(tmp, path)
            t = time.perf_counter()
            # a new process (fork and exec, no Python code run in between): OpenMP threads of this process
            # are never forked into it
            proc = subprocess.Popen([sys.executable, "-m", "adserve.engine.codegen.worker", path],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self._procs.add(proc)
            try:
                out, _ = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.stats.compile_timeouts += 1
                return self._fail(key, f"compile timed out after {self.timeout:.0f}s")
            finally:
                self._procs.discard(proc)
            if proc.returncode != 0:
                self.stats.compile_failures += 1
                return self._fail(key, f"compile failed ({proc.returncode}): {out[-2000:]}")
            seconds = time.perf_counter() - t
            self.stats.compiles += 1
            self.stats.compile_seconds += seconds
            if parallel:
                self.stats.parallel_compiles += 1
                self.stats.parallel_compile_seconds += seconds
            log.info("kernel %s compiled in %.2f s", key, seconds)
            self._load(key)
        except Exception as e:  # a compile problem must never reach a request
            self.stats.compile_failures += 1
            self._fail(key, f"{type(e).__name__}: {e}")

    def _load_only(self, key):
        try:
            if _is_parallel_key(key) and parallel_layer() is None:
                return self._no_parallel(key)
            self._load(key)
            self.stats.disk_loads += 1
        except Exception as e:
            self._fail(key, f"load failed: {type(e).__name__}: {e}")

    def _load(self, key):
        from .codegen.worker import load
        self._quiet_moment(self.LOAD_WAIT_SECONDS)  # loading holds the interpreter's lock for milliseconds
        mod = load(self._path(key), f"gen_{key}")
        with self._lock:
            self._ready[key] = mod
            self._pending.discard(key)
            self._python.pop(key, None)
        self._mark_used(key)
        log.info("kernel %s ready", key)
        if _is_parallel_key(key):
            self._retime(key.split("_par")[0])

    def _no_parallel(self, key):
        self.stats.parallel_disabled = _layer_reason() or "no thread-safe threading layer"
        with self._lock:
            self._failed[key] = self.stats.parallel_disabled
            self._pending.discard(key)

    # -- preload at start ------------------------------------------------------
    def preload(self, limit: int = 32) -> threading.Thread:
        """Start a background thread that imports numba and the kernels' runtime helpers, then loads the
        `limit` kernels on disk used most recently, so that after a restart known functions run compiled
        from their first request. It never blocks: a request meanwhile runs on the interpreter, and a kernel
        a request asks for that is not being preloaded loads through the pool as usual. (Parallel variants
        are not preloaded: they load from disk when a large batch asks for them.)"""
        thread = threading.Thread(target=self._preload, args=(limit,), name="adserve-preload", daemon=True)
        thread.start()
        return thread

    def _preload(self, limit):
        t0 = time.perf_counter()
        try:
            import numba  # noqa: F401

            from .codegen import runtime  # noqa: F401
            keys = self._recent(limit)
        except Exception as e:
            log.warning("kernel preload stopped: %s: %s", type(e).__name__, e)
            return
        t1 = time.perf_counter()
        for key in keys:
            if self._closed:
                break
            with self._lock:
                if key in self._ready or key in self._failed or key in self._pending:
                    continue
                self._pending.add(key)
            self._load_only(key)
            if key in self._ready:
                self.stats.preloaded += 1
        log.info("numba imported in %.2f s; %d of %d recent kernels preloaded in %.2f s", t1 - t0,
                 self.stats.preloaded, len(keys), time.perf_counter() - t1)

    def _used_path(self, key):
        return os.path.join(self.dir, "used", key)

    def _mark_used(self, key):
        """Record a kernel's last use for `preload` (a marker file's time: the module itself must not be
        touched, numba's cache index checks its time stamp)."""
        path = self._used_path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a"):
                pass
            os.utime(path)
        except OSError:
            pass

    def _recent(self, limit) -> list:
        """Keys of serial kernels on disk for this code generator, most recently used (or compiled) first."""
        from .codegen.module import CODEGEN_VERSION
        found = []
        for path in glob.glob(os.path.join(self.dir, "gen_*.py")):
            key = os.path.basename(path)[4:-3]
            if _is_parallel_key(key):
                continue
            index = glob.glob(os.path.join(self.dir, "__pycache__", f"gen_{key}.kernel-*.nbi"))
            times = []
            for p in [*index, self._used_path(key)]:
                with contextlib.suppress(OSError):
                    times.append(os.stat(p).st_mtime)
            if index and times:
                found.append((max(times), key, path))
        found.sort(reverse=True)
        out, tag = [], f"(codegen v{CODEGEN_VERSION})"
        for _, key, path in found:
            if len(out) >= limit:
                break
            try:
                with open(path) as f:
                    head = f.read(200)
            except OSError:
                continue
            if tag in head:  # another generator's kernel can never be asked for
                out.append(key)
        return out

    def _fail(self, key, why):
        parallel = _is_parallel_key(key)
        if parallel:
            self.stats.parallel_failures += 1
        log.warning("kernel %s: %s stays %s", key, why, "serial" if parallel else "on the interpreter")
        with self._lock:
            self._failed[key] = why
            self._pending.discard(key)

    def shutdown(self):
        self._closed = True
        for p in list(self._procs):
            p.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._introducer.shutdown(wait=False, cancel_futures=True)

    # -- a plan's first run ------------------------------------------------------
    # A quiet moment: no call or run in progress (see `busy`), and none ended within QUIET_SECONDS (its
    # answer is being encoded and sent). Source writing waits for one at most INTRODUCE_WAIT_SECONDS (a burst
    # of new functions back to back is answered first), a kernel load at most LOAD_WAIT_SECONDS.
    INTRODUCE_WAIT_SECONDS = 0.5
    LOAD_WAIT_SECONDS = 0.1
    QUIET_SECONDS = 0.003

    def _first_run(self, graph, args, meta):
        """A plan never run here: the interpreter answers now. Its key (a hash of the whole plan, a few ms
        for a big one) and the request for its kernel (which writes the kernel's source, a few ms more) are
        left to a background thread that waits for a moment with no run in progress, so they do not
        share the interpreter's lock with the first answer."""
        self._introducer.submit(self._introduce, graph)
        if meta is not None and self.compile_enabled:
            meta["compile"] = "pending"
        try:
            return Interpreter.run(self, graph, args, meta)
        finally:
            self._last_run = time.monotonic()

    @contextlib.contextmanager
    def busy(self):
        with self._busy_lock:
            self._running += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._running -= 1
            self._last_run = time.monotonic()

    def _quiet_moment(self, wait):
        """Wait (at most `wait` seconds) for no call or run in progress and none ended very recently."""
        deadline = time.monotonic() + wait
        while (self._running or time.monotonic() - self._last_run < self.QUIET_SECONDS) \
                and time.monotonic() < deadline:
            time.sleep(0.002)

    def _introduce(self, graph):
        time.sleep(self.QUIET_SECONDS)  # the request that brought it is still encoding and sending its answer
        self._quiet_moment(self.INTRODUCE_WAIT_SECONDS)
        try:
            self.kernel(graph)
        except Exception as e:  # never a request's problem: the plan stays on the interpreter
            log.warning("plan not introduced: %s: %s", type(e).__name__, e)

    # -- the python tier: the kernel's code run by CPython until numba's is loaded --------------------
    # Cost per run, from the benchmarks' plans here (conservative: a scalar op took 25-50 ns, an array
    # element 90-220 ns): PY_STEP_SECONDS per equation and PY_ELEMENT_SECONDS per element operation and
    # point. The tier is used where that is below PYTHON_MARGIN of the interpreter's floor (STEP_SECONDS,
    # ELEMENT_SECONDS): a new 1,000-op function's value and gradient, 0.1 ms against 2.4 ms; never Helmholtz
    # or Rosenbrock at n >= 10, whose array work NumPy does faster. The kernel is built when a plan runs a
    # second time (in the background: its second answer is still the interpreter's). A plan whose runs meet
    # domain errors (the interpreter answers those) PYTHON_DECLINES times goes back to the interpreter.
    PY_STEP_SECONDS = 0.05e-6
    PY_ELEMENT_SECONDS = 0.2e-6
    PYTHON_MARGIN = 0.5
    PYTHON_DECLINES = 3
    PYTHON_KEPT = 512  # python-tier kernels kept at once (each is a few hundred KB of bytecode for 1,000 ops)

    def _python_pays(self, plan, B) -> bool:
        python = B * (self.PY_STEP_SECONDS * plan.steps + self.PY_ELEMENT_SECONDS * plan.work)
        return python < self.PYTHON_MARGIN * (self.STEP_SECONDS * plan.steps + self.ELEMENT_SECONDS * plan.work * B)

    def _python_kernel(self, graph):
        """Build the plan's python-tier kernel, unless a numba kernel is (about to be) loaded."""
        plan = plan_meta(graph)
        if plan.key in self._ready or self._on_disk(plan.key):
            return
        time.sleep(self.QUIET_SECONDS)
        self._quiet_moment(self.INTRODUCE_WAIT_SECONDS)
        if plan.key in self._ready:
            return
        from .codegen.module import kernel_module
        from .codegen.python import PythonKernel
        k = PythonKernel(kernel_module(graph, f"plan {plan.key}", python=True), plan.key)
        with self._lock:
            if plan.key in self._ready:
                return
            self._python[plan.key] = k
            while len(self._python) > self.PYTHON_KEPT:
                self._python.popitem(last=False)
        self.stats.python_kernels += 1

    def _python_kernel_safely(self, graph):
        try:
            self._python_kernel(graph)
        except Exception as e:  # never a request's problem: the plan stays on the interpreter
            log.warning("no python-tier kernel: %s: %s", type(e).__name__, e)

    def _lower(self, graph, plan, B, args, meta):
        """The plan on the python tier where it has a kernel there that pays for this batch, else the
        interpreter (also when the python run meets a domain error: NumPy's error model answers it)."""
        k = self._python.get(plan.key)
        if k is None and self.python_enabled and plan.key not in self._python_asked and self._python_pays(plan, B):
            # asked for on the plan's second run, not its first: a burst of new functions asked once each builds
            # nothing (the Python code costs tens of milliseconds of the interpreter's lock to write and compile)
            self._python_asked.add(plan.key)
            self._introducer.submit(self._python_kernel_safely, graph)
        if k is not None and k.failures < self.PYTHON_DECLINES and self._python_pays(plan, B):
            from .codegen.python import Unsupported
            try:
                return self._call(k.run, k.ERRORS, PYTHON, plan, B, args, meta)
            except Unsupported as e:
                k.failures += 1
                self.stats.python_declined += 1
                log.debug("python tier declined plan %s: %s", plan.key, e)
        return Interpreter.run(self, graph, args, meta)

    # -- run -------------------------------------------------------------------
    def run(self, graph, args, meta=None):
        """The plan's outputs, each of shape (B, ...); from a kernel (a `Fresh` list) once one is ready,
        on the tier timing chose for this plan and batch size (see `_pick`)."""
        plan = graph.__dict__.get(_META)
        if plan is None:
            return self._first_run(graph, args, meta)
        self._running += 1
        try:
            return self._run(graph, plan, args, meta)
        finally:
            self._running -= 1
            self._last_run = time.monotonic()

    def _run(self, graph, plan, args, meta):
        B = max([a.shape[0] for a in args]) if args else 1
        which = (plan.key, B.bit_length())  # batch sizes within a factor of two share a choice
        c = self._choices.get(which)
        if c is not None:
            on = c.on
            if on is not None:
                c.runs += 1
                if c.runs < c.next_probe:
                    if c.every:
                        return self._timed(c, which, on[0], on[1], graph, plan, B, args, meta)
                    return self._on(on[0], on[1], graph, plan, B, args, meta)
                return self._probe(c, which, on, graph, plan, B, args, meta)
        return self._open(which, graph, plan, B, args, meta)

    def _on(self, tier, mod, graph, plan, B, args, meta):
        if mod is None:
            return self._lower(graph, plan, B, args, meta)
        return self._run_kernel(mod, tier, plan, B, args, meta)

    def _run_kernel(self, mod, tier, plan, B, args, meta):
        return self._call(mod.kernel, mod.ERRORS, tier, plan, B, args, meta)

    def _call(self, kernel, errors, tier, plan, B, args, meta):
        """Run a generated kernel (numba's, or the python tier's) into fresh outputs; a nonzero status is the
        index of its error message."""
        # kernels take writable C-ordered float64 arrays (numba types a read-only array apart): anything else is copied
        ins = [a if a.dtype == _F64 and a.flags.c_contiguous and a.flags.writeable
               else np.array(a, dtype=np.float64, order="C") for a in args]
        outs = Fresh([np.empty((B, *shape)) for shape in plan.out_shapes])
        status = kernel(B, *ins, *outs)
        if status:
            raise EvaluationError(errors[status - 1], code="index_out_of_range")
        self.stats.runs[tier] += 1
        if meta is not None:
            meta["backend"] = tier
        return outs

    # -- choosing a tier by timing ---------------------------------------------------
    # Generated kernels are scalar loops (no SIMD math library here): on large element-wise work NumPy's
    # vectorised exp/log can beat them; a parallel kernel pays only on large batches, and only while other
    # work leaves cores idle. So the first runs of a plan (per batch size class) once its kernel is ready are
    # timed: KERNEL_TRIALS on the kernel (PARALLEL_TRIALS on a parallel variant: threads are the first to suffer
    # from a burst of other work), then the interpreter's (runs from before the kernel count) until it is
    # plainly slower or has INTERPRETER_TRIALS. A tier's estimate is the median of its last WINDOW times; the
    # serial kernel is preferred: the others must be clearly faster (WEIGHT). Timings on a busy machine can
    # mislead, so the choice is re-examined: one run on another tier now and then (after PROBE_FIRST runs, then
    # twice as many after each probe that confirms the choice, up to PROBE_MAX, and rarer for a tier much slower:
    # PROBE_BUDGET, but a kernel gets its first look within FIRST_LOOK runs of a choice, its trials being a few
    # runs in a row; again after PROBE_FIRST when the probe's run beat the chosen tier's), paired with a timed run
    # on the chosen tier; runs of at least EVERY_SECONDS are all timed.
    KERNEL_TRIALS = 3
    PARALLEL_TRIALS = 5
    INTERPRETER_TRIALS = 3
    CLEARLY_FASTER = 0.8   # the interpreter's (or parallel kernel's) best / the kernel's best below this: it wins
    PLAINLY_SLOWER = 4.0   # above this after one run (a first run may be cold): the interpreter is not run again
    WEIGHT = {NUMBA: 1.0, PARALLEL: 1 / CLEARLY_FASTER, INTERPRETER: 1 / CLEARLY_FASTER}
    SWITCH = 0.9           # a chosen tier is left for one whose weighted estimate is below this share of its own
    WINDOW = 5
    PROBE_FIRST = 16
    PROBE_MAX = 1024
    PROBE_BUDGET = 0.01    # probes of a slower tier may cost about this share of the chosen tier's time
    FIRST_LOOK = 256
    PROBE_LONGEST = 1 << 16
    EVERY_SECONDS = 50e-6
    # the serial kernel's time on a batch from which a parallel variant is compiled and tried (measured here,
    # 2 cores: starting the threads costs ~5 us, chunks run at ~0.52x the serial time on an idle machine; the
    # variant costs a compile of a few seconds, worth it for calls of a millisecond or so)
    PARALLEL_SECONDS = 0.5e-3
    # the interpreter's least cost per equation run and per element operation (measured on the benchmarks:
    # 2.4-40 us, 0.27-1.6 ns): when that floor already loses, it is not tried
    STEP_SECONDS = 1.5e-6
    ELEMENT_SECONDS = 0.2e-9

    def _timed(self, c, which, tier, mod, graph, plan, B, args, meta, probe=False):
        t = self._clock()
        out = self._on(tier, mod, graph, plan, B, args, meta)
        self._record(c, tier, self._clock() - t)
        if c.on is not None and (c.every or probe):
            self._reconsider(c, which, plan, probe)
        return out

    def _record(self, c, tier, seconds):
        times = c.times.get(tier)
        if times is None:
            times = c.times.setdefault(tier, [])
        times.append(seconds)  # a list, not a deque: other threads may read it meanwhile
        if len(times) > self.WINDOW:
            del times[0]

    def _retime(self, key):
        """A parallel variant of plan `key` loaded: its chosen batch sizes probe at their next run (and try it)."""
        for which, c in list(self._choices.items()):
            if which[0] == key and c.on is not None:
                c.next_probe = 0

    def _open(self, which, graph, plan, B, args, meta):
        """A run while the plan's tier is open: trials (see `_pick`)."""
        mod = self._ready.get(plan.key)
        if mod is None and (mod := self.kernel(graph)) is None:
            if plan.key not in self._pending:  # no kernel coming: nothing to compare
                return self._lower(graph, plan, B, args, meta)
            if meta is not None:
                meta["compile"] = "pending"
            c = self._choices.get(which) or self._choices.setdefault(which, _Choice())
            return self._timed(c, which, INTERPRETER, None, graph, plan, B, args, meta)
        c = self._choices.get(which) or self._choices.setdefault(which, _Choice())
        tier = self._pick(c, which, graph, plan, B)
        return self._timed(c, which, tier, self.module(graph, tier), graph, plan, B, args, meta)

    def _hopeless(self, c, plan, B) -> bool:
        """The interpreter's floor already loses to the best kernel's time."""
        best = min(b for t in (NUMBA, PARALLEL) if (b := c.estimate(t)) is not None)
        return self.STEP_SECONDS * plan.steps + self.ELEMENT_SECONDS * plan.work * B > self.CLEARLY_FASTER * best

    def _wants_parallel(self, c, B) -> bool:
        """A parallel variant can pay: a batch (it runs points in parallel; one point is one chunk) long enough."""
        serial = c.estimate(NUMBA)
        return self.parallel and B > 1 and serial is not None and serial >= self.PARALLEL_SECONDS

    def _tiers(self, c, graph, plan, B) -> list:
        """The tiers to compare for this choice: the kernels loaded (the parallel variant when the batch is
        long enough for it; asking for it starts its compile) and the interpreter unless its floor loses."""
        tiers = [NUMBA]
        if self._wants_parallel(c, B) and self.parallel_kernel(graph) is not None:
            tiers.append(PARALLEL)
        if not self._hopeless(c, plan, B):
            tiers.append(INTERPRETER)
        return tiers

    def _pick(self, c, which, graph, plan, B) -> str:
        """The tier to run a plan on while its choice is open; chooses once the timings say enough."""
        if len(c.times.get(NUMBA, ())) < self.KERNEL_TRIALS:
            return NUMBA
        tiers = self._tiers(c, graph, plan, B)
        if PARALLEL in tiers and len(c.times.get(PARALLEL, ())) < self.PARALLEL_TRIALS:
            return PARALLEL
        if INTERPRETER in tiers:
            interp = c.times.get(INTERPRETER, ())
            kernels = min(c.estimate(t) for t in tiers if t != INTERPRETER)
            if len(interp) < self.INTERPRETER_TRIALS and not (interp and min(interp) > self.PLAINLY_SLOWER * kernels):
                return INTERPRETER
        tier = min(tiers, key=lambda t: self._score(c, t))
        self._choose(c, which, tier, graph, "timed")
        return tier

    def _score(self, c, tier) -> float:
        best = c.estimate(tier)
        return math.inf if best is None else best * self.WEIGHT[tier]

    def _choose(self, c, which, tier, graph, why):
        with self._lock:
            if c.on is not None:  # chosen meanwhile by another request
                return
            self._start(c, tier, self.module(graph, tier))
            if not c.made:
                c.made = True
                self.stats.chosen[tier] += 1
            elif tier != c.last:
                self.stats.switches += 1
                why = f"switched from {c.last}"
        self._log(c, which, tier, why)

    def _start(self, c, tier, mod):
        """(Under the lock.) `tier` is chosen: the other tiers timed so far get their probes scheduled afresh."""
        c.on = (tier, mod)
        c.every = (c.estimate(tier) or 0.0) >= self.EVERY_SECONDS
        c.pair = False
        c.gap = {t: self.PROBE_FIRST for t in c.times if t != tier}
        c.due = {t: c.runs + min(self._gap(c, t, tier, self.PROBE_FIRST),
                                 self.PROBE_LONGEST if t == INTERPRETER else self.FIRST_LOOK) for t in c.gap}
        c.next_probe = min(c.due.values(), default=c.runs + self.PROBE_MAX)

    def _gap(self, c, tier, chosen, gap) -> int:
        """Runs until `tier`'s next probe: `gap`, or more while its estimate says a probe costs more than
        PROBE_BUDGET of the chosen tier's time (a probe of a tier 5x slower comes at most once in 400 runs)."""
        mine, theirs = c.estimate(chosen), c.estimate(tier)
        if not mine or theirs is None:
            return gap
        return int(min(max(gap, (theirs / mine - 1) / self.PROBE_BUDGET), self.PROBE_LONGEST))

    def _log(self, c, which, tier, why):
        if log.isEnabledFor(logging.INFO):
            est = ", ".join(f"{t} {c.estimate(t) * 1e3:.3g} ms" for t in (NUMBA, PARALLEL, INTERPRETER)
                            if c.estimate(t) is not None)
            log.info("plan %s, batch of %d-%d: %s (%s; median recent runs: %s)", which[0], 1 << max(which[1] - 1, 0),
                     (1 << which[1]) - 1, tier, why, est)

    def _probe(self, c, which, on, graph, plan, B, args, meta):
        """A chosen plan's probe: a tier never timed for it (a parallel variant loaded since) reopens the choice;
        else one run on the tier whose probe is due first, the next run on the chosen one, then the choice is
        reconsidered."""
        tiers = self._tiers(c, graph, plan, B)
        if any(t not in c.times for t in tiers):
            with self._lock:
                if c.on is on:
                    c.last, c.on = on[0], None
            return self._open(which, graph, plan, B, args, meta)
        if c.pair:  # the chosen tier's half of the probe
            c.pair = False
            return self._timed(c, which, on[0], on[1], graph, plan, B, args, meta, probe=True)
        due = {t: d for t, d in c.due.items() if t in tiers}
        if not due:
            c.next_probe = c.runs + self.PROBE_MAX
            return self._on(on[0], on[1], graph, plan, B, args, meta)
        tier = c.probed = min(due, key=due.get)
        self.stats.probes += 1
        if c.every:  # the chosen tier is timed on every run anyway
            return self._timed(c, which, tier, self.module(graph, tier), graph, plan, B, args, meta, probe=True)
        c.pair = True
        c.next_probe = c.runs + 1
        return self._timed(c, which, tier, self.module(graph, tier), graph, plan, B, args, meta)

    def _reconsider(self, c, which, plan, probe):
        """After a timed run of a chosen plan: switch when another tier's estimate is clearly better. After a
        probe that confirms the choice, the probed tier's next one comes twice as late (or later, see `_gap`),
        or soon when its run beat the chosen tier's (its estimate may follow with another sample or two)."""
        on = c.on
        if on is None:
            return
        tier = on[0]
        tiers = [t for t in c.times if t != PARALLEL or self._ready.get(plan.parallel_key) is not None]
        best = min(tiers, key=lambda t: self._score(c, t))
        if best != tier and self._score(c, best) < self.SWITCH * self._score(c, tier):
            mod = None if best == INTERPRETER else self._ready.get(plan.parallel_key if best == PARALLEL else plan.key)
            if best != INTERPRETER and mod is None:
                return
            with self._lock:
                if c.on is not on:
                    return
                self._start(c, best, mod)
                self.stats.switches += 1
            self._log(c, which, best, f"switched from {tier}")
            return
        t = c.probed
        if probe and t in c.gap:
            probed, chosen = c.times.get(t), c.times.get(tier)
            beat = bool(probed and chosen) and probed[-1] * self.WEIGHT[t] < chosen[-1] * self.WEIGHT[tier]
            c.gap[t] = self.PROBE_FIRST if beat else min(2 * c.gap[t], self.PROBE_MAX)
            c.due[t] = c.runs + (c.gap[t] if beat else self._gap(c, t, tier, c.gap[t]))
            c.next_probe = min(c.due.values())
