"""The primitive table, element-wise part: every row beside its derivative and its spellings.

A row (`builder.Prim`) is the single source for an op: shape rule, NumPy
implementation, derivative rules (as HIPS autograd keeps each VJP beside its op),
its names in the languages (`lang`), its numba template with any scalar helper,
and its line in the user documentation (docs/language.md is generated from it).
Adding an element-wise op is one call below plus a `Spec` in the tests.

Conventions
  * `impl` works on arrays with a leading batch axis (size B, or 1 for a value
    shared by all points); per-point shapes follow it.
  * Rules are written in IR ops on `V` values, so they can be differentiated
    again (HVP = jvp of vjp). A `None` tangent or cotangent is a symbolic zero.
  * The transforms broadcast or sum tangents/cotangents to the right shape, so
    rules need not (autograd's "unbroadcast" done once).
  * A template reads its arguments as `{0}`, `{1}`..; it may call `math`, `np`,
    `abs` and the helpers of any row (compiled by codegen/runtime.py).
Reductions, shapes and contraction are in arrays.py, indexing and gathers in
indexing.py, control flow (`loop`, `cond`, `while`) in control.py.
"""

from __future__ import annotations

import math

import numpy as np

from . import mathlib
from .builder import Linear, Prim, op, register
from .errors import ShapeError
from .mathlib import exp, log  # the scalar helpers of the exp and log rows (mathlib: every tier's exp and log)


def align(*arrays, ndim=None):
    """Give batched arrays equal rank (or `ndim`) by inserting unit axes after the batch axis."""
    if ndim is None and len(arrays) == 2 and arrays[0].ndim == arrays[1].ndim:
        return arrays  # the common case, and hot in the interpreter
    r = max(a.ndim for a in arrays) if ndim is None else ndim
    return [a if a.ndim == r else a.reshape(a.shape[:1] + (1,) * (r - a.ndim) + a.shape[1:]) for a in arrays]


def broadcast_shape(*shapes):
    first = shapes[0]
    if all(s == first or not s for s in shapes):  # the common cases, without NumPy's general machinery
        return tuple(first)
    if not first and all(s == shapes[1] or not s for s in shapes[1:]):
        return tuple(shapes[1])
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError("shapes " + " and ".join(str(list(s)) for s in shapes) + " cannot be broadcast together") from None


# -- scalar helpers: what generated kernels call where `math` has no NumPy twin -----------------
# Kernels use NumPy's error model (log(-1) is NaN, 1/0 infinity); these add NumPy's stable forms and NaN rules.
# `exp` and `log` are mathlib's (in numba's kernels, its IR: runtime.py), never the C library's.
def sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


def softplus(x):
    if x > 0.0:
        return x + math.log1p(exp(-x))
    return math.log1p(exp(x))


def sign(x):
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x  # 0.0, -0.0 or NaN: sign(-0.0) is -0.0, as in JAX (XLA) and C's copysign convention


def _sign(x):
    # NumPy 2 gives sign(-0.0) = +0.0; the compiled tiers and JAX keep the zero's sign
    return np.copysign(np.sign(x), x)


def cbrt(x):
    # numba's np.cbrt and NumPy's differ in the last bit for half of all inputs: the kernels and the python
    # tier compute this instead, the same IEEE operations on both, within an ulp of NumPy's
    if x == 0.0 or x - x != 0.0:  # ±0, ±inf and NaN are their own cube roots
        return x
    a = abs(x)
    y = a ** (1.0 / 3.0)
    y = y - (y * y * y - a) / (3.0 * y * y)  # one Newton step: 1/3 is rounded
    return math.copysign(y, x)


def maximum(a, b):
    # numpy.maximum exactly: a NaN of either is the answer (a's first), and a tie (-0.0 and 0.0) gives b
    return a if a > b or a != a else b


def minimum(a, b):
    return a if a < b or a != a else b


