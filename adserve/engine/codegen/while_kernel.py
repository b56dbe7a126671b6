"""A `while` loop that runs long on the interpreter finishes in generated code.

The interpreter pays tens of microseconds of dispatch per iteration of a small loop body, so a loop that runs
to ADSERVE_MAX_WHILE_ITERATIONS (100,000) would take seconds there before its `while_limit`. When a loop has
run `ESCALATE_AFTER` iterations on the interpreter and its body is scalar work (where the python tier's
generated code is the faster one, as python_tier.py estimates), the interpreter hands the loop, from the
carries it has reached, to that code: a graph of just this `while` (its remaining iteration budget, the tape
too in reverse mode), written by the kernel generator and run by CPython. The kernels are kept by their
plan's key (a loop asked again costs no code generation). Any failure of this path (a domain error, an
unsupported case) leaves the loop on the interpreter, from where it was; so does a generator still loading
(it loads in a thread the first time: importing numba takes a second or more, which no deadline could stop).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

ESCALATE_AFTER = 2_000
PY_STEP_SECONDS, PY_ELEMENT_SECONDS = 0.05e-6, 0.2e-6  # python_tier.PythonTier's per-run estimate


def _mini_graph(cond, body, n_consts, max_iter, tape, every=1):
    """The graph of one `while` over its per-point inputs (consts, then carries); `every`: its tape's stride."""
    from ..builder import Builder
    b = Builder()
    ins = [b.input(v.shape) for v in cond.inputs]
    outs = b.emit("while", ins, {"cond": cond, "body": body, "n_consts": n_consts, "max_iter": max_iter,
                                 "tape": tape, "every": every})
    return b.build(outs)


@functools.lru_cache(maxsize=64)
def _kernel(key: str, text: str):
    from .python import PythonKernel
    return PythonKernel(text, f"while {key}")


class _Generator:
    """The code generator (codegen.module, which loads numba: a second or more) loads in a thread of its own the
    first time a loop could use it. A request never waits for it: until it is there, loops stay on the
    interpreter, where the deadline stops them (an import is not stoppable)."""

    def __init__(self):
        self.ready = threading.Event()
        self._started = threading.Lock()

    def loaded(self) -> bool:
        if not self.ready.is_set() and self._started.acquire(blocking=False):
            threading.Thread(target=self._load, name="adserve-codegen-load", daemon=True).start()
        return self.ready.is_set()

    def _load(self):
        try:
            from . import module  # noqa: F401
        except (ImportError, MemoryError, OSError):  # it cannot load here (a worker's memory limit): never
            return
        self.ready.set()


_GENERATOR = _Generator()


def generator_loaded(timeout: float | None = 0.0) -> bool:
    """Whether loops can be handed to generated code now, waiting up to `timeout` seconds for the generator to
    load (None: as long as it takes); the first call starts loading it."""
    return _GENERATOR.loaded() or _GENERATOR.ready.wait(timeout)


def pays(cond, body, n_consts, max_iter, B) -> bool:
    """Whether generated code beats the interpreter on this loop's remaining `max_iter` iterations (False while
    the code generator is still loading)."""
    if not _GENERATOR.loaded():
        return False
    from ..backend.interpreter import interpreter_floor
    from ..backend.plan import plan_meta
    plan = plan_meta(_mini_graph(cond, body, n_consts, max_iter, False))
    return B * (PY_STEP_SECONDS * plan.steps + PY_ELEMENT_SECONDS * plan.work) < 0.5 * interpreter_floor(plan, B)


def finish(args, cond, body, n_consts, max_iter, tape, deadline, every=1):
    """Run the loop from `args` (consts, then the carries reached; batched) for at most `max_iter` more
    iterations in generated code: the kernel's outputs (carries, and with `tape` the count and the stacked
    carries of every `every`-th iteration), or None when this path does not apply. A loop past `max_iter`
    raises the kernel's `while_limit` EvaluationError."""
    from ..backend.plan import call_kernel, plan_meta
    from .module import kernel_module
    from .python import Unsupported
    from .templates import interpreter_only
    graph = _mini_graph(cond, body, n_consts, max_iter, tape, every)
    if interpreter_only(graph):
        return None
    plan = plan_meta(graph)
    try:
        k = _kernel(plan.key, kernel_module(graph, f"while {plan.key}", python=True))
    except Exception:  # noqa: BLE001  (no code for it: the interpreter goes on)
        return None
    B = max([a.shape[0] for a in args], default=1)
    ins = [np.ascontiguousarray(a, dtype=np.float64) for a in args]
    try:
        return list(call_kernel(k.run, k.ERRORS, plan, B, ins, deadline, k.LOOPS, "python"))
    except Unsupported:  # a domain error NumPy's error model answers: the interpreter goes on
        return None
