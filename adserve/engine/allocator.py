"""The C allocator's settings for a process that runs kernels: large blocks reused, not mapped afresh each call.

glibc's malloc maps a large block (from 128 KB, a threshold that rises as such blocks are freed, up to 32 MB) with
an `mmap` of its own and unmaps it when it is freed, and it gives the free top of its heap back to the system once
that is more than `M_TRIM_THRESHOLD` (twice the mmap threshold, by default). Each call of a kernel with a large
workspace (the LLVM driver's segments, numba's arrays) or of the interpreter on large arrays frees several blocks
together, the freed top passes that threshold, and the next call faults all of it in again, page by page, while
it writes it: GradBench's k-means `dir` kernel (100 MB of workspace a call) took 28 ms a call that way and 6.3 ms
with freed memory kept. A REST request with an 8 MB matrix in base64 makes such blocks too (its body, the decoded
array, the encoded answer): Helmholtz n=1000's round trip 65.7 -> 53.3 ms. So blocks up to 32 MB come from the
heap and up to `keep` bytes of freed memory are kept for reuse (`ADSERVE_MALLOC_KEEP_BYTES`: the server process
and its isolation workers, engine.py). The price is that a process may hold that much memory it has freed. Other C
libraries (musl) have no such settings: nothing is changed there.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("adserve.engine")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
HEAP_BLOCK_BYTES = 32 << 20  # blocks up to this come from the heap (glibc's largest mmap threshold on 64 bits)
DEFAULT_KEEP_BYTES = 256 << 20


def keep_freed_memory(keep: int = DEFAULT_KEEP_BYTES) -> bool:
    """Keep up to `keep` bytes of freed memory for reuse, and serve blocks up to HEAP_BLOCK_BYTES from the heap;
    whether the C library took the settings (0, or not glibc: nothing is changed). The settings are the process's:
    call it where the process is set up, not per engine."""
    if keep <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    taken = mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, min(keep, 2**31 - 1)) == 1
    if not taken:
        log.info("the C library did not take adserve's allocator settings; its defaults stay")
    return taken
