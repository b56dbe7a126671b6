"""The LLVM back end seen from a process of its own: what it imports and what it does when memory runs out.

Each test runs a fresh Python process (what is imported, and an address-space limit, are the process's): a new
plan reaches its LLVM kernel with numba never imported; a kernel whose workspace cannot be had returns its
out-of-memory error and leaks nothing.
"""

import os
import sys

import pytest

from adserve.engine.codegen import llvm_kernel

pytestmark = pytest.mark.compiled


NO_NUMBA = """
import sys, tempfile, time, numpy as np
from adserve.engine import Engine, backend
eng = Engine(backend.Tiered(tempfile.mkdtemp(), workers=1))
f = eng.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(sin(x) * x)"})
meta, t0 = {}, time.monotonic()
while meta.get("backend") != "numba" and time.monotonic() - t0 < 240:  # the compiled tier's name
    eng.evaluate(f, {"x": np.ones(3)}, ["value", "gradient"], meta=meta)
    time.sleep(0.005)
print(meta.get("backend"), "numba" in sys.modules)
"""


def test_a_new_plan_reaches_its_llvm_kernel_without_numba_in_the_process():
    """Writing a new plan's key and kernel, and running it on the python tier meanwhile, need no numba in the
    serving process (plain.py: the kernels' runtime as plain Python): imported there lazily, by a background
    thread beside back-to-back requests holding the interpreter's lock, numba took 12 s to minutes, and a new
    function stayed that long on the interpreter."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", NO_NUMBA], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["numba", "False"], out.stdout + out.stderr[-2000:]


OUT_OF_MEMORY = """
import ctypes, json, os, resource, tempfile
import numpy as np
from engine_helpers import make_graph, no_stop, op
from adserve.engine.codegen import llvm_kernel

def f(x):  # a, b and c are kept past the sums that close their loops: three 12 MB arrays, a segment each
    a = op.exp(x * 0.1)
    b, c = op.sin(a), op.cos(a)
    s2 = op.reduce_sum(c * op.reduce_sum(a * b) + b)
    return op.reduce_sum(a * s2 + b * c)

n = 1_500_000
graph = make_graph(f, [(n,)])
ll = os.path.join(tempfile.mkdtemp(), "k.ll")
with open(ll, "w") as out:
    out.write(llvm_kernel.module_text(graph, "oom", "oom"))
llvm_kernel.compile_file(ll)
mod = llvm_kernel.LlvmModule(ll)
x, out = np.random.default_rng(0).standard_normal((1, n)), np.empty((1,))
assert mod.kernel(1, no_stop(), x, out) == 0
want = out[0]

class Mallinfo2(ctypes.Structure):  # glibc's: what malloc holds for the program (freed memory it keeps is not)
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2

def in_use():
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd

def vm():
    return int([line for line in open("/proc/self/status") if line.startswith("VmSize")][0].split()[1]) * 1024

before = in_use()
resource.setrlimit(resource.RLIMIT_AS, (vm() + 20 * 2 ** 20, resource.RLIM_INFINITY))  # one segment fits
statuses = [mod.kernel(1, no_stop(), x, out) for _ in range(5)]
leaked = in_use() - before
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
again = mod.kernel(1, no_stop(), x, out)
print(json.dumps({"segments": llvm_kernel.header_text(open(ll).read())["workspace"], "leaked": leaked,
                  "errors": [mod.ERRORS[k - 1] if k > 0 else k for k in statuses], "again": again,
                  "same": bool(out[0] == want)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2, /proc/self/status")
def test_a_workspace_segment_out_of_memory_is_an_error_and_frees_the_others():
    """A kernel whose second workspace segment cannot be had (the address space limited to one more segment)
    returns the out-of-memory error, having freed the first: after five such calls malloc holds no more for
    the program than before (glibc's count), and the kernel answers as before once memory is there."""
    import json
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert len(got["segments"]) == 3 and got["errors"] == [llvm_kernel.OOM] * 5, got
    assert got["leaked"] < 2 ** 20 and got["again"] == 0 and got["same"], got
