"""Every primitive in the table, checked at the builder/IR level against JAX (float64).

One parametrised test, `test_primitive[spec-check]`, runs five checks for each op spec:
  value  the interpreter's result equals JAX's;
  jvp    jvp_graph against jax.jvp and against central finite differences;
  vjp    vjp_graph against jax.vjp, and the dot-product test <vjp(ct), t> == <ct, jvp(t)>;
  hvp    jvp of (value, gradient) of sum_j <f_j(x), w_j> against jax.jvp(jax.grad(...));
  batch  B=4 points in one run equal 4 single runs (also with one input shared by all
         points, i.e. a leading axis of 1), for the graph and its JVP and VJP graphs.
`test_every_primitive_has_a_spec` fails when PRIMS gains an op with no spec here.

Conventions pinned down here (engine == JAX unless noted):
  * maximum/minimum at a tie: each argument gets half the derivative (JAX: the same).
  * reduce_max/reduce_min with ties: the derivative is shared evenly among the tied
    entries (JAX: the same).
  * abs at 0: the engine's derivative is sign(0) = 0 (documented in the table);
    JAX uses 1 there. Tested on its own below, not against JAX.
  * pow: d(a**b)/da is 0 where b == 0 (JAX gives nan at a == b == 0), d/db is 0 at a == 0.
  * Nondifferentiable primitives (comparisons, sign) have a symbolic zero derivative:
    the JVP graph has no tangent output for them and the VJP gives exact zeros.
  * Reductions over an empty axis give the identity (sum 0, max -inf, min +inf,
    logsumexp -inf), as JAX does, or are refused when the graph is built.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest
from jax import lax
from jax.scipy.special import logsumexp as jlogsumexp

from engine_helpers import (FD, PRIMS, VAL, Builder, Lit, V, assert_close, central_fd, cond, hvp_point, run,
                            inline, jax_reference, jnp, jvp_graph, jvp_point, make_graph, op, prims_used,
                            run_batch, run_point, scan, vdot, vjp_graph, vjp_point)

import jax

from adserve.engine.builder import emit
from adserve.engine.frontends.functions import norm


# -- samplers: (rng, shape, k) -> array; k is the index of the point being drawn ------------
def normal(scale=1.0):
    return lambda rng, s, k: scale * rng.standard_normal(s)


def uniform(lo, hi):
    return lambda rng, s, k: rng.uniform(lo, hi, s)


def away0(lo=0.5, hi=2.0):
    return lambda rng, s, k: rng.choice([-1.0, 1.0], s) * rng.uniform(lo, hi, s)


def small_ints(lo=-2, hi=2):
    """Values with many exact ties."""
    return lambda rng, s, k: rng.integers(lo, hi + 1, s).astype(np.float64)


def index(hi):
    """An integer-valued index in 0..hi (a float, as every value in the IR)."""
    return lambda rng, s, k: np.asarray(float(rng.integers(0, hi + 1)))


def flags():
    return lambda rng, s, k: rng.choice([0.0, 1.0, -2.0], s)


def pred_alternating():
    """Even points take the true branch (any nonzero value), odd points the false one."""
    return lambda rng, s, k: np.asarray(float(rng.choice([1.0, -2.5, 0.5])) if k % 2 == 0 else 0.0)


def off_jumps(jump):
    """Values at least 0.1 from every integer + `jump` (where floor/ceil or round jump)."""
    return lambda rng, s, k: rng.integers(-3, 4, s) + jump + rng.choice([-1.0, 1.0], s) * rng.uniform(0.1, 0.4, s)


def fixed(value):
    return lambda rng, s, k: np.asarray(value, dtype=np.float64).reshape(s)


def signs_alternating(scale=1.0):
    """Entries of alternating sign, flipped between points (drives branches inside loops)."""
    def draw(rng, s, k):
        mag = rng.uniform(0.3, 1.0, s) * scale
        sgn = np.where(np.arange(int(np.prod(s))).reshape(s) % 2 == k % 2, 1.0, -1.0)
        return mag * sgn
    return draw


@dataclass
class Spec:
    id: str
    prim: str  # the primitive this spec covers (it must appear in the graph)
    f: Callable  # engine: V values -> V or tuple of V
    jf: Callable  # JAX reference: arrays -> array or tuple
    shapes: list
    samplers: Optional[list] = None  # one per input; default standard normal
    fd_zero: tuple = ()  # inputs held fixed for finite differences (indices, flags, predicates)
    fd: bool = True  # False at nondifferentiable points (ties): compare with JAX only
    nondiff: bool = False  # expect a symbolic zero derivative
    points: tuple = (0,)  # which point indices the single-point checks use
    hvp: bool = True
    rewritten: bool = False  # the builder rewrites the op away (x**2 -> x*x): checks run, coverage not counted
    xfail: dict = field(default_factory=dict)  # check -> reason (engine bugs not yet fixed)

    def draw(self, rng, k):
        samplers = self.samplers or [normal()] * len(self.shapes)
        return [np.asarray(smp(rng, tuple(s), k), dtype=np.float64).reshape(s)
                for smp, s in zip(samplers, self.shapes)]


SPECS: list[Spec] = []


def spec(*args, **kw):
    SPECS.append(Spec(*args, **kw))


# -- element-wise unary ---------------------------------------------------------------------
UNARY = [
    ("neg", lambda x: -x, jnp.negative, normal()),
    ("sin", op.sin, jnp.sin, normal()),
    ("cos", op.cos, jnp.cos, normal()),
    ("tan", op.tan, jnp.tan, uniform(-1.2, 1.2)),
    ("arcsin", op.arcsin, jnp.arcsin, uniform(-0.9, 0.9)),
    ("arccos", op.arccos, jnp.arccos, uniform(-0.9, 0.9)),
    ("arctan", op.arctan, jnp.arctan, normal(2.0)),
    ("sinh", op.sinh, jnp.sinh, normal()),
    ("cosh", op.cosh, jnp.cosh, normal()),
    ("tanh", op.tanh, jnp.tanh, normal()),
    ("exp", op.exp, jnp.exp, normal()),
    ("expm1", op.expm1, jnp.expm1, normal()),
    ("log", op.log, jnp.log, uniform(0.3, 3.0)),
    ("log1p", op.log1p, jnp.log1p, uniform(-0.6, 2.0)),
    ("sqrt", op.sqrt, jnp.sqrt, uniform(0.3, 3.0)),
    ("abs", op.abs, jnp.abs, away0()),
    ("sign", op.sign, jnp.sign, away0()),
    ("sigmoid", op.sigmoid, jax.nn.sigmoid, normal(3.0)),
    ("softplus", op.softplus, jax.nn.softplus, normal(3.0)),
    ("erf", op.erf, jax.scipy.special.erf, normal()),
    ("erfc", op.erfc, jax.scipy.special.erfc, normal()),
    ("log2", op.log2, jnp.log2, uniform(0.3, 3.0)),
    ("log10", op.log10, jnp.log10, uniform(0.3, 3.0)),
    ("exp2", op.exp2, jnp.exp2, normal()),
    ("cbrt", op.cbrt, jnp.cbrt, away0()),
    ("arcsinh", op.arcsinh, jnp.arcsinh, normal(2.0)),
    ("arccosh", op.arccosh, jnp.arccosh, uniform(1.2, 3.0)),
    ("arctanh", op.arctanh, jnp.arctanh, uniform(-0.9, 0.9)),
    ("square", op.square, jnp.square, normal()),
    ("deg2rad", op.deg2rad, jnp.deg2rad, normal(100.0)),
    ("floor", op.floor, jnp.floor, off_jumps(0.0)),
    ("ceil", op.ceil, jnp.ceil, off_jumps(0.0)),
    ("round", op.round, jnp.round, off_jumps(0.5)),
]
NONDIFF = {"sign", "floor", "ceil", "round"}
for _name, _f, _jf, _smp in UNARY:
    for _shape in [(), (2, 3)]:
        spec(f"{_name}{list(_shape)}", _name, _f, _jf, [_shape], [_smp], nondiff=_name in NONDIFF)
# NumPy's round: halves to even (JAX's too)
spec("round-halves", "round", op.round, jnp.round, [(6,)], [fixed([0.5, 1.5, 2.5, -0.5, -2.5, 3.5])], nondiff=True,
     fd=False)
# overflow-prone arguments: the stable formulations must agree with JAX's
spec("sigmoid-large", "sigmoid", op.sigmoid, jax.nn.sigmoid, [(5,)], [fixed([-800.0, -40.0, 0.3, 40.0, 800.0])])
spec("softplus-large", "softplus", op.softplus, jax.nn.softplus, [(5,)], [fixed([-800.0, -40.0, 0.3, 40.0, 800.0])])
spec("tanh-large", "tanh", op.tanh, jnp.tanh, [(3,)], [fixed([-30.0, 0.1, 30.0])])

# -- element-wise binary, with broadcasting ------------------------------------------------------
BINARY = [
    ("add", lambda a, b: a + b, jnp.add, [normal(), normal()]),
    ("sub", lambda a, b: a - b, jnp.subtract, [normal(), normal()]),
    ("mul", lambda a, b: a * b, jnp.multiply, [normal(), normal()]),
    ("div", lambda a, b: a / b, jnp.divide, [normal(), away0()]),
    ("pow", lambda a, b: a ** b, jnp.power, [uniform(0.3, 2.5), normal()]),
    ("arctan2", op.arctan2, jnp.arctan2, [normal(), normal()]),
    ("hypot", op.hypot, jnp.hypot, [away0(), away0()]),
    ("maximum", op.maximum, jnp.maximum, [normal(), normal()]),
    ("minimum", op.minimum, jnp.minimum, [normal(), normal()]),
    ("logaddexp", op.logaddexp, jnp.logaddexp, [normal(3.0), normal(3.0)]),
]
BINARY_SHAPES = [((2, 3), (2, 3)), ((3, 1), (4,)), ((), (2, 3)), ((2, 3), ())]
for _name, _f, _jf, _smp in BINARY:
    for _sa, _sb in BINARY_SHAPES:
        spec(f"{_name}{list(_sa)}{list(_sb)}", _name, _f, _jf, [_sa, _sb], _smp)
# operators with a literal on the left, and literal exponents (pow's special-cased rule)
spec("rsub-literal", "sub", lambda x: 2.0 - x, lambda x: 2.0 - x, [(3,)])
spec("rdiv-literal", "div", lambda x: 1.0 / x, lambda x: 1.0 / x, [(3,)], [away0()])
spec("pow-lit3-negative-base", "pow", lambda x: x ** 3.0, lambda x: x ** 3.0, [(4,)], [normal()],
     rewritten=True)  # multiplications (powers.MAX_INT_POWER)
spec("pow-lit-half", "pow", lambda x: x ** 0.5, lambda x: x ** 0.5, [(3,)], [uniform(0.3, 2.0)])
# small integer literal exponents, which the builder may rewrite as cheaper exact ops
for _p in (0.0, 1.0, 2.0, -1.0):
    spec(f"pow-lit{_p:g}", "pow", lambda x, _p=_p: x ** _p, lambda x, _p=_p: x ** _p, [(3,)],
         [away0() if _p < 0 else normal()], rewritten=True)
spec("pow-lit-negative", "pow", lambda x: x ** -2.0, lambda x: x ** -2.0, [(3,)], [away0()])
spec("pow-literal-base", "pow", lambda y: op.pow(2.0, y), lambda y: 2.0 ** y, [(3,)], [normal()])
# ties (JAX and the engine both split the derivative evenly); no finite differences there
for _name, _f, _jf in [("maximum", op.maximum, jnp.maximum), ("minimum", op.minimum, jnp.minimum)]:
    spec(f"{_name}-ties", _name, _f, _jf, [(8,), (8,)],
         [fixed([1, 2, 3, -1, 0, 5, 2, 2]), fixed([1, 0, 3, -1, 1, 4, 2, 3])], fd=False)
    spec(f"{_name}-self", _name, lambda x, _f=_f: _f(x, x), lambda x, _jf=_jf: _jf(x, x), [(3,)], fd=False)

# clip(x, lo, hi): minimum(maximum(x, lo), hi), as JAX's jnp.clip (ties split the derivative as those do)
for _shapes in [((2, 3), (), ()), ((2, 3), (3,), (2, 1)), ((), (2, 3), ())]:
    spec(f"clip{[list(s) for s in _shapes]}", "clip", op.clip, jnp.clip, list(_shapes),
         [normal(), uniform(-1.0, -0.2), uniform(0.2, 1.0)])
spec("clip-at-bounds", "clip", op.clip, jnp.clip, [(5,), (5,), (5,)],
     [fixed([-1.0, 0.5, 2.0, 0.0, 3.0]), fixed([-1.0, 0.0, 0.0, 0.0, 3.0]), fixed([1.0, 0.5, 1.0, 0.0, 3.0])], fd=False)

# norm: a composite (functions.norm), safe at 0 to second order; the reference is written the same way
def _jnorm(x):
    s = jnp.sum(x * x)
    return jnp.where(s == 0, 0.0, jnp.sqrt(jnp.where(s == 0, 1.0, s)))


for _shape in [(), (3,), (2, 3)]:
    spec(f"norm{list(_shape)}", "sqrt", lambda x: norm(emit, x), _jnorm, [_shape])
spec("norm-at-zero", "sqrt", lambda x: norm(emit, x), _jnorm, [(3,)], [fixed([0.0, 0.0, 0.0])], fd=False)

# comparisons: values 1.0/0.0, derivative a symbolic zero
COMPARE = [("lt", jnp.less), ("le", jnp.less_equal), ("gt", jnp.greater), ("ge", jnp.greater_equal),
           ("eq", jnp.equal), ("ne", jnp.not_equal)]
for _name, _jf in COMPARE:
    _e = getattr(op, _name)
    _j = (lambda a, b, _jf=_jf: _jf(a, b).astype(jnp.float64))
    spec(f"{_name}[2,3][3]", _name, _e, _j, [(2, 3), (3,)], nondiff=True)
    spec(f"{_name}-ties", _name, _e, _j, [(3, 4), (4,)], [small_ints(), small_ints()], nondiff=True, fd=False)

# where: the condition is not differentiated (JAX: the same through `c != 0`)
spec("where[3][2,3][]", "where", op.where, lambda c, a, b: jnp.where(c != 0, a, b), [(3,), (2, 3), ()],
     [flags(), normal(), normal()], fd_zero=(0,))
spec("where[2,3][][3]", "where", op.where, lambda c, a, b: jnp.where(c != 0, a, b), [(2, 3), (), (3,)],
     [flags(), normal(), normal()], fd_zero=(0,))
spec("where-piecewise", "where", lambda x, y: op.where(op.gt(x, y), x * x, op.sin(y)),
     lambda x, y: jnp.where(x > y, x * x, jnp.sin(y)), [(4,), (4,)])

# -- reductions -------------------------------------------------------------------------------
REDUCE = [("reduce_sum", jnp.sum), ("reduce_max", jnp.max), ("reduce_min", jnp.min), ("logsumexp", jlogsumexp)]
REDUCE_CASES = [((2, 3), None), ((2, 3), (0,)), ((2, 3), -1), ((2, 3, 4), (0, 2)), ((), None), ((3,), ())]
for _name, _jf in REDUCE:
    for _shape, _axes in REDUCE_CASES:
        spec(f"{_name}{list(_shape)}-axes{_axes}", _name,
             lambda x, _n=_name, _a=_axes: getattr(op, _n)(x, axes=_a),
             lambda x, _jf=_jf, _a=_axes: _jf(x, axis=_a), [_shape])
for _name, _jf in REDUCE[1:3]:
    spec(f"{_name}-ties", _name, lambda x, _n=_name: getattr(op, _n)(x, axes=(1,)),
         lambda x, _jf=_jf: _jf(x, axis=1), [(3, 3)], [fixed([[1, 3, 3], [2, 2, 0], [-1, -1, -1]])], fd=False)
spec("logsumexp-large", "logsumexp", lambda x: op.logsumexp(x, axes=(1,)), lambda x: jlogsumexp(x, axis=1), [(2, 3)],
     [fixed([[1000.0, 999.0, -5.0], [-1000.0, -1001.0, -1000.5]])])


# -- shape manipulation ---------------------------------------------------------------------------
def _jsum_to(x, shape):
    lead = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


for _src, _dst in [((2, 3), (3, 2)), ((6,), (2, -1)), ((), (1,)), ((2, 3, 2), (12,)), ((1,), ())]:
    spec(f"reshape{list(_src)}->{list(_dst)}", "reshape", lambda x, _d=_dst: op.reshape(x, shape=_d),
         lambda x, _d=_dst: jnp.reshape(x, _d), [_src])
for _src, _perm in [((2, 3), (1, 0)), ((2, 3, 4), (2, 0, 1)), ((2, 3, 4), None), ((2, 3, 4), (-1, 0, 1))]:
    spec(f"transpose{list(_src)}-{_perm}", "transpose", lambda x, _p=_perm: op.transpose(x, perm=_p),
         lambda x, _p=_perm: jnp.transpose(x, None if _p is None else tuple(p % x.ndim for p in _p)), [_src])
for _src, _dst in [((3,), (2, 3)), ((), (2, 2)), ((3, 1), (2, 3, 4)), ((2, 3), (2, 3))]:
    spec(f"broadcast_to{list(_src)}->{list(_dst)}", "broadcast_to", lambda x, _d=_dst: op.broadcast_to(x, shape=_d),
         lambda x, _d=_dst: jnp.broadcast_to(x, _d), [_src], rewritten=_src == _dst)  # the same shape folds away
for _src, _dst in [((2, 3), (3,)), ((3, 4), (3, 1)), ((2, 3), ()), ((2, 3, 4), (1, 4))]:
    spec(f"sum_to{list(_src)}->{list(_dst)}", "sum_to", lambda x, _d=_dst: op.sum_to(x, shape=_d),
         lambda x, _d=_dst: _jsum_to(x, _d), [_src])
for _shapes, _axis in [([(2, 3), (1, 3)], 0), ([(2, 1), (2, 3), (2, 2)], 1), ([(2, 3), (2, 2)], -1), ([(3,)], 0)]:
    spec(f"concatenate{[list(s) for s in _shapes]}-axis{_axis}", "concatenate",
         lambda *xs, _a=_axis: op.concatenate(*xs, axis=_a), lambda *xs, _a=_axis: jnp.concatenate(xs, axis=_a),
         list(_shapes))

# -- contraction -------------------------------------------------------------------------------------
for _spec_str, _sa, _sb in [("ij,jk->ik", (2, 3), (3, 4)), ("i,i->", (3,), (3,)), ("ij,j->i", (2, 3), (3,)),
                            ("i,j->ij", (2,), (3,)), ("bij,bjk->bik", (2, 2, 3), (2, 3, 2)),
                            ("ij,ij->ji", (2, 3), (2, 3)), ("ijk,kj->i", (2, 3, 4), (4, 3)),
                            ("ij, jk -> ki", (2, 3), (3, 2))]:
    spec(f"einsum-{_spec_str.replace(' ', '')}", "einsum", lambda a, b, _s=_spec_str: op.einsum(a, b, spec=_s),
         lambda a, b, _s=_spec_str: jnp.einsum(_s.replace(" ", ""), a, b), [_sa, _sb])


# -- indexing -----------------------------------------------------------------------------------------
def _jslice(x, index):
    """Reference for a static index, built from explicit index lists (not Python slices)."""
    for ax in reversed(range(len(index))):
        e = index[ax]
        if isinstance(e, int):
            x = jnp.take(x, e, axis=ax)
        else:
            start, length, step = e
            x = jnp.take(x, jnp.array([start + j * step for j in range(length)], dtype=jnp.int32), axis=ax)
    return x


def _jupdate(x, v, index):
    idx = []
    for e in index:
        if isinstance(e, int):
            idx.append(e)
        else:
            start, length, step = e
            idx.append(np.array([start + j * step for j in range(length)]))
    # open mesh over the sliced axes, like np.ix_ but leaving int entries as they are
    arrays = [i for i in idx if not isinstance(i, int)]
    mesh = iter(np.ix_(*arrays)) if arrays else iter(())
    full = tuple(i if isinstance(i, int) else next(mesh) for i in idx)
    return x.at[full].set(v)


SLICES = [((3, 4), (1, (0, 2, 1))), ((5,), ((4, 3, -1),)), ((3, 4), ((0, 3, 1), (3, 2, -2))), ((3, 4), (2, 1)),
          ((6,), ((1, 3, 2),)), ((2, 3, 4), ((0, 2, 1), 2, (1, 2, 2)))]
for _shape, _idx in SLICES:
    spec(f"slice{list(_shape)}-{_idx}", "slice", lambda x, _i=_idx: op.slice(x, index=_i),
         lambda x, _i=_idx: _jslice(x, _i), [_shape])
    _vshape = tuple(e[1] for e in _idx if not isinstance(e, int))
    spec(f"update_slice{list(_shape)}-{_idx}", "update_slice", lambda x, v, _i=_idx: op.update_slice(x, v, index=_i),
         lambda x, v, _i=_idx: _jupdate(x, v, _i), [_shape, _vshape])


def _jint(i):
    return jnp.asarray(i).astype(jnp.int32)


def _jdyn_slice(x, i, axis, size):
    if size is None:
        return lax.dynamic_index_in_dim(x, _jint(i), axis % x.ndim, keepdims=False)
    return lax.dynamic_slice_in_dim(x, _jint(i), size, axis % x.ndim)


def _jdyn_update(x, v, i, axis, size):
    if size is None:
        return lax.dynamic_update_index_in_dim(x, v, _jint(i), axis % x.ndim)
    return lax.dynamic_update_slice_in_dim(x, v, _jint(i), axis % x.ndim)


for _shape, _axis, _size in [((5, 3), 0, None), ((4, 5), 1, 2), ((5,), 0, 3), ((4, 5), -1, None), ((3, 4), 0, 3)]:
    _hi = _shape[_axis] - (1 if _size is None else _size)
    spec(f"dyn_slice{list(_shape)}-axis{_axis}-size{_size}", "dyn_slice",
         lambda x, i, _a=_axis, _s=_size: op.dyn_slice(x, i, axis=_a, size=_s),
         lambda x, i, _a=_axis, _s=_size: _jdyn_slice(x, i, _a, _s), [_shape, ()], [normal(), index(_hi)],
         fd_zero=(1,))
    _vshape = list(_shape)
    if _size is None:
        del _vshape[_axis]
    else:
        _vshape[_axis] = _size
    spec(f"dyn_update{list(_shape)}-axis{_axis}-size{_size}", "dyn_update",
         lambda x, v, i, _a=_axis, _s=_size: op.dyn_update(x, v, i, axis=_a, size=_s),
         lambda x, v, i, _a=_axis, _s=_size: _jdyn_update(x, v, i, _a, _s), [_shape, tuple(_vshape), ()],
         [normal(), normal(), index(_hi)], fd_zero=(2,))



# -- gather / scatter_add: integer index arrays (int64 data travels as float64 integers) -------------------
def index_array(hi):
    """Integer-valued entries in 0..hi, with repeats (so scatter_add's accumulation is exercised)."""
    return lambda rng, s, k: rng.integers(0, hi + 1, s).astype(np.float64)


def _jscatter_add(x, v, i, axis):
    xm = jnp.moveaxis(x, axis, 0)
    ni = jnp.ndim(i)
    vm = jnp.moveaxis(v, tuple(range(axis, axis + ni)), tuple(range(ni)))
    return jnp.moveaxis(xm.at[_jint(i)].add(vm), 0, axis)


for _shape, _axis, _ishape in [((5, 3), 0, (4,)), ((4, 5), 1, (2, 3)), ((6,), 0, (6,)), ((3, 4, 2), 2, (3,))]:
    _hi = _shape[_axis] - 1
    _vshape = _shape[:_axis] + _ishape + _shape[_axis + 1:]
    spec(f"gather{list(_shape)}-axis{_axis}-idx{list(_ishape)}", "gather",
         lambda x, i, _a=_axis: op.gather(x, i, axis=_a),
         lambda x, i, _a=_axis: jnp.take(x, _jint(i), axis=_a), [_shape, _ishape], [normal(), index_array(_hi)],
         fd_zero=(1,))
    spec(f"scatter_add{list(_shape)}-axis{_axis}-idx{list(_ishape)}", "scatter_add",
         lambda x, v, i, _a=_axis: op.scatter_add(x, v, i, axis=_a),
         lambda x, v, i, _a=_axis: _jscatter_add(x, v, i, _a), [_shape, _vshape, _ishape],
         [normal(), normal(), index_array(_hi)], fd_zero=(2,))


# -- integer results: argmax / argmin (positions, derivative 0) and arange ------------------------------------
for _name, _jfn in (("argmax", jnp.argmax), ("argmin", jnp.argmin)):
    for _shape, _axis in (((7,), None), ((3, 4), None), ((3, 4), 1), ((2, 3, 4), 0)):
        spec(f"{_name}{list(_shape)}-axis{_axis}", _name,
             lambda x, _n=_name, _a=_axis: getattr(op, _n)(x, axis=_a),
             lambda x, _f=_jfn, _a=_axis: _f(x, axis=_a).astype(jnp.float64), [_shape], nondiff=True)
# over 64 entries, so the builder does not fold it into a literal
spec("arange-70-times-x", "arange", lambda x: x * x.b.emit("arange", [], {"n": 70}),
     lambda x: x * jnp.arange(70.0), [(70,)])


# -- while: a run-time trip count; the JAX reference is a masked scan of a fixed length (the path taken) ------
def while_(consts, carries, cond_fn, body_fn, max_iter=1000):
    def graph(fn):
        b = Builder()
        ins = [b.input(() if isinstance(v, float) else v.shape)
               for v in [*consts, *carries]]
        out = fn(ins[:len(consts)], ins[len(consts):])
        return b.build(list(out) if isinstance(out, (list, tuple)) else [out])
    return emit("while", *consts, *carries, cond=graph(cond_fn), body=graph(body_fn), n_consts=len(consts),
                max_iter=max_iter, tape=False)


def _jmasked(cond, body, carry, length=80):
    def step(c, _):
        go = cond(c)
        new = body(c)
        return tuple(jnp.where(go, n, o) for n, o in zip(new, c)), None
    return lax.scan(step, carry, None, length=length)[0]


def _while_shrink(x, a):
    y, n = while_([a], [x, 0.0], lambda c, v: op.gt(op.reduce_sum(v[0] * v[0]), 0.05),
                  lambda c, v: [v[0] * c[0] + 0.01 * op.sin(v[0]), v[1] + 1.0])
    return y, n


def _jwhile_shrink(x, a):
    return _jmasked(lambda c: jnp.sum(c[0] * c[0]) > 0.05, lambda c: (c[0] * a + 0.01 * jnp.sin(c[0]), c[1] + 1.0),
                    (x, 0.0))


spec("while-shrink", "while", _while_shrink, _jwhile_shrink, [(3,), ()], [normal(), uniform(0.5, 0.8)])


def _while_index(w, s0):
    i, s = while_([w], [0.0, s0], lambda c, v: op.lt(v[0], 5.0) * op.lt(v[1], 2.0),
                  lambda c, v: [v[0] + 1.0, v[1] + op.dyn_slice(c[0], v[0], axis=0) ** 2 * op.cos(v[1])])
    return s * i


def _jwhile_index(w, s0):
    i, s = _jmasked(lambda c: (c[0] < 5) & (c[1] < 2.0),
                    lambda c: (c[0] + 1.0, c[1] + w[jnp.minimum(c[0], 4).astype(jnp.int32)] ** 2 * jnp.cos(c[1])),
                    (0.0, s0))
    return s * i


spec("while-counter-indexes-const", "while", _while_index, _jwhile_index, [(5,), ()], [normal(), uniform(-1.0, 0.5)])

# -- loop (the engine's scan: carries, stacked outputs, loop counter k) ---------------------------------
def _scan_basic(reverse):
    def f(w, c0, xs):
        def body(k, consts, carries, x):
            (w,), (c,), (xk,) = consts, carries, x
            return [op.sin(c) * w + xk], [c * xk + k]
        (c,), (ys,) = scan(body, [w], [c0], [xs], 4, reverse)
        return c, ys

    def jf(w, c0, xs):
        def body(c, kx):
            k, xk = kx
            return jnp.sin(c) * w + xk, c * xk + k
        return lax.scan(body, c0, (jnp.arange(4.0), xs), reverse=reverse)
    return f, jf


_f, _jf = _scan_basic(False)
spec("scan-carry-and-ys", "loop", _f, _jf, [(3,), (3,), (4, 3)])
_f, _jf = _scan_basic(True)
spec("scan-reverse", "loop", _f, _jf, [(3,), (3,), (4, 3)])


def _scan_nested(c0, xs):
    def outer(k, consts, carries, x):
        (c,), (xk,) = carries, x

        def inner(j, ic, icar, ix):
            (d,), (xx,) = icar, ic
            return [op.tanh(d * xx + 0.5 * j)], [d * d]
        (d,), (ys,) = scan(inner, [xk], [c], [], 3)
        return [d + xk], [op.reduce_sum(ys, axes=(0,)) * k]
    (c,), (ys,) = scan(outer, [], [c0], [xs], 3)
    return c, ys


def _jscan_nested(c0, xs):
    def outer(c, kx):
        k, xk = kx

        def inner(d, j):
            return jnp.tanh(d * xk + 0.5 * j), d * d
        d, ys = lax.scan(inner, c, jnp.arange(3.0))
        return d + xk, jnp.sum(ys, axis=0) * k
    return lax.scan(outer, c0, (jnp.arange(3.0), xs))


spec("scan-nested", "loop", _scan_nested, _jscan_nested, [(2,), (3, 2)])


def _scan_cond(c0, xs):
    def body(k, consts, carries, x):
        (c,), (xk,) = carries, x
        (out,) = cond(op.gt(xk, 0.0), [c, xk], lambda c, x: [c * x + op.sin(c)], lambda c, x: [c - x * x])
        return [out], [out * c]
    (c,), (ys,) = scan(body, [], [c0], [xs], 5)
    return c, ys


def _jscan_cond(c0, xs):
    def body(c, xk):
        out = lax.cond(xk > 0, lambda c, x: c * x + jnp.sin(c), lambda c, x: c - x * x, c, xk)
        return out, out * c
    return lax.scan(body, c0, xs)


spec("scan-cond-inside", "loop", _scan_cond, _jscan_cond, [(), (5,)], [normal(), signs_alternating()])


def _scan_counter(table, c0):
    def body(k, consts, carries, x):
        (t,), (c,) = consts, carries
        return [c * op.dyn_slice(t, k, axis=0) + op.cos(c)], []
    (c,), _ = scan(body, [table], [c0], [], 4)
    return c


def _jscan_counter(table, c0):
    def body(c, k):
        return c * table[k] + jnp.cos(c), None
    return lax.scan(body, c0, jnp.arange(4))[0]


spec("scan-counter-indexes-const", "loop", _scan_counter, _jscan_counter, [(4, 3), (3,)], [normal(0.5), normal()])


def _scan_activity(a0, xs):
    # s starts as the literal 0 (no tangent) and becomes active through a; n never does
    def body(k, consts, carries, x):
        (a, s, n), (xk,) = carries, x
        return [a * 0.9 + xk, s + a * a, n + 1.0], [s]
    (a, s, n), (ys,) = scan(body, [], [a0, 0.0, 0.0], [xs], 4)
    return a, s, n, ys


def _jscan_activity(a0, xs):
    def body(carry, xk):
        a, s, n = carry
        return (a * 0.9 + xk, s + a * a, n + 1.0), s
    (a, s, n), ys = lax.scan(body, (a0, 0.0, 0.0), xs)
    return a, s, n, ys


spec("scan-carry-becomes-active", "loop", _scan_activity, _jscan_activity, [(), (4,)])


def _scan_consts(w, c0):
    def body(k, consts, carries, x):
        (w,), (c,) = consts, carries
        return [c * 0.5 + op.reduce_sum(w * op.sin(c + w))], [c * w, op.exp(-c * c)]
    (c,), (ys, zs) = scan(body, [w], [c0], [], 3)
    return c, ys, zs


def _jscan_consts(w, c0):
    def body(c, _):
        return c * 0.5 + jnp.sum(w * jnp.sin(c + w)), (c * w, jnp.exp(-c * c))
    c, (ys, zs) = lax.scan(body, c0, None, length=3)
    return c, ys, zs


spec("scan-consts-two-ys", "loop", _scan_consts, _jscan_consts, [(3,), ()])


def _scan_len0(c0, xs):
    (c,), (ys,) = scan(lambda k, cs, car, x: ([car[0] * x[0]], [car[0] + x[0]]), [], [c0], [xs], 0)
    return c * 2.0, ys


def _jscan_len0(c0, xs):
    c, ys = lax.scan(lambda c, x: (c * x, c + x), c0, xs)
    return c * 2.0, ys


spec("scan-length0", "loop", _scan_len0, _jscan_len0, [(3,), (0, 3)])


def _scan_buffer(c0, xs):
    # a loop that writes each step into a buffer carry at the loop counter (starts as literal zeros)
    def body(k, consts, carries, x):
        (c, buf), (xk,) = carries, x
        new = op.sin(c) * xk + c
        return [new, op.dyn_update(buf, new * c, k, axis=0)], []
    (c, buf), _ = scan(body, [], [c0, V(None, Lit.scalar(0.0, (4,)))], [xs], 4)
    return c, buf


def _jscan_buffer(c0, xs):
    def body(carry, kx):
        (c, buf), (k, xk) = carry, kx
        new = jnp.sin(c) * xk + c
        return (new, buf.at[k].set(new * c)), None
    return lax.scan(body, (c0, jnp.zeros(4)), (jnp.arange(4), xs))[0]


spec("scan-writes-buffer-at-counter", "loop", _scan_buffer, _jscan_buffer, [(), (4,)])


# -- cond -----------------------------------------------------------------------------------------------
def _jcond(p, ops, t, f):
    return lax.cond(p != 0, t, f, *ops)


spec("cond-basic", "cond",
     lambda p, x, y: cond(p, [x, y], lambda x, y: [op.sin(x) * y], lambda x, y: [x * x - y])[0],
     lambda p, x, y: _jcond(p, (x, y), lambda x, y: jnp.sin(x) * y, lambda x, y: x * x - y),
     [(), (3,), ()], [pred_alternating(), normal(), normal()], fd_zero=(0,), points=(0, 1))


def _cond_pred_inside(x):
    p = op.gt(op.reduce_sum(x), 0.0)
    return tuple(cond(p, [x], lambda x: [op.exp(x), op.reduce_sum(x * x)],
                      lambda x: [x * 2.0, op.reduce_max(x)]))


spec("cond-pred-from-value-two-outputs", "cond", _cond_pred_inside,
     lambda x: lax.cond(jnp.sum(x) > 0, lambda x: (jnp.exp(x), jnp.sum(x * x)), lambda x: (x * 2.0, jnp.max(x)), x),
     [(3,)], [lambda rng, s, k: (1 if k % 2 == 0 else -1) * rng.uniform(0.2, 1.0, s)], points=(0, 1))


def _cond_nested(p, q, x, y):
    def outer_true(q, x, y):
        return cond(q, [x, y], lambda x, y: [x * y], lambda x, y: [op.cos(x) + y])
    return cond(p, [q, x, y], outer_true, lambda q, x, y: [x / (1.0 + y * y)])[0]


def _jcond_nested(p, q, x, y):
    def outer_true(q, x, y):
        return _jcond(q, (x, y), lambda x, y: x * y, lambda x, y: jnp.cos(x) + y)
    return _jcond(p, (q, x, y), outer_true, lambda q, x, y: x / (1.0 + y * y))


spec("cond-nested", "cond", _cond_nested, _jcond_nested, [(), (), (3,), (3,)],
     [lambda rng, s, k: np.asarray(1.0 if k in (0, 1) else 0.0),
      lambda rng, s, k: np.asarray(1.0 if k in (0, 2) else 0.0), normal(), normal()],
     fd_zero=(0, 1), points=(0, 1, 2))


def _cond_const_branch(p, x, y):
    # the false branch returns a literal and an input untouched: zero and identity derivatives
    def fb(x, y):
        return [V(None, Lit.scalar(1.5, (3,))), x]
    return tuple(cond(p, [x, y], lambda x, y: [x * y, op.sin(x)], fb))


spec("cond-literal-and-identity-branch", "cond", _cond_const_branch,
     lambda p, x, y: _jcond(p, (x, y), lambda x, y: (x * y, jnp.sin(x)), lambda x, y: (jnp.full((3,), 1.5), x)),
     [(), (3,), (3,)], [pred_alternating(), normal(), normal()], fd_zero=(0,), points=(0, 1))


# -- the checks ----------------------------------------------------------------------------------------
CHECKS = ["value", "jvp", "vjp", "hvp", "batch"]


def _params():
    out = []
    for s in SPECS:
        for c in CHECKS:
            marks = []
            if c in s.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=s.xfail[c]))
            out.append(pytest.param(s, c, id=f"{s.id}-{c}", marks=marks))
    return out


