"""The direct-LLVM back end's kernels: the module around llvm_ir's code, compiled by llvmlite, loaded as machine code.

A plan in the back end's scope (llvm_ir.declined) gets this kernel instead of numba's: its LLVM IR text is
written to `gen_<key>.llvm<V>.ll`, the compile worker turns it into object code for this machine's CPU
(`gen_<key>.llvm<V>.o`, the disk cache entry: llvmlite alone, no numba) and the server loads that into an
execution engine of its own. The .ll file's first line says what loading needs (errors, CPU, the NumPy struct
offsets the code reads); a corrupt or foreign entry fails to load, and the store compiles it again.

Calling is as numba's kernel: `module.kernel(B, stop, a0.., o0..)` with NumPy arrays (inputs float64, C-ordered,
leading axis the batch or 1; outputs (B, ...)); it returns 0, k > 0 for ERRORS[k - 1], or STOPPED (-1) once
stop[0] is set, read at the top of every point (it records the point in stop[1], as runtime.stopped) and in
loops where numba's kernel reads it (llvm_control.py: the point, the loop and its iterations are recorded). The
call is a builtin function the module defines (`<kernel>.py`, CPython's fast calling convention: the arguments as
an array of objects): it reads each array's data pointer (and an input's leading length: stride 0 when it is 1)
from NumPy's array struct and releases the interpreter lock while the kernel runs. The call costs about as much as
numba's dispatch (through ctypes it cost 2-4 us more).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import re
import threading
import uuid

from .. import mathlib
from .llvm_contraction import BLAS, bind_blas

# bump when the written IR changes meaning: part of the kernel files' names (4: loop nests' alias scopes; 5:
# concatenations read in place, carries written in place; 6: shifts as phis; 7: mathlib's exp and log; 8: maxima
# and minima accumulated by llvm.maximum and llvm.minimum, and the SLP vectoriser on; 9: runs cut at libm's calls,
# their stores scoped apart from their loads; 10: the pieces of an output concatenation computed in its row; 11:
# loops with sums vectorised only where they call exp or log; 15: a large kernel's object is always level 1's, its
# quick one (level 0) a file of its own; 16: a sum's loop calling exp or log interleaved; 17: -O2 for every kernel
# with loops or contractions; 18: a shared pass's 16 lanes)
LLVM_VERSION = "18"
# How LLVM optimises, chosen by measured compile and run time (docs/engine.md): a kernel of at most LEAN_PARTS
# functions gets the standard -O2 pipeline (the vectoriser among it); a larger one LEAN_PASSES and machine code at
# level 1. On random-1000's kernel (11 functions) the lean passes took a third of -O2's time (0.2-0.3 s against
# 0.7) and level 1 two thirds of level 2's (0.4 s against 0.6), its run time the same (21-35 us either way: its
# loops are 8 elements long); on random-10000's, -O2 was 13.5 s in all, the lean way about 7. A kernel of more than
# QUICK_LINES lines is compiled twice (`quick`, below).
# A kernel with loops (for, while) gets -O2 however many functions it has: the lean passes leave its loops' loads
# and index arithmetic in the loop (no LICM, no GVN); measured (run time per point, compile CPU): the
# loops-branches-assignment program's gradient (3 functions) 1.6 us lean, 0.5-0.7 at -O2 (numba's 0.3), both
# compiles 0.15 s; test_while_compiled's large random while programs (4 and 6 functions, 18,000 and 40,000 lines
# of IR) 89 and 70 us lean, 46 and 45 at -O2, compiling in 4.6 and 12.7 s instead of 2.8 and 7.9. So does a kernel
# with contractions (its loops are long array loops): GradBench's gmm d=10 k=25 gradient (4 functions) ran in 7.2 ms
# of CPU lean (numba's 5.5), 5.2 at -O2 (numba's 5.2), compiling in 0.43 s instead of 0.14 (numba's 9.5).
# Such kernels of more than 8 functions got the lean passes until a large kernel answered quickly first (its
# optimised compile now in the background): GradBench's ht Jacobians (6,400-6,700 lines, in the process's CPU)
# ran 6.8 and 64 ms lean, 3.0 and 27 ms at -O2, compiling in 1.3-1.4 s instead of 0.3.
# ADSERVE_LLVM_OPT=<n> in a compile worker's environment forces -O<n> on every kernel (bench.compile_time).
OPT_LEVEL = 2
LEAN_PARTS = 2
# A kernel of more than QUICK_LINES lines of IR is compiled twice. First `quick`: no IR passes (QUICK_PASSES) and
# machine code at level 0 (LLVM's fast instruction selection and register allocation), and the server answers with
# that kernel at once; then as its size asks (above), in the background, and that kernel replaces the quick one
# (backend/store.py). The quick compile costs about 6 us of CPU a line, the optimised one about 40-60 (level 1's
# machine code alone 35 more than level 0's), so past 5,000 lines (an optimised compile of 0.2-0.3 s) the quick
# kernel answers sooner for a second compile costing a sixth as much. Measured on 2 idle cores (bench.compile_time,
# CPU seconds of the worker process, its start-up included): random-10000's kernel (97,000 lines, 30 functions) was
# compiled 0.91 s after its worker started instead of 5.7, its quick kernel ran in 194 us, the optimised one
# (5.4 s of CPU later) in 158; random-1000's (8,800 lines) in 0.43 s instead of 0.66, 21.8 us a run, 17.1 optimised.
QUICK_LINES = 5_000
# The quick kernel's IR passes: none. Level 0's machine code gains nothing from the lean passes: random-10000's
# quick kernel ran 233 us after all five, 219 without loop strength reduction, 211 after none, and compiled in
# 0.62 s of CPU instead of 2.28 (loop strength reduction 0.5 s, dead store elimination 0.46).
QUICK_PASSES = ()
# The standard pipeline's SLP vectoriser (off in llvmlite's options, as in numba's): a loop of a few elements (gmm's
# d=10) is unrolled whole before the loop vectoriser runs, and only the SLP vectoriser packs its lanes (the same
# operations, in the same order per element: the same bits). GradBench's gmm d=10 k=25 gradient kernel: 3.1 ->
# 2.3 ms.
SLP = True
LEAN_PASSES = ("sroa", "instruction_combine", "simplify_cfg", "dead_store_elimination", "loop_strength_reduce")


def _level(parts: int, loops=False) -> int | None:
    """The standard pipeline's level for a kernel of `parts` functions (`loops`: holding loops), None for the lean
    passes."""
    try:
        return int(os.environ["ADSERVE_LLVM_OPT"])
    except (KeyError, ValueError):
        return OPT_LEVEL if loops or parts <= LEAN_PARTS else None
# NumPy's PyArrayObject on 64-bit CPython: the data pointer and the dimensions pointer (checked: numpy_layout)
DATA_OFFSET, DIMS_OFFSET = 16, 32
OOM = "out of memory allocating a kernel's workspace"
STOPPED = -1  # as runtime.STOPPED


def numpy_layout() -> bool:
    """Whether NumPy's array struct has its data and dimensions pointers where the kernels read them."""
    import numpy as np
    try:
        for a in (np.zeros((3, 2)), np.zeros(5)[1:]):
            if ctypes.c_void_p.from_address(id(a) + DATA_OFFSET).value != a.ctypes.data:
                return False
            if ctypes.c_int.from_address(id(a) + DATA_OFFSET + 8).value != a.ndim:  # nd precedes dimensions
                return False
            dims = ctypes.c_void_p.from_address(id(a) + DIMS_OFFSET).value
            if tuple((ctypes.c_int64 * a.ndim).from_address(dims)) != a.shape:
                return False
        return True
    except Exception:
        return False


