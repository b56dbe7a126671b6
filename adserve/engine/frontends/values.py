"""What a name can hold while lowering user text, besides an IR value (`V`).

* a Python `int`: static integer arithmetic (sizes, `len(x)`, range bounds);
* `Index`: an affine integer expression in loop counters, `c + sum(a_k * k)`,
  so `x[i]`, `x[i+1]`, `x[n-1-i]` and `x[i:i+2]` keep static sizes and get their
  bounds checked before anything runs;
* `Undefined`: a name that exists but may not be read here (say why).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..builder import V
from ..errors import DefinitionError

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # static integers beyond these are refused where they appear

@dataclass(eq=False)
class Counter:
    """A loop's iteration counter k in 0..length-1, an IR value in the loop body."""

    value: V
    length: int


@dataclass(frozen=True)
class Index:
    const: int
    terms: tuple  # ((Counter, coefficient), ...)

    @staticmethod
    def of(x) -> "Index":
        return x if isinstance(x, Index) else Index(int(x), ())

    def __add__(self, o):
        o = Index.of(o)
        coef = dict(self.terms)
        for c, a in o.terms:
            coef[c] = coef.get(c, 0) + a
        return Index(self.const + o.const, tuple((c, a) for c, a in coef.items() if a)).simplify()

    def __neg__(self):
        return Index(-self.const, tuple((c, -a) for c, a in self.terms))

    def __sub__(self, o):
        return self + (-Index.of(o))

    def scale(self, k: int):
        return Index(self.const * k, tuple((c, a * k) for c, a in self.terms if a * k)).simplify()

    def simplify(self):
        return self.const if not self.terms else self

    def bounds(self):
        lo = hi = self.const
        for c, a in self.terms:
            span = a * (c.length - 1)
            lo, hi = lo + min(0, span), hi + max(0, span)
        return lo, hi

    def value(self, b) -> V:
        """The index as a float IR value in builder `b` (counters are captured into it)."""
        out = None
        for c, a in self.terms:
            term = b.emit("mul", [c.value, float(a)])
            out = term if out is None else b.emit("add", [out, term])
        if out is not None and self.const == 0 and all(a > 0 for _, a in self.terms):
            return out  # counters are >= +0.0: no -0.0 for `+ 0.0` to turn into the integer 0's +0.0
        return b.emit("add", [out, float(self.const)])


@dataclass(frozen=True)
class Undefined:
    reason: str


def static_int(x, what: str, loc=None) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise DefinitionError(f"{what} must be a static integer (a literal, len(x), x.shape[k] or arithmetic of those)",
                              loc, code="not_static")
    return x


def as_value(b, x, loc=None) -> V:
    """Coerce a number or index to an IR value of this builder."""
    if isinstance(x, V):
        return x
    if isinstance(x, Index):
        return x.value(b)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return b.lit(float(x))
    if isinstance(x, Undefined):
        raise DefinitionError(x.reason, loc, code="undefined_name")
    if isinstance(x, tuple):
        raise DefinitionError("a tuple is not a value here (shapes are tuples)", loc, code="bad_value")
    if isinstance(x, list):
        raise DefinitionError("a list is only allowed as the first argument of stack or concatenate", loc, code="bad_value")
    raise DefinitionError(f"{type(x).__name__} is not a value", loc, code="bad_value")