def test_every_primitive_has_a_spec():
    covered = {s.prim for s in SPECS if not s.rewritten}
    missing = sorted(set(PRIMS) - covered)
    assert not missing, f"primitives with no spec in test_primitives.py: {missing}"
    unknown = sorted(covered - set(PRIMS))
    assert not unknown, f"specs for primitives that do not exist: {unknown}"


def _rng(s: Spec, salt: str):
    return np.random.default_rng(zlib.crc32(f"{s.id}/{salt}".encode()))


def _graph(s: Spec):
    g = make_graph(s.f, s.shapes)
    if not s.rewritten:
        assert s.prim in prims_used(g), f"{s.id}: the graph does not use '{s.prim}' (folded away?):\n{g}"
    return g


def _tangents(rng, xs):
    return [rng.standard_normal(x.shape) for x in xs]


def _weighted_sum_graph(g):
    """s(xs, ws) = sum_j sum(f_j(xs) * w_j): a scalar function whose HVP we take w.r.t. xs."""
    b = Builder()
    xs = [b.input(v.shape) for v in g.inputs]
    ws = [b.input(a.shape) for a in g.outputs]
    outs = inline(b, g, xs)
    total = None
    for o, w in zip(outs, ws):
        term = op.reduce_sum(o * w)
        total = term if total is None else total + term
    return b.build([total])


