"""Constant folding's short cuts (folding.fold) give what folding the whole arrays gives, bit for bit.

A literal filled with one value is folded by one element when the op is element-wise (a row with a `template`),
and kept as the same fill when the op only moves elements (powers.MOVES); the general way computes every element
with NumPy. Both must make the same literal (the same plan, so the same cache key and the same answer), over
every element-wise row of the table and values that tell rounding, signed zeros, infinities and NaN apart.
"""

import itertools
import math

import numpy as np
from engine_helpers import PRIMS

from adserve.engine import folding, powers
from adserve.engine.ir import Lit

VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -3.25, 0.1, 1e-300, 1e300, 709.5, -745.5, math.pi, math.inf, -math.inf,
          math.nan]
SHAPES = [(), (8,), (3, 5)]


def _bits(lit):
    return lit.shape, tuple(float(x).hex() for x in lit.data)


def _elementwise():
    return [p for p in PRIMS.values() if p.template is not None and not p.multiple_results]


def test_every_elementwise_fold_of_fills_is_the_whole_arrays_fold():
    rows = _elementwise()
    assert len(rows) > 30
    checked = 0
    for p in rows:
        arity = p.arity or 2
        combos = itertools.product(VALUES, repeat=arity) if arity <= 2 else \
            [tuple(VALUES[(i + j) % len(VALUES)] for j in range(arity)) for i in range(len(VALUES))]
        for values in combos:
            for shape in SHAPES:
                atoms = [Lit(shape, (v,)) for v in values]
                try:
                    out_shape = tuple(p.shape(*[shape] * arity))
                except Exception:
                    continue
                short = folding._fold_uniform(p, atoms, {}, out_shape)
                whole = folding._fold_arrays(p, atoms, {}, out_shape)
                assert (short is None) == (whole is None), (p.name, values, shape)
                if short is not None:
                    assert _bits(short) == _bits(whole), (p.name, values, shape, short, whole)
                    checked += 1
    assert checked > 5000


def test_moving_a_fill_keeps_it():
    x = Lit((2, 3), (-0.0,))
    for prim, params, out_shape in [("reshape", {"shape": (3, 2)}, (3, 2)), ("transpose", {"perm": (1, 0)}, (3, 2)),
                                    ("broadcast_to", {"shape": (4, 2, 3)}, (4, 2, 3))]:
        assert prim in powers.MOVES
        p = PRIMS[prim]
        params = p.normalize([x.shape], dict(params)) if p.normalize else params
        short = folding.fold(p, [x], params, out_shape)
        whole = folding._fold_arrays(p, [x], params, out_shape)
        assert _bits(short) == _bits(whole) == ((*out_shape,), ((-0.0).hex(),)), prim
    assert np.isnan(folding.fold(PRIMS["reshape"], [Lit((2,), (math.nan,))], {"shape": (2, 1)}, (2, 1)).data[0])
