"""Isolation: evaluations the cost model expects to be long run in worker processes, not in this one.

A long evaluation in a request thread holds the interpreter's lock (the GIL) for most of its time, and every
other request of the process waits for it in turns of the switch interval: measured, the survey example's
p99 went from ~8 ms to 300-600 ms beside a 10^6-step interpreter loop (bench/isolation.py). A `WorkerPool`
runs such evaluations in worker processes instead (`python -m adserve.engine.isolation_worker`), so they
compete with short requests for a core only, at a lowered CPU priority, never for the GIL.

`wants(fn, ...)` decides from the cost model (limits.py): a request whose estimated cost, `(steps x
STEP_WORK + work x points) x derivative factor x sweeps`, is at least `threshold` goes to a worker; one
interpreter step costs about as much as STEP_WORK element operations. Each worker:

* has its own engine (the same backend settings and limits; kernels load from the shared on-disk cache),
  and keeps the functions it was sent by id (the first request for one carries its exported graph and its source lines);
* runs under a memory limit (RLIMIT_AS): a request that needs more is answered 413 too_large naming it,
  and the worker is replaced;
* stops itself at the request's deadline (the interpreter and kernels check it as in process) and says
  how far it got, and so it does when the request is cancelled (its client left, a shutdown: the pool tells
  it on a pipe of its own); one that has not answered `grace` seconds later is killed (SIGKILL) and
  replaced, so no process keeps computing. A stopped worker that answered is kept: a new one would first
  spend a second or more on its imports.

Arrays travel pickled over a pipe (one copy each way; ~1 GB/s, so a 80 MB result adds ~0.1 s). The pool
starts its `size` workers with the server (`start`; the server listens once they are ready, `wait_ready`),
or on first need; a request waits for a free one within its deadline.
"""

from __future__ import annotations

import logging
import os
import pickle
import resource  # noqa: F401  (the worker's limit: imported here so a platform without it fails early)
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from . import errors
from .allocator import DEFAULT_KEEP_BYTES
from .deadline import DEADLINE_EXCEEDED, Stopped
from .errors import EngineError, LimitError
from .limits import KIND_FACTOR, Limits
from .plans import sweeps

log = logging.getLogger("adserve.engine")

STEP_WORK = 1000  # element operations one interpreter step costs, roughly (its dispatch: ~1 us)
POLL_SECONDS = 0.02  # how often a waiting request looks at its deadline (a cancel is seen this late at most)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds its engine from: the server's backend settings and limits (picklable)."""

    limits: Limits = field(default_factory=Limits)
    cache_dir: str | None = None  # None: the interpreter only
    compile: bool = True
    compile_timeout: float = 300.0
    python: bool = True
    compile_memory: int = 1 << 30  # RLIMIT_AS of its compile workers; 0: none
    memory_bytes: int = 2 << 30  # RLIMIT_AS of the worker process; 0: none
    nice: int = 5
    llvm: bool = True  # plans in the direct-LLVM back end's scope compiled by it (ADSERVE_LLVM_KERNELS)
    malloc_keep_bytes: int = DEFAULT_KEEP_BYTES  # freed memory the worker keeps for reuse (allocator.py); 0: none


def request_cost(fn, compute, points: int) -> float:
    """The cost model's estimate of a request, in element operations (an interpreter step counts STEP_WORK).
    Kinds it does not know count as a gradient (the request's own check words the error)."""
    kinds = {k for k in compute if isinstance(k, str)} if isinstance(compute, (list, tuple)) else set()
    factor = max((KIND_FACTOR.get(k, 4) for k in kinds), default=1)
    if kinds & {"jacobian", "hessian"}:  # one sweep per input element, at most: every float input
        floats = [n for n in fn.input_names if n not in fn.int_inputs]
        factor = max(factor, KIND_FACTOR["hvp"] * max(1, sweeps(fn, "hessian", floats)))
    return (fn.steps * STEP_WORK + fn.work * max(1, points)) * factor