_REFS: dict = {}


def _reference(s: Spec, xs, ts=None, cts=None, ws=None):
    """JAX's (outputs, tangents, cotangents, gradient, HVP) for this spec; unused parts get zeros."""
    ref = _REFS.get(s.id)
    if ref is None:
        ref = _REFS[s.id] = jax_reference(s.jf)
    if cts is None or ws is None:
        shapes = [tuple(a.shape) for a in _graph(s).outputs]
        cts = cts if cts is not None else [np.zeros(sh) for sh in shapes]
        ws = ws if ws is not None else [np.zeros(sh) for sh in shapes]
    ts = ts if ts is not None else [np.zeros_like(x) for x in xs]
    return ref(xs, ts, cts, ws)


def _check_value(s, g, rng, k):
    xs = s.draw(rng, k)
    assert_close(run_point(g, xs), _reference(s, xs)[0], f"{s.id} value", **VAL)


def _check_jvp(s, g, rng, k):
    xs = s.draw(rng, k)
    ts = _tangents(rng, xs)
    outs, touts = jvp_point(g, xs, ts)
    jouts, jtouts = _reference(s, xs, ts=ts)[:2]
    assert_close(outs, jouts, f"{s.id} jvp primal", **VAL)
    assert_close(touts, jtouts, f"{s.id} jvp vs jax.jvp")
    if s.nondiff:
        _, omask = jvp_graph(g, [True] * len(xs))
        assert not any(omask), f"{s.id}: a nondifferentiable op got a tangent"
    if s.fd:
        ts_fd = [np.zeros_like(t) if i in s.fd_zero else t for i, t in enumerate(ts)]
        _, touts_fd = jvp_point(g, xs, ts_fd)
        fd = central_fd(lambda a: run_point(g, a), xs, ts_fd)
        assert_close(touts_fd, fd, f"{s.id} jvp vs finite differences", **FD)