def paths(directory, key) -> tuple[str, str]:
    ll = os.path.join(directory, f"gen_{key}.llvm{LLVM_VERSION}.ll")
    return ll, object_path(ll)


def object_path(path: str) -> str:
    """The object code of the module at `path` (.ll): the disk cache's entry."""
    return path[:-3] + ".o"


def quick_object(path: str) -> str:
    """A file for the quick kernel of the module at `path` (QUICK_LINES): a name of its own for every compile,
    as it only carries the code from the worker to the process loading it, which removes it (servers sharing a
    cache directory never read or remove each other's)."""
    return f"{path[:-3]}.quick-{uuid.uuid4().hex[:16]}.o"


# -- writing -------------------------------------------------------------------------------------------------
def module_text(graph, key: str, title: str) -> str:
    """The LLVM module of `graph`'s kernel, `kernel_<key>`, with its header line."""
    from .llvm_ir import Writer
    w = Writer(graph)
    w.write()
    symbol = f"kernel_{key}"
    # a function's arguments: the point's rows, the workspace, the stop array's data, the point, the kernel's
    # error status; it returns 0, or STOPPED when a loop saw the stop flag (having recorded where)
    rows = [f"ptr noalias %r{j}" for j in range(w.n_in + w.n_out)] + \
        [f"ptr noalias %ws{k}" for k in range(len(w.segments))] + ["ptr %sd", "i64 %pt", "ptr noalias %err"]
    parts = []
    for p in w.parts:
        parts += [f"define internal i64 @{symbol}.{p.index}({', '.join(rows)}) noinline nounwind {{", "entry:",
                  *p.entry, "  br label %b0", "b0:", *p.body, *p.tail, "  ret i64 0", "}", ""]
    errors = w.errors + ([OOM] if w.ws else [])
    body = _driver(w, symbol, len(errors)) + _python_entry(w, symbol)
    text = "\n".join(parts + body)
    meta = {"version": LLVM_VERSION, "title": title, "symbol": symbol, "errors": errors, "loops": w.stop_loops,
            "arrays": w.n_in + w.n_out, "data": DATA_OFFSET, "dims": DIMS_OFFSET, "parts": len(w.parts),
            "workspace": w.segments, "blas": sorted(w.blas), "contractions": w.contractions,
            "quick": text.count("\n") > QUICK_LINES}
    return "\n".join(["; adserve " + json.dumps(meta, default=str), _declarations(text, w.blas), *w.consts, "",
                      *mathlib.definitions(text), "", text, ""])


