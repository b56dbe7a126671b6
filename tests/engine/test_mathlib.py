"""mathlib's exp and log: accurate (under one ulp, against 80-bit long double), NumPy's answers at the special
inputs, one answer on every path (the scalar helper, the array loop's vector lanes, numba's kernels, the LLVM
back end's kernels), and straight-line code LLVM vectorises."""

import re

import numpy as np
import pytest

from adserve.engine import mathlib

RNG = np.random.default_rng(20261205)
TINY = np.finfo(np.float64).tiny  # the smallest normal double


def _ulps(got, x, fn):
    """|got - fn(x)| in units of the last place of the exact result (long double), 2^-1074 below TINY."""
    ref = fn(x.astype(np.longdouble))
    scale = np.maximum(np.abs(ref), np.longdouble(TINY))
    unit = np.longdouble(2.0) ** (np.floor(np.log2(scale)) - 52)
    return np.abs(got.astype(np.longdouble) - ref) / unit


def test_exp_is_within_one_ulp():
    x = np.concatenate([RNG.uniform(-745.0, 709.7, 400_000), RNG.uniform(-1.0, 1.0, 200_000),
                        RNG.normal(0.0, 1e-6, 50_000), RNG.uniform(-745.1, -708.4, 50_000)])  # the last: subnormal
    got = mathlib.exp_array(x)
    assert _ulps(got, x, np.exp).max() < 1.0


def test_exp_is_within_one_ulp_where_the_reduced_argument_is_largest():
    """Where x is near (k + 1/2) ln 2, |r| is near ln2/2, the end of the polynomial's interval, and k at its
    extremes takes the subnormal and the near-overflow results."""
    k = np.arange(-1075, 1024)
    x = (k + 0.5) * np.log(2.0)
    x = np.concatenate([np.nextafter(x, -np.inf), x, np.nextafter(x, np.inf), x + 1e-12, x - 1e-12])
    x = x[(x > -745.13) & (x < 709.78)]
    assert _ulps(mathlib.exp_array(x), x, np.exp).max() < 1.0


def test_exps_polynomial_fits_within_its_error_bound():
    """The Remez fit mathlib.EXP's comment describes: 1 + r + r^2 Q(r), with Q's coefficients as the IR holds
    them, is within 2^-60 of e^r relative, on |r| <= 0.3467 (computed in 60-digit decimal)."""
    import re
    import struct
    from decimal import Decimal, localcontext
    consts = [struct.unpack(">d", bytes.fromhex(h))[0] for h in re.findall(r"0x([0-9A-F]{16})", mathlib.EXP)]
    # Q's coefficients in the IR's Estrin order: q0 = c0 + c1 r, q2 = c2 + c3 r, ..., q8 = c8 + c9 r, s8: c10
    pairs = re.findall(r"%q(\d) = call double @llvm.fma.f64\(double %r, double 0x(\w+), double 0x(\w+)\)", mathlib.EXP)
    c = {}
    for i, hi, lo in pairs:
        c[int(i)], c[int(i) + 1] = (struct.unpack(">d", bytes.fromhex(v))[0] for v in (lo, hi))
    c[10] = struct.unpack(">d", bytes.fromhex(re.search(r"%s8 = .*double 0x(\w+), double %q8", mathlib.EXP)[1]))[0]
    assert sorted(c) == list(range(11)) and c[0] == 0.5 and len(consts) > 11
    with localcontext() as ctx:
        ctx.prec = 60
        worst = Decimal(0)
        for i in range(-2000, 2001):
            r = Decimal("0.3467") * i / 2000
            q = Decimal(0)
            for j in range(10, -1, -1):
                q = q * r + Decimal(c[j])
            worst = max(worst, abs((1 + r + r * r * q) / r.exp() - 1))
    assert worst < Decimal(2) ** -60


def test_log_is_within_one_ulp():
    x = np.concatenate([np.exp(RNG.uniform(-700.0, 700.0, 400_000)), RNG.uniform(0.5, 2.0, 200_000),
                        1.0 + RNG.normal(0.0, 1e-9, 50_000), RNG.uniform(0.0, 1.0, 50_000) * TINY])
    x = x[x > 0]
    got = mathlib.log_array(x)
    assert _ulps(got, x, np.log).max() < 1.0