def _check_vjp(s, g, rng, k):
    xs = s.draw(rng, k)
    outs = run_point(g, xs)
    cts = [rng.standard_normal(o.shape) for o in outs]
    vouts, grads = vjp_point(g, xs, cts)
    jouts, _, jgrads = _reference(s, xs, cts=cts)[:3]
    assert_close(vouts, jouts, f"{s.id} vjp primal", **VAL)
    assert_close(grads, jgrads, f"{s.id} vjp vs jax.vjp")
    if s.nondiff:
        assert all(np.all(gr == 0) for gr in grads), f"{s.id}: nonzero cotangent from a nondifferentiable op"
    ts = _tangents(rng, xs)
    _, touts = jvp_point(g, xs, ts)
    lhs, rhs = vdot(grads, ts), vdot(cts, touts)
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs) + abs(rhs)), f"{s.id} dot-product test: {lhs} vs {rhs}"


def _check_hvp(s, g, rng, k):
    xs = s.draw(rng, k)
    outs = run_point(g, xs)
    ws = [rng.standard_normal(o.shape) for o in outs]
    ts = _tangents(rng, xs)
    n = len(xs)
    sg = _weighted_sum_graph(g)
    wrt = [True] * n + [False] * len(ws)
    zw = [np.zeros_like(w) for w in ws]
    value, grads, hv = hvp_point(sg, [*xs, *ws], [*ts, *zw], wrt)
    jouts, _, _, jg, jhv = _reference(s, xs, ts=ts, ws=ws)
    assert_close(value, vdot(jouts, ws), f"{s.id} hvp value", **VAL)
    assert_close(grads, jg, f"{s.id} gradient (inlined vjp) vs jax.grad")
    assert_close(hv, jhv, f"{s.id} hvp vs jax.jvp(jax.grad)")
    if s.fd:
        ts_fd = [np.zeros_like(t) if i in s.fd_zero else t for i, t in enumerate(ts)]
        _, _, hv_fd = hvp_point(sg, [*xs, *ws], [*ts_fd, *zw], wrt)
        fd = central_fd(lambda a: hvp_point(sg, [*a, *ws], [*ts_fd, *zw], wrt)[1], xs, ts_fd)
        assert_close(hv_fd, fd, f"{s.id} hvp vs finite differences of the gradient", **FD)


