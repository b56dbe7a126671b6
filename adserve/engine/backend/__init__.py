"""Execution tiers: who runs a plan graph.

* `interpreter`: the NumPy reference interpreter; answers at once, any graph (interpreter.py).
* `python`: the plan's generated kernel code run by CPython, for scalar-heavy plans while numba compiles
  (python_tier.py).
* `numba`: generated source compiled by numba in worker processes, kept on disk, loaded here (store.py).
* `numba-parallel`: the plan's batch variant (chunks of the batch in a numba `prange`), compiled on demand
  once the serial kernel takes long enough on a batch for threads to pay; it needs a thread-safe threading
  layer (threads.py).

`Interpreter` runs everything on the first tier; `Tiered` (tiered.py) runs each plan on the fastest tier by
timing (policy.py) once its kernel is ready.
"""

from .interpreter import INTERPRETER, NUMBA, PARALLEL, PYTHON, Fresh, Interpreter, Ready, TierStats, stats_dict
from .plan import PlanMeta, plan_key, plan_meta
from .policy import Choice, TimingPolicy
from .threads import default_workers, parallel_layer, usable_cores
from .tiered import Tiered

__all__ = ["INTERPRETER", "NUMBA", "PARALLEL", "PYTHON", "Choice", "Fresh", "Interpreter", "PlanMeta", "Ready",
           "TierStats", "Tiered", "TimingPolicy", "default_workers", "parallel_layer", "plan_key", "plan_meta",
           "stats_dict", "usable_cores"]
