"""The direct-LLVM back end (codegen/llvm_ir.py, llvm_kernel.py): numba's answers, bit for bit, in seconds.

Plans in its scope (element-wise work, reductions, broadcasts, static slices, reshapes, transposes, updates,
concatenations, contractions) are compiled by it and must give the numba kernel's bits (the same operations in the
same order: sums too; a matrix product the same BLAS call) and so the interpreter's answer; a plan outside its
scope goes to numba; a corrupt cache entry is compiled again; the stop flag stops a long kernel;
ADSERVE_LLVM_KERNELS=0 turns it off.
"""

import threading
import time

import numpy as np
import pytest
from engine_helpers import Builder, identical, make_graph, no_stop, op, run
from hypothesis import given, settings
from test_codegen import B, GROUPS, PROGRAMS, compile_kernel, run_kernel, spec_graph
from test_property_graphs import engine_graph, programs
from test_tier_consistency import same

from adserve.engine import Engine, backend, main_plan
from adserve.engine.codegen import contraction, llvm_ir, llvm_kernel, schedule
from adserve.engine.codegen.module import kernel_module
from adserve.engine.codegen.python import PythonKernel, Unsupported

pytestmark = pytest.mark.compiled

engine = Engine()


def both(graph, args, title, exact_interp=False, against="numba", quick=False):
    """The LLVM kernel's outputs equal numba's bit for bit, and the interpreter's (bit for bit if `exact_interp`,
    else within test_tier_consistency's 1e-12; None: numba's only). `against="python"`: the bits of numba's
    source run by CPython (the python tier: the same operations in the same order, on the same libm) in place
    of numba's compile, which costs seconds of CPU a plan; numba's own where that tier declines (a domain
    error in Python's math). `quick`: the LLVM kernel is its quick one (llvm_kernel.QUICK_LINES)."""
    assert not llvm_ir.declined(graph), llvm_ir.declined(graph)
    mine = compile_kernel(graph, title, llvm=True, quick=quick)
    assert isinstance(mine, llvm_kernel.LlvmModule)
    got = run_kernel(mine, graph, args)
    theirs = None
    if against == "python":
        try:
            theirs = run_kernel(PythonKernel(kernel_module(graph, title, python=True), title), graph, args)
        except Unsupported:
            pass
    if theirs is None:
        against, theirs = "numba", run_kernel(compile_kernel(graph, title, llvm=False), graph, args)
    want = run(graph, args)
    for j, (g, n, w) in enumerate(zip(got, theirs, want)):
        identical(g, n, f"{title}: output {j} against {against}")
        if exact_interp is not None:
            same(g, w, exact_interp, f"{title}: output {j} against the interpreter")


NZ, NAN, INF = -0.0, float("nan"), float("inf")
EDGES = np.array([NZ, 0.0, 1.5, -2.25, NAN, INF, -INF, 0.75])


def _case(f, shapes):
    b = Builder()
    xs = [b.input(s) for s in shapes]
    out = f(*xs)
    return b.build(list(out) if isinstance(out, tuple) else [out])


def _einsum(spec):
    return lambda a, b: op.einsum(a, b, spec=spec)


def _sliced(index):
    return lambda x: op.slice(x, index=index)


def _t(x):
    return op.transpose(x, perm=(1, 0))


def _data(x, data, shape=None):
    """A literal of explicit data (a module constant in the kernel)."""
    from adserve.engine.builder import V
    from adserve.engine.ir import Lit
    return V(x.b, Lit(shape or (len(data),), tuple(data)))