def _check_batch(s, g, rng, k):
    B = 4
    pts = [s.draw(rng, j) for j in range(B)]
    n = len(s.shapes)

    def stack(i, shared=None):
        return np.stack([p[i] for p in pts]) if i != shared else pts[0][i][None]

    def compare(graph, per_point_args, what, shared=None):
        batched = run_batch(graph, [stack(i, shared) for i in range(len(graph.inputs))], B)
        for j in range(B):
            single = run_point(graph, [pts[0][i] if i == shared else per_point_args[j][i] for i in range(len(graph.inputs))])
            for bo, so in zip(batched, single):
                np.testing.assert_allclose(bo[j], so, rtol=1e-13, atol=1e-14,
                                           err_msg=f"{s.id} {what}: batch point {j} (shared input {shared})")

    compare(g, pts, "graph")
    for shared in range(n):
        compare(g, pts, "graph", shared=shared)
    # derivative graphs: extend each point with tangents / cotangents
    jg, _ = jvp_graph(g, [True] * n)
    vg = vjp_graph(g, [True] * n, [True] * len(g.outputs))
    for p in pts:
        p += _tangents(rng, p[:n])
    compare(jg, pts, "jvp graph")
    outs = [run_point(g, p[:n]) for p in pts]
    pts[:] = [p[:n] + [rng.standard_normal(o.shape) for o in out] for p, out in zip(pts, outs)]
    compare(vg, pts, "vjp graph")
    for shared in range(n):
        compare(vg, pts, "vjp graph", shared=shared)