# -- element-wise ops (NumPy broadcasting) ---------------------------------------------------------
def elementwise(name, impl, *partials, arity=None, nondiff=False, **row):
    """An element-wise op of `arity` arguments (default: one per partial, or 1); `partials[i](*xs, ans)` is
    the derivative in argument i as a value. No partials and not `nondiff`: the row declares `linear`.
    The language name defaults to `name` (`lang=()` for ops spelled as operators)."""
    arity = arity or len(partials) or 1
    jvp = vjp = None
    if partials:
        def jvp(ts, xs, ans):
            parts = [t * d(*xs, ans) for t, d in zip(ts, partials) if t is not None]
            out = parts[0]
            for p in parts[1:]:
                out = out + p
            return out

        def vjp(g, xs, ans):
            return [g * d(*xs, ans) for d in partials]

    if arity == 1:
        def shape(s):
            return s

        def run(x):
            return impl(x)
    elif arity == 2:
        def shape(sa, sb):
            if sa == sb or not sb:
                return sa
            return tuple(sb) if not sa else broadcast_shape(sa, sb)

        def run(a, b):
            if a.ndim != b.ndim:
                a, b = align(a, b)
            return impl(a, b)
    else:
        def shape(*shapes):
            return broadcast_shape(*shapes)

        def run(*xs):
            return impl(*align(*xs))
    row.setdefault("lang", (name,))
    # the interpreter's Program gives a literal the other argument's rank, and calls `impl` itself where the ranks
    # agree (every value's rank is its per-point shape's plus the batch axis: `run` would call it alone)
    extra = {"aligns": True, "same_rank": impl, **row.pop("extra", {})} if arity == 2 else {}
    register(Prim(name, shape, run, jvp, vjp, nondiff=nondiff, arity=arity, extra=extra, **row))



# -- LLVM IR of one element (the direct-LLVM back end, codegen/llvm_ir.py) --------------------------------
# `{0}`.. are the operands, `%{t}` prefixes the element's own names and `%{t}r` is its value. Each is what numba
# emits for the row's `template` (the same LLVM intrinsic or libm call, the helper's comparisons as selects), so
# both back ends compute the same bits; no fast-math flags, as the numba kernels.
def _ir_call(fn, arity=1):
    return f"%{{t}}r = call double @{fn}({', '.join(f'double {{{i}}}' for i in range(arity))})"


def _ir_op(instr):
    return f"%{{t}}r = {instr} double {{0}}, {{1}}"


def _ir_cmp(cond):
    return f"%{{t}}c = fcmp {cond} double {{0}}, {{1}}\n%{{t}}r = select i1 %{{t}}c, double 1.0, double 0.0"


def _ir_pick(cond, a="{0}", b="{1}", out="r"):
    """a if a (cond) b or a is NaN else b: the helpers maximum and minimum (NumPy's NaN and tie rules)."""
    return (f"%{{t}}{out}1 = fcmp {cond} double {a}, {b}\n%{{t}}{out}2 = fcmp uno double {a}, {a}\n"
            f"%{{t}}{out}3 = or i1 %{{t}}{out}1, %{{t}}{out}2\n"
            f"%{{t}}{out} = select i1 %{{t}}{out}3, double {a}, double {b}")


