"""Deadlines: a time budget for one evaluation, that another thread may also cancel.

`Deadline(seconds)` starts counting at once (`None`: no time limit, only
cancellation). The work checks `deadline.stopped`, one attribute read, between
equations and loop iterations; it is set by `cancel()` (a client gone, a
shutdown: any thread) or, when the time is up, by one watchdog thread shared by
every deadline of the process, so the hot path never reads a clock. `check()`
raises `Stopped` (an `EngineError`, code `deadline_exceeded` or the code given
to `cancel`); the places it passes through on its way out add how far the work
got (`Stopped.progress`).

A deadline made with `parent=` is stopped when its parent is, and never
outlives it: a request's token (cancelled when its client leaves) parents the
budget of each evaluation the request makes. `close()` (or leaving a `with`
block) says the work is over: the watchdog forgets it and its parent stops
telling it.

Compiled kernels cannot read an attribute: they read `flag`, a small int64 array made on first use, whose
first element becomes 1 when the deadline stops (the other FLAG_SLOTS are where a kernel that stopped says
how far it got: see codegen/runtime.py).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref

import numpy as np

from .errors import EngineError

DEADLINE_EXCEEDED = "deadline_exceeded"
FLAG_SLOTS = 4  # a kernel's stop array: the flag, then where it stopped (point, loop, iterations done)
STOPPED_STATUS = -1  # what a compiled kernel returns when it stopped at its flag (errors are k > 0)


class Stopped(EngineError):
    """The work was stopped: its deadline passed (`deadline_exceeded`) or it was cancelled (the code given).

    `progress` lists where it stopped, innermost first: ("loop", iterations done, length, location) and
    ("plan", operations done, operations); from compiled code, ("point", the batch point, batch size) and
    ("compiled", the tier); `message` says it in words, after `what` (e.g. the function)."""

    def __init__(self, code: str, reason: str, what: str = "the evaluation"):
        self.reason, self.what, self.progress = reason, what, []
        super().__init__("", code=code)
        self._describe()

    def inside(self, *where) -> "Stopped":
        self.progress.append(where)
        self._describe()
        return self

    def placed(self, loc) -> "Stopped":
        """The location of the equation that was running: the loop's, when a loop recorded its count last."""
        if self.progress and self.progress[-1][0] == "loop" and self.progress[-1][3] is None and loc is not None:
            self.progress[-1] = (*self.progress[-1][:3], loc)
            self._describe()
        return self

    def about(self, what: str) -> "Stopped":
        self.what = what
        self._describe()
        return self

    def _describe(self) -> None:
        loops = [w for w in self.progress if w[0] == "loop"]
        plans = [w for w in self.progress if w[0] == "plan"]
        parts = []
        if loops:  # the outermost loop: its count is what a person can relate to the program
            _, done, length, loc = loops[-1]
            where = f" (the loop at {_place(loc)})" if loc else ""
            of = "" if length is None else f" of {length:,}"  # a while loop's count is known only as it runs
            parts.append(f"after {done:,}{of} loop iterations{where}")
        if plans and plans[-1][2] > 1:
            _, done, total = plans[-1]
            parts.append(f"at operation {done + 1:,} of {total:,}")
        for kind, *what in self.progress:
            if kind == "point" and what[1] > 1:
                parts.append(f"at point {what[0] + 1:,} of {what[1]:,}")
            elif kind == "compiled":
                parts.append(f"inside compiled code ({what[0]})")
        how = f"; it stopped {', '.join(parts)}" if parts else ""
        self.message = f"{self.what} {self.reason}{how}"
        self.args = (self.message,)


def _place(loc) -> str:
    if isinstance(loc, dict):
        if "line" in loc:
            return f"line {loc['line']}" + (f", column {loc['column']}" if "column" in loc else "")
        if "node" in loc:
            return f"node {loc['node']!r}"
    return str(loc)