@pytest.mark.parametrize("s,check", _params())
def test_primitive(s: Spec, check: str):
    g = _graph(s)
    rng = _rng(s, check)
    if check == "batch":
        _check_batch(s, g, rng, 0)
        return
    if check == "hvp" and not s.hvp:
        pytest.skip("no second derivative for this spec")
    fn = {"value": _check_value, "jvp": _check_jvp, "vjp": _check_vjp, "hvp": _check_hvp}[check]
    for k in s.points:
        fn(s, g, rng, k)


# -- conventions, pinned down with explicit numbers -----------------------------------------------------
def test_ties_split_evenly():
    g = make_graph(lambda a, b: (op.maximum(a, b), op.minimum(a, b)), [(), ()])
    _, grads = vjp_point(g, [np.array(1.0), np.array(1.0)], [np.array(1.0), np.array(0.0)])
    assert_close(grads, [0.5, 0.5], "maximum tie")
    _, grads = vjp_point(g, [np.array(1.0), np.array(1.0)], [np.array(0.0), np.array(1.0)])
    assert_close(grads, [0.5, 0.5], "minimum tie")
    g = make_graph(lambda x: op.reduce_max(x), [(4,)])
    _, (gr,) = vjp_point(g, [np.array([1.0, 3.0, 3.0, 3.0])], [np.array(1.0)])
    assert_close(gr, np.array([0.0, 1 / 3, 1 / 3, 1 / 3]), "reduce_max three-way tie")
    _, (t,) = jvp_point(g, [np.array([1.0, 3.0, 3.0, 3.0])], [np.array([5.0, 1.0, 2.0, 6.0])])
    assert_close(t, 3.0, "reduce_max tie tangent is the mean of the tied tangents")