CASES = {  # name -> (f, shapes, exact against the interpreter)
    "every element-wise row": (lambda x, y: tuple(
        getattr(op, n)(x) for n in ("sin", "cos", "tan", "arctan", "sinh", "cosh", "tanh", "exp", "expm1",
                                    "log", "log1p", "sqrt", "abs", "sigmoid", "softplus", "erf", "erfc",
                                    "log2", "log10", "exp2", "cbrt", "arcsinh", "arctanh", "square", "floor",
                                    "ceil", "round")) + (
        op.arcsin(op.tanh(x)), op.arccos(op.tanh(x)), op.arccosh(1.0 + x * x), x ** y, op.arctan2(x, y),
        op.hypot(x, y), op.maximum(x, y), op.minimum(x, y), op.logaddexp(x, y), op.lt(x, y), op.le(x, y),
        op.gt(x, y), op.ge(x, y), op.eq(x, y), op.ne(x, y), op.clip(x, y, 1.0), op.where(op.gt(x, y), x, y),
        -x, x / y, x - y), [(8,), (8,)], False),
    # numba's (and the python tier's) sign(-0.0) is -0.0, NumPy 2's 0.0: against numba only
    "sign": (lambda x: op.sign(x), [(8,)], None),
    "scalars": (lambda x, y: (op.sin(x) * y + op.maximum(x, y), x / y), [(), ()], False),
    "reductions": (lambda x: (op.reduce_sum(x), op.reduce_max(x, axes=(1,)), op.reduce_min(x, axes=(0,)),
                              op.logsumexp(x), op.logsumexp(x, axes=(0,)), op.reduce_sum(op.exp(x) * x, axes=(1,)),
                              op.reduce_max(x * 2.0), op.reduce_min(x - 1.0)), [(4, 3)], False),
    "views": (lambda x, v: (op.transpose(x, perm=(1, 0)) * 2.0, op.reshape(op.transpose(x, perm=(1, 0)), shape=(12,)),
                            op.slice(x, index=((1, 2, 1), (2, 2, -1))) + 1.0, op.slice(x, index=(2, 1)),
                            op.update_slice(x, v, index=((0, 2, 2), 1)), op.concatenate(v, v * 3.0, axis=0),
                            op.broadcast_to(v, shape=(3, 2)) * v), [(4, 3), (2,)], True),
    "literal data": (lambda x: (x * _data(x, (1.0, NZ, 2.5, -4.0)), op.reduce_max(_data(x, (1.0, NZ, 2.5, -4.0)) - x),
                                op.transpose(_data(x, (1.0, 2.0, 3.0, 4.0), (2, 2)), perm=(1, 0)) + 1.0), [(4,)], True),
    "zeros and empties": (lambda x, e: (op.reduce_max(x), op.reduce_min(x), 1.0 / op.reduce_sum(x * 0.0),
                                        op.reduce_sum(e), op.logsumexp(e, axes=(1,)), x + 0.0), [(3,), (2, 0)], True),
    # contractions: loop nests in numba's loop order (a transposed operand read through its base), with the dot
    # product along the innermost loop in a local; a zero-length axis adds nothing (the zeros filled first)
    "contraction loop nests": (lambda a, b, c, v: (
        _einsum("ij,jk->ik")(a, b), _einsum("ij,jk->ki")(a, b), _einsum("ji,jk->ik")(b * 1.0, _t(a)),
        _einsum("ijk,kj->i")(c, _t(b)), _einsum("i,j->ij")(v, v),
        _einsum("bij,bjk->bik")(c, op.transpose(c, perm=(0, 2, 1))), _einsum("ij,ij->ji")(a, a * 2.0),
        _einsum("i,i->")(v, v * 2.0)), [(3, 4), (4, 3), (3, 4, 3), (5,)], False),
    "empty contractions": (lambda a, b, e: (
        _einsum("ij,jk->ik")(a, b), _einsum("ij,j->i")(a, e), _einsum("i,i->")(e, e) + 1.0,
        op.reduce_max(_einsum("jk,j->k")(b, e))), [(2, 0), (0, 3), (0,)], True),
}


# matrix products of contraction.BLAS_MIN_WORK multiply-adds or more: numba's np.dot calls BLAS for operands it
# types C- or F-contiguous (dgemm; dgemv for a matrix times a vector or a (m, 1) / (1, n) matrix; ddot), with
# transposes as trans flags; the LLVM kernel makes the same calls. Operands numba types "A" (a slice with a step,
# a slice of rows and columns, a transpose of one) go to runtime.py's loops on both.
PRODUCTS = {
    "matmul": (lambda a, b: (_einsum("ij,jk->ik")(a, b), _einsum("ij,jk->ki")(a, b), _einsum("ji,jk->ik")(_t(a), b),
                             _einsum("ij,kj->ik")(a, _t(b)), _einsum("ij,jk->ik")(_t(_t(a)) * 1.0, _t(_t(b)))),
               [(20, 30), (30, 40)], {"dgemm"}),
    "matmul by a column or of a row": (lambda a, c, r: (
        _einsum("ij,jk->ik")(a, c), _einsum("ij,jk->ik")(r, a), _einsum("ij,jk->ik")(_t(c), _t(a))),
        [(70, 70), (70, 1), (1, 70)], {"dgemv"}),
    "matmul of a row by a column": (lambda r, c: _einsum("ij,jk->ik")(r, c), [(1, 4100), (4100, 1)], {"ddot"}),
    "matvec": (lambda a, v, w: (_einsum("ij,j->i")(a, v), _einsum("ji,j->i")(a, w), _einsum("j,ij->i")(v, a),
                                _einsum("i,ij->j")(w, a), _einsum("ij,j->i")(_t(a), w)), [(80, 70), (70,), (80,)],
               {"dgemv"}),
    "dot": (lambda x, y: (_einsum("i,i->")(x, y),
                          _einsum("i,i->")(_sliced(((10, 4100, 1),))(x), _sliced(((0, 4100, 1),))(y) * 1.0)),
            [(9000,), (9000,)], {"ddot"}),
    "numba's loops": (lambda a, v, x: (
        _einsum("ij,j->i")(_sliced(((0, 60, 1), (0, 70, 1)))(a), v),
        _einsum("ij,jk->ik")(_sliced(((0, 40, 2), (0, 70, 1)))(a), _t(_sliced(((0, 40, 1), (0, 70, 1)))(a))),
        _einsum("i,i->")(_sliced(((0, 4500, 2),))(x), _sliced(((0, 4500, 1),))(x))),
        [(80, 70), (70,), (9000,)], set()),
}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_matrix_products_make_numbas_blas_calls(name):
    f, shapes, calls = PRODUCTS[name]
    graph = _case(f, shapes)
    assert all(contraction.product(e) for e in graph.eqns if e.prim == "einsum")
    assert set(llvm_kernel.header_text(llvm_kernel.module_text(graph, "k", name))["blas"]) == calls
    rng = np.random.default_rng(2)
    args = [rng.standard_normal((B, *s)) for s in shapes]
    args[0] = args[0][:1]
    both(graph, args, f"llvm {name}")


