"""Compile generated modules in a process of its own: `python -m adserve.engine.codegen.worker PATH`, or
`... worker --serve`, which compiles each path read from its standard input in turn (a warm worker).

Importing a module compiles its kernel (eager signature) and writes numba's
cache beside it; a `.ll` file (the direct-LLVM back end's kernel, llvm_kernel.py) is compiled by llvmlite
into object code beside it instead. A separate process can be timed out and killed, and numba's
global compile lock never stalls the server. A warm worker pays Python's and NumPy's start-up once for many
compiles, and numba's (about 1 s of CPU) at its first numba kernel (an LLVM-only worker never imports numba);
after each compile it prints `DONE` and its address space in bytes on a line of its own. Any failure ends it,
as it ends a one-path worker. The worker lowers its CPU priority by `ADSERVE_COMPILE_NICE` (default `NICE`): the
kernel store sets it to 0 for the compiles a caller waits for, and leaves the default for background ones, which
then take only CPU time that requests leave idle (store.py). Its address space is limited (RLIMIT_AS) to the bytes in
`ADSERVE_COMPILE_MEMORY_BYTES` (set by the kernel store; 0 or unset: no limit): a compile that needs more
exits with status MEMORY_EXIT (numba's MemoryError) or is aborted by LLVM, and `out_of_memory` tells so.
"""

import importlib.util
import os
import resource
import sys
import time

NICE = 10
NICE_ENV = "ADSERVE_COMPILE_NICE"
MEMORY_ENV = "ADSERVE_COMPILE_MEMORY_BYTES"
MEMORY_EXIT = 3


def out_of_memory(returncode: int, output: str) -> bool:
    """Whether a compile worker that ended with `returncode` and printed `output` ran out of memory."""
    if returncode == MEMORY_EXIT:
        return True
    text = output[-4000:].lower()
    return returncode != 0 and any(s in text for s in ("memoryerror", "out of memory", "bad_alloc",
                                                        "cannot allocate memory"))


def limit_memory() -> bool:
    """Apply `ADSERVE_COMPILE_MEMORY_BYTES` as this process's RLIMIT_AS; whether a limit was set."""
    try:
        limit = int(os.environ.get(MEMORY_ENV, "0"))
    except ValueError:
        return False
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit > 0


# numba's SSA reconstruction recurses once per block up the dominator tree: a kernel of a few hundred loops in a
# row (a random 1,000-node function's gradient: 278) went deeper than Python's default 1,000 and failed to compile
RECURSION_LIMIT = 100_000


def compile_settings():
    """Set up this process for compiling kernels (before numba is imported)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))


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


DONE = "@@adserve-compiled@@"  # a warm worker's line after each compile: DONE <address space in bytes>


def address_space(pid="self") -> int:
    """The address space process `pid` holds now (Linux's VmSize; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def compile_one(path: str, limited: bool, keep: bool, quick: str | None = None):
    """Compile the module at `path` (exits with MEMORY_EXIT when memory runs out). `keep`: leave it imported
    (a warm worker drops it, so its memory can go back). `quick`: the file for an LLVM module's quick kernel
    (llvm_kernel.QUICK_LINES)."""
    name = path.rsplit("/", 1)[-1][:-3]
    t = time.perf_counter()
    try:
        if path.endswith(".ll"):  # the direct-LLVM back end's kernel: llvmlite alone, no numba
            from .llvm_kernel import compile_file
            compile_file(path, quick)
        else:
            from .llvm_kernel import llvm_options
            llvm_options()  # numba's LLVM too: sums in loops vectorised in order
            threadsafe_layer()  # imports numba
            load(path, name)
    except (MemoryError, OSError) as e:
        # under an address-space limit, numba's LLVM library may fail to map (an OSError) instead
        if not isinstance(e, MemoryError) and not (limited and "shared object" in str(e)):
            raise
        print(f"MemoryError: out of memory compiling {name} ({type(e).__name__}: {str(e)[:300]}; limit "
              f"{os.environ.get(MEMORY_ENV)} bytes)", flush=True)
        sys.exit(MEMORY_EXIT)
    if not keep:
        sys.modules.pop(name, None)
    print(f"compiled {name} in {time.perf_counter() - t:.2f}s", flush=True)


QUICK_TAB = "\t"  # a warm worker's line `<path>\t<file>` asks for the quick kernel of the LLVM module at <path>
PREPARE_ENV = "ADSERVE_COMPILE_PREPARE"  # "llvm": a warm worker sets up the LLVM back end before it says it is ready


def serve(limited: bool):
    """Compile each path read from standard input, until it closes; after each, the DONE line. First, the back end
    `PREPARE_ENV` names is set up (a worker started ahead of its first compile does that while nothing waits)."""
    if os.environ.get(PREPARE_ENV) == "llvm":
        try:
            from .llvm_kernel import prepare
            prepare()
        except Exception:  # e.g. no room under the memory limit: the first compile meets it and says so
            pass
    print(f"{DONE} {address_space()}", flush=True)  # ready
    for line in sys.stdin:
        path, _, quick = line.rstrip("\n").partition(QUICK_TAB)
        path = path.strip()
        if path:
            compile_one(path, limited, keep=False, quick=quick or None)
            print(f"{DONE} {address_space()}", flush=True)


def main():
    try:
        os.nice(int(os.environ.get(NICE_ENV, NICE)))
    except (OSError, ValueError):
        pass
    limited = limit_memory()
    compile_settings()
    if sys.argv[1] == "--serve":
        serve(limited)
    else:
        compile_one(sys.argv[1], limited, keep=True)


if __name__ == "__main__":
    main()