class _Worker:
    """One worker process and its two pipe ends."""

    def __init__(self, spec: WorkerSpec):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        stop_r, stop_w = os.pipe()
        fds = (to_child_r, from_child_w, stop_r)
        # few malloc arenas: each thread's arena reserves 64 MiB of the address space the limit counts
        env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
        self.proc = subprocess.Popen([sys.executable, "-m", "adserve.engine.isolation_worker", *map(str, fds)],
                                     pass_fds=fds, env=env)
        for fd in fds:
            os.close(fd)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        self.stop_conn = Connection(stop_w, readable=False)  # (request number, code, reason): stop that request
        self.known: set = set()  # function ids sent to it
        self.seq = 0  # requests sent
        self.ready = False  # it said so: its imports are done
        self._kill_lock = threading.Lock()  # the pool's close and the request's thread may both kill it
        self._killed = False
        self.send_conn.send_bytes(pickle.dumps(spec, protocol=5))

    def wait_ready(self, timeout: float) -> bool:
        """Whether it said it is ready, waiting at most `timeout` seconds for that (when nothing else reads it)."""
        if not self.ready and self.recv_conn.poll(timeout):
            try:
                self.ready = pickle.loads(self.recv_conn.recv_bytes()) == ("ready",)
            except (EOFError, OSError):
                return False
        return self.ready

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """End the process and close its pipes (once, whoever calls first)."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
            self.signal_kill()
            self.proc.wait()
            for conn in (self.send_conn, self.recv_conn, self.stop_conn):
                conn.close()

    def signal_kill(self) -> None:
        """End the process, leaving its pipes to the thread reading them (it sees the end and calls `kill`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def stop(self, code: str, reason: str) -> None:
        """Ask it to stop the request it computes (its deadline is cancelled with this code and reason)."""
        try:
            self.stop_conn.send_bytes(pickle.dumps((self.seq, code, reason)))
        except OSError:  # it is gone: the wait for its answer sees that
            pass


class WorkerPool:
    """Worker processes for long evaluations (see the module docstring)."""

    COSTS_KEPT = 4096

    def __init__(self, spec: WorkerSpec, size: int = 1, threshold: float = 1e8, grace: float = 0.5):
        self.spec, self.size, self.threshold, self.grace = spec, max(1, size), threshold, grace
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.evaluations = 0
        self.started = 0
        self.replaced: Counter = Counter()  # why workers were killed or lost: deadline, cancelled, memory, died
        self._costs: dict = {}  # (function id, kinds, points) -> request_cost, for `wants`

    def wants(self, fn, compute, points: int) -> bool:
        # the cost depends on the function, the kinds and the points only: kept per (id, kinds, points), so a
        # request does not walk the model again (~3 us); kinds that are not a list or tuple of names are not kept
        try:
            if type(compute) not in (list, tuple):
                raise TypeError
            key = (fn.id, tuple(compute), points)
            cost = self._costs.get(key)
        except (AttributeError, TypeError):
            return request_cost(fn, compute, points) >= self.threshold
        if cost is None:
            cost = request_cost(fn, compute, points)
            if len(self._costs) >= self.COSTS_KEPT:
                self._costs.clear()
            self._costs[key] = cost
        return cost >= self.threshold

    # -- evaluate ------------------------------------------------------------------------
    def evaluate(self, fn, call: dict, meta=None, deadline=None) -> dict:
        """`Engine.evaluate(fn, **call)` in a worker: its result, or the error it raised."""
        worker = self._take(deadline)
        try:
            reply = self._call(worker, fn, call, deadline)
            if reply[0] == "unknown":  # it no longer keeps the function: send it again with its graph
                worker.known.discard(fn.id)
                reply = self._call(worker, fn, call, deadline)
        except BaseException:
            self._retire(worker, None)  # killed already, or a pipe that broke: never reused
            raise
        kind = reply[0]
        if kind == "ok":
            _, result, tier_meta = reply
            if meta is not None:
                meta.update(tier_meta)
                meta["isolated"] = True
            self._give(worker)
            return result
        if kind == "memory":  # it answered, but memory it freed may not go back to the system: a fresh one
            self._retire(worker, "memory")
            raise LimitError(reply[1], code="too_large")
        if kind == "stopped" and not self.grace:  # no grace: a stopped worker is killed, however it stopped
            self._kill(worker, "deadline" if reply[1] == DEADLINE_EXCEEDED else "cancelled")
        else:
            self._give(worker)
        if kind == "stopped":
            _, code, reason, what, progress = reply
            err = Stopped(code, reason, what)
            err.progress = list(progress)
            err._describe()
            raise err
        if kind == "error":
            _, name, code, message, location = reply
            cls = getattr(errors, name, EngineError)
            err = cls.__new__(cls)
            EngineError.__init__(err, message, location, code)
            raise err
        raise RuntimeError(f"isolated worker failed: {reply[1]}")

    def _call(self, worker: _Worker, fn, call, deadline):
        graph = None
        if fn.id not in worker.known:  # its graph form, and its program's lines, which that form cannot carry
            locations: dict = {}
            graph = (fn.export(locations), locations)
        limit = None
        if deadline is not None and deadline.expires != float("inf"):
            # the time it expires, not what is left: the worker may start (imports) or compile before it reads
            # this (time.monotonic is the system's clock, the same in every process on Linux)
            limit = (deadline.expires, deadline.seconds, deadline.label)
        worker.seq += 1
        message = pickle.dumps(("evaluate", worker.seq, fn.id, graph, call, limit), protocol=5)
        try:
            worker.send_conn.send_bytes(message)
        except OSError:  # it died before this request
            self._lost(worker, deadline)
        worker.known.add(fn.id)
        stopped_at = None
        while True:
            # the deadline first: past it and its grace, the worker is killed whatever it may have sent since
            if deadline is not None and deadline.stopped:
                if stopped_at is None:  # it stops at its own deadline; a cancel it is told of
                    stopped_at = time.monotonic()
                    if deadline.code != DEADLINE_EXCEEDED:
                        worker.stop(deadline.code, deadline.reason or "was cancelled")
                if time.monotonic() - stopped_at >= self.grace:  # it did not stop in time: nothing keeps computing
                    self._kill(worker, "deadline" if deadline.code == DEADLINE_EXCEEDED else "cancelled")
                    raise deadline.error()
            if worker.recv_conn.poll(POLL_SECONDS):
                try:
                    reply = pickle.loads(worker.recv_conn.recv_bytes())
                except (EOFError, OSError):
                    self._lost(worker, deadline)
                if reply != ("ready",):
                    return reply
                worker.ready = True

    def _lost(self, worker: _Worker, deadline):
        """The worker died while computing (out of memory at the system's level, a crash)."""
        code = worker.proc.wait()
        self._kill(worker, "died")
        if deadline is not None and deadline.stopped:
            raise deadline.error()
        limit = f" (its memory limit is {_bytes(self.spec.memory_bytes)}, ADSERVE_WORKER_MEMORY_BYTES)" \
            if self.spec.memory_bytes else ""
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise LimitError(f"the worker process evaluating this request ended ({how}); the request probably needs "
                         f"more memory than a worker may use{limit}", code="too_large")

    # -- the pool ------------------------------------------------------------------------
    def _take(self, deadline) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise Stopped("shutting_down", "was not started: the engine is closing")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.poll() is None:
                        self.evaluations += 1
                        return worker
                    self._all.discard(worker)  # it died while idle (killed from outside): a fresh one
                    self.replaced["died"] += 1
                    worker.kill()
                if len(self._all) < self.size:
                    self.evaluations += 1
                    return self._start()
                if deadline is not None and deadline.stopped:
                    raise deadline.error()
                self._cond.wait(POLL_SECONDS if deadline is not None else None)

    def start(self) -> None:
        """Start the workers now (a server's start), so the first long request does not wait for one's imports."""
        with self._cond:
            while not self._closed and len(self._all) < self.size:
                self._idle.append(self._start())
            self._cond.notify_all()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the idle workers have done their imports (at most `timeout` seconds); True if they have.
        For a server's start, before it takes requests."""
        end = time.monotonic() + timeout
        with self._cond:
            idle = list(self._idle)
        return all([w.wait_ready(max(0.0, end - time.monotonic())) for w in idle])

    def _start(self) -> _Worker:
        worker = _Worker(self.spec)
        self._all.add(worker)
        self.started += 1
        return worker

    def _give(self, worker: _Worker) -> None:
        with self._cond:
            closed = self._closed
            if worker in self._all and not closed:
                self._idle.append(worker)
            self._cond.notify()
        if closed:
            worker.kill()

    def _kill(self, worker: _Worker, why: str) -> None:
        log.warning("isolated worker %d killed (%s)", worker.pid, why)
        self._retire(worker, why)

    def _retire(self, worker: _Worker, why: str | None) -> None:
        """Kill `worker` and start its replacement at once (its imports then overlap the wait for the next)."""
        worker.kill()
        with self._cond:
            if worker not in self._all:
                return
            self._all.discard(worker)
            if why is not None:
                self.replaced[why] += 1
            if not self._closed:
                self._idle.append(self._start())
            self._cond.notify()

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in self._all)

    def stats(self) -> dict:
        with self._cond:
            return {"workers": len(self._all), "size": self.size, "threshold": self.threshold,
                    "memory_bytes": self.spec.memory_bytes, "evaluations": self.evaluations,
                    "started": self.started, "replaced": dict(self.replaced)}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = self._all.difference(idle)
            self._all.clear()
            self._cond.notify_all()
        for w in idle:
            w.kill()
        for w in busy:  # a request's thread reads its pipes: it sees the end, and closes them
            w.signal_kill()


def _bytes(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"
