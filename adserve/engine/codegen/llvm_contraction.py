"""The direct-LLVM back end's contractions (`einsum`): numba's kernel's additions, in its order.

contraction.py decides (`product`, `nest`, `shared_terms`: one decision for both writers) and this writes it:
a loop nest in the same loop order with the same innermost letter and local accumulator; a shared pass over a
large operand with its LANES accumulators and their pairwise sum; a matrix product as the BLAS call numba's
np.dot makes (numba/np/linalg.py: dot_3_mm, dot_3_vm, dot_2_vv through numba_xxgemm/xxgemv/xxdot), with the same
arguments, to the same function: scipy.linalg.cython_blas's dgemm, dgemv and ddot, which numba's helper library
calls. Their addresses are bound when a module is loaded (`bind_blas`), never written into the cached object
code. numba calls BLAS only for operands it types C- or F-contiguous (runtime.py's overloads) and runs loops
otherwise; `layout` follows numba's typing of the kernel's views (numba/core/typing/arraydecl.py) so the same
products go to BLAS here. `Contract` is a part of llvm_ir.Writer.
"""

from __future__ import annotations

import ctypes
import math

from .contraction import LANES, lanes, nest, pairwise, product, shared_terms, terms
from .llvm_ops import Fill, View, c_strides, const, transposed_layout

# BLAS (Fortran convention: every argument by reference; LP64, 32-bit integers, as scipy's cython_blas)
BLAS = {"dgemm": "declare void @adserve_dgemm(" + ", ".join(["ptr"] * 13) + ")",
        "dgemv": "declare void @adserve_dgemv(" + ", ".join(["ptr"] * 11) + ")",
        "ddot": "declare double @adserve_ddot(" + ", ".join(["ptr"] * 5) + ")"}
_bound: set = set()


def bind_blas(names):
    """Make `adserve_<name>` resolve to scipy's cython_blas function for the JIT's linker (once a process)."""
    todo = [n for n in names if n not in _bound]
    if not todo:
        return
    import llvmlite.binding as llvm
    from scipy.linalg import cython_blas
    get_name, get_pointer = ctypes.pythonapi.PyCapsule_GetName, ctypes.pythonapi.PyCapsule_GetPointer
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    for name in todo:
        capsule = cython_blas.__pyx_capi__[name]
        signature = get_name(capsule)
        if b"int *" not in signature:  # an ILP64 build: the module's 32-bit integers would be wrong
            raise ValueError(f"scipy's {name} is not LP64 ({signature!r})")
        llvm.add_symbol(f"adserve_{name}", get_pointer(capsule, signature))
        _bound.add(name)