def _gmm_product(x, L):
    """gmm's matmul(xc, L^T) with xc a transpose of an (n, k, d) array (letters a=k, x=n, y, w=d)."""
    return _einsum("axy,ayw->axw")(op.transpose(x, perm=(1, 0, 2)), op.transpose(L, perm=(0, 2, 1)))


def test_a_nest_as_large_as_its_output_walks_the_output_along_memory(monkeypatch):
    """A loop nest whose output is at least its larger operand's size loops over the output's letters outermost,
    in its order (gmm's (k, n, d) product of a transposed (n, k, d) array: over n then k, it wrote rows 10,000
    elements apart), the summed letters inside in their former order; a dot product longer than
    contraction.SHORT_SUM stays innermost, a shorter one gives way to the output's row (lanes: each element its
    own sum, in the same order). Both operands read through their bases (no copy: COPY_MAX 0)."""
    monkeypatch.setattr(contraction, "COPY_MAX", 0)
    for d, order, inner in ((20, ("a", "x", "w"), "y"), (5, ("a", "x", "y"), "w")):
        graph = _case(_gmm_product, [(30, 4, d), (4, d, d)])
        transposed = {e.out: (e.inputs[0], tuple(e.params["perm"])) for e in graph.eqns if e.prim == "transpose"}
        (e,) = [e for e in graph.eqns if e.prim == "einsum"]
        n = contraction.nest(e, transposed)
        assert (n.la, n.lb, n.order, n.inner) == ("xay", "awy", order, inner), d
    # a smaller output: the larger operand's order, as before
    graph = _case(lambda a, b: _einsum("xay,axw->ayw")(a, b), [(30, 4, 5), (4, 30, 5)])
    (e,) = [e for e in graph.eqns if e.prim == "einsum"]
    assert contraction.nest(e, {}).order == ("x", "a", "y")
    assert contraction._output_first(("x", "s", "a", "t", "w"), "aw") == ("a", "w", "x", "s", "t")


def test_short_dot_products_give_way_to_the_outputs_row_with_the_same_bits(monkeypatch):
    """A short summed innermost letter gives way to the output's last (contraction._lanes): each output element
    adds its products in place, in the order the local did, from 0.0: the bits of the dot product in a local
    (the nest as before: SHORT_SUM 0), numba's (python tier) and the interpreter's; zeros of both signs among the
    products (a sum from 0.0 is never -0.0) and a NaN."""
    monkeypatch.setattr(contraction, "COPY_MAX", 0)  # L^T read through L, along w at a stride
    graph = _case(_gmm_product, [(30, 4, 10), (4, 10, 10)])
    rng = np.random.default_rng(8)
    args = [rng.standard_normal((B, 30, 4, 10)), rng.standard_normal((B, 4, 10, 10))[:1]]
    args[0][0, :, :, :3] = -0.0
    args[0][1, :, 2] = 0.0
    args[0][2, 3, 1, 4] = NAN
    both(graph, args, "llvm short dot products in lanes", against="python")
    lanes = run_kernel(compile_kernel(graph, "lanes", llvm=True), graph, args)
    transposed = {e.out: (e.inputs[0], tuple(e.params["perm"])) for e in graph.eqns if e.prim == "transpose"}
    (e,) = [e for e in graph.eqns if e.prim == "einsum"]
    assert contraction.nest(e, transposed).inner == "w"
    monkeypatch.setattr(contraction, "SHORT_SUM", 0)
    assert contraction.nest(e, transposed).inner == "y"
    local = run_kernel(compile_kernel(graph, "dot products in a local", llvm=True), graph, args)
    for j, (x, y) in enumerate(zip(lanes, local)):
        identical(x, y, f"output {j}: lanes against the dot product in a local")


def test_a_small_transposed_operand_is_copied_into_its_own_rows_with_the_same_bits(monkeypatch):
    """contraction._copied: gmm's L^T, small and read by every row of the nest, is copied into its own layout
    first, so the innermost loop reads it along memory (as it writes the output's row); the products are the
    same, in the same order: the bits of the nest reading L^T through L (COPY_MAX 0), numba's (python tier) and
    the interpreter's within rounding. A large transpose, one read once an element, and one that keeps its last
    axis are read through their bases."""
    graph = _case(_gmm_product, [(30, 4, 10), (4, 10, 10)])
    transposed = {e.out: (e.inputs[0], tuple(e.params["perm"])) for e in graph.eqns if e.prim == "transpose"}
    (e,) = [e for e in graph.eqns if e.prim == "einsum"]
    n = contraction.nest(e, transposed)
    assert n.copied == (e.inputs[1],) and (n.la, n.lb, n.order, n.inner) == ("xay", "ayw", ("a", "x", "y"), "w")
    assert "np.ascontiguousarray" in kernel_module(graph, "copy")
    rng = np.random.default_rng(9)
    args = [rng.standard_normal((B, 30, 4, 10)), rng.standard_normal((B, 4, 10, 10))[:1]]
    args[0][0, :, :, :3] = -0.0
    args[0][2, 3, 1, 4] = NAN
    both(graph, args, "llvm copied transpose", against="python")
    copied = run_kernel(compile_kernel(graph, "copied transpose", llvm=True), graph, args)
    monkeypatch.setattr(contraction, "COPY_MAX", 0)
    assert contraction.nest(e, transposed).copied == ()
    through = run_kernel(compile_kernel(graph, "transpose read through its base", llvm=True), graph, args)
    for j, (x, y) in enumerate(zip(copied, through)):
        identical(x, y, f"output {j}: copied against read through its base")
    monkeypatch.undo()
    # a transpose too large, or read once an element, or keeping its last axis: not copied
    for f, shapes in ((_gmm_product, [(30, 4, 200), (4, 200, 200)]),
                      (lambda a, b: _einsum("ij,ij->i")(op.transpose(a, perm=(1, 0)), b), [(6, 5), (5, 6)]),
                      (lambda a, b: _einsum("xay,ayw->axw")(a, op.transpose(b, perm=(1, 0, 2))),
                       [(30, 4, 10), (10, 4, 10)])):
        g = _case(f, shapes)
        tr = {e.out: (e.inputs[0], tuple(e.params["perm"])) for e in g.eqns if e.prim == "transpose"}
        (e,) = [e for e in g.eqns if e.prim == "einsum"]
        assert contraction.nest(e, tr).copied == (), shapes


