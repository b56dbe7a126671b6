"""The scalar helpers generated kernels call, compiled by numba: one per table row that declares one.

A row's `helper` is a plain-Python scalar function (primitives.py), called by its name from the row's
template where `math` has no NumPy twin (stable sigmoid, NaN-propagating maximum). Kernels are compiled
with `error_model="numpy"`, so `math.log(-1.0)` is NaN and `1.0 / 0.0` infinity, as in the NumPy
interpreter. Each helper is a name of this module, as generated kernels import it.

Contractions: `matmul(a, b, out)` (out = a @ b, 2-D), `matvec(a, x, out)` (out = a @ x) and `dot(x, y)` (1-D)
are what contraction.py emits for an einsum that is one matrix product. In a kernel they call BLAS (numba's
np.dot) when numba types both operands C- or F-contiguous (an input, a buffer, a 2-D transpose `.T`), and run a
loop nest otherwise (a strided view: BLAS would need a copy of it). The python tier calls NumPy.

Stopping: every kernel takes a stop array `stop` (int64, deadline.FLAG_SLOTS long) and reads its flag
`stop_flag(stop)` at the top of every batch point and loop iteration; once it is nonzero (a deadline passed,
a cancel) the kernel returns `stopped(stop, p, loop, done)`, which records where it was (stop[1] the point,
stop[2] the outermost running loop's number in the module's LOOPS, 1-based, 0 for none, stop[3] that loop's
iterations done; the caller reads and clears them) and is the status STOPPED. `stop_flag` is a relaxed
atomic load (a plain load on x86 and ARM): with an ordinary `stop[0]`, LLVM hoists the read out of a loop
that stores nothing, and the loop never sees the flag change (measured: a 10^9-step loop ran to its end).
"""

from types import FunctionType

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import mathlib
from . import plain

_jit = njit(inline="always", cache=True, error_model="numpy")


def _ir_helper(function: str):
    """numba's call of a helper written in LLVM IR (mathlib's exp and log): its definition is linked into the
    kernel's code library (a weak definition: one however many calls), where LLVM inlines it and can vectorise it."""
    @intrinsic
    def call(typingctx, x):
        if not isinstance(x, types.Number):
            return None

        def codegen(context, builder, sig, args):
            import llvmlite.binding as ll
            from llvmlite import ir
            library = context.active_code_library
            # weak, not linkonce: a linkonce definition nothing in the library calls yet is dropped when linked
            module = ll.parse_assembly(mathlib.FUNCTIONS[function].replace("linkonce_odr", "weak_odr", 1))
            module.triple, module.data_layout = library._final_module.triple, library._final_module.data_layout
            library.add_llvm_module(module)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.DoubleType(), [ir.DoubleType()]),
                                                function)
            return builder.call(fn, [context.cast(builder, args[0], sig.args[0], types.float64)])
        return types.float64(x), codegen
    return call


IR_HELPERS = {name: _ir_helper(h.ir_function) for name, h in plain.HELPERS.items() if hasattr(h, "ir_function")}


def _compiled(helper):
    """A row's helper for numba: its IR if it has one, else the function compiled, reading the IR helpers where
    its code calls them (a sigmoid's `exp`) instead of the plain ones its module holds."""
    if hasattr(helper, "ir_function"):
        return IR_HELPERS[helper.__name__]
    code = helper.__code__
    if not set(code.co_names) & set(IR_HELPERS):
        return _jit(helper)
    namespace = {**helper.__globals__, **IR_HELPERS}
    return _jit(FunctionType(code, namespace, helper.__name__, helper.__defaults__, helper.__closure__))


HELPERS = {name: _compiled(helper) for name, helper in plain.HELPERS.items()}
globals().update(HELPERS)

STOPPED = plain.STOPPED


@intrinsic
def stop_flag(typingctx, stop):
    """stop[0], read from memory every time (a relaxed atomic load: the compiler may not hoist or merge it)."""
    if not (isinstance(stop, types.Array) and stop.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "monotonic", 8)

    return types.int64(stop), codegen


stopped = njit(cache=True)(plain.stopped)  # off the hot path: called once, when the kernel stops

# Array operations whose numba implementations are compiled anew in every process that meets them (each compile
# worker): np.transpose's pulls in numba's slice-assignment error path and its string formatting, ~2 s of
# helper compiles; ascontiguousarray + reshape ~0.5 s. Called through these, they are compiled once per
# signature on a machine and loaded from numba's cache after (the python tier calls the originals). Not `fill`:
# called so, it cost Helmholtz n=1000's gradient kernel 6% of its run time (a call LLVM cannot see through);
# kernels write `a[:] = x`, which compiles no helper.
transposed, reshaped = (njit(cache=True, nogil=True)(f) for f in (plain.transposed, plain.reshaped))

# the products: NumPy's in the python tier, these overloads in numba's kernels
matmul, matvec, dot = plain.matmul, plain.matvec, plain.dot


def _blas(*arrays) -> bool:
    return all(isinstance(a, types.Array) and a.layout in "CF" for a in arrays)


@overload(matmul, inline="always")
def _matmul(a, b, out):
    if _blas(a, b) and out.layout == "C":
        return lambda a, b, out: np.dot(a, b, out)

    def loops(a, b, out):
        out[:] = 0.0
        for i in range(a.shape[0]):
            for k in range(a.shape[1]):
                aik = a[i, k]
                for j in range(b.shape[1]):
                    out[i, j] += aik * b[k, j]
    return loops


@overload(matvec, inline="always")
def _matvec(a, x, out):
    if _blas(a, x) and out.layout == "C":
        return lambda a, x, out: np.dot(a, x, out)

    def loops(a, x, out):
        for i in range(a.shape[0]):
            acc = 0.0
            for k in range(a.shape[1]):
                acc += a[i, k] * x[k]
            out[i] = acc
    return loops


@overload(dot, inline="always")
def _dot(x, y):
    if _blas(x, y):
        return lambda x, y: np.dot(x, y)

    def loops(x, y):
        acc = 0.0
        for k in range(x.shape[0]):
            acc += x[k] * y[k]
        return acc
    return loops