# the stable forms compute exp once, of the argument their branch would take (the same operations, no branch)
_IR_SIGMOID = """%{t}c = fcmp oge double {0}, 0.0
%{t}n = fneg double {0}
%{t}m = select i1 %{t}c, double %{t}n, double {0}
%{t}e = call double @adserve_exp(double %{t}m)
%{t}d = fadd double 1.0, %{t}e
%{t}u = select i1 %{t}c, double 1.0, double %{t}e
%{t}r = fdiv double %{t}u, %{t}d"""
_IR_SOFTPLUS = """%{t}c = fcmp ogt double {0}, 0.0
%{t}n = fneg double {0}
%{t}m = select i1 %{t}c, double %{t}n, double {0}
%{t}e = call double @adserve_exp(double %{t}m)
%{t}l = call double @log1p(double %{t}e)
%{t}s = fadd double {0}, %{t}l
%{t}r = select i1 %{t}c, double %{t}s, double %{t}l"""
_IR_SIGN = """%{t}p = fcmp ogt double {0}, 0.0
%{t}n = fcmp olt double {0}, 0.0
%{t}m = select i1 %{t}n, double -1.0, double {0}
%{t}r = select i1 %{t}p, double 1.0, double %{t}m"""
_IR_CBRT = """%{t}z = fcmp oeq double {0}, 0.0
%{t}d = fsub double {0}, {0}
%{t}f = fcmp une double %{t}d, 0.0
%{t}s = or i1 %{t}z, %{t}f
%{t}a = call double @llvm.fabs.f64(double {0})
%{t}y = call double @llvm.pow.f64(double %{t}a, double 0x3FD5555555555555)
%{t}y2 = fmul double %{t}y, %{t}y
%{t}y3 = fmul double %{t}y2, %{t}y
%{t}n = fsub double %{t}y3, %{t}a
%{t}q = fmul double 3.0, %{t}y
%{t}q2 = fmul double %{t}q, %{t}y
%{t}v = fdiv double %{t}n, %{t}q2
%{t}w = fsub double %{t}y, %{t}v
%{t}c = call double @llvm.copysign.f64(double %{t}w, double {0})
%{t}r = select i1 %{t}s, double {0}, double %{t}c"""
_IR_LOGADDEXP = """%{t}e = fcmp oeq double {0}, {1}
%{t}s = fadd double {0}, 0x3FE62E42FEFA39EF
""" + _ir_pick("ogt", out="m") + """
%{t}d = fsub double {0}, {1}
%{t}a = call double @llvm.fabs.f64(double %{t}d)
%{t}n = fneg double %{t}a
%{t}x = call double @adserve_exp(double %{t}n)
%{t}l = call double @log1p(double %{t}x)
%{t}o = fadd double %{t}m, %{t}l
%{t}r = select i1 %{t}e, double %{t}s, double %{t}o"""
_IR_CLIP = _ir_pick("ogt", out="m") + "\n" + _ir_pick("olt", "%{t}m", "{2}")