def test_loop_nests_tell_llvm_their_output_is_no_operand():
    """A loop nest's loads and stores carry scoped alias metadata (the output's scope, the operands' noalias):
    LLVM cannot tell workspace arrays apart, and told, keeps the output's row in registers and vectorises
    (gmm d=10 k=25's kernels: objective 1.79 -> 1.20 ms, gradient 4.84 -> 3.67); the bits are numba's and the python tier's."""
    graph = _case(_gmm_product, [(30, 4, 5), (4, 5, 5)])
    text = llvm_kernel.module_text(graph, "k", "gmm product")
    assert "!alias.scope" in text and "!noalias" in text
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((B, 30, 4, 5)), rng.standard_normal((B, 4, 5, 5))]
    args[1] = args[1][:1]
    both(graph, args, "llvm gmm product", against="python")


N_SHARED = 2 * contraction.LANES + 5  # two rounds of the lanes, then a remainder summed one by one
SHARED = {  # (definition, n, SHARED_MIN or None, against)
    f"quadratic form n={N_SHARED}": ({"inputs": [{"name": "A", "shape": [N_SHARED, N_SHARED]},
                                                 {"name": "x", "shape": [N_SHARED]}, {"name": "b", "shape": [N_SHARED]}],
                                      "expr": "dot(x, dot(A, x)) * log(1 + dot(b, x) ** 2) + sum(sin(x))"}, 1,
                                     "numba"),
    "Helmholtz n=200": (None, None, "python"),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_contractions_sharing_a_pass_give_numbas_bits(name, monkeypatch):
    """x·Ax's gradient: A x and Aᵀ(c x) in one pass over A (schedule.pair_contractions), its dot products in
    contraction.LANES accumulators summed pairwise and the rest one by one (N_SHARED = 2 * LANES + 5): numba's order
    (against numba's kernel; Helmholtz n=200's, whose numba compile takes seconds, against the python tier's)."""
    defn, shared_min, against = SHARED[name]
    if defn is None:
        from bench.problems import helmholtz
        case = helmholtz(200, np.random.default_rng(0))
        defn, wrt, point = case.definition, case.wrt, case.inputs
    else:
        monkeypatch.setattr(schedule, "SHARED_MIN", shared_min)
        wrt, point = None, {}
    fn = engine.compile_definition(defn)
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}), wrt)
    assert len(schedule.pair_contractions(graph)[1]) == 1
    rng = np.random.default_rng(4)
    args = []
    for n in fn.input_names:
        shape = fn.input_shapes[n]
        x = np.asarray(point[n]) if n in point else rng.standard_normal(shape)
        args.append(x[None] * (1.0 + 0.01 * rng.standard_normal((B, *shape))))
    both(graph, args, f"llvm shared pass {name}", against=against)


@pytest.mark.parametrize("first", [g[0].id for g in GROUPS if any(s.prim == "einsum" for s in g)])
def test_einsum_spec_groups_give_numbas_bits(first):
    """test_codegen's groups of einsum specs (value, JVP and VJP): the LLVM kernel against numba's, which is
    compiled here only (test_tier_consistency's tier is LLVM now): numba's templates stay checked, as the
    back end of ADSERVE_LLVM_KERNELS=0."""
    specs = next(g for g in GROUPS if g[0].id == first)
    both(spec_graph(specs), group_args(specs, np.random.default_rng(7)), f"llvm spec group {first}")


def group_args(specs, rng):
    """A spec group's arguments, as test_tier_consistency draws them: the points (the first input shared),
    tangents, cotangents."""
    args = []
    for s in specs:
        g = make_graph(s.f, s.shapes)
        points = [s.draw(rng, k) for k in range(B)]
        args += [np.stack([p[j] for p in points]) if j else points[0][j][None] for j in range(len(g.inputs))]
        args += [rng.standard_normal((B, *v.shape)) for v in (*g.inputs, *g.outputs)]
    return args


@pytest.mark.parametrize("name", sorted(CASES))
def test_plans_in_scope_give_numbas_bits(name):
    f, shapes, exact = CASES[name]
    graph = _case(f, shapes)
    rng = np.random.default_rng(0)
    args = []
    for s in shapes:
        a = rng.standard_normal((B, *s))
        if s and s[-1] == 8:
            a[0] = EDGES
        args.append(a)
    args[0] = args[0][:1]  # shared by the batch: the kernel reads it with stride 0
    both(graph, args, f"llvm {name}", exact)


