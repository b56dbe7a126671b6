"""Compile one generated module in a process of its own: `python -m adserve.engine.codegen.worker PATH`.

Importing the module compiles its kernel (eager signature) and writes numba's
cache beside it. A separate process can be timed out and killed, and numba's
global compile lock never stalls the server. The worker runs at a lowered CPU
priority (`NICE`, or `ADSERVE_COMPILE_NICE`), so a background compile takes
only CPU time that requests leave idle.
"""

import importlib.util
import os
import sys
import time

NICE = 10


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache locates functions through sys.modules
    spec.loader.exec_module(module)
    return module


def threadsafe_layer():
    """Ask numba for a thread-safe threading layer (OpenMP or TBB, never the workqueue) unless one was configured;
    set before the first parallel kernel is compiled or loaded. The server process does the same."""
    from numba import config
    if str(config.THREADING_LAYER).lower() == "default":
        config.THREADING_LAYER = "threadsafe"


def main():
    path = sys.argv[1]
    name = path.rsplit("/", 1)[-1][:-3]
    try:
        os.nice(int(os.environ.get("ADSERVE_COMPILE_NICE", NICE)))
    except (OSError, ValueError):
        pass
    threadsafe_layer()
    t = time.perf_counter()
    load(path, name)
    print(f"compiled {name} in {time.perf_counter() - t:.2f}s", flush=True)


if __name__ == "__main__":
    main()
