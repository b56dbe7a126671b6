"""What LLVM costs on lean IR: the evidence for emitting kernels' LLVM IR directly (docs/engine.md, "Compile time").

    python -m bench.llvm_direct LOOPS OPS OPT [LOOPS_PER_FUNCTION]

Writes LLVM IR by hand, shaped like a random straight-line function's gradient kernel: LOOPS loops of 8 elements
in a row, each OPS float operations (a libm call every third) on elements of earlier loops' buffers, stored to a
buffer of its own; optionally cut into noinline functions of LOOPS_PER_FUNCTION loops that one function calls.
It times, in CPU seconds, llvmlite's import, parsing and optimising at level OPT, and emitting machine code: what a
compile would cost without numba's typing, lowering and the larger IR numba writes (reference counts, array
structs, exceptions). random-1000's kernel is about 278 loops of 9 operations; random-10000's ten times that.
"""
from __future__ import annotations

import random
import sys
import time

LIBM = ("sin", "exp", "log1p")


def kernel_ir(loops: int, ops: int, per_function: int) -> str:
    """The module's LLVM IR text: `loops` loops in functions of `per_function`, and `kernel` calling them."""
    rnd = random.Random(0)
    lines = [f"declare double @{f}(double)" for f in LIBM]
    for lp in range(loops):
        first = lp % per_function == 0
        if first:
            lines += [f"define void @part{lp // per_function}(double* noalias %buf) noinline {{", "entry:",
                      f"  br label %L{lp}"]
        lines += [f"L{lp}:", f"  %i{lp} = phi i64 [0, %{'entry' if first else f'E{lp - 1}'}], [%n{lp}, %B{lp}]",
                  f"  br label %B{lp}", f"B{lp}:"]
        x = None
        for k in range(ops):
            src = rnd.randrange(lp) if lp else 0  # an earlier loop's buffer
            lines += [f"  %o{lp}_{k} = add i64 %i{lp}, {src * 8}",
                      f"  %p{lp}_{k} = getelementptr double, double* %buf, i64 %o{lp}_{k}",
                      f"  %a{lp}_{k} = load double, double* %p{lp}_{k}"]
            y = f"%a{lp}_{k}"
            if x is not None:
                lines.append(f"  %m{lp}_{k} = fmul double {y}, {x}")
                y = f"%m{lp}_{k}"
            if k % 3 == 0:
                lines.append(f"  %c{lp}_{k} = call double @{LIBM[k % 9 // 3]}(double {y})")
                y = f"%c{lp}_{k}"
            x = y
        lines += [f"  %q{lp} = getelementptr double, double* %buf, i64 {(lp + 1000) * 8}",
                  f"  %r{lp} = getelementptr double, double* %q{lp}, i64 %i{lp}",
                  f"  store double {x}, double* %r{lp}",
                  f"  %n{lp} = add i64 %i{lp}, 1", f"  %d{lp} = icmp eq i64 %n{lp}, 8",
                  f"  br i1 %d{lp}, label %E{lp}, label %L{lp}", f"E{lp}:"]
        lines += ["  ret void", "}"] if (lp + 1) % per_function == 0 or lp + 1 == loops else [f"  br label %L{lp + 1}"]
    lines += ["define void @kernel(double* noalias %buf) {", "entry:"]
    lines += [f"  call void @part{k}(double* %buf)" for k in range((loops + per_function - 1) // per_function)]
    return "\n".join(lines + ["  ret void", "}"])


def main(argv):
    loops, ops, opt = int(argv[0]), int(argv[1]), int(argv[2])
    per_function = int(argv[3]) if len(argv) > 3 else loops
    t0 = time.process_time()
    import llvmlite.binding as llvm
    t_import = time.process_time() - t0
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    text = kernel_ir(loops, ops, per_function)
    t1 = time.process_time()
    mod = llvm.parse_assembly(text)
    mod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine(opt=opt)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=opt))
    pb.getModulePassManager().run(mod, pb)
    t2 = time.process_time()
    obj = tm.emit_object(mod)
    t3 = time.process_time()
    print(f"{loops} loops of {ops} ops, {per_function} loops a function, O{opt}: {text.count(chr(10))} IR lines; "
          f"import {t_import:.2f} s, parse + optimise {t2 - t1:.2f} s, machine code {t3 - t2:.2f} s "
          f"({len(obj)} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
