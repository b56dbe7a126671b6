"""Runs on a lower tier that give way to their plan's kernel when it arrives mid-run.

A run on the interpreter or the python tier while the plan's kernel compiles can take seconds where the kernel
takes milliseconds (GradBench's lstm Jacobian: 2.5 s on the interpreter, 4 ms compiled): a caller who sent it
just before the kernel arrived would wait for the slow answer. So such a run is given a check object of its
own: a child of its deadline (deadline.py), read where any deadline is read (the interpreter between
equations and loop iterations, a generated kernel at its stop flag). When the plan's kernel is loaded, the
load's thread stops the children waiting for it with the code SUPERSEDED (`arrived`); the backend sees that code
and runs the plan again, on the kernel (evaluation is pure: nothing of the abandoned run is kept). A stop of the
parent (its time limit, a cancel) reaches the child as before, with the parent's code and message. No thread of
its own, no polling: the stop is the deadline's.
"""

from __future__ import annotations

import contextlib
import threading
import time

from ..deadline import Deadline, Stopped
from .plan import known_meta

SUPERSEDED = "superseded"


def superseded(err: BaseException) -> bool:
    """Whether `err` is a run that gave way to its kernel (run it again), not a stop the caller must see."""
    return isinstance(err, Stopped) and err.code == SUPERSEDED


class Waiting:
    """The runs on lower tiers whose plans' kernels are on their way."""

    RECENT_SECONDS = 0.05  # a plan run on a lower tier this recently is in use: its next run wants the kernel
    MAX_RECENT = 1024

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: dict = {}  # id(check) -> (graph, check)
        self._recent: dict = {}  # plan key -> when a run of it on a lower tier last started (time.monotonic)

    @contextlib.contextmanager
    def run(self, graph, deadline, ready):
        """The check object of one run of `graph` on a lower tier: a child of `deadline` (None: no time limit),
        stopped with SUPERSEDED when the plan's kernel arrives. `ready()` says whether it has arrived already: it
        is asked once the run is registered, so a kernel loaded just before is not missed."""
        check = Deadline(parent=deadline)
        plan = known_meta(graph)
        with self._lock:
            self._runs[id(check)] = (graph, check)
            if plan is not None:
                if len(self._recent) >= self.MAX_RECENT:  # plans whose kernels never came
                    self._recent.clear()
                self._recent[plan.key] = time.monotonic()
        try:
            if ready():
                check.cancel(SUPERSEDED, "gave way to its compiled kernel")
            yield check
        finally:
            with self._lock:
                del self._runs[id(check)]
            check.close()

    def _checks(self, key) -> list:
        with self._lock:
            runs = list(self._runs.values())
        return [check for graph, check in runs if (plan := known_meta(graph)) is not None and plan.key == key]

    def wanted(self, key) -> bool:
        """Whether a run is waiting for the kernel of plan `key`, or one started within RECENT_SECONDS (calls back
        to back, between two of them)."""
        return time.monotonic() - self._recent.get(key, -1e9) < self.RECENT_SECONDS or bool(self._checks(key))

    def arrived(self, key):
        """The kernel of plan `key` is loaded: the runs waiting for it give way."""
        with self._lock:
            self._recent.pop(key, None)
        for check in self._checks(key):
            check.cancel(SUPERSEDED, "gave way to its compiled kernel")