class Deadline:
    __slots__ = ("__weakref__", "_children", "_closed", "_flag", "_lock", "_queued", "code", "expires", "label",
                 "reason", "seconds", "stopped")

    def __init__(self, seconds: float | None = None, label: str = "", parent: Deadline | None = None):
        now = time.monotonic()
        self.seconds, self.label = seconds, label
        self.expires = float("inf") if seconds is None else now + max(0.0, seconds)
        self.stopped = False
        self.code = self.reason = None
        self._closed = self._queued = False
        self._children: weakref.WeakSet | None = None
        self._flag: np.ndarray | None = None
        self._lock = threading.Lock()
        if parent is not None:
            if parent.expires < self.expires:  # the parent's time limit is the tighter one: say so when it ends
                self.expires, self.seconds, self.label = parent.expires, parent.expires - now, parent.label
            parent._adopt(self)
        if self.expires != float("inf") and not self.stopped:
            _WATCHDOG.add(self)

    def remaining(self) -> float | None:
        """Seconds left (0 once stopped), None without a time limit."""
        if self.stopped:
            return 0.0
        return None if self.expires == float("inf") else max(0.0, self.expires - time.monotonic())

    def cancel(self, code: str = "cancelled", reason: str = "was cancelled") -> None:
        """Stop the work (from any thread): its next check raises `Stopped(code)`. The first stop wins."""
        with self._lock:
            if self.stopped:
                return
            self.code, self.reason, self.stopped = code, reason, True
            if self._flag is not None:
                self._flag[0] = 1
            children = list(self._children or ())
        for child in children:
            child.cancel(code, reason)

    @property
    def flag(self) -> np.ndarray:
        """The stop array compiled kernels read (made on first use): flag[0] is 1 once the deadline is stopped."""
        flag = self._flag
        if flag is None:
            with self._lock:  # against a cancel in between: it sets the flag it finds, or we see `stopped`
                if self._flag is None:
                    flag = np.zeros(FLAG_SLOTS, np.int64)
                    flag[0] = 1 if self.stopped else 0
                    self._flag = flag
                flag = self._flag
        return flag

    def _expire(self) -> None:
        took = f" of {self.seconds:g} s" if self.seconds is not None else ""
        self.cancel(DEADLINE_EXCEEDED, f"ran past its time limit{took}" + (f" ({self.label})" if self.label else ""))

    def check(self) -> None:
        """Raise `Stopped` when cancelled or past the time (reads the clock: for places off the hot path)."""
        if not self.stopped and time.monotonic() >= self.expires:
            self._expire()
        if self.stopped:
            raise self.error()

    def error(self) -> Stopped:
        return Stopped(self.code or DEADLINE_EXCEEDED, self.reason or "was stopped")

    def close(self) -> None:
        _WATCHDOG.forget(self)

    def _adopt(self, child: Deadline) -> None:
        with self._lock:
            if not self.stopped:
                if self._children is None:
                    self._children = weakref.WeakSet()
                self._children.add(child)
                return
        child.cancel(self.code, self.reason)

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Watchdog:
    """One daemon thread that sets `stopped` on each deadline when its time comes (a heap by expiry).

    Closed deadlines stay in the heap until they come up or until they are half of it (then it is rebuilt),
    so closing costs O(1) and the heap stays within twice the deadlines open."""

    def __init__(self):
        self._heap: list = []
        self._closed = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, d: Deadline) -> None:
        with self._cond:
            d._queued = True
            heapq.heappush(self._heap, (d.expires, next(self._seq), d))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="adserve-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is d:
                self._cond.notify()

    def forget(self, d: Deadline) -> None:
        with self._cond:
            if d._closed:
                return
            d._closed = True
            if not d._queued:
                return
            self._closed += 1
            if self._closed * 2 > len(self._heap) > 64:
                self._heap = [e for e in self._heap if not e[2]._closed]
                heapq.heapify(self._heap)
                self._closed = 0

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    _, _, d = heapq.heappop(self._heap)
                    d._queued = False
                    if d._closed:
                        self._closed -= 1
                    else:
                        due.append(d)
                for d in due:
                    d._expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
