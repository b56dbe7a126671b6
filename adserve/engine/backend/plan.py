"""What a backend knows of a plan graph besides the graph: its kernel's cache key, output shapes and cost,
and how a generated kernel (numba's or the python tier's) is called on it.

Keys are the plan's structural hash plus the code generator's version, so a changed generator never loads
stale code; a parallel batch variant is a module of its own, `<key>_par<version>`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..deadline import DEADLINE_EXCEEDED, FLAG_SLOTS, STOPPED_STATUS, Stopped
from ..errors import EvaluationError
from ..ir import canonical_text
from ..limits import cost
from .interpreter import Fresh, Ready

_F64 = np.dtype(np.float64)


@dataclass(frozen=True)
class PlanMeta:
    """What running a plan needs besides its graph, computed once per graph and kept on it."""
    key: str             # the kernel's cache key: the plan's structural hash and the generator's version
    out_shapes: tuple    # per output, its shape without the batch axis
    steps: float         # equations the interpreter dispatches per run (loops counted by trips)
    work: float          # element operations per point (limits.cost)
    one_point: tuple = field(init=False, repr=False, compare=False)  # the outputs' shapes with a batch of 1

    def __post_init__(self):
        object.__setattr__(self, "one_point", tuple((1, *s) for s in self.out_shapes))

    @property
    def parallel_key(self) -> str:
        """The parallel batch variant's cache key (a module of its own)."""
        from ..codegen.module import PARALLEL_VERSION
        return f"{self.key}_par{PARALLEL_VERSION}"


META_ATTR = "_adserve_plan_meta"  # where a graph keeps its PlanMeta (absent until the plan is introduced)


def plan_meta(graph) -> PlanMeta:
    meta = graph.__dict__.get(META_ATTR)
    if meta is None:
        from ..codegen.module import CODEGEN_VERSION
        text = f"codegen {CODEGEN_VERSION}\n" + canonical_text(graph)
        meta = PlanMeta(hashlib.sha256(text.encode()).hexdigest()[:32], tuple(tuple(a.shape) for a in graph.outputs),
                        *cost(graph))
        object.__setattr__(graph, META_ATTR, meta)  # graphs are frozen dataclasses; this is a cache, not structure
    return meta


def known_meta(graph) -> PlanMeta | None:
    """The plan's meta if it was computed already (a plan run before), else None, without computing it."""
    return graph.__dict__.get(META_ATTR)


def plan_key(graph) -> str:
    return plan_meta(graph).key


def is_parallel_key(key: str) -> bool:
    return "_par" in key


def serial_key(key: str) -> str:
    """The serial kernel's key of a parallel variant's key."""
    return key.split("_par")[0]


# the stop array of runs without a deadline: its flag is never set, and a kernel writes only once stopped
_NO_STOP = np.zeros(FLAG_SLOTS, np.int64)


def call_kernel(kernel, errors, plan: PlanMeta, B: int, args, deadline=None, loops=(), tier="compiled") -> Fresh:
    """Run a generated kernel into fresh outputs of (B, ...); a nonzero status is the index of its error message,
    or STOPPED: the kernel saw its `deadline`'s flag (`Stopped`, saying where: `loops` is the module's LOOPS)."""
    # kernels take C-ordered float64 inputs, read-only or not (see codegen/module.py), and assume them aligned
    # (numba types every array aligned; a view at an odd offset of a binary body is not): only others are copied
    # (`Ready` arguments were checked where they were made)
    ins = args if type(args) is Ready else [a if a.dtype == _F64 and a.flags.c_contiguous and a.flags.aligned
                                            else np.array(a, dtype=np.float64, order="C") for a in args]
    outs = Fresh(map(np.empty, plan.one_point if B == 1 else [(B, *shape) for shape in plan.out_shapes]))
    stop = _NO_STOP if deadline is None else deadline.flag
    status = kernel(B, stop, *ins, *outs)
    if status:
        if status == STOPPED_STATUS:
            raise stopped_in_kernel(deadline, stop, B, loops, tier)
        message = errors[status - 1]
        if message.startswith("out of memory"):  # an LLVM kernel's workspace (the engine answers too_large)
            raise MemoryError(message)
        raise EvaluationError(message, code="while_limit" if "ADSERVE_MAX_WHILE_ITERATIONS" in message
                              else "index_out_of_range")
    return outs


def stopped_in_kernel(deadline, stop, B, loops, tier) -> Stopped:
    """The `Stopped` of a kernel that returned STOPPED: where it was, from its stop array (see codegen/runtime.py)."""
    err = deadline.error() if deadline is not None else Stopped(DEADLINE_EXCEEDED, "was stopped")
    point, loop, done = (int(x) for x in stop[1:4])
    stop[1:] = 0  # the kernel has returned (a parallel one's chunks too): clean for the deadline's next kernel
    if 0 < loop <= len(loops):
        length, loc = loops[loop - 1]
        err.inside("loop", done, length, loc)
    return err.inside("point", point, B).inside("compiled", tier)
