"""The allocator settings of a process that runs kernels (engine/allocator.py): glibc told to serve large blocks from
its heap and to keep freed memory for reuse, so a call's large buffers are not mapped afresh each time; the server
and its isolation workers take them."""

import ctypes
import os
import subprocess
import sys

import pytest

from adserve.engine.allocator import keep_freed_memory

GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# In a process of its own: 20 rounds, as a request makes them, of 4 blocks of 8 MB allocated and written, then
# freed. With glibc's defaults, the freed top of the heap (32 MB) is more than twice the largest block and is given
# back each round, and the next round faults it in again; with the settings it is kept and reused.
PROGRAM = """
import ctypes, sys
from adserve.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory(256 << 20)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = 8 << 20
def faults():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt
def round_():
    blocks = [libc.malloc(n) for _ in range(4)]
    for p in blocks:
        ctypes.memset(p, 1, n)
    for p in blocks:
        libc.free(p)
for _ in range(3):  # glibc's own thresholds move after the first frees: past that
    round_()
start = faults()
for _ in range(20):
    round_()
print(faults() - start)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))})
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings")
def test_freed_large_blocks_are_reused_not_mapped_again():
    pages = 20 * 4 * (8 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert page_faults("keep") < pages // 20  # the same memory, faulted in once
    assert page_faults("default") > pages // 2  # the check can tell: glibc's defaults fault in every block


def test_zero_keeps_the_c_librarys_defaults():
    assert keep_freed_memory(0) is False