def test_a_reduction_over_the_last_axis_accumulates_in_a_register():
    """A sum or minimum over a run's innermost axis is loaded before the innermost loop and stored after it (an
    alloca, which LLVM keeps in a register), as numba's source keeps it in a local: stored every iteration, it
    was a dependency through memory LLVM could not remove (k-means' minimum took 1.4x numba's time)."""
    import re
    graph = make_graph(lambda x: (op.reduce_sum(x * x, axes=(1,)), op.reduce_min(x + 1.0, axes=(1,))), [(3, 5)])
    text = llvm_kernel.module_text(graph, "acc", "acc")
    innermost = re.findall(r"\n(L\d+):\n((?:(?!\nL\d+:\n).)*?)\n\1\.l:", text, re.S)
    (body,) = [b for _, b in innermost if "fmul" in b]  # the run's loop (the others fill the accumulators)
    stores = re.findall(r"store double [^,]+, ptr (%\w+)", body)
    assert len(stores) == 2 and all(p.startswith("%acc") for p in stores), body
    x = np.random.default_rng(3).standard_normal((B, 3, 5))
    x[0, 1] = [-0.0, 0.0, -1.0, -1.0, NAN]  # ties and a NaN through the register
    x[1, 2] = [0.0, -0.0, -0.0, 0.0, -1.0]
    both(graph, [x], "llvm accumulator in a register", exact_interp=True)


def test_maxima_and_minima_along_a_loop_are_vectorised():
    """A maximum or minimum accumulated along a run's innermost loop is IEEE's maximum or minimum (llvm.maximum,
    llvm.minimum: numba's select, a NaN's payload aside), which LLVM's vectoriser takes as a reduction: k-means'
    nearest-centre minimum over 10000x100 distances ran 1.0 ms faster (2.6 -> 1.5 ms). NaNs and zeros of either
    sign anywhere along the loop give the interpreter's bits."""
    import re
    graph = make_graph(lambda x: (op.reduce_min(x * 2.0 - 1.0, axes=(1,)), op.reduce_max(x + 1.0, axes=(1,)),
                                  op.reduce_max(x, axes=(0, 1))), [(3, 37)])
    mod, _ = llvm_kernel.optimised(llvm_kernel.module_text(graph, "ext", "ext"))
    text = str(mod)
    for fn in ("minimum", "maximum"):
        assert re.search(rf"<\d+ x double> @llvm\.{fn}\.v\d+f64", text), f"{fn} not vectorised"
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, 3, 37))
    x[0, 0, 9], x[0, 1, 30] = NAN, NAN  # a NaN in a vector lane, and in the loop's remainder
    x[1] = 0.0
    x[1, :, 5::7] = -0.0  # zeros of both signs: min -0.0, max 0.5 (x + 1.0 = 1.0) / 0.0
    x[2, 2] = -0.5
    x[2, 2, 13] = 0.5 * -0.0
    both(graph, [x], "llvm vectorised extremes", exact_interp=True)


def _rotation(x, trig=(op.cos, op.sin)):
    """ba's rotation and projection in miniature: two functions of one column, then a dozen operations more."""
    r, a, b = (op.slice(x, index=((0, 40, 1), k)) for k in range(3))
    theta = op.sqrt(r * r + 0.25)
    c, s, ti = trig[0](theta), trig[1](theta), 1.0 / theta
    y0 = a * c + (r * ti * b) * s + (1.0 - c) * a
    y1 = b * c - (r * ti * a) * s + 2.0
    pair = [op.reshape(v, shape=(40, 1)) for v in (y0 / y1, y1 * y1 - a / y1)]
    return op.reshape(op.concatenate(*pair, axis=1), shape=(80,))  # ba's stack: the values in the workspace


def _vector_divisions(graph):
    import re
    mod, _ = llvm_kernel.optimised(llvm_kernel.module_text(graph, "scoped", "scoped"))
    return re.findall(r"fdiv <\d+ x double>", str(mod))


def _rotation_inputs(seed):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((B, 10, 11))
    t[0, :6, :3] = [[NAN, 1.0, 2.0], [INF, 0.5, 1.0], [0.0, -0.0, 0.0], [1.0, NAN, 3.0], [2.0, 1.0, INF], [NZ, 1.0, -1.0]]
    return [t, rng.integers(0, 10, size=(B, 40)).astype(float)]


def test_a_run_reading_the_workspace_at_other_strides_is_vectorised():
    """ba's objective: rows of 11 gathered into the workspace, a run reading them (stride 11) and storing its
    values (stride 1) into the same workspace, where LLVM could not tell the two apart. Its stores are scoped apart from its loads (llvm_split.py), and
    LLVM vectorises it, sin and cos called lane by lane: the interpreter's bits, NaNs, infinities and zeros among
    the rows."""
    graph = _case(lambda t, i: _rotation(op.gather(t, i, axis=0)), [(10, 11), (40,)])
    assert _vector_divisions(graph)
    both(graph, _rotation_inputs(8), "llvm scoped run", exact_interp=True)