def test_abs_derivative_at_zero_is_zero():
    # the engine documents d|x|/dx = sign(x) = 0 at 0; JAX's convention there is 1
    g = make_graph(op.abs, [(3,)])
    x = np.array([-2.0, 0.0, 3.0])
    _, (gr,) = vjp_point(g, [x], [np.ones(3)])
    assert_close(gr, np.array([-1.0, 0.0, 1.0]), "abs'")
    _, (t,) = jvp_point(g, [x], [np.ones(3)])
    assert_close(t, np.array([-1.0, 0.0, 1.0]), "abs jvp")


def test_pow_derivatives_at_zero():
    g = make_graph(lambda a, b: a ** b, [(), ()])
    _, grads = vjp_point(g, [np.array(0.0), np.array(0.0)], [np.array(1.0)])
    assert_close(grads, [0.0, 0.0], "d(a**b) at a=b=0")
    _, grads = vjp_point(g, [np.array(0.0), np.array(2.0)], [np.array(1.0)])
    assert_close(grads, [0.0, 0.0], "d(a**b) at a=0, b=2")
    _, grads = vjp_point(g, [np.array(3.0), np.array(0.0)], [np.array(1.0)])
    assert_close(grads, [0.0, np.log(3.0)], "d(a**b) at b=0")