def _driver(w, symbol, oom) -> list:
    """The kernel: the arrays' data pointers, the workspace, then per point the stop check and the functions
    (`oom`: the status of a failed workspace allocation). A function's error status (a while loop past its limit)
    is returned after the point, as numba's kernel returns `err`."""
    g = w.graph
    ins = [f"ptr %a{j}" for j in range(w.n_in)] + [f"ptr %o{j}" for j in range(w.n_out)]
    out = [f"define i64 @{symbol}(i64 %B, ptr %stop, {', '.join(ins)}) {{", "entry:", "  %err = alloca i64",
           "  store i64 0, ptr %err"]

    def data(name):
        out.extend([f"  {name}.f = getelementptr i8, ptr {name}, i64 {DATA_OFFSET}",
                    f"  {name}.d = load ptr, ptr {name}.f"])
    data("%stop")
    for j, v in enumerate(g.inputs):
        data(f"%a{j}")
        size = math.prod(v.shape)
        out += [f"  %a{j}.sf = getelementptr i8, ptr %a{j}, i64 {DIMS_OFFSET}", f"  %a{j}.sh = load ptr, ptr %a{j}.sf",
                f"  %a{j}.n = load i64, ptr %a{j}.sh", f"  %a{j}.b = icmp ugt i64 %a{j}.n, 1",
                f"  %a{j}.s = select i1 %a{j}.b, i64 {size}, i64 0"]
    for j in range(w.n_out):
        data(f"%o{j}")
    ws, free = [], []
    for k, size in enumerate(w.segments):
        if not size:
            ws.append("ptr null")
            continue
        # a segment that could not be had: those before it are freed (free(NULL) does nothing for the others)
        out += [f"  %ws{k} = call ptr @malloc(i64 {8 * size})", f"  %nomem{k} = icmp eq ptr %ws{k}, null",
                f"  br i1 %nomem{k}, label %oom{k}, label %got{k}", f"oom{k}:",
                *[f"  call void @free(ptr %ws{j})" for j in range(k) if w.segments[j]], f"  ret i64 {oom}",
                f"got{k}:"]
        ws.append(f"ptr %ws{k}")
        free.append(f"  call void @free(ptr %ws{k})")
    out += ["  br label %start", "start:"]
    ws = ", ".join(ws)
    out += ["  br label %point", "point:", "  %p = phi i64 [0, %start], [%p.n, %next]",
            "  %end = icmp sge i64 %p, %B", "  br i1 %end, label %done, label %check", "check:",
            "  %flag = load atomic i64, ptr %stop.d monotonic, align 8", "  %set = icmp ne i64 %flag, 0",
            "  br i1 %set, label %stopped, label %run", "run:"]
    rows = []
    for j in range(w.n_in):
        out += [f"  %a{j}.o = mul i64 %p, %a{j}.s", f"  %a{j}.r = getelementptr inbounds double, ptr %a{j}.d, i64 %a{j}.o"]
        rows.append(f"ptr %a{j}.r")
    for j, a in enumerate(g.outputs):
        out += [f"  %o{j}.o = mul i64 %p, {math.prod(a.shape)}",
                f"  %o{j}.r = getelementptr inbounds double, ptr %o{j}.d, i64 %o{j}.o"]
        rows.append(f"ptr %o{j}.r")
    args = ", ".join(rows + [ws, "ptr %stop.d", "i64 %p", "ptr %err"])
    for p in w.parts:  # a function that returns STOPPED (a loop saw the flag) has recorded where: halt
        c = f"%c{p.index}"
        out += [f"  {c} = call i64 @{symbol}.{p.index}({args})", f"  {c}.s = icmp ne i64 {c}, 0",
                f"  br i1 {c}.s, label %halt, label %r{p.index}", f"r{p.index}:"]
    out += ["  %e = load i64, ptr %err", "  %e.s = icmp ne i64 %e, 0", "  br i1 %e.s, label %fail, label %next",
            "fail:", *free, "  ret i64 %e", "next:"]
    # runtime.stopped with no loop running: the point is recorded unless a loop's count is there already
    out += ["  %p.n = add i64 %p, 1", "  br label %point", "halt:", *free, "  ret i64 -1", "stopped:",
            "  %s2 = getelementptr inbounds i64, ptr %stop.d, i64 2", "  %s2.v = load i64, ptr %s2",
            "  %s2.z = icmp eq i64 %s2.v, 0", "  br i1 %s2.z, label %record, label %leave", "record:",
            "  %s1 = getelementptr inbounds i64, ptr %stop.d, i64 1", "  store i64 %p, ptr %s1",
            "  store i64 0, ptr %s2", "  %s3 = getelementptr inbounds i64, ptr %stop.d, i64 3",
            "  store i64 0, ptr %s3", "  br label %leave", "leave:", *free, "  ret i64 -1",
            "done:", *free, "  ret i64 0", "}"]
    return out