EXP_SPECIAL = [0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 709.782712893384, 709.7827128933841, 710.0, -745.1332191019411,
               -745.1332191019412, -745.2, -746.0, 1e-300, -1e-300, 5e-324, 1e308, -1e308]
LOG_SPECIAL = [0.0, -0.0, 1.0, -1.0, -5e-324, np.inf, -np.inf, np.nan, 5e-324, TINY, TINY * (1 - 2**-52),
               1.7976931348623157e308, 2.0, 0.5, 4.0, 1024.0, 2.0**-1074]


@pytest.mark.parametrize("fn, np_fn, xs", [(mathlib.exp_array, np.exp, EXP_SPECIAL),
                                           (mathlib.log_array, np.log, LOG_SPECIAL)], ids=["exp", "log"])
def test_special_inputs_answer_as_numpy(fn, np_fn, xs):
    x = np.array(xs)
    with np.errstate(all="ignore"):
        want = np_fn(x)
    got = fn(x)
    for xi, g, w in zip(x, got, want):
        assert (np.isnan(g) and np.isnan(w)) or (g == w and np.signbit(g) == np.signbit(w)), (xi, g, w)


def test_exact_values():
    assert mathlib.exp(0.0) == 1.0 and mathlib.log(1.0) == 0.0 and not np.signbit(mathlib.log(1.0))
    assert mathlib.log(2.0) == np.log(2.0) and mathlib.exp(-np.inf) == 0.0
    assert [mathlib.log(2.0**k) for k in (-1074, -1022, 1, 1023)] == [k * np.log(2.0) for k in (-1074, -1022, 1, 1023)]


@pytest.mark.parametrize("name", ["exp", "log"])
def test_scalar_array_and_vector_lanes_agree_bit_for_bit(name):
    scalar, array = getattr(mathlib, name), getattr(mathlib, f"{name}_array")
    x = RNG.uniform(-700.0, 700.0, 1001) if name == "exp" else np.exp(RNG.uniform(-700.0, 700.0, 1001))
    got = array(x)  # the loop runs in vector lanes, and its last element alone
    assert np.array_equal(got, [scalar(float(v)) for v in x])
    assert np.array_equal(array(x[::3]), got[::3])  # a strided view is copied, not misread
    assert np.array_equal(array(x.reshape(7, 11, 13)), got.reshape(7, 11, 13))
    assert array(np.empty((0, 4))).shape == (0, 4)
    assert array(np.float64(x[5])).shape == () and array(np.float64(x[5])) == got[5]


def test_numba_kernels_compute_the_same_bits():
    """runtime.py's helpers: the IR linked into numba's code (and the helpers that call exp, compiled with it)."""
    from numba import njit

    from adserve.engine.codegen import runtime
    from adserve.engine.primitives import _sigmoid, _softplus

    @njit(error_model="numpy")
    def kernel(x, y, out):
        for i in range(x.size):
            out[0, i] = runtime.exp(x[i])
            out[1, i] = runtime.log(y[i])
            out[2, i] = runtime.sigmoid(x[i])
            out[3, i] = runtime.softplus(x[i])

    x = np.concatenate([RNG.uniform(-800.0, 800.0, 2000), EXP_SPECIAL])
    y = np.concatenate([np.exp(RNG.uniform(-740.0, 700.0, 2000 + len(EXP_SPECIAL) - len(LOG_SPECIAL))), LOG_SPECIAL])
    out = np.empty((4, x.size))
    kernel(x, y, out)
    for got, want in zip(out, [mathlib.exp_array(x), mathlib.log_array(y), _sigmoid(x), _softplus(x)]):
        assert np.array_equal(got, want, equal_nan=True)


