"""The interpreter's cyclic garbage collector, set for a server process (`ADSERVE_GC_THRESHOLD`).

CPython collects its youngest generation after every 700 allocations (net of frees), the middle one every tenth
time, and every tenth of those, when enough objects have survived, all of them: a full collection, which walks
every container object the process holds. After start-up that is the modules and objects of NumPy, numba,
llvmlite, SciPy, grpc, FastAPI and the app, about 84,000 objects, and a full collection took 23-30 ms here. A
new function's registration and plans allocate tens of thousands of objects (a 1,000-op function: about 15,000
IR values and equations, and the Python objects of the plans that differentiate it), so its first answer often
ran one: `Service.evaluate` of new 1,000-op functions took 73-186 ms, the slow ones those with a full collection.

So once the server is built, `tune` freezes what start-up made (`gc.freeze`: those objects are never walked
again, and never freed: they live as long as the process anyway) and collects the youngest generation every
`threshold` allocations instead of 700: the same first answers took 74-90 ms. Request-local cycles are freed a
little later, in passes over at most `threshold` young objects.
"""

from __future__ import annotations

import gc

DEFAULT_THRESHOLD = 10_000


def tune(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Freeze the objects made so far and collect the youngest generation every `threshold` allocations (the older
    generations every tenth time, as CPython's defaults); whether anything changed (0: Python's defaults, left
    as they are). The settings are the process's: call it once the server is built, not per request."""
    if threshold <= 0:
        return False
    gc.collect()  # what start-up left as garbage goes before the rest is frozen
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
    return True
