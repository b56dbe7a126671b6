"""Execution tiers: who runs a plan graph.

* `interpreter`: the NumPy reference interpreter; answers at once, any graph.
* `numba`: generated source compiled by numba. A plan's kernel is compiled in
  a worker process (time-limited and killable; numba's compile lock never
  stalls the server), single flight per key, into `<cache_dir>/kernels/`. The
  server then imports the module, which loads numba's on-disk cache in
  milliseconds, and later requests run compiled. After a restart, kernels
  already on disk load on first use without compiling again; the server also
  preloads the most recently used ones at start (`Tiered.preload`).

Kernel outputs are fresh arrays per run (a `Fresh` list), which the API hands
out without copying. Once a kernel is ready, the first runs of its plan time
both tiers and keep the faster (`Tiered._pick`): NumPy's vectorised math can
beat a scalar loop on large element-wise work.

A compile failure or timeout leaves the plan on the interpreter, logged and
counted; it never fails a request. Keys are the plan's structural hash plus
the code generator's version, so a changed generator never loads stale code.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import EvaluationError
from .interpreter import run as interpret
from .ir import canonical_text
from .limits import cost

log = logging.getLogger("adserve.engine")
_F64 = np.dtype(np.float64)


@dataclass
class TierStats:
    compiles: int = 0
    compile_seconds: float = 0.0
    compile_failures: int = 0
    compile_timeouts: int = 0
    disk_loads: int = 0
    preloaded: int = 0  # of disk_loads, loaded at start by `Tiered.preload`
    runs: dict = field(default_factory=lambda: {"interpreter": 0, "numba": 0})
    # (plan, batch size class) pairs whose tier was chosen by timing both, by the tier chosen
    chosen: dict = field(default_factory=lambda: {"interpreter": 0, "numba": 0})


class Interpreter:
    name = "interpreter"

    def __init__(self):
        self.stats = TierStats()

    def run(self, graph, args, meta=None):
        self.stats.runs["interpreter"] += 1
        if meta is not None:
            meta["backend"] = "interpreter"
        return interpret(graph, args)

    def source(self, graph, title):
        from .codegen.module import kernel_module
        return kernel_module(graph, title)


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


class Tiered(Interpreter):
    """The interpreter until a plan's numba kernel is ready, then the kernel."""

    def __init__(self, cache_dir: str, compile_timeout: float = 300.0, workers: int = 1, compile=True):
        super().__init__()
        self.dir = os.path.join(cache_dir, "kernels")
        os.makedirs(self.dir, exist_ok=True)
        self.timeout = compile_timeout
        self.compile_enabled = compile
        self._ready: dict = {}
        self._failed: dict = {}
        self._pending: set = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adserve-compile")
        self._procs: set = set()
        self._closed = False
        self._chosen: dict = {}  # (plan key, batch size class) -> tier, once timed (see `_pick`)
        self._times: dict = {}   # the same -> ([kernel seconds], [interpreter seconds]) while open

    # -- lookup --------------------------------------------------------------
    def kernel(self, graph):
        key = plan_meta(graph).key
        mod = self._ready.get(key)
        if mod is not None or key in self._failed:
            return mod
        with self._lock:
            if key in self._ready or key in self._failed or key in self._pending:
                return self._ready.get(key)
            self._pending.add(key)
        if self._on_disk(key):
            self._pool.submit(self._load_only, key)
        elif self.compile_enabled:
            self._pool.submit(self._compile, key, graph)
        else:
            with self._lock:
                self._pending.discard(key)
        return None

    def wait(self, graph, timeout=600.0) -> bool:
        """Block until the plan's kernel is ready or has failed (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kernel(graph) is not None:
                return True
            if plan_key(graph) in self._failed:
                return False
            time.sleep(0.02)
        return False

    def _path(self, key):
        return os.path.join(self.dir, f"gen_{key}.py")

    def _on_disk(self, key):
        return os.path.exists(self._path(key)) and bool(
            glob.glob(os.path.join(self.dir, "__pycache__", f"gen_{key}.kernel-*.nbi")))

    # -- compile and load ----------------------------------------------------
    def _compile(self, key, graph):
        path = self._path(key)
        try:
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(self.source(graph, f"plan {key}"))
                os.replace(tmp, path)
            t = time.perf_counter()
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
            self.stats.compiles += 1
            self.stats.compile_seconds += time.perf_counter() - t
            self._load(key)
        except Exception as e:  # a compile problem must never reach a request
            self.stats.compile_failures += 1
            self._fail(key, f"{type(e).__name__}: {e}")

    def _load_only(self, key):
        try:
            self._load(key)
            self.stats.disk_loads += 1
        except Exception as e:
            self._fail(key, f"load failed: {type(e).__name__}: {e}")

    def _load(self, key):
        from .codegen.worker import load
        mod = load(self._path(key), f"gen_{key}")
        with self._lock:
            self._ready[key] = mod
            self._pending.discard(key)
        self._mark_used(key)
        log.info("kernel %s ready", key)

    # -- preload at start ------------------------------------------------------
    def preload(self, limit: int = 32) -> threading.Thread:
        """Start a background thread that imports numba and the kernels' runtime helpers, then loads the
        `limit` kernels on disk used most recently, so that after a restart known functions run compiled
        from their first request. It never blocks: a request meanwhile runs on the interpreter, and a kernel
        a request asks for that is not being preloaded loads through the pool as usual."""
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
        """Keys of kernels on disk for this code generator, most recently used (or compiled) first."""
        from .codegen.module import CODEGEN_VERSION
        found = []
        for path in glob.glob(os.path.join(self.dir, "gen_*.py")):
            key = os.path.basename(path)[4:-3]
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
        log.warning("kernel %s stays on the interpreter: %s", key, why)
        with self._lock:
            self._failed[key] = why
            self._pending.discard(key)

    def shutdown(self):
        self._closed = True
        for p in list(self._procs):
            p.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- run -------------------------------------------------------------------
    def run(self, graph, args, meta=None):
        """The plan's outputs, each of shape (B, ...); from the kernel (a `Fresh` list) once it is ready,
        unless timing both tiers chose the interpreter for this plan and batch size (see `_pick`)."""
        plan = plan_meta(graph)
        B = max([a.shape[0] for a in args]) if args else 1
        which = (plan.key, B.bit_length())  # batch sizes within a factor of two share a choice
        tier = self._chosen.get(which)
        if tier is None:
            mod = self._ready.get(plan.key)
            if mod is None and (mod := self.kernel(graph)) is None:
                if plan.key not in self._pending:  # no kernel coming: nothing to compare
                    return super().run(graph, args, meta)
                return self._timed(which, 1, super().run, graph, args, meta)
            tier = self._pick(which, plan, B)
            if tier == "interpreter":
                return self._timed(which, 1, super().run, graph, args, meta)
            return self._timed(which, 0, self._run_kernel, mod, plan, B, args, meta)
        if tier == "interpreter":
            return super().run(graph, args, meta)
        return self._run_kernel(self._ready[plan.key], plan, B, args, meta)

    def _run_kernel(self, mod, plan, B, args, meta):
        # kernels take writable C-ordered float64 arrays (numba types a read-only array apart): anything else is copied
        ins = [a if a.dtype == _F64 and a.flags.c_contiguous and a.flags.writeable
               else np.array(a, dtype=np.float64, order="C") for a in args]
        outs = Fresh([np.empty((B, *shape)) for shape in plan.out_shapes])
        status = mod.kernel(B, *ins, *outs)
        if status:
            raise EvaluationError(mod.ERRORS[status - 1], code="index_out_of_range")
        self.stats.runs["numba"] += 1
        if meta is not None:
            meta["backend"] = "numba"
        return outs

    # -- choosing a tier by timing both ------------------------------------------
    # Generated kernels are scalar loops (no SIMD math library here): on large element-wise work NumPy's
    # vectorised exp/log can beat them. So the first runs of a plan (per batch size class) once its kernel
    # is ready are timed: two on the kernel, then the interpreter's (runs from before the kernel count) until
    # it is plainly slower or has two; the interpreter keeps the plan only when clearly faster.
    KERNEL_TRIALS = 2
    INTERPRETER_TRIALS = 2
    CLEARLY_FASTER = 0.8   # the interpreter's best / the kernel's best below this: the interpreter
    PLAINLY_SLOWER = 4.0   # above this after one run (a first run may be cold): the kernel, no more trials
    # the interpreter's least cost per equation run and per element operation (measured on the benchmarks:
    # 2.4-40 us, 0.27-1.6 ns): when that floor already loses, it is not tried
    STEP_SECONDS = 1.5e-6
    ELEMENT_SECONDS = 0.2e-9

    def _timed(self, which, slot, run, *args):
        t = time.perf_counter()
        out = run(*args)
        elapsed = time.perf_counter() - t
        if which not in self._chosen:  # chosen meanwhile by another request
            times = self._times.setdefault(which, ([], []))[slot]
            if len(times) < 8:
                times.append(elapsed)
        return out

    def _pick(self, which, plan, B) -> str:
        """The tier to run a plan on while its choice is open; chooses once the timings say enough."""
        kernel, interp = self._times.setdefault(which, ([], []))
        if len(kernel) < self.KERNEL_TRIALS:
            return "numba"
        best = min(kernel)
        hopeless = self.STEP_SECONDS * plan.steps + self.ELEMENT_SECONDS * plan.work * B > self.CLEARLY_FASTER * best
        if hopeless or interp and min(interp) > self.PLAINLY_SLOWER * best or len(interp) >= self.INTERPRETER_TRIALS:
            tier = "interpreter" if interp and min(interp) < self.CLEARLY_FASTER * best else "numba"
            with self._lock:
                if which not in self._chosen:
                    self._chosen[which] = tier
                    self.stats.chosen[tier] += 1
                    log.info("plan %s, batch of %d-%d: %s (best runs: kernel %.3g ms, interpreter %s)",
                             which[0], 1 << max(which[1] - 1, 0), (1 << which[1]) - 1, tier, best * 1e3,
                             f"{min(interp) * 1e3:.3g} ms" if interp else "not tried")
                self._times.pop(which, None)
            return tier
        return "interpreter"
