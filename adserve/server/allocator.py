"""The C allocator's settings for a server process: a request's large buffers reused, not mapped afresh.

glibc's malloc maps a large block (from 128 KB, a threshold that rises as such blocks are freed, up to 32 MB) with
a `mmap` of its own and unmaps it when it is freed, and it returns the free top of its heap to the system beyond
`M_TRIM_THRESHOLD`. A request with an 8 MB matrix in base64 makes several such blocks (its body, the decoded
array, the gradient, the encoded answer), and each new mapping is faulted in page by page while it is first
written: Helmholtz n=1000 over REST took 75.8 ms a round trip, 56.1 ms with blocks up to 32 MB taken from the heap
and 256 MB of free memory kept for reuse (`python -m bench.rest_inputs`, docs/benchmarks.md). The price is that
the process holds up to `keep` bytes it has freed: `ADSERVE_MALLOC_KEEP_BYTES`, 0 for the C library's defaults.
Other C libraries (musl) have no such settings: nothing is changed there.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("adserve")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
HEAP_BLOCK_BYTES = 32 << 20  # blocks up to this come from the heap (glibc's largest mmap threshold on 64 bits)


def keep_freed_memory(keep: int) -> bool:
    """Keep up to `keep` bytes of freed memory for reuse, and serve blocks up to HEAP_BLOCK_BYTES from the heap;
    whether the C library took the settings (0, or not glibc: nothing is changed)."""
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