def test_cond_batch_really_takes_both_branches():
    # guard for the batch check: the spec's points do split between the branches
    s = next(s for s in SPECS if s.id == "cond-basic")
    g = _graph(s)
    rng = _rng(s, "branches")
    pts = [s.draw(rng, j) for j in range(4)]
    batched = run_batch(g, [np.stack([p[i] for p in pts]) for i in range(3)], 4)[0]
    for j, p in enumerate(pts):
        want = np.sin(p[1]) * p[2] if p[0] != 0 else p[1] ** 2 - p[2]
        np.testing.assert_allclose(batched[j], want, rtol=1e-14)
    assert {bool(p[0] != 0) for p in pts} == {True, False}




# -- edges of the interpreter -------------------------------------------------------------------------
@pytest.mark.parametrize("name,ident", [("reduce_sum", 0.0), ("reduce_max", -np.inf), ("reduce_min", np.inf),
                                        ("logsumexp", -np.inf)])
def test_reduction_over_an_empty_axis(name, ident):
    """Either refused when the graph is built (a DefinitionError) or evaluated to the reduction's
    identity, as JAX does (sum 0, max -inf, min +inf, logsumexp -inf). Never a raw NumPy error."""
    from adserve.engine.errors import DefinitionError
    try:
        g = make_graph(lambda x: getattr(op, name)(x, axes=(0,)), [(0, 3)])
    except DefinitionError:
        return
    (out,) = run_point(g, [np.zeros((0, 3))])
    np.testing.assert_array_equal(out, np.full(3, ident))


def test_dyn_index_errors_are_evaluation_errors():
    from adserve.engine.errors import EvaluationError
    g = make_graph(lambda x, i: op.dyn_slice(x, i), [(3,), ()])
    for bad in (3.0, -1.0, 0.5, np.nan):
        with pytest.raises(EvaluationError):
            run_point(g, [np.zeros(3), np.array(bad)])
    # one bad point in a batch fails the whole batch
    with pytest.raises(EvaluationError):
        run_batch(g, [np.zeros((1, 3)), np.array([0.0, 7.0])], 2)


def test_integer_input_arrays_are_read_as_float64():
    """All IR values are float64 (ir.py); integer arrays, which is what np.asarray makes of JSON
    like [1, 2, -3], must give the same results as their float64 versions."""
    cases = [
        (make_graph(op.sigmoid, [(3,)]), [np.array([[1, 2, -3]])]),
        (make_graph(lambda x, v: op.update_slice(x, v, index=((0, 1, 1),)), [(3,), (1,)]),
         [np.array([[1, 2, 3]]), np.array([[0.5]])]),
        (make_graph(lambda x, v, i: op.dyn_update(x, v, i), [(3,), (), ()]),
         [np.array([[1, 2, 3]]), np.array([0.5]), np.array([1])]),
        (make_graph(lambda x: op.softplus(x) + op.tanh(x), [(3,)]), [np.array([[1, 2, -3]])]),
    ]
    for g, args in cases:
        got = run(g, args)
        want = run(g, [a.astype(np.float64) for a in args])
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=str(g))


def test_reflected_operators_on_values():
    """Literal-on-the-left arithmetic builds the same ops as op.* (front ends write 2 ** x)."""
    g = make_graph(lambda x: (2.0 + x, 2.0 - x, 2.0 * x, 2.0 / x, 2.0 ** x), [(3,)])
    x = np.array([0.5, 1.0, 2.0])
    assert_close(run_point(g, [x]), [2 + x, 2 - x, 2 * x, 2 / x, 2 ** x], "reflected operators", **VAL)