def test_a_run_is_cut_at_libm_calls_and_the_rest_vectorised(monkeypatch):
    """tan and atan (libm's, no LLVM intrinsics) have no vector form and keep a loop scalar: the run is written as
    a loop computing them into the workspace and a loop of the rest, which LLVM vectorises; every element computed
    by the same operations: the interpreter's bits."""
    from adserve.engine.codegen import llvm_split
    graph = _case(lambda t, i: _rotation(op.gather(t, i, axis=0), (op.tan, op.arctan)), [(10, 11), (40,)])
    assert _vector_divisions(graph)
    monkeypatch.setattr(llvm_split, "SPLIT_REST", 10 ** 6)  # one loop: scalar, as every such call keeps it
    assert not _vector_divisions(graph)
    monkeypatch.undo()
    both(graph, _rotation_inputs(9), "llvm run cut at calls", exact_interp=True)


def test_the_pieces_of_an_output_concatenation_are_computed_in_its_row():
    """ba's output: concatenate([reshape(stack([e0, e1], axis=1), (-1,)), 1 - w * w]). Each piece is computed in
    its region of the output row (e0 and e1 at stride 2), nothing in the workspace, no copies (llvm_homes.py):
    the interpreter's bits."""
    def f(x):
        pair = [op.reshape(v, shape=(40, 1)) for v in (op.sin(x) * 2.0, x / 3.0)]
        return op.concatenate(op.reshape(op.concatenate(*pair, axis=1), shape=(80,)), 1.0 - x * x, axis=0)
    graph = _case(f, [(40,)])
    text = llvm_kernel.module_text(graph, "homes", "homes")
    assert "@malloc(" not in text.split("define i64 @kernel_homes(")[1].split("\n}")[0]
    x = np.random.default_rng(10).standard_normal((B, 40))
    x[0, :5] = [NAN, INF, -INF, 0.0, NZ]
    both(graph, [x], "llvm homes", exact_interp=True)


def test_short_loops_unrolled_whole_are_vectorised_across_their_lanes(monkeypatch):
    """gmm's reverse product: out[a, x, w] += g[a, x, y] * L[a, y, w] with w of 10 (the loop nest's innermost
    letter, the output's row held in registers): LLVM unrolls a loop that short whole before its loop vectoriser
    runs, and only the SLP vectoriser (llvm_kernel.SLP) packs the row's lanes; each lane is its own element's sum,
    in its order: numba's bits."""
    import re
    graph = _case(_einsum("axy,ayw->axw"), [(3, 40, 10), (3, 10, 10)])

    def vector_products():
        mod, _ = llvm_kernel.optimised(llvm_kernel.module_text(graph, "slp", "slp"))
        return re.findall(r"fmul <\d+ x double>", str(mod))
    assert vector_products()
    monkeypatch.setattr(llvm_kernel, "SLP", False)
    assert not vector_products()  # what the setting does: the loop vectoriser leaves this nest alone
    monkeypatch.undo()
    rng = np.random.default_rng(6)
    args = [rng.standard_normal((B, 3, 40, 10)), rng.standard_normal((B, 3, 10, 10))]
    both(graph, args, "llvm slp product", against="python")


def test_a_workspace_in_segments_gives_the_same_bits(monkeypatch):
    """Scratch arrays in workspace segments of at most SEGMENT doubles, each malloc'd per call (a block over
    glibc's largest mmap threshold is mapped and zeroed again on every call): with segments of 16 doubles,
    Helmholtz n=20's value, gradient and HVP (contractions, a shared pass, scalars crossing functions) in many
    segments, against the python tier's bits."""
    from bench.problems import helmholtz
    monkeypatch.setattr(llvm_ir, "SEGMENT", 16)
    case = helmholtz(20, np.random.default_rng(0))
    fn = engine.compile_definition(case.definition)
    graph, _ = main_plan(fn, frozenset({"value", "gradient", "hvp"}))
    segments = llvm_kernel.header_text(llvm_kernel.module_text(graph, "seg", "seg"))["workspace"]
    assert len(segments) > 3 and max(segments) <= 20 * 20, segments  # an array larger than a segment: its own
    rng = np.random.default_rng(2)
    point = [np.asarray(case.inputs[n]) for n in fn.input_names]  # then tangents, cotangents: any numbers
    args = [point[j][None] * (1.0 + 0.01 * rng.standard_normal((B, *v.shape))) if j < len(point)
            else rng.standard_normal((B, *v.shape)) for j, v in enumerate(graph.inputs)]
    both(graph, args, "llvm workspace segments", against="python")


@pytest.mark.parametrize("name", ["survey", "sum-in-its-own-loop", "partial-sums"])
def test_programs_value_gradient_hvp(name):
    from test_codegen import program_case
    graph, args = program_case(name)
    both(graph, args, f"llvm program {name}")


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(programs(max_len=8))
def test_random_straight_line_programs(case):
    """test_property_graphs' random programs (no loops or branches: in scope), value and gradient, against the
    python tier's bits (numba's are checked on the spec groups and fixed programs)."""
    prog, seed = case
    g = engine_graph(prog)
    from engine_helpers import value_and_grad_graph
    graph = value_and_grad_graph(g)
    rng = np.random.default_rng(seed)
    both(graph, [rng.standard_normal((B, *v.shape)) for v in graph.inputs], f"llvm random {prog}", against="python")


