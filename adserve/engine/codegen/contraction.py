"""Contractions (`einsum`): one matrix product as a BLAS call, others as loop nests, and pairs of them sharing
one pass over a large operand.

An einsum that is one matrix-matrix, matrix-vector or vector-vector product (one summed letter, at most one
free letter per operand, nothing batched), of BLAS_MIN_WORK multiply-adds or more, calls the runtime's
`matmul`/`matvec`/`dot` with its operands as they are or transposed (`x.T`, no copy): BLAS runs it (a
blocked, vectorised product), where a loop nest over a transposed operand reads it across rows.

The decisions (`product`, `nest`, `shared_terms`) are made here once for both writers: this module's numba
source and the direct-LLVM back end's (llvm_contraction.py), which must add in the same order to give the same
bits."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..ir import Lit, Var
from .emit import loc_text, num
from .schedule import big_operand


def einsum(s, e):
    if e in s.joined:
        return
    partner = s.pairs.get(e)
    if partner is not None:
        s.joined.add(partner)
        return _shared_pass(s, (e, partner))
    call = product(e)
    if call is not None:
        return _product(s, e, call)
    n = nest(e, s.transposed)
    a, la, b, lb, out_letters, dims = n.a, n.la, n.b, n.lb, n.out, n.dims
    copies = {}
    for x in n.copied:  # read along its own rows (`nest`)
        copies[x] = s.fresh("c")
        s.line(f"{copies[x]} = np.ascontiguousarray({s.ref(x)})")
    out = e.out
    scalar = not out.shape
    name = s.define(out) if scalar else s.buffer(out)
    s.line(f"{name} = 0.0" if scalar else f"{name}[:] = 0.0")
    idx = dict(zip(n.order, s.loops([0 if n.empty else dims[c] for c in n.order])))
    idx[n.inner] = s.fresh("i") if n.inner else ""

    def at(x, term):
        return s.ref(x) if not term else (f"{copies.get(x) or s.ref(x)}[{', '.join(idx[c] for c in term)}]"
                                          if isinstance(x, Var) or x.fill is None else num(x.fill))
    target = name if scalar else f"{name}[{', '.join(idx[c] for c in out_letters)}]"
    if not n.inner:  # two scalars
        s.line(f"{target} += {at(a, la)} * {at(b, lb)}")
    elif n.inner in out_letters:
        s.line(f"for {idx[n.inner]} in range({dims[n.inner]}):")
        s.line(f"    {target} += {at(a, la)} * {at(b, lb)}")
    else:  # a dot product along the innermost loop, in a local
        acc = s.fresh("acc")
        s.line(f"{acc} = 0.0")
        s.line(f"for {idx[n.inner]} in range({dims[n.inner]}):")
        s.line(f"    {acc} += {at(a, la)} * {at(b, lb)}")
        s.line(f"{target} += {acc}")
    s.end(len(n.order))


def terms(e):
    """(a, b, la, lb, out letters, {letter: length}) of einsum `e`."""
    a, b = e.inputs
    ins, out = e.params["spec"].split("->")
    la, lb = ins.split(",")
    dims = {c: d for term, x in ((la, a), (lb, b)) for c, d in zip(term, x.shape)}
    return a, b, la, lb, out, dims


@dataclass(frozen=True)
class Nest:
    """A contraction's loop nest: operands (transposes read through their bases, letters permuted, except those
    `copied`: small transposes copied into their own layout first, read with their own letters), the loops'
    letters outermost first (`order`), the innermost loop's letter (`inner`, "" for two scalars) and whether
    no product is added (`empty`: a zero-length axis; the zeros filled first are the answer)."""
    a: object
    la: str
    b: object
    lb: str
    out: str
    dims: dict
    order: tuple
    inner: str
    empty: bool
    copied: tuple = ()


def nest(e, transposed) -> Nest:
    """The loop nest of `e` (not a product: see `product`); `transposed` maps a transpose to (its base, perm)."""
    a, b, la, lb, out, dims = terms(e)
    copied = tuple(x for x in (a, b) if _copied(x, transposed, math.prod(dims.values())))
    if a not in copied:
        a, la = _untransposed(transposed, a, la)
    if b not in copied:
        b, lb = _untransposed(transposed, b, lb)
    big, other = (la, lb) if math.prod(a.shape) >= math.prod(b.shape) else (lb, la)
    inner = _innermost(la, lb, out)
    order = tuple(c for c in dict.fromkeys(big + other + out) if c != inner)
    if math.prod(e.out.shape) >= max(math.prod(a.shape), math.prod(b.shape)):
        order = _output_first(order, out)
    summed = set(la + lb) - set(out)
    if out and summed == {inner} and dims[inner] <= SHORT_SUM and 1 < dims[out[-1]] * dims[inner] <= LANE_BLOCK:
        order, inner = _lanes(order, inner, out[-1])
    return Nest(a, la, b, lb, out, dims, order, inner, 0 in dims.values(), copied)


COPY_MAX = 1 << 15  # elements (256 KB) of a transposed operand that `_copied` may copy


def _copied(x, transposed, products) -> bool:
    """Whether the nest copies transposed operand `x` into its own layout first: a small transpose that moves its
    last axis (its base's rows run along another letter) and that the nest reads at least twice an element
    (`products`: the nest's multiply-adds). Through its base, the innermost loop read it across rows: gmm d=10's
    matmul(xc, transpose(L)), 25 x 1,000 rows of 10 outputs, read L at a stride of 10 (an LLVM loop that did not
    vectorise) and took 0.75 of the objective kernel's 0.90 ms; on a copy of L^T (2,500 elements) the row is a
    vector operation, and the kernel 0.49 ms. The same products in the same order: the same bits."""
    if x not in transposed or not 0 < math.prod(x.shape) <= COPY_MAX or products < 2 * math.prod(x.shape):
        return False
    _, perm = transposed[x]
    return perm[-1] != len(perm) - 1


def _lanes(order, summed, lane) -> tuple:
    """(order, innermost letter) with the output's last letter `lane` innermost in place of a short `summed`
    one (the only summed letter), which goes just outside it. A dot product of SHORT_SUM elements or fewer is a
    chain of dependent additions, which LLVM unrolls whole and cannot vectorise (it would reorder the sum); along
    the output's row, each element is its own sum, added to in place (the buffer starts at 0.0, as the local did,
    which is never -0.0: the same roundings) in the same sequence of summed indices: the same bits, in lanes the
    SLP vectoriser packs. gmm d=10 k=25's forward product matmul(xc, L^T), k x n x d outputs of 10 products each:
    gradient kernel 2.3 -> 2.1 ms, objective 1.10 -> 0.99. An operand whose last letter is `summed` is read across
    its rows, its block of the two letters once per element of `lane`'s row: at most LANE_BLOCK elements, which
    stay in the cache."""
    return tuple(c for c in order if c != lane) + (summed,), lane


def _output_first(order, out) -> tuple:
    """`order` with the output's letters outermost, in the output's order (its buffer written along memory),
    the summed letters inside them in their order in `order`: each output element adds its products in the
    same sequence, so the bits are those of `order`. For an output as large as the larger operand (gmm's
    matmul(xc, L^T), xc a transpose of a (n, k, d) array: loops over n, k wrote (k, n, d) rows 10,000 elements
    apart; gmm d=10 k=25's objective kernel 1.44 -> 1.38 ms, with llvm_contraction's alias scopes 1.20 -> 1.19,
    medians of 101 interleaved)."""
    return tuple(c for c in out if c in order) + tuple(c for c in order if c not in out)


def _untransposed(transposed, x, term):
    """A transposed operand as its base with the letters permuted (x[i, j] of x = base.T is base[j, i]), so the
    loop order follows the memory the loops read."""
    while x in transposed:
        x, perm = transposed[x]
        base = [""] * len(term)
        for i, p in enumerate(perm):
            base[p % len(term)] = term[i]
        term = "".join(base)
    return x, term


def _innermost(la, lb, out) -> str:
    """The innermost loop's letter: the last axis (contiguous) of most of the operands and the output; a tie
    goes to the output's (its loop writes along a row), then to the first operand's."""
    votes: dict = {}
    for term in (out, la, lb):
        if term:
            votes[term[-1]] = votes.get(term[-1], 0) + 1
    return max(votes, key=lambda c: votes[c]) if votes else ""


def shared_terms(eqns):
    """A shared pass's operand and, per contraction, (e, its letters of the shared operand, the other operand,
    its letters, the output's letters, `moves`: the innermost loop's letter)."""
    shared = big_operand(eqns[0])
    out = []
    for e in eqns:
        a, b, ta, tb, letters, _ = terms(e)
        term, other, other_term = (ta, b, tb) if a is shared else (tb, a, ta)
        out.append((e, term, other, other_term, letters, term[-1]))
    return shared, out


def _shared_pass(s, eqns):
    """Contractions over one large operand in one loop nest over it: each element is read once. Written so
    the innermost loop vectorises: what does not move along it (a sum over it, an operand entry) is a local."""
    shared, parts = shared_terms(eqns)
    terms_ = []
    for e, term, other, other_term, out, moves in parts:
        name = s.define(e.out) if not e.out.shape else s.buffer(e.out)
        s.line(f"{name} = 0.0" if not e.out.shape else f"{name}[:] = 0.0")
        terms_.append((e, term, other, other_term, out, moves, name))
    s.line(f"# one pass over {s.ref(shared)}: {len(eqns)} contractions")
    idx = s.loops(shared.shape[:-1] if shared.shape[-1] else (0,) * (len(shared.shape) - 1))  # empty: no pass
    inner = s.fresh("i")
    last = []  # lines after the innermost loop
    body = []
    for e, term, other, other_term, out, moves, name in terms_:
        at = dict(zip(term, idx + [inner]))
        if not other_term or isinstance(other, Lit) and other.fill is not None:
            value = s.ref(other) if isinstance(other, Var) or other.fill is None else num(other.fill)
        else:
            value = f"{s.ref(other)}[{', '.join(at[c] for c in other_term)}]"
            if moves not in other_term:
                local = s.fresh("w")
                s.line(f"{local} = {value}")
                value = local
        target = f"{name}[{', '.join(at[c] for c in out)}]" if out else name
        loc = f"  # {loc_text(e.loc)}" if e.loc else ""
        if moves in out:
            body.append(f"{target} += ELEM * {value}{loc}")
        else:
            acc = s.fresh("acc")
            s.line(f"{acc} = 0.0")
            body.append(f"{acc} += ELEM * {value}{loc}")
            last.append(f"{target} += {acc}")
    n = shared.shape[-1]
    elem = s.fresh("a")
    sums = [line.split(" += ")[0] for line in last]
    if sums and n >= 2 * LANES:
        # the dot products in LANES accumulators, each summing every LANES-th element: without fast-math LLVM
        # vectorises no sum (it would reorder it), but it packs independent ones side by side; the order is the
        # source's, so the python tier computes the same bits
        accs = [line.split(" += ")[1] for line in last]
        for k in range(1, LANES):
            for acc in accs:
                s.line(f"{acc}_{k} = 0.0")
        s.line(f"for {inner} in range(0, {n - n % LANES}, {LANES}):")
        s.depth += 1
        for k in range(LANES):
            at = f"{inner} + {k}" if k else inner
            s.line(f"{elem}_{k} = {s.ref(shared)}[{', '.join(idx + [at])}]")
            for line in body:
                line = re.sub(rf"\b{inner}\b", at, line.replace("ELEM", f"{elem}_{k}", 1))
                for acc in accs:
                    line = re.sub(rf"\b{acc}\b", f"{acc}_{k}" if k else acc, line)
                s.line(line)
        s.depth -= 1
        for acc in accs:
            s.line(f"{acc} = {_pairwise([acc] + [f'{acc}_{k}' for k in range(1, LANES)])}")
        start = n - n % LANES
    else:
        start = 0
    if start < n:
        s.line(f"for {inner} in range({start}, {n}):" if start else f"for {inner} in range({n}):")
        s.depth += 1
        s.line(f"{elem} = {s.ref(shared)}[{', '.join(idx + [inner])}]")
        for line in body:
            s.line(line.replace("ELEM", elem, 1))
        s.depth -= 1
    for line in last:
        s.line(line)
    s.end(len(shared.shape) - 1)


# dot products in the shared pass: accumulators side by side, the same in both writers (numba's and the direct-LLVM
# one), so both sum in the same order. Helmholtz n=1000's gradient kernel (numba, fast-math then): 0.93 ms in one,
# 0.55-0.61 ms in 4 or 8. Without fast-math (module.FASTMATH), LLVM's SLP vectoriser made of 8 lanes four 2-wide
# accumulators and the same 8-wide product four times: 366-412 us against the primal's 140-190 (2.2-2.6x, the
# target is 2x); of 16 lanes it makes whole vectors: 232 us, and bench's gradient/primal 1.41-1.52 (n=200: 1.73 ->
# 1.28-1.39). numba's kernel, which serves only plans outside the LLVM writer's scope, ran 517 -> 588 us.
LANES = 16


def lanes(n: int, sums: bool) -> int:
    """Where a shared pass's LANES-way part ends along its innermost axis of length n (0: not split;
    `sums`: some contraction sums along it)."""
    return n - n % LANES if sums and n >= 2 * LANES else 0


def pairwise(terms_, add):
    """The sum of `terms_` as a balanced tree, (a + b) + (c + d), built by add(x, y)."""
    if len(terms_) == 1:
        return terms_[0]
    half = len(terms_) // 2
    return add(pairwise(terms_[:half], add), pairwise(terms_[half:], add))


def _pairwise(terms_) -> str:
    return pairwise(terms_, lambda x, y: f"({x} + {y})")


SHORT_SUM = 16  # a summed innermost loop this short gives way to the output's row (`_lanes`),
LANE_BLOCK = 4096  # when the row and it span at most this many elements (32 KB)
BLAS_MIN_WORK = 4096  # multiply-adds: below this a loop nest beats the call (and BLAS's checks)


def product(e):
    """`e` as one BLAS product (see the module's docstring), or None: ("matmul", (x, xt), (y, yt)) for
    out = x @ y, ("matvec", (x, xt), y) for out = x @ y, ("dot", x, y); `xt`: the operand is read as x.T."""
    a, b, la, lb, out, dims = terms(e)
    summed = [c for c in la if c in lb and c not in out]
    if len(summed) != 1 or any(c in la and c in lb for c in out) or not all(dims.values()):
        return None
    if math.prod(dims.values()) < BLAS_MIN_WORK or any(isinstance(x, Lit) and x.fill is not None for x in (a, b)):
        return None
    (k,) = summed
    if len(la) < len(lb):  # the matrix first
        a, b, la, lb = b, a, lb, la
    if (len(la), len(lb)) == (2, 2):
        p, q = la.replace(k, ""), lb.replace(k, "")
        left, right = (a, la[0] != p), (b, lb[0] != k)
        if out == p + q:
            return "matmul", left, right
        return "matmul", (b, not right[1]), (a, not left[1])  # (AB)^T = B^T A^T
    if (len(la), len(lb)) == (2, 1):
        return "matvec", (a, la[0] != out), b
    if (len(la), len(lb)) == (1, 1):
        return "dot", a, b
    return None


def _product(s, e, call):
    def arranged(x):
        return f"{s.ref(x[0])}.T" if x[1] else s.ref(x[0])
    kind = call[0]
    if kind == "matmul":
        s.line(f"matmul({arranged(call[1])}, {arranged(call[2])}, {s.buffer(e.out)})")
    elif kind == "matvec":
        s.line(f"matvec({arranged(call[1])}, {s.ref(call[2])}, {s.buffer(e.out)})")
    else:
        s.line(f"{s.define(e.out)} = dot({s.ref(call[1])}, {s.ref(call[2])})")