class Contract:
    """Writer's `op_einsum`: products, loop nests and shared passes."""

    def layout(self, a) -> str:
        """numba's layout of array value `a` in its kernel: "C" unless a view made it "F" or "A"."""
        return self.layouts.get(a, "C")

    def op_einsum(self, e):
        self.contractions = True
        if e in self.joined:
            return
        partner = self.pairs.get(e)
        if partner is not None:
            self.joined.add(partner)
            return self._shared((e, partner))
        call = product(e)
        if call is not None:
            return self._product(e, call)
        self._nest(e, nest(e, self.transposed))

    # -- pieces --------------------------------------------------------------------------------------------
    def _range(self, start, stop, step=1):
        """`for i in range(start, stop, step)` opened (stop > start): (i, close)."""
        n = self.fresh()
        pre = self.block
        self.emit(f"br label %Z{n}")
        self.label(f"Z{n}")
        self.emit(f"%z{n} = phi i64 [{start}, %{pre}], [%z{n}.n, %Z{n}.l]")
        self.part.loops += 1

        def close():
            self.emit(f"br label %Z{n}.l")
            self.label(f"Z{n}.l")
            self.emit(f"%z{n}.n = add nuw nsw i64 %z{n}, {step}")
            self.emit(f"%z{n}.c = icmp ult i64 %z{n}.n, {stop}")
            self.emit(f"br i1 %z{n}.c, label %Z{n}, label %Z{n}.x")
            self.label(f"Z{n}.x")
        return f"%z{n}", close

    def _bin(self, op, x, y) -> str:
        n = self.fresh()
        self.emit(f"%u{n} = {op} double {x}, {y}")
        return f"%u{n}"

    def _at(self, op, letters, idx) -> str:
        """Operand `op` (a scalar operand, Fill or View) at the loop indices of its letters."""
        return op if isinstance(op, str) else self.elem_at(op, [idx[c] for c in letters])

    def _zeroed(self, v):
        """v's storage set to 0.0: a slot (a scalar) or its buffer."""
        if not v.shape:
            return self.slot(const(0.0))
        view = self.buffer(v)
        self.fill(view, const(0.0))
        return view

    def _target(self, store, out, idx) -> str:
        if isinstance(store, str):
            return store
        return self.address(store, [(idx[c], s) for c, s in zip(out, store.strides)])

    def _done(self, v, store):
        if not v.shape:
            self.define(v, self.load(store))

    # -- a loop nest (contraction.einsum) ------------------------------------------------------------------
    def _nest(self, e, n):
        """The loops of `n` (its order, its innermost letter) over e's operands as they are: a transposed
        operand's view reads the same element its base does at the permuted letters; one `n.copied` is copied
        into a C-ordered array of its own first."""
        a, b, la, lb, out, dims = terms(e)
        opa, opb = (self._copy_of(x) if x in n.copied else self.operand(x) for x in (a, b))
        store = self._zeroed(e.out)
        if not n.empty:
            body, start, targets = self.part.body, len(self.part.body), set()

            def target(idx):
                ptr = self._target(store, out, idx)
                targets.add(ptr)
                return ptr
            nest_ = self.open_loops([dims[c] for c in n.order])
            idx = {c: f"%i{k}" for c, (k, _) in zip(n.order, nest_)}

            def product_at(idx):
                return self._bin("fmul", self._at(opa, la, idx), self._at(opb, lb, idx))
            if not n.inner:
                self.add_to("reduce_sum", target(idx), product_at(idx))
            elif n.inner in out:
                i, close = self._range(0, dims[n.inner])
                idx[n.inner] = i
                self.add_to("reduce_sum", target(idx), product_at(idx))
                close()
            else:  # the dot product along the innermost loop in a local
                acc = self.slot(const(0.0))
                i, close = self._range(0, dims[n.inner])
                idx[n.inner] = i
                self.add_to("reduce_sum", acc, product_at(idx))
                close()
                self.add_to("reduce_sum", target(idx), self.load(acc))
            self.close_loops(nest_)
            if not isinstance(store, str):
                self._scoped(body, start, targets)
        self._done(e.out, store)

    def _copy_of(self, x) -> View:
        """Transposed operand `x` copied into a C-ordered workspace array (contraction._copied)."""
        dst = self.scratch(x.shape)
        self.copy(dst, x, self.operand(x), x.shape)
        return dst

    def _scoped(self, body, start, outs):
        """The nest's loads and stores (body[start:]) with scoped alias metadata: the output's buffer is none of
        the operands' (a fresh workspace array or an output row, never an input), which LLVM cannot see in one
        workspace; told, it keeps the output's row in registers and vectorises along it. The output's accesses
        are those through `outs`, the addresses of its elements."""
        domain, scope, scopes = self.fresh(), self.fresh(), self.fresh()
        self.consts += [f"!{domain} = distinct !{{!{domain}}}", f"!{scope} = distinct !{{!{scope}, !{domain}}}",
                        f"!{scopes} = !{{!{scope}}}"]
        for j in range(start, len(body)):
            ln = body[j]
            if ln.startswith("  store double "):
                ptr = ln.rsplit("ptr ", 1)[1]
            elif " = load double, ptr " in ln:
                ptr = ln.rsplit("ptr ", 1)[1]
            else:
                continue
            if ptr.startswith("%acc"):
                continue
            body[j] = ln + (f", !alias.scope !{scopes}" if ptr in outs else f", !noalias !{scopes}")

    # -- a shared pass (contraction._shared_pass) -------------------------------------------------------
    def _shared(self, eqns):
        shared, parts = shared_terms(eqns)
        big = self.operand(shared)
        stores = [self._zeroed(p[0].out) for p in parts]
        if 0 not in shared.shape:
            self._pass(shared, big, parts, stores)
        for (e, *_), store in zip(parts, stores):
            self._done(e.out, store)

    def _pass(self, shared, big, parts, stores):
        nest_ = self.open_loops(shared.shape[:-1])
        outer = [f"%i{k}" for k, _ in nest_]
        work = []  # per contraction: (its letters -> index, the other operand's value at i or None, store, acc)
        for (e, term, other, other_term, out, moves), store in zip(parts, stores):
            op = self.operand(other)
            fixed = None
            if not other_term or isinstance(op, Fill):
                fixed = self._at(op, "", {})
            elif moves not in other_term:  # an entry that does not move along the innermost loop: read once
                fixed = self._at(op, other_term, dict(zip(term, outer)))
            acc = self.slot(const(0.0)) if moves not in out else None
            work.append((term, other_term, op, fixed, out, store, acc))
        n = shared.shape[-1]
        stop = lanes(n, any(w[-1] for w in work))

        def body(i, accs):
            """One element of the shared operand at innermost index i into every contraction."""
            elem = self._at(big, shared_letters, dict(zip(shared_letters, outer + [i])))
            for (term, other_term, op, fixed, out, store, _), acc in zip(work, accs):
                at = dict(zip(term, outer + [i]))
                value = fixed if fixed is not None else self._at(op, other_term, at)
                prod = self._bin("fmul", elem, value)
                self.add_to("reduce_sum", acc if acc is not None else self._target(store, out, at), prod)
        shared_letters = [str(k) for k in range(len(shared.shape))]
        if stop:
            lanes_ = [[w[-1] for w in work]]
            lanes_ += [[self.slot(const(0.0)) if w[-1] else None for w in work] for _ in range(1, LANES)]
            j, close = self._range(0, stop, LANES)
            for k in range(LANES):
                i = j
                if k:
                    i = f"%u{self.fresh()}"
                    self.emit(f"{i} = add nuw nsw i64 {j}, {k}")
                body(i, lanes_[k])
            close()
            for w, slots in zip(work, zip(*lanes_)):
                if w[-1] is None:
                    continue
                values = [self.load(s) for s in slots]
                self.emit(f"store double {pairwise(values, lambda x, y: self._bin('fadd', x, y))}, ptr {w[-1]}")
        if stop < n:
            i, close = self._range(stop, n)
            body(i, [w[-1] for w in work])
            close()
        for term, other_term, op, fixed, out, store, acc in work:
            if acc is not None:
                self.add_to("reduce_sum", self._target(store, out, dict(zip(term, outer))), self.load(acc))
        self.close_loops(nest_)

    # -- one matrix product (runtime.matmul, matvec, dot) --------------------------------------------------------
    def _arranged(self, x, t):
        """Operand x (read as x.T if t): its view and numba's layout of it. A literal of one value is a C array
        in numba's kernel (np.full), so it is written out here."""
        op = self.operand(x)
        if isinstance(op, Fill):
            view = self.scratch(x.shape)
            self.fill(view, const(op.value))
            op = view
        layout = self.layout(x)
        if t:
            op = View(op.base, op.offset, op.shape[::-1], op.strides[::-1], op.dyn)
            layout = transposed_layout(layout, (1, 0))
        return op, layout

    def _product(self, e, call):
        kind = call[0]
        if kind == "dot":
            (x, lx), (y, ly) = self._arranged(call[1], False), self._arranged(call[2], False)
            if lx in "CF" and ly in "CF":
                value = self._ddot(x.shape[0], x, y)
            else:
                acc = self.slot(const(0.0))
                i, close = self._range(0, x.shape[0])
                at = {"k": i}
                self.add_to("reduce_sum", acc, self._bin("fmul", self._at(x, "k", at), self._at(y, "k", at)))
                close()
                value = self.load(acc)
            return self.define(e.out, value)
        x, lx = self._arranged(*call[1])
        y, ly = self._arranged(*call[2]) if kind == "matmul" else self._arranged(call[2], False)
        out = self.buffer(e.out)
        if lx not in "CF" or ly not in "CF":
            return self._matmul_loops(x, y, out) if kind == "matmul" else self._matvec_loops(x, y, out)
        for v, lay in ((x, lx), (y, ly)):  # numba's type says so: the memory must agree
            assert (v if lay == "C" else View(v.base, v.offset, v.shape[::-1], v.strides[::-1])).contiguous(), (v, lay)
        if kind == "matvec":
            return self._gemv(lx == "C", x.shape, lx, x, y, out)
        (m, k), n = x.shape, y.shape[1]
        if n == 1 and m == 1:  # numba's dot_3_mm: a vector times a vector
            self.emit(f"store double {self._ddot(k, x, y)}, ptr {self.address(out, [])}")
        elif n == 1:
            self._gemv(lx == "C", x.shape, lx, x, y, out)
        elif m == 1:
            self._gemv(ly != "C", y.shape, ly, y, x, out)
        else:
            self._gemm(x, lx, y, ly, out)

    def _refs(self, *typed) -> list:
        """Pointers to (type, value) pairs in allocas of the function: BLAS's arguments by reference."""
        out = []
        for ty, value in typed:
            n = self.fresh()
            self.part.entry.append(f"  %b{n} = alloca {ty}")
            self.emit(f"store {ty} {value}, ptr %b{n}")
            out.append(f"%b{n}")
        return out

    def _data(self, view: View) -> str:
        return self.address(view, [])

    def _ddot(self, n, x, y) -> str:
        self.blas.add("ddot")
        pn, inc = self._refs(("i32", n), ("i32", 1))
        r = f"%u{self.fresh()}"
        self.emit(f"{r} = call double @adserve_ddot(ptr {pn}, ptr {self._data(x)}, ptr {inc}, ptr {self._data(y)}, "
                  f"ptr {inc})")
        return r

    def _gemv(self, trans, shape, layout, a, v, out):
        """numba's call_xxgemv: y = op(a) v for matrix a of `shape` and `layout`."""
        self.blas.add("dgemv")
        m, n = shape if layout == "F" else shape[::-1]
        lda = shape[0] if layout == "F" else shape[1]
        args = self._refs(("i8", ord("t" if trans else "n")), ("i32", m), ("i32", n), ("double", const(1.0)),
                          ("i32", lda), ("i32", 1), ("double", const(0.0)))
        pt, pm, pn, alpha, plda, inc, beta = args
        self.emit(f"call void @adserve_dgemv(ptr {pt}, ptr {pm}, ptr {pn}, ptr {alpha}, ptr {self._data(a)}, "
                  f"ptr {plda}, ptr {self._data(v)}, ptr {inc}, ptr {beta}, ptr {self._data(out)}, ptr {inc})")

    def _gemm(self, x, lx, y, ly, out):
        """numba's call_xxgemm: out (C) = x @ y as the column-major out^T = y^T x^T."""
        self.blas.add("dgemm")
        (m, k), n = x.shape, y.shape[1]
        args = self._refs(("i8", ord("n" if ly == "C" else "t")), ("i8", ord("n" if lx == "C" else "t")),
                          ("i32", n), ("i32", m), ("i32", k), ("double", const(1.0)),
                          ("i32", y.shape[1] if ly == "C" else y.shape[0]),
                          ("i32", x.shape[1] if lx == "C" else x.shape[0]), ("double", const(0.0)), ("i32", n))
        ta, tb, pn, pm, pk, alpha, lda, ldb, beta, ldc = args
        self.emit(f"call void @adserve_dgemm(ptr {ta}, ptr {tb}, ptr {pn}, ptr {pm}, ptr {pk}, ptr {alpha}, "
                  f"ptr {self._data(y)}, ptr {lda}, ptr {self._data(x)}, ptr {ldb}, ptr {beta}, ptr {self._data(out)}, "
                  f"ptr {ldc})")

    def _matmul_loops(self, a, b, out):
        """runtime._matmul's loops (an operand numba cannot hand to BLAS)."""
        self.fill(out, const(0.0))
        i, close_i = self._range(0, a.shape[0])
        k, close_k = self._range(0, a.shape[1])
        aik = self._at(a, "ik", {"i": i, "k": k})
        j, close_j = self._range(0, b.shape[1])
        at = {"i": i, "k": k, "j": j}
        self.add_to("reduce_sum", self._target(out, "ij", at), self._bin("fmul", aik, self._at(b, "kj", at)))
        close_j()
        close_k()
        close_i()

    def _matvec_loops(self, a, x, out):
        """runtime._matvec's loops."""
        i, close_i = self._range(0, a.shape[0])
        acc = self.slot(const(0.0))
        k, close_k = self._range(0, a.shape[1])
        at = {"i": i, "k": k}
        self.add_to("reduce_sum", acc, self._bin("fmul", self._at(a, "ik", at), self._at(x, "k", at)))
        close_k()
        self.emit(f"store double {self.load(acc)}, ptr {self._target(out, 'i', at)}")
        close_i()