@pytest.mark.parametrize("quick", [False, True], ids=["lean passes", "quick: machine code at level 0"])
def test_large_kernels_are_cut_into_functions_of_a_few_loops(quick):
    """A kernel of several functions: the lean pass list, and its quick kernel (level 0's machine code); the
    python tier's bits (numba's compile of this plan alone took 10-15 s of CPU)."""
    from bench.compile_time import random_definition
    # 600 ops: 65 loops, 3 functions (300 made 58 loops before schedule.ahead_of_runs fused more, 33 since)
    fn = engine.compile_definition(random_definition(600, seed=3))
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    text = llvm_kernel.module_text(graph, "cut", "cut")
    meta = llvm_kernel.header_text(text)
    assert meta["parts"] > 2
    parts = text.split("define internal i64")[1:]
    assert len(parts) == meta["parts"]
    for part in parts:
        assert part.count(".l:\n") <= llvm_ir.MAX_LOOPS + 8  # a function ends after the item crossing the mark
    rng = np.random.default_rng(1)
    both(graph, [rng.standard_normal((B, *v.shape)) for v in graph.inputs], f"llvm random-300 quick={quick}",
         against="python", quick=quick)


def test_a_plan_outside_the_scope_goes_to_numba(tmp_path, monkeypatch):
    """A plan of more than MAX_ARRAYS inputs and outputs (each is an argument of every function) stays on numba
    (a contraction no longer does); with llvm off every plan goes there."""
    inside = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(sin(x) * x)"})
    outside = engine.compile_definition(PROGRAMS["matrices"][0])
    g_in, g_out = (main_plan(fn, frozenset({"value", "gradient"}))[0] for fn in (inside, outside))
    assert not llvm_ir.declined(g_out)  # einsum: in scope
    monkeypatch.setattr(llvm_ir, "MAX_ARRAYS", 4)  # g_in has 3 (x, the value, the gradient), g_out 5
    assert not llvm_ir.declined(g_in) and llvm_ir.declined(g_out) == {"more than 4 inputs and outputs"}
    t = backend.Tiered(str(tmp_path / "on"), python=False)
    try:
        for g in (g_in, g_out):
            t.kernel(g)
            assert t.wait(g, 600)
        assert isinstance(t.module(g_in, backend.NUMBA), llvm_kernel.LlvmModule)
        assert not isinstance(t.module(g_out, backend.NUMBA), llvm_kernel.LlvmModule)
        assert t.stats.llvm_compiles == 1 and t.stats.compiles == 2
        x = np.array([[0.5, -1.0, 2.0]])
        for got, want in zip(t.run(g_in, [x]), run(g_in, [x])):
            same(got, want, False, "tiered llvm")
    finally:
        t.shutdown()
    off = backend.Tiered(str(tmp_path / "off"), python=False, llvm=False)
    try:
        off.kernel(g_in)
        assert off.wait(g_in, 600)
        assert not isinstance(off.module(g_in, backend.NUMBA), llvm_kernel.LlvmModule)
        assert off.stats.llvm_compiles == 0
    finally:
        off.shutdown()


def test_a_corrupt_cache_entry_is_compiled_again(tmp_path):
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [4]}], "expr": "sum(exp(x) * x)"})
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    first = backend.Tiered(str(tmp_path), python=False)
    try:
        first.kernel(graph)
        assert first.wait(graph, 300) and first.stats.llvm_compiles == 1
    finally:
        first.shutdown()
    _, obj = llvm_kernel.paths(str(tmp_path / "kernels"), backend.plan_key(graph))
    with open(obj, "r+b") as f:  # the header line stays; the object code is cut short (LLVM would crash on it)
        head = f.readline()
        f.truncate(len(head) + 100)
    again = backend.Tiered(str(tmp_path), python=False)
    try:
        again.kernel(graph)
        assert again.wait(graph, 300)
        assert again.stats.load_failures == 1 and again.stats.llvm_compiles == 1
        x = np.array([[0.1, 0.2, -0.3, 1.0]])
        for got, want in zip(again.run(graph, [x]), run(graph, [x])):
            same(got, want, False, "recompiled")
    finally:
        again.shutdown()


def test_the_stop_flag_stops_a_long_kernel():
    b = Builder()
    x = b.input((1000,))
    graph = b.build([op.reduce_sum(op.sin(op.exp(op.cos(x)) * x))])
    mod = compile_kernel(graph, "llvm stop", llvm=True)
    n = 20_000
    xs, out = np.random.default_rng(0).standard_normal((n, 1000)), np.empty((n,))
    stop = no_stop()
    stop[0] = 1  # already set: not a single point runs
    assert mod.kernel(n, stop, xs, out) == llvm_kernel.STOPPED and stop[1] == 0
    stop = no_stop()
    timer = threading.Timer(0.05, stop.__setitem__, (0, 1))
    timer.start()
    t = time.perf_counter()
    status = mod.kernel(n, stop, xs, out)
    timer.join()
    assert status == llvm_kernel.STOPPED and 0 < stop[1] < n, (status, stop)
    assert time.perf_counter() - t < 5.0
    assert mod.kernel(2, no_stop(), xs, out) == 0  # a clean flag: it runs to the end


def test_the_setting_turns_it_off(tmp_path, monkeypatch):
    from adserve.server.settings import Settings
    monkeypatch.setenv("ADSERVE_LLVM_KERNELS", "0")
    s = Settings(cache_dir=tmp_path, isolate_workers=0)
    assert s.llvm_kernels is False
    e = Engine.from_settings(s)
    try:
        assert e.backend.store.llvm is False
    finally:
        e.close()
    monkeypatch.delenv("ADSERVE_LLVM_KERNELS")
    e = Engine.from_settings(Settings(cache_dir=tmp_path, isolate_workers=0))
    try:
        assert e.backend.store.llvm is True
    finally:
        e.close()