def _sigmoid(x):
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + mathlib.exp_array(-x[pos]))
    e = mathlib.exp_array(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _softplus(x):
    # the helper's and the IR's operations: exp of the argument the stable branch takes, log1p, the branch's sum
    pos = x > 0.0
    e = np.log1p(mathlib.exp_array(np.where(pos, -x, x)))
    return np.where(pos, x + e, e)


def _logaddexp(a, b):
    # the template's operations (NumPy's logaddexp, with mathlib's exp): a tie is a + log 2, so inf stays inf
    with np.errstate(invalid="ignore"):
        d = np.log1p(mathlib.exp_array(-np.abs(a - b)))
        return np.where(a == b, a + 0.6931471805599453, np.maximum(a, b) + d)


def _special(fn):
    def impl(x):
        from scipy import special  # only graphs that use it pay for the import
        return getattr(special, fn)(x)
    return impl


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

elementwise("neg", np.negative, linear=Linear(lambda g, xs: [-g]), lang=(), template="-{0}", signature="-x",
            ir="%{t}r = fneg double {0}",
            doc="negation")
elementwise("sin", np.sin, lambda x, a: op.cos(x), template="math.sin({0})", ir=_ir_call("llvm.sin.f64"),
            doc="sine")
elementwise("cos", np.cos, lambda x, a: -op.sin(x), template="math.cos({0})", ir=_ir_call("llvm.cos.f64"),
            doc="cosine")
elementwise("tan", np.tan, lambda x, a: 1.0 + a * a, template="math.tan({0})", ir=_ir_call("tan"),
            doc="tangent")
elementwise("arcsin", np.arcsin, lambda x, a: 1.0 / op.sqrt(1.0 - x * x), template="math.asin({0})",
            ir=_ir_call("asin"),
            doc="inverse sine, for x in [-1, 1]")
elementwise("arccos", np.arccos, lambda x, a: -1.0 / op.sqrt(1.0 - x * x), template="math.acos({0})",
            ir=_ir_call("acos"),
            doc="inverse cosine, for x in [-1, 1]")
elementwise("arctan", np.arctan, lambda x, a: 1.0 / (1.0 + x * x), template="math.atan({0})", ir=_ir_call("atan"),
            doc="inverse tangent")
elementwise("sinh", np.sinh, lambda x, a: op.cosh(x), template="math.sinh({0})", ir=_ir_call("sinh"),
            doc="hyperbolic sine")
elementwise("cosh", np.cosh, lambda x, a: op.sinh(x), template="math.cosh({0})", ir=_ir_call("cosh"),
            doc="hyperbolic cosine")
elementwise("tanh", np.tanh, lambda x, a: 1.0 - a * a, template="math.tanh({0})", ir=_ir_call("tanh"),
            doc="hyperbolic tangent")
elementwise("exp", mathlib.exp_array, lambda x, a: a, template="exp({0})", helper=exp,
            ir=_ir_call("adserve_exp"),
            doc="e to the x (adserve's own, within an ulp, the same bits on every tier: exp(1) is an ulp above "
                "e, as JAX's)")
elementwise("expm1", np.expm1, lambda x, a: a + 1.0, template="math.expm1({0})", ir=_ir_call("expm1"),
            doc="exp(x) - 1, exact for small x")
elementwise("log", mathlib.log_array, lambda x, a: 1.0 / x, template="log({0})", helper=log,
            ir=_ir_call("adserve_log"),
            doc="natural logarithm (adserve's own, within an ulp, the same bits on every tier)")
elementwise("log1p", np.log1p, lambda x, a: 1.0 / (1.0 + x), template="math.log1p({0})",
            ir=_ir_call("log1p"),
            doc="log(1 + x), exact for small x")
elementwise("sqrt", np.sqrt, lambda x, a: 0.5 / a, template="math.sqrt({0})", ir=_ir_call("sqrt"),
            doc="square root")
elementwise("abs", np.abs, lambda x, a: op.sign(x), template="abs({0})",
            ir=_ir_call("llvm.fabs.f64"),
            doc="absolute value; derivative sign(x), which is 0 at x = 0")
elementwise("sign", _sign, nondiff=True, template="sign({0})", helper=sign,
            ir=_IR_SIGN,
            doc="-1, 0 or 1 (sign(-0.0) = -0.0, NaN at NaN); derivative 0")
elementwise("sigmoid", _sigmoid, lambda x, a: a * (1.0 - a), template="sigmoid({0})", helper=sigmoid,
            ir=_IR_SIGMOID,
            doc="1 / (1 + exp(-x)), without overflow for large |x|")
elementwise("softplus", _softplus, lambda x, a: op.sigmoid(x), template="softplus({0})",
            helper=softplus, ir=_IR_SOFTPLUS,
            doc="log(1 + exp(x)), without overflow for large |x|")

elementwise("erf", _special("erf"), lambda x, a: _TWO_OVER_SQRT_PI * op.exp(-(x * x)), template="math.erf({0})",
            ir=_ir_call("erf"),
            doc="the error function")
elementwise("erfc", _special("erfc"), lambda x, a: -_TWO_OVER_SQRT_PI * op.exp(-(x * x)),
            template="math.erfc({0})", ir=_ir_call("erfc"),
            doc="1 - erf(x), accurate where erf(x) is near 1")
elementwise("log2", np.log2, lambda x, a: 1.0 / (x * math.log(2.0)), template="math.log2({0})",
            ir=_ir_call("log2"),
            doc="base-2 logarithm")
elementwise("log10", np.log10, lambda x, a: 1.0 / (x * math.log(10.0)), template="math.log10({0})",
            ir=_ir_call("llvm.log10.f64"),
            doc="base-10 logarithm")
elementwise("exp2", np.exp2, lambda x, a: a * math.log(2.0), template="(2.0 ** {0})", ir="%{t}r = call double @llvm.pow.f64(double 2.0, double {0})",
            doc="2 to the x")
elementwise("cbrt", np.cbrt, lambda x, a: 1.0 / (3.0 * a * a), template="cbrt({0})", helper=cbrt,
            ir=_IR_CBRT,
            doc="cube root, real for negative x; its derivative is infinite at 0")
elementwise("arcsinh", np.arcsinh, lambda x, a: 1.0 / op.sqrt(x * x + 1.0), template="math.asinh({0})",
            ir=_ir_call("asinh"),
            doc="inverse hyperbolic sine")
elementwise("arccosh", np.arccosh, lambda x, a: 1.0 / (op.sqrt(x - 1.0) * op.sqrt(x + 1.0)),
            template="math.acosh({0})", ir=_ir_call("acosh"),
            doc="inverse hyperbolic cosine, for x >= 1")
elementwise("arctanh", np.arctanh, lambda x, a: 1.0 / (1.0 - x * x), template="math.atanh({0})",
            ir=_ir_call("atanh"),
            doc="inverse hyperbolic tangent, for x in (-1, 1)")
elementwise("square", np.square, lambda x, a: 2.0 * x, template="({0} * {0})", ir="%{t}r = fmul double {0}, {0}",
            doc="x * x")
elementwise("deg2rad", np.deg2rad, linear=Linear(lambda g, xs: [op.deg2rad(g)]),
            template="({0} * 0.017453292519943295)", ir="%{t}r = fmul double {0}, 0x3F91DF46A2529D39",
            doc="degrees to radians: x * (pi / 180)")
elementwise("floor", np.floor, nondiff=True, template="np.floor({0})",
            ir=_ir_call("llvm.floor.f64"),
            doc="the largest integer <= x; derivative 0, at the jumps too")
elementwise("ceil", np.ceil, nondiff=True, template="np.ceil({0})",
            ir=_ir_call("llvm.ceil.f64"),
            doc="the smallest integer >= x; derivative 0, at the jumps too")
elementwise("round", np.rint, nondiff=True, template="np.rint({0})",
            ir=_ir_call("llvm.rint.f64"),
            doc="the nearest integer, halves to even (as NumPy: round(2.5) is 2); derivative 0, at the jumps too")


def _pow_da(a, b, ans):
    if b.is_lit() and b.atom.fill not in (None, 0.0):
        return b * op.pow(a, b - 1.0)
    return op.where(op.eq(b, 0.0), 0.0, b * op.pow(a, b - 1.0))


def _pow_db(a, b, ans):
    return ans * op.log(op.where(op.eq(a, 0.0), 1.0, a))


def _max_d(first):
    def d(a, b, ans):
        win = op.gt(a, b) if first else op.lt(a, b)
        return win + 0.5 * op.eq(a, b)
    return d


def _min_d(first):
    def d(a, b, ans):
        win = op.lt(a, b) if first else op.gt(a, b)
        return win + 0.5 * op.eq(a, b)
    return d


elementwise("add", np.add, arity=2, linear=Linear(lambda g, xs: [g, g], signs=(1, 1)), lang=(),
            template="{0} + {1}", signature="a + b", ir=_ir_op("fadd"),
            doc="addition")
elementwise("sub", np.subtract, arity=2, linear=Linear(lambda g, xs: [g, -g], signs=(1, -1)), lang=(),
            template="{0} - {1}", signature="a - b", ir=_ir_op("fsub"),
            doc="subtraction")
elementwise("mul", np.multiply, lambda a, b, y: b, lambda a, b, y: a, lang=(), template="{0} * {1}",
            signature="a * b", ir=_ir_op("fmul"),
            doc="multiplication")
elementwise("div", np.divide, lambda a, b, y: 1.0 / b, lambda a, b, y: -y / b, lang=(), template="{0} / {1}",
            signature="a / b", ir=_ir_op("fdiv"),
            doc="division")
elementwise("pow", np.power, _pow_da, _pow_db, template="{0} ** {1}", signature="pow(a, b), a ** b",
            ir=_ir_call("llvm.pow.f64", 2),
            doc="a to the power b; d/da is 0 where b = 0, d/db is 0 where a = 0")
elementwise("arctan2", np.arctan2, lambda a, b, y: b / (a * a + b * b), lambda a, b, y: -a / (a * a + b * b),
            template="math.atan2({0}, {1})", signature="arctan2(y, x)", ir=_ir_call("atan2", 2),
            doc="angle of the point (x, y)")
elementwise("hypot", np.hypot, lambda a, b, y: a / y, lambda a, b, y: b / y, template="math.hypot({0}, {1})",
            ir=_ir_call("hypot", 2),
            doc="sqrt(a**2 + b**2) without overflow for large inputs")
elementwise("maximum", np.maximum, _max_d(True), _max_d(False), template="maximum({0}, {1})", helper=maximum,
            ir=_ir_pick("ogt"),
            doc="the larger of a and b (NaN if either is); at a tie each gets half the derivative")
elementwise("minimum", np.minimum, _min_d(True), _min_d(False), template="minimum({0}, {1})", helper=minimum,
            ir=_ir_pick("olt"),
            doc="the smaller of a and b (NaN if either is); at a tie each gets half the derivative")
elementwise("logaddexp", _logaddexp, lambda a, b, y: op.exp(a - y), lambda a, b, y: op.exp(b - y),
            template="({0} + 0.6931471805599453) if {0} == {1} else "
                     "maximum({0}, {1}) + math.log1p(exp(-abs({0} - {1})))",
            ir=_IR_LOGADDEXP,
            doc="log(exp(a) + exp(b)) without overflow; d/da is exp(a - logaddexp(a, b))")
for _name, _fn, _sym, _cond in (("lt", np.less, "<", "olt"), ("le", np.less_equal, "<=", "ole"),
                                ("gt", np.greater, ">", "ogt"), ("ge", np.greater_equal, ">=", "oge"),
                                ("eq", np.equal, "==", "oeq"), ("ne", np.not_equal, "!=", "une")):
    # `truth`: the comparison as booleans, for a while loop's condition that is only tested (straight.py)
    elementwise(_name, lambda a, b, _fn=_fn: _fn(a, b).astype(np.float64), arity=2, nondiff=True, lang=(),
                extra={"truth": _fn}, template=f"1.0 if {{0}} {_sym} {{1}} else 0.0", signature=f"a {_sym} b",
                ir=_ir_cmp(_cond),
                doc="comparison: 1.0 if true, else 0.0; derivative 0")


def _clip_dx(x, lo, hi, ans):
    m = op.maximum(x, lo)
    return _min_d(True)(m, hi, ans) * _max_d(True)(x, lo, ans)


def _clip_dlo(x, lo, hi, ans):
    m = op.maximum(x, lo)
    return _min_d(True)(m, hi, ans) * _max_d(False)(x, lo, ans)


elementwise("clip", lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), _clip_dx, _clip_dlo,
            lambda x, lo, hi, ans: _min_d(False)(op.maximum(x, lo), hi, ans),
            template="minimum(maximum({0}, {1}), {2})", signature="clip(x, lo, hi)",
            ir=_IR_CLIP,
            doc="minimum(maximum(x, lo), hi), and differentiated as that: where x is at a bound, "
                "x and the bound each get half the derivative")

def _where_impl(c, a, b):
    c, a, b = align(c, a, b)
    return np.where(c != 0, a, b)


def _where_jvp(ts, xs, ans):
    _, ta, tb = ts
    c = xs[0]
    if ta is None and tb is None:
        return None
    return op.where(c, 0.0 if ta is None else ta, 0.0 if tb is None else tb)


register(Prim("where", lambda sc, sa, sb: broadcast_shape(sc, sa, sb), _where_impl, _where_jvp,
              lambda g, xs, ans: [None, op.where(xs[0], g, 0.0), op.where(xs[0], 0.0, g)], arity=3,
              lang=("where",), signature="where(c, a, b)", template="{1} if {0} != 0.0 else {2}",
              ir="%{t}c = fcmp une double {0}, 0.0\n%{t}r = select i1 %{t}c, double {1}, double {2}",
              doc="a where c != 0, else b; the derivative flows to the branch taken, none to c"))
