"""The tiers' names and counters, and the tier every backend starts from: the NumPy interpreter.

`Interpreter` answers at once, for any graph, and is the tier a deadline can
stop (between operations and loop iterations); `Tiered` (tiered.py) extends it.
`TierStats` counts what a backend did; `stats_dict` is its one plain-data form
(what `Engine.stats` and the metrics read). `interpreter_floor` is the least
time the interpreter can take on a plan, which the python tier and the timing
policy compare against.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

from ..interpreter import run as interpret

INTERPRETER, PYTHON, NUMBA, PARALLEL = "interpreter", "python", "numba", "numba-parallel"

# the interpreter's least cost per equation run and per element operation (measured on the benchmarks:
# 2.4-40 us, 0.27-1.6 ns)
STEP_SECONDS = 1.5e-6
ELEMENT_SECONDS = 0.2e-9


def interpreter_floor(plan, B) -> float:
    """The least time the interpreter takes on `plan` (a `PlanMeta`) for a batch of B."""
    return STEP_SECONDS * plan.steps + ELEMENT_SECONDS * plan.work * B


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
    compile_retries: int = 0   # compiles tried again after their worker was killed (once per plan)
    disk_loads: int = 0
    preloaded: int = 0  # of disk_loads, loaded at start by `Tiered.preload`
    runs: dict = field(default_factory=_tiers)
    # (plan, batch size class) pairs whose tier was chosen by timing, by the tier first chosen
    chosen: dict = field(default_factory=_choice_tiers)
    switches: int = 0          # choices changed later by fresh timings (a probe of another tier, or a new tier)
    probes: int = 0            # runs on a tier other than the chosen one, to re-time it
    parallel_compiles: int = 0   # of compiles, parallel batch variants
    llvm_compiles: int = 0       # of compiles, kernels the direct-LLVM back end built (the others: numba)
    llvm_compile_seconds: float = 0.0  # of compile_seconds, theirs
    optimised: int = 0           # large LLVM kernels whose optimised compile replaced their quick one
    optimise_failures: int = 0   # ... whose optimised compile failed (their quick kernel stays)
    parallel_compile_seconds: float = 0.0  # of compile_seconds, theirs
    parallel_failures: int = 0   # parallel variants that failed, timed out or could not load (plans stay serial)
    parallel_disabled: str = ""  # why parallel variants are off in this process ("" while they are not)
    python_kernels: int = 0      # plans given a python-tier kernel (scalar-heavy plans, while numba compiles)
    python_declined: int = 0     # python-tier runs that met a domain error and were answered by the interpreter
    # compiles that failed, by reason: timeout, killed (the worker died of a signal), error (it exited non-zero),
    # io (the module could not be written: a read-only or full cache directory), load (it compiled, but did not load)
    compile_failure_reasons: dict = field(default_factory=dict)
    load_failures: int = 0       # kernels on disk that did not load (corrupt or truncated): compiled again


def stats_dict(stats: TierStats) -> dict:
    """A plain copy (its dicts copied too), safe to read while the backend keeps counting."""
    return dataclasses.asdict(stats)


class Fresh(list):
    """Outputs written into arrays allocated for this run alone: nothing else refers to them,
    so the caller may hand them out without a copy."""


class Ready(list):
    """A plan's arguments each known to be what a kernel takes as it is (float64, C-ordered, aligned), checked
    where they were made (inputs.py), and `points`, their batch size (set by the maker): a kernel call checks none
    of them again."""
    __slots__ = ("points",)


class Interpreter:
    name = "interpreter"

    def __init__(self):
        self.stats = TierStats()

    def run(self, graph, args, meta=None, deadline=None):
        """The plan's outputs; with a `deadline` (deadline.py) it stops, raising `Stopped`, once that is stopped."""
        self.stats.runs[INTERPRETER] += 1
        if meta is not None:
            meta["backend"] = INTERPRETER
        return interpret(graph, args) if deadline is None else interpret(graph, args, deadline)

    def busy(self):
        """Around a whole call (parsing, building plans, running): background work waits for its end."""
        return contextlib.nullcontext()

    def settle(self, timeout=600.0) -> bool:
        """No background work here: always settled."""
        return True

    def source(self, graph, title, parallel=False):
        from ..codegen.module import kernel_module
        return kernel_module(graph, title, parallel=parallel)

    def preload(self, limit: int = 32):
        """Nothing to preload: None (`Tiered.preload` returns its thread)."""
        return None

    def shutdown(self):
        pass