def test_the_kernel_function_keeps_its_code_alive():
    """`module.kernel` held alone (its module dropped) still runs: it holds the module, and so its machine code."""
    import gc
    graph = _case(lambda x: op.exp(x) * 2.0, [(3,)])
    kernel = compile_kernel(graph, "llvm keep alive", llvm=True).kernel
    gc.collect()
    out = np.empty((1, 3))
    assert kernel(1, no_stop(), np.zeros((1, 3)), out) == 0 and out.tolist() == [[2.0, 2.0, 2.0]]
    with pytest.raises(TypeError):
        kernel(1, no_stop())


def test_the_parallel_variant_runs_the_serial_kernel_on_chunks(tmp_path):
    """An LLVM plan's parallel variant compiles nothing: the serial kernel on chunks of the batch, on threads, with
    the serial kernel's bits (a shared input stays shared: stride 0 in every chunk)."""
    if backend.usable_cores() < 2:
        pytest.skip("one usable core: no parallel variant")
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [3]}, {"name": "s", "shape": []}],
                                    "expr": "sum(sin(x) * x * s) + max(x)"})
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}))
    t = backend.Tiered(str(tmp_path), python=False)
    try:
        t.kernel(graph)
        assert t.wait(graph, 300) and t.wait(graph, 60, parallel=True)
        par, serial = t.module(graph, backend.PARALLEL), t.module(graph, backend.NUMBA)
        assert isinstance(par, llvm_kernel.LlvmChunks) and t.stats.parallel_compiles == 0
        n, rng = 37, np.random.default_rng(5)
        shapes = backend.plan_meta(graph).out_shapes
        for args in ([rng.standard_normal((n, 3)), rng.standard_normal((n,))],
                     [rng.standard_normal((1, 3)), rng.standard_normal((n,))]):
            got, want = ([np.empty((n, *s)) for s in shapes] for _ in range(2))
            assert par.kernel(n, no_stop(), *args, *got) == 0 and serial.kernel(n, no_stop(), *args, *want) == 0
            for g, w in zip(got, want):
                identical(g, w, "chunks against the serial kernel")
        stop = no_stop()
        stop[0] = 1
        assert par.kernel(n, stop, *args, *got) == llvm_kernel.STOPPED
    finally:
        t.shutdown()


def test_a_count_is_added_in_parallel_lanes_and_gives_numbas_bits():
    """A sum of a comparison's 0.0 and 1.0 (a count: the ties of lse's max in its gradient) is exact in any order
    below 2**53: its add is `reassoc`, its loop is left to LLVM's vectoriser (a plain sum's is not: its order
    is its bits), and the total is numba's and the interpreter's, bit for bit; a sum of other values beside it
    keeps its order."""
    fn = engine.compile_definition({"inputs": [{"name": "x", "shape": [5000]}],
                                    "expr": "max(x) + log(sum(exp(x - max(x))))"})
    graph, _ = main_plan(fn, frozenset({"gradient"}))
    text = llvm_kernel.module_text(graph, "k", "t")
    assert "fadd reassoc double" in text
    counting = _case(lambda x: op.reduce_sum(op.eq(x, op.broadcast_to(op.reshape(op.reduce_max(x, axes=(0,)),
                                                                                shape=(1,)), shape=(5000,))),
                                             axes=(0,)), [(5000,)])
    text = llvm_kernel.module_text(counting, "k", "t")
    assert "fadd reassoc double" in text and "llvm.loop.vectorize.enable" not in text
    plain = _case(lambda x: op.reduce_sum(op.mul(x, x), axes=(0,)), [(5000,)])
    assert "reassoc" not in llvm_kernel.module_text(plain, "k", "t")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 7, 5000).astype(np.float64)  # many ties at the max
    both(counting, [x[None]], "count", exact_interp=True, against="python")
    both(graph, [x[None]], "lse gradient", against="python")
    # a sum of an equation that is the writer's own (a PATCH: no row of the table) is a plain sum
    first = ((0, 4999, 1),)
    patched = _case(lambda x: op.reduce_sum(op.update_slice(x, op.mul(op.slice(x, index=first), 2.0), index=first),
                                            axes=(0,)), [(5000,)])
    assert "reassoc" not in llvm_kernel.module_text(patched, "k", "t")
    both(patched, [x[None]], "patched sum", against="python")


def test_kernels_with_loops_get_the_standard_pipeline_whatever_their_size(monkeypatch):
    """llvm_kernel._level: straight-line kernels of more than LEAN_PARTS functions get the lean passes; a kernel with
    loops or contractions gets -O2 however many functions it has (the lean passes leave its loops' invariant loads
    and index arithmetic in them: GradBench's ht Jacobians ran 2.3 times slower), a large one after its quick kernel."""
    monkeypatch.delenv("ADSERVE_LLVM_OPT", raising=False)
    lean = llvm_kernel.LEAN_PARTS
    assert llvm_kernel._level(lean) == llvm_kernel._level(1) == llvm_kernel.OPT_LEVEL
    assert llvm_kernel._level(lean + 1) is None and llvm_kernel._level(40) is None
    assert llvm_kernel._level(40, loops=True) == llvm_kernel._level(9, loops=True) == llvm_kernel.OPT_LEVEL