def _python_entry(w, symbol) -> list:
    """`<symbol>.py`, the kernel as a CPython builtin (METH_FASTCALL: the arguments as an array of objects): B
    converted, the interpreter lock released around the kernel, its status returned as an int. A wrong number of
    arguments is a TypeError (PyErr_BadArgument's: the code refers to no data of CPython's, only functions; a
    process that had compiled numba kernels crashed reading PyExc_TypeError through the JIT's symbol table)."""
    n = 2 + w.n_in + w.n_out
    out = [f"define ptr @{symbol}.py(ptr %self, ptr %args, i64 %n) {{", "entry:", f"  %ok = icmp eq i64 %n, {n}",
           "  br i1 %ok, label %go, label %count", "count:", "  call i32 @PyErr_BadArgument()", "  ret ptr null",
           "fail:", "  ret ptr null",
           "go:", "  %b.o = load ptr, ptr %args", "  %B = call i64 @PyLong_AsLongLong(ptr %b.o)",
           "  %b.m = icmp eq i64 %B, -1", "  br i1 %b.m, label %b.check, label %run", "b.check:",
           "  %b.e = call ptr @PyErr_Occurred()", "  %b.f = icmp ne ptr %b.e, null",
           "  br i1 %b.f, label %fail, label %run", "run:"]
    objects = []
    for k in range(1, n):
        out += [f"  %x{k}.p = getelementptr ptr, ptr %args, i64 {k}", f"  %x{k} = load ptr, ptr %x{k}.p"]
        objects.append(f"ptr %x{k}")
    out += ["  %ts = call ptr @PyEval_SaveThread()", f"  %r = call i64 @{symbol}(i64 %B, {', '.join(objects)})",
            "  call void @PyEval_RestoreThread(ptr %ts)", "  %o = call ptr @PyLong_FromLongLong(i64 %r)", "  ret ptr %o",
            "}"]
    return out


PYTHON_API = ("declare i32 @PyErr_BadArgument()", "declare ptr @PyErr_Occurred()", "declare i64 @PyLong_AsLongLong(ptr)",
              "declare ptr @PyLong_FromLongLong(i64)", "declare ptr @PyEval_SaveThread()",
              "declare void @PyEval_RestoreThread(ptr)")


