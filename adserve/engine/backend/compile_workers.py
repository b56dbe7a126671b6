"""Warm compile workers: processes that compile kernel modules one after another, kept for a while between compiles.

A compile worker (`python -m adserve.engine.codegen.worker --serve`) spends about 1 s of CPU on Python's, NumPy's
and numba's start-up before its first kernel: more than a small kernel's own compile. So a worker is kept after
a compile and given the next one, and closed after `idle_seconds` with nothing to do. Each compile keeps the
guarantees of a worker of its own: it is killed past its time limit, or `MEMORY_GRACE` seconds after its address
space came within 2% of the limit (numba at its limit may retry allocations for minutes instead of failing), and
a worker that failed in any way is never used again. A worker retires after a compile that left it holding more
than half its address-space limit (`RETIRE_FRACTION`), or after `MAX_COMPILES`, so the next compile always has
room; a compile that ran out of memory in a worker that had compiled before is tried once in a fresh one.

A store may keep `spare` workers started ahead (`Workers.ready`): a new function's first kernel then does not wait
for a process start (0.3-0.5 s, more when the machine is busy, which is when a kernel matters most). A spare that
has never compiled is kept however long it is idle: it holds only Python's, NumPy's and the back end's start-up
(`prepare`, the back end it sets up before it says it is ready). One that retired or was closed for idling is
replaced after its compile, never during one (two processes starting would share the core with the compile).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

MEMORY_GRACE = 5.0  # seconds a compile worker at its memory limit has to finish or fail by itself
RETIRE_FRACTION = 0.5
MAX_COMPILES = 64
UNLIMITED_RETIRE_BYTES = 4 << 30  # the retiring point of a worker with no address-space limit


class Worker:
    """One compile worker process; `compile` hands it a path and waits for the result."""

    def __init__(self, memory: int, prepare: str | None = None, nice: int | None = None):
        """`nice`: how much it lowers its CPU priority (None: `ADSERVE_COMPILE_NICE`, else worker.NICE)."""
        from ..codegen.worker import MEMORY_ENV, NICE_ENV, PREPARE_ENV
        # a new process (fork and exec, no Python code run in between): OpenMP threads of this process
        # are never forked into it
        env = {**os.environ, MEMORY_ENV: str(memory)}
        env.pop(PREPARE_ENV, None)
        if prepare:
            env[PREPARE_ENV] = prepare
        if nice is not None:
            env[NICE_ENV] = str(nice)
        self.proc = subprocess.Popen([sys.executable, "-m", "adserve.engine.codegen.worker", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.memory = memory
        self.compiles = 0
        self.address_space = 0
        self.idle_since = time.monotonic()
        self._started = False  # its first line (DONE, once numba is imported) not read yet
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name="adserve-compile-output", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # the worker ended

    def compile(self, path: str, timeout: float, quick: str | None = None) -> tuple[str, str | None, int | None]:
        """(its output, why it was stopped or None, the exit status if it ended). The worker stays usable when
        the last two are None. `quick`: the file for an LLVM module's quick kernel (llvm_kernel.QUICK_LINES)."""
        from ..codegen.worker import DONE, QUICK_TAB, address_space
        try:
            self.proc.stdin.write(path + (QUICK_TAB + quick if quick else "") + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died before this path (killed while idle): its output says how
            pass
        out = []
        started, near = time.monotonic(), None
        while True:
            try:
                line = self._lines.get(timeout=1.0)
            except queue.Empty:
                now = time.monotonic()
                if near is None and self.memory and address_space(self.pid) >= 0.98 * self.memory:
                    near = now
                why = ("timeout" if now - started >= timeout else
                       "memory" if near is not None and now - near >= MEMORY_GRACE else None)
                if why:
                    self.kill()
                    return "".join(out) + self._rest(), why, self.proc.wait()
                continue
            if line is None:
                return "".join(out), None, self.proc.wait()
            if line.startswith(DONE):
                if not self._started:  # a new worker says it is ready, then answers the path
                    self._started = True
                    continue
                self.compiles += 1
                self.address_space = int(line.split()[1])
                self.idle_since = time.monotonic()
                return "".join(out), None, None
            out.append(line)

    def _rest(self) -> str:
        self.proc.wait()
        rest = []
        while (line := self._lines.get()) is not None:
            rest.append(line)
        return "".join(rest)

    def spent(self) -> bool:
        """Whether it should take no more compiles: it ended, compiled MAX_COMPILES, or holds too much memory."""
        limit = self.memory * RETIRE_FRACTION if self.memory else UNLIMITED_RETIRE_BYTES
        return self.proc.poll() is not None or self.compiles >= MAX_COMPILES or self.address_space > limit

    def close(self):
        """Ends it: standard input closed, it exits after what it is doing (killed if it does not within 5 s)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass


class Workers:
    """Warm workers of one kernel store: `take` one (an idle one, or a new one), `give` it back after a compile."""

    def __init__(self, memory: int, idle_seconds: float = 60.0, spare: int = 0, prepare: str | None = None,
                 nice: int | None = None):
        """`spare`: workers kept started ahead once `ready` is called; `prepare`: the back end a worker sets up at
        its start ("llvm", or None); `nice`: how much its workers lower their CPU priority (None: the default,
        `ADSERVE_COMPILE_NICE` or worker.NICE)."""
        self.memory = memory
        self.nice = nice
        self.idle_seconds = idle_seconds
        self.spare = spare
        self.prepare = prepare
        self._idle: list[Worker] = []
        self.busy: set[Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._timer = None

    def take(self, fresh: bool = False) -> Worker:
        """A worker for one compile (`fresh`: a new one)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the compile workers are closed")
            worker = None
            while self._idle and not fresh:
                w = self._idle.pop()
                if w.proc.poll() is None:
                    worker = w
                    break
            worker = worker or Worker(self.memory, self.prepare, self.nice)
            self.busy.add(worker)
            return worker

    def give(self, worker: Worker):
        """Back after a compile: kept idle if it is still good, closed otherwise."""
        with self._lock:
            self.busy.discard(worker)
            keep = not self._closed and not worker.spent()
            if keep:
                self._idle.append(worker)
                self._schedule()
            else:
                self._replenish()
        if not keep:
            threading.Thread(target=worker.close, daemon=True).start()

    def ready(self):
        """Start workers until `spare` are idle: the next compiles need not wait for a process to start."""
        with self._lock:
            self._replenish()

    def _replenish(self):  # under the lock
        while not self._closed and len(self._idle) < self.spare:
            self._idle.append(Worker(self.memory, self.prepare, self.nice))

    def _schedule(self):
        if self._timer is None:
            self._timer = threading.Timer(self.idle_seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self):
        """Close the workers idle for `idle_seconds` (a spare that never compiled stays), start a spare in place of
        the last closed; look again while some that compiled are left."""
        now, gone = time.monotonic(), []
        with self._lock:
            self._timer = None
            keep = []
            for w in self._idle:
                # a spare that never compiled holds nothing of a kernel's: kept
                (gone if now - w.idle_since >= self.idle_seconds and w.compiles else keep).append(w)
            self._idle = keep
            if gone:
                self._replenish()
            if any(w.compiles for w in self._idle) and not self._closed:
                self._schedule()
        for w in gone:
            w.close()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in [*self._idle, *self.busy]]

    def shutdown(self):
        """Kill every worker, idle or busy (a compile in progress is abandoned)."""
        with self._lock:
            self._closed = True
            workers = [*self._idle, *self.busy]
            self._idle = []
            if self._timer is not None:
                self._timer.cancel()
        for w in workers:
            w.kill()
        for w in workers:
            w.proc.wait()  # reaped: no zombie left behind
