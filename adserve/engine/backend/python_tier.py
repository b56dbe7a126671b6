"""The python tier: a plan's generated kernel code run by CPython, until numba's kernel is loaded.

Cost per run, from the benchmarks' plans here (conservative: a scalar op took 25-50 ns, an array element
90-220 ns): PY_STEP_SECONDS per equation and PY_ELEMENT_SECONDS per element operation and point. The tier is
used where that is below PYTHON_MARGIN of the interpreter's floor (`interpreter_floor`): a new 1,000-op
function's value and gradient, 0.1 ms against 2.4 ms; never Helmholtz or Rosenbrock at n >= 10, whose array
work NumPy does faster. The kernel is built when a plan runs a second time (in the background: its second
answer is still the interpreter's). A plan whose runs meet domain errors (the interpreter answers those)
PYTHON_DECLINES times goes back to the interpreter.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from .interpreter import interpreter_floor
from .plan import plan_meta

log = logging.getLogger("adserve.engine")


class PythonTier:
    PY_STEP_SECONDS = 0.05e-6
    PY_ELEMENT_SECONDS = 0.2e-6
    PYTHON_MARGIN = 0.5
    PYTHON_DECLINES = 3
    PYTHON_KEPT = 512  # python-tier kernels kept at once (each is a few hundred KB of bytecode for 1,000 ops)

    def __init__(self, store, stats, submit, quiet, enabled=True):
        """`store`: the `KernelStore` (a plan whose numba kernel is loaded, or on disk, gets no python code).
        `submit(fn, *args)`: runs a job in the background. `quiet()`: waits (a while at most) for a moment with no
        request running, as a plan's introduction does."""
        self.store, self.stats, self._submit, self._quiet = store, stats, submit, quiet
        self.enabled = enabled
        self._kernels: OrderedDict = OrderedDict()  # plan key -> PythonKernel, while no numba kernel is loaded
        self._asked: set = set()
        self._lock = threading.Lock()

    def seconds(self, plan, B) -> float:
        """The estimated time of one run of the plan's python-tier kernel on a batch of B."""
        return B * (self.PY_STEP_SECONDS * plan.steps + self.PY_ELEMENT_SECONDS * plan.work)

    def pays(self, plan, B) -> bool:
        return self.seconds(plan, B) < self.PYTHON_MARGIN * interpreter_floor(plan, B)

    def kernel(self, graph, plan, B):
        """The plan's python-tier kernel to run for a batch of B, or None (the interpreter's turn). The first
        time a plan without one could use one, it is built in the background."""
        k = self._kernels.get(plan.key)
        if k is None and self.enabled and plan.key not in self._asked and self.pays(plan, B):
            # asked for on the plan's second run, not its first: a burst of new functions asked once each builds
            # nothing (the Python code costs tens of milliseconds of the interpreter's lock to write and compile)
            self._asked.add(plan.key)
            self._submit(self._build_safely, graph)
        if k is not None and k.failures < self.PYTHON_DECLINES and self.pays(plan, B):
            return k
        return None

    def declined(self, k, plan, why):
        """The kernel `k` met a domain error: the interpreter answers; after PYTHON_DECLINES, always."""
        k.failures += 1
        self.stats.python_declined += 1
        log.debug("python tier declined plan %s: %s", plan.key, why)

    def drop(self, key):
        """Plan `key`'s numba kernel is loaded: its python-tier kernel is no longer needed."""
        with self._lock:
            self._kernels.pop(key, None)

    def _build(self, graph):
        """Build the plan's python-tier kernel, unless a numba kernel is (about to be) loaded."""
        plan = plan_meta(graph)
        if plan.key in self.store.ready or self.store.on_disk(plan.key):
            return
        from ..codegen.templates import interpreter_only
        if interpreter_only(graph):  # no code for it on any tier (see KernelStore.request)
            return
        self._quiet()
        if plan.key in self.store.ready:
            return
        from ..codegen.module import kernel_module
        from ..codegen.python import PythonKernel
        k = PythonKernel(kernel_module(graph, f"plan {plan.key}", python=True), plan.key)
        with self._lock:  # `drop` takes the lock after the store marks the key ready: never kept past its load
            if plan.key in self.store.ready:
                return
            self._kernels[plan.key] = k
            while len(self._kernels) > self.PYTHON_KEPT:
                self._kernels.popitem(last=False)
        self.stats.python_kernels += 1

    def _build_safely(self, graph):
        try:
            self._build(graph)
        except Exception as e:  # never a request's problem: the plan stays on the interpreter
            log.warning("no python-tier kernel: %s: %s", type(e).__name__, e)