def _declarations(text, blas=()) -> str:
    found = {}
    for name, args in re.findall(r"call double @([\w.]+)\(([^)]*)\)", text):
        if not name.startswith("adserve_"):
            found[name] = args.count("double")
    lines = [f"declare double @{n}({', '.join(['double'] * k)})" for n, k in sorted(found.items())]
    lines += [BLAS[name] for name in sorted(blas)]
    return "\n".join(lines + ["declare ptr @malloc(i64)", "declare void @free(ptr)", *PYTHON_API])


def header(path) -> dict:
    """What the first line of the module at `path` says (module_text's meta)."""
    with open(path) as f:
        return header_text(f.readline(), path)


def header_text(text, where="the module") -> dict:
    if not text.startswith("; adserve "):
        raise ValueError(f"{where} is not an adserve kernel")
    return json.loads(text.split("\n", 1)[0][len("; adserve "):])


# -- compiling (in the compile worker) and loading --------------------------------------------------------------
# LLVM's loop vectoriser leaves a loop with a sum alone on x86 unless it may reorder the sum (fast-math, which the
# kernels do not allow: every tier sums in the same order). Told to, it vectorises the rest of the loop and adds
# the lanes in their order: the same bits as the scalar loop, and a loop of `acc += exp(x[i])` (GradBench's lse)
# took 308 us for 80,000 elements instead of 859. LLVM's options are the process's, and parsed twice they end
# it ("may only occur zero or one times"): set once, before anything compiles (numba's compiles use them too).
LLVM_OPTIONS = ("-force-ordered-reductions",)
_options_set: list = []
_options_lock = threading.Lock()


def llvm_options() -> None:
    """Set LLVM_OPTIONS in this process, once."""
    import llvmlite.binding as llvm
    with _options_lock:
        if not _options_set:
            for option in LLVM_OPTIONS:
                llvm.set_option("adserve", option)
            _options_set.append(True)


def prepare() -> None:
    """Import llvmlite and set up LLVM's native target: what a compile worker does at its start, before its first
    kernel is asked for (about 0.3 s of CPU a kernel would otherwise wait for)."""
    _target_machine()


def _target_machine(level=OPT_LEVEL):
    import llvmlite.binding as llvm
    llvm_options()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    # as numba's JIT: this CPU and its features, static relocations on x86
    reloc = "static" if target.name.startswith("x86") else "default"
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=level, reloc=reloc, codemodel="jitdefault", jit=True)


def _object_head(obj: bytes) -> bytes:
    """The .o file's first line: the CPU the code is for and the code's hash. LLVM's loader trusts what it is
    given (a truncated object crashed the process): only code whose hash matches is handed to it."""
    return f"{cpu()} sha256:{hashlib.sha256(obj).hexdigest()}".encode()


def cpu() -> str:
    import llvmlite.binding as llvm
    return f"{llvm.get_host_cpu_name()} {llvm.get_host_cpu_features().flatten()}"


def optimised(text: str, where="the module", quick=False):
    """The module `text` parsed and optimised as its header's size asks (`_level`), or `quick`ly (QUICK_LINES),
    and the target machine that emits it: (module, machine)."""
    if quick:
        return optimise(text, None, 0, QUICK_PASSES)
    meta = header_text(text, where)
    level = _level(meta["parts"], bool(meta.get("loops")) or bool(meta.get("contractions")))
    return optimise(text, level, level if level is not None else 1)


def optimise(text: str, level=OPT_LEVEL, machine_level=None, passes=LEAN_PASSES):
    """The module `text` parsed, verified and optimised: LLVM's standard pipeline at `level` (the SLP vectoriser
    as SLP says), or `passes` where `level` is None; and the target machine that emits it, at `machine_level`
    (default `level`): (module, machine). The kernels' way, and mathlib's."""
    import llvmlite.binding as llvm
    tm = _target_machine(level if machine_level is None else machine_level)
    mod = llvm.parse_assembly(text)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=level or 0)
    pto.slp_vectorization = SLP
    pb = llvm.create_pass_builder(tm, pto)
    if level is None:
        manager = llvm.create_new_module_pass_manager()
        for name in passes:
            getattr(manager, f"add_{name}_pass")()
        manager.run(mod, pb)
    else:
        pb.getModulePassManager().run(mod, pb)
    return mod, tm


