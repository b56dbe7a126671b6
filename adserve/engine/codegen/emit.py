"""Emission: the kernel body as lines of numba source, and the names, buffers and constants they use.

`Emitter` holds what one kernel's generation has produced so far: a name per IR value (scalars are locals,
arrays buffers allocated once per call in the prologue, or a row of an output array), the body lines at
their indentation, module constants for non-scalar literals, and the messages of run-time errors.
`fusion.Source` walks a graph with it; the per-op generators (templates.py and its siblings) call it.
"""

from __future__ import annotations

import math

from ..ir import Lit, Var
from .memory import Frame


def num(x: float) -> str:
    if math.isnan(x):
        return "math.nan"
    if math.isinf(x):
        return "math.inf" if x > 0 else "-math.inf"
    return repr(float(x))




class Emitter:
    """One kernel body being written: names, lines, buffers, constants, error messages."""

    def __init__(self):
        self.names: dict = {}
        self.owner: dict = {}  # buffer name -> the value it holds now (an in-place update hands it on)
        self.frame: Frame | None = None  # set while the top-level graph is emitted
        self.rows: dict = {}  # top-level array output -> its row of the output array, until a buffer takes it
        self.in_row: dict = {}  # top-level array output -> the buffer that is its row
        self.landed: set = set()  # updates whose value a fused loop wrote in place (see fusion.Source._landing)
        self.pairs: dict = {}  # einsum -> the one after it that shares its pass over a large operand (schedule.py)
        self.joined: set = set()  # the second einsums of pairs: emitted with the first
        self.transposed: dict = {}  # a transpose (a view) -> (the value it views, perm): contractions read the base
        self.level = 0
        self.prologue: list[str] = []
        self.body: list[str] = []
        self.consts: list[str] = []
        self.errors: list[str] = []
        self.stop_loops: list = []  # (length or None, location) of each outermost loop, the module's LOOPS
        self.enclosing: list = []  # the loops open where lines are written now: (number in LOOPS, iterations done)
        self.depth = 2
        self.count = 0
        self.python = False  # the python tier's module: array stores stay slice assignments (one NumPy call)

    # -- names and lines ---------------------------------------------------
    def fresh(self, prefix="t"):
        self.count += 1
        return f"{prefix}{self.count}"

    def define(self, var: Var, prefix="v") -> str:
        name = self.fresh(prefix)
        self.names[var] = name
        return name

    def line(self, text):
        self.body.append("    " * self.depth + text)

    def buffer(self, var: Var, prefix="v") -> str:
        """A buffer for array `var`: allocated once per call, or the row of the output array that will hold var's
        value or, through updates in place, its heir's (see `Frame.heir`). Only that output lives in such a
        buffer: every other value there is read last by an update, so it is neither an output nor read after
        the outputs are written; when an update must copy after all, the output is copied into its row at
        the end, as any other."""
        name = self.define(var, prefix)
        self.owner[name] = var
        out = var if self.frame is None else self.frame.heir(var)
        row = self.rows.pop(out, None) if self.level == 1 else None
        if row is not None:
            self.line(f"{name} = {row}")
            self.in_row[out] = name
        else:
            self.prologue.append(f"    {name} = np.empty({tuple(var.shape)!r})")
        return name

    def in_output_row(self, var) -> bool:
        """Was `var` computed in its output row (so the module need not copy it there)?"""
        return isinstance(var, Var) and var in self.in_row and self.in_row[var] == self.names.get(var)

    def ref(self, a) -> str:
        """A value as an expression: a name, a number, or a module constant."""
        if isinstance(a, Var):
            return self.names[a]
        if a.fill is not None and not a.shape:
            return num(a.fill)
        key = f"K{len(self.consts)}"
        if a.fill is not None:
            self.consts.append(f"{key} = np.full({tuple(a.shape)!r}, {num(a.fill)})")
        else:
            self.consts.append(f"{key} = np.array([{', '.join(num(x) for x in a.data)}]).reshape({tuple(a.shape)!r})")
        return key

    def elem(self, a, idx, out_shape) -> str:
        """`a` read at loop indices `idx` of `out_shape`, with NumPy broadcasting."""
        if isinstance(a, Lit) and a.fill is not None:
            return num(a.fill)
        if not a.shape:
            return self.ref(a)
        r, q = len(out_shape), len(a.shape)
        parts = ["0" if a.shape[j] == 1 and out_shape[j + r - q] != 1 else idx[j + r - q] for j in range(q)]
        return f"{self.ref(a)}[{', '.join(parts)}]"

    def loops(self, shape, prefix="i"):
        idx = []
        if 0 in shape:  # no elements: every loop is empty, so a long axis beside an empty one costs nothing
            shape = (0,) * len(shape)
        for d in shape:
            i = self.fresh(prefix)
            self.line(f"for {i} in range({d}):")
            self.depth += 1
            idx.append(i)
        return idx

    def end(self, n):
        self.depth -= n

    def copy(self, dst: str, src_atom, shape):
        if not shape:
            self.line(f"{dst} = {self.ref(src_atom) if isinstance(src_atom, Var) else num(src_atom.fill)}")
            return
        if isinstance(src_atom, Lit) and src_atom.fill is not None:
            self.line(f"{dst}[:] = {num(src_atom.fill)}")
            return
        idx = self.loops(shape)
        self.line(f"{dst}[{', '.join(idx)}] = {self.elem(src_atom, idx, shape)}")
        self.end(len(shape))

    def store(self, dst: str, at, value, shape, note=""):
        """dst[at] = value, an array (an atom, or a buffer's name) of `shape` or broadcast to it, by a loop nest:
        numba's slice assignment of an array compiles a shape-mismatch error path (string formatting: about 5 s of
        helper compiles in each compile worker that meets one). `at` gives each axis of dst: an index expression,
        or (start, step): a range over the next axis of `shape`. `note`: a comment on the store."""
        if self.python:
            lengths = iter(shape)
            sel = [_range(a[0], a[1], next(lengths)) if isinstance(a, tuple) else str(a) for a in at]
            self.line(f"{dst}[{', '.join(sel)}] = {value if isinstance(value, str) else self.ref(value)}")
            return
        idx = self.loops(shape)
        ranges = iter(idx)
        parts = [_affine(a[0], a[1], next(ranges)) if isinstance(a, tuple) else str(a) for a in at]
        src = f"{value}[{', '.join(idx)}]" if isinstance(value, str) else self.elem(value, idx, shape)
        self.line(f"{dst}[{', '.join(parts)}] = {src}" + (f"  # {note}" if note else ""))
        self.end(len(shape))

    def open_loop(self, length, loc, done: str, check=True):
        """A loop's body starts (`done`: its iterations done, as an expression): checks the stop flag first
        (`check`; a short loop need not: see structured.UNCHECKED_STEPS)."""
        if not self.enclosing:
            self.stop_loops.append((length, loc))
            self.enclosing.append((len(self.stop_loops), done))
        else:
            self.enclosing.append(self.enclosing[0])  # a stop inside reports the outermost loop, as the interpreter
        if check:
            self.stop_check()

    def close_loop(self):
        self.enclosing.pop()

    def stop_check(self):
        """Return STOPPED, saying where, when the stop flag is set (one load; see runtime.py)."""
        loop, done = self.enclosing[0] if self.enclosing else (0, "0")
        self.line("if stop_flag(stop) != 0:")
        self.line(f"    return stopped(stop, p, {loop}, {done})")

    def error(self, message) -> int:
        self.errors.append(message)
        return len(self.errors)


def _affine(start, step, i) -> str:
    """The index start + step * i, as short as it can be written."""
    at = i if step == 1 else f"{step} * {i}"
    return at if start == 0 else f"{start} + {at}"


def _range(start, step, n) -> str:
    """The slice of n indices start, start + step, ..."""
    if step == 1:
        return f"{start}:{start} + {n}" if isinstance(start, str) else f"{start}:{start + n}"
    stop = start + n * step
    return f"{start}:{'' if stop < 0 else stop}:{step}"


def loc_text(loc) -> str:
    """A location for a comment or message in generated code. Node ids are the client's text: escaped to one
    line of printable ASCII (a newline in a comment would end it, and what followed would be code)."""
    if isinstance(loc, dict) and "line" in loc:
        return f"line {int(loc['line'])}, column {int(loc.get('column', 0))}"
    if isinstance(loc, dict) and "node" in loc:
        node = ascii(str(loc["node"]))[1:-1]
        return f"node {node[:60]}{'...' if len(node) > 60 else ''}"
    return ascii(str(loc))[1:-1][:60]