def test_llvm_kernels_inline_it_and_vectorise_it():
    """A kernel's module defines the functions it calls (no C library exp or log left), and LLVM's
    optimiser turns a loop of them into vector code."""
    from adserve.engine.codegen.llvm_kernel import optimise
    text = "\n\n".join([mathlib.EXP, mathlib.LOG, mathlib._array_loop("adserve_exp")])
    assert mathlib.definitions("  %r = call double @adserve_log(double %x)") == [mathlib.LOG]
    mod, _ = optimise(text)
    loop = str(mod.get_function("adserve_exp_array"))
    assert "x double>" in loop and "call double @exp" not in loop and "@llvm.exp" not in loop


@pytest.mark.parametrize("interleave", [None, 2])
def test_a_sum_of_exps_vectorises_and_adds_in_order(interleave):
    """llvm_kernel.LLVM_OPTIONS: with ordered reductions LLVM vectorises `acc += exp(x[i])` (the exps in lanes),
    and the sum is still the scalar loop's, bit for bit; also with its vector iterations interleaved, as
    llvm_split.sum_loop_hint asks."""
    import ctypes

    import llvmlite.binding as llvm

    from adserve.engine.codegen.llvm_kernel import optimise
    loop = """define double @sum_exp(ptr noalias %x, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%j, %loop]
  %acc = phi double [0.0, %entry], [%next, %loop]
  %p = getelementptr inbounds double, ptr %x, i64 %i
  %v = load double, ptr %p
  %e = call double @adserve_exp(double %v)
  %next = fadd double %acc, %e
  %j = add nuw nsw i64 %i, 1
  %end = icmp eq i64 %j, %n
  br i1 %end, label %done, label %loop
done:
  ret double %next
}"""
    plain = loop
    if interleave:
        loop = loop.replace("label %loop\ndone:", "label %loop, !llvm.loop !1\ndone:")
        loop += f'\n!0 = !{{!"llvm.loop.interleave.count", i32 {interleave}}}\n!1 = distinct !{{!1, !0}}'
    mod, tm = optimise(mathlib.EXP + "\n" + loop)  # its target machine sets the options
    ir = str(mod.get_function("sum_exp"))
    assert "x double>" in ir
    if interleave:  # the vector body's exp, written once per interleaved part
        vector_ops = re.compile(r"= fmul <\d+ x double>")
        once = len(vector_ops.findall(str(optimise(mathlib.EXP + "\n" + plain)[0].get_function("sum_exp"))))
        assert once and len(vector_ops.findall(ir)) == interleave * once, ir
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    sum_exp = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p, ctypes.c_int64)(engine.get_function_address("sum_exp"))
    x = RNG.uniform(-30.0, 30.0, 10_001)
    want = 0.0
    for e in mathlib.exp_array(x):
        want += e
    assert sum_exp(x.ctypes.data, x.size) == want


@pytest.mark.parametrize("expr, vectorised", [("sum(exp(x))", True), ("sum(log(x) * x)", True),
                                              ("sum(x * x)", False), ("sum(sin(x))", False)])
def test_only_sums_of_exp_or_log_are_left_to_the_ordered_vectoriser(expr, vectorised):
    """llvm_split.Split.sum_loop_hint: a loop with a sum keeps LLVM's vectoriser only when it calls mathlib (its ordered
    sums cost more than the scalar loop elsewhere: gmm, ode); other loops are not marked."""
    from adserve.engine import Engine, main_plan
    from adserve.engine.codegen.llvm_kernel import module_text
    fn = Engine().compile_definition({"inputs": [{"name": "x", "shape": [1000]}], "expr": expr})
    graph, _ = main_plan(fn, frozenset({"value"}))
    text = module_text(graph, "k", "t")
    marked = "llvm.loop.vectorize.enable" in text
    assert marked is not vectorised
    assert ("llvm.loop.interleave.count" in text) is vectorised  # its ordered sum: two vectors' exps at once
    plain, _ = main_plan(Engine().compile_definition({"inputs": [{"name": "x", "shape": [1000]}],
                                                      "expr": "exp(x) * 2"}), frozenset({"value"}))
    assert "llvm.loop.vectorize.enable" not in module_text(plain, "k", "t")