def compile_file(path: str, quick: str | None = None) -> str:
    """Compile the module at `path` (.ll) into object code beside it (`object_path`, written whole or not at all);
    `quick`: the file for its quick kernel instead (QUICK_LINES, `quick_object`)."""
    with open(path) as f:
        text = f.read()
    mod, tm = optimised(text, path, quick is not None)
    obj = tm.emit_object(mod)
    out = object_path(path) if quick is None else quick
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(_object_head(obj) + b"\n" + obj)
    os.replace(tmp, out)
    return out


class _MethodDef(ctypes.Structure):
    """CPython's PyMethodDef."""
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p), ("ml_flags", ctypes.c_int),
                ("ml_doc", ctypes.c_char_p)]


METH_FASTCALL = 0x80


def _new_function(method_def: int, owner):
    """A builtin function of `method_def` bound to `owner`, which it keeps alive (and so the code it runs)."""
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
    return new(method_def, owner, None)


class LlvmModule:
    """A loaded LLVM kernel, called as numba's kernel module is: `kernel`, `ERRORS`, `LOOPS`."""

    backend = "llvm"

    def __init__(self, path: str, quick: str | None = None):
        meta = header(path)
        if meta.get("version") != LLVM_VERSION or (meta["data"], meta["dims"]) != (DATA_OFFSET, DIMS_OFFSET):
            raise ValueError(f"{path}: written by another version of the LLVM back end")
        import llvmlite.binding as llvm
        with open(object_path(path) if quick is None else quick, "rb") as f:
            head, _, obj = f.read().partition(b"\n")
        if head != _object_head(obj):
            raise ValueError(f"{path}: compiled for another CPU, or corrupt ({head[:80]!r}...)")
        bind_blas(meta.get("blas", ()))  # the BLAS functions' addresses: this process's, never the object's
        tm = _target_machine()
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        address = self._engine.get_function_address(meta["symbol"])
        if not address:
            raise ValueError(f"{path}: no function {meta['symbol']}")
        entry = self._engine.get_function_address(meta["symbol"] + ".py")
        if not entry:
            raise ValueError(f"{path}: no function {meta['symbol']}.py")
        # a builtin function object of the kernel's Python entry: called as numba's dispatcher is, for a fraction
        # of a microsecond (ctypes' conversions took 2-4 us a call)
        self._method = _MethodDef(b"kernel", entry, METH_FASTCALL, None)
        self.kernel = _new_function(ctypes.addressof(self._method), self)
        self.ERRORS = list(meta["errors"])
        self.LOOPS = [tuple(x) for x in meta["loops"]]
        self.title = meta["title"]
        self.quick = quick is not None  # a large module's quick kernel, replaced by the optimised one once compiled


class LlvmChunks:
    """An LLVM kernel's parallel batch variant: its serial kernel on chunks of the batch, run by a thread pool
    (the kernel releases the interpreter lock), so nothing more is compiled. Called and answering as numba's
    parallel variant: the first failing chunk's status (the first failing point's error). A stopped chunk records
    its point counted from the chunk's start (progress, approximately, as numba's chunks' loop counts)."""

    backend = "llvm"
    CHUNKS_PER_THREAD = 4  # as codegen/module.py's parallel kernel

    def __init__(self, serial: LlvmModule, pool, threads: int, n_in: int):
        self.serial, self._pool, self._n_in = serial, pool, n_in
        self.quick = serial.quick
        self._chunks = self.CHUNKS_PER_THREAD * threads
        self.ERRORS, self.LOOPS = serial.ERRORS, serial.LOOPS

    def kernel(self, B, stop, *arrays):
        ins, outs = arrays[:self._n_in], arrays[self._n_in:]
        n = max(1, min(B, self._chunks))
        run = self.serial.kernel

        def chunk(lo, hi):
            return run(hi - lo, stop, *[a if a.shape[0] == 1 else a[lo:hi] for a in ins], *[o[lo:hi] for o in outs])
        futures = [self._pool.submit(chunk, c * B // n, (c + 1) * B // n) for c in range(n)]
        statuses = [f.result() for f in futures]
        return next((s for s in statuses if s), 0)
