"""Integer powers as multiplications: what `Builder.emit` makes of `pow` when the exponent is an integer.

A literal exponent (x**3) and an array exponent known to hold small non-negative integers (`arange(m)`,
reshaped or broadcast: GradBench's llsq raises t to the powers 0..m-1) become multiplications by squaring,
where `pow` is a libm call per element that does not vectorise. Within an ulp or two of pow (a few ulps for
the largest exponents: a product's roundings), and the same expansion on every tier, since it is IR.

The builder keeps, per variable, the integer range it is known to hold (`note`): arange's, carried through
shape operations and through +, - and * with other integer values.
"""

from __future__ import annotations

import math

from .ir import Lit

MAX_INT_POWER = 32  # x**n for literal integers 3..this: multiplications (as JAX's integer_pow), not libm's pow
MAX_ARRAY_POWER = 255  # an array of integers 0..this as exponent: 8 squarings and selects per element
# ops whose output's elements are some of their input's, moved or repeated: an integer array's stay integers in its
# range, and a literal filled with one value stays one (folding.py)
MOVES = frozenset({"reshape", "transpose", "broadcast_to", "slice"})
_ARITH = frozenset({"add", "sub", "mul", "neg"})
NOTED = frozenset({"arange"}) | MOVES | _ARITH  # the prims `note` looks at (emit checks this first: it is hot)


def bounds(known: dict, atom):
    """(lo, hi) if `atom` holds integers only, between lo and hi; else None."""
    if type(atom) is Lit:
        if all(math.isfinite(v) and v == int(v) for v in atom.data):
            return int(min(atom.data)), int(max(atom.data))
        return None
    return known.get(atom)


def note(known: dict, prim, atoms, params, out):
    """Record `out`'s integer range, if the equation gives one."""
    if prim == "arange":
        if params["n"]:
            known[out] = (0, params["n"] - 1)
        return
    bs = [bounds(known, a) for a in atoms]
    if not bs or None in bs:
        return
    if prim in MOVES:
        known[out] = bs[0]
    elif prim == "neg":
        known[out] = (-bs[0][1], -bs[0][0])
    elif prim == "add":
        known[out] = (bs[0][0] + bs[1][0], bs[0][1] + bs[1][1])
    elif prim == "sub":
        known[out] = (bs[0][0] - bs[1][1], bs[0][1] - bs[1][0])
    elif prim == "mul":
        ends = [a * b for a in bs[0] for b in bs[1]]
        known[out] = (min(ends), max(ends))


def power(b, atoms, out_shape):
    """x**n as multiplications (a V), or None where pow stays."""
    x, n = atoms
    if type(n) is Lit and n.fill is not None:
        return _literal_power(b, x, n.fill) if x.shape == out_shape else None
    r = bounds(b._ints, n)
    if r is None or r[0] < 0 or r[1] > MAX_ARRAY_POWER:
        return None
    return _array_power(b, x, n, r[1])


def _literal_power(b, x, p):
    """x**p for p in {0, 1, 2, -1} as cheaper exact ops (also folds what derivative rules make), and for
    integers 3..MAX_INT_POWER as multiplications by squaring, in JAX's order (x**3 is (x*x)*x)."""
    from .builder import V
    if p == int(p) and 2 < p <= MAX_INT_POWER:
        n, base, acc = int(p), V(b, x), None
        while n:
            if n & 1:
                acc = base if acc is None else b.emit("mul", [acc, base])
            n >>= 1
            if n:
                base = b.emit("mul", [base, base])
        return acc
    if p == 0.0:
        return V(b, Lit.scalar(1.0, x.shape))  # as numpy: x**0 is 1 even for NaN
    if p == 1.0:
        return V(b, x)
    if p == 2.0:
        return b.emit("mul", [V(b, x), V(b, x)])
    if p == -1.0:
        return b.emit("div", [1.0, V(b, x)])
    return None


def _array_power(b, x, n, hi):
    """x**n for n holding integers 0..hi: the literal case's product by squaring, each factor x**(2**k) taken
    where n's bit k is set (a select, so the loop stays branch-free); the same products, in the same order,
    as x**p for a literal p. The bits are exact: n, n/2, ... are integers or halves, floor and 2*q exact.
    The squares and the bits are emitted before the selects: each set is one run of its shape, and the
    selects, all of the output's shape, one fused loop (a run closes at an element-wise op of another shape)."""
    from .builder import V
    steps = max(hi.bit_length(), 1)
    bases, bits, q = [V(b, x)], [], V(b, n)
    for _ in range(steps - 1):
        bases.append(b.emit("mul", [bases[-1], bases[-1]]))
    for _ in range(steps):
        half = b.emit("floor", [b.emit("mul", [q, 0.5])])
        bits.append(b.emit("sub", [q, b.emit("mul", [half, 2.0])]))
        q = half
    acc = None
    for base, bit in zip(bases, bits):
        acc = b.emit("where", [bit, base, 1.0] if acc is None else [bit, b.emit("mul", [acc, base]), acc])
    return acc
