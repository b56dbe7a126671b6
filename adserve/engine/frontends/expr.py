"""Lowering of the expression language (Python syntax, parsed with `ast`) to IR.

Only whitelisted node types are accepted; anything else is refused with its line
and column. Nothing the client sent is ever evaluated by Python. Every equation
is emitted through the current builder (`self.b`), which is a loop or branch
body while one is being traced, so outer values are captured explicitly.
"""

from __future__ import annotations

import ast
import math
import threading

from ..builder import Budget, Builder, V
from ..errors import DefinitionError, LimitError, ParseError, clip
from . import functions
from .indexing import get_item
from .values import INT64_MAX, INT64_MIN, Index, Undefined, as_value, static_int

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}
_CMPOPS = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}
_STATIC_CMP = {ast.Lt: int.__lt__, ast.LtE: int.__le__, ast.Gt: int.__gt__, ast.GtE: int.__ge__,
               ast.Eq: int.__eq__, ast.NotEq: int.__ne__}


def loc_of(node):
    line = getattr(node, "lineno", None)
    if line is None:
        return None
    return {"line": line, "column": node.col_offset + 1}


# CPython 3.11's parser can fail with "SystemError: AST constructor recursion depth mismatch"
# when several threads parse at once; parsing is fast, so one at a time.
_parse_lock = threading.Lock()


def parse_python(text, mode):
    """`ast.parse`, one thread at a time; text nested past what the parser can hold is a LimitError."""
    with _parse_lock:
        try:
            return ast.parse(text, mode=mode)
        except (MemoryError, RecursionError):  # how CPython's parser reports running out of its stack
            raise LimitError(f"the {'expr' if mode == 'eval' else 'program'} is nested too deeply to parse",
                             code="too_deep") from None


def _syntax_location(text, line, offset):
    """Where a syntax error is; CPython gives offset 0 for "the text ended too soon": the column after the end."""
    if not offset:
        lines = text.split("\n")
        offset = len(lines[line - 1]) + 1 if 0 < line <= len(lines) else 1
    return {"line": line, "column": offset}


def parse(text: str, mode: str):
    """Parse user text. An expression that starts with spaces or a line break is parsed
    inside parentheses (implicit line joining), keeping the user's line numbers."""
    try:
        return parse_python(text, mode)
    except IndentationError:
        if mode != "eval" or not text.strip():
            raise ParseError("syntax error: unexpected indent", {"line": 1, "column": 1}) from None
    except SyntaxError as e:
        raise ParseError(f"syntax error: {e.msg}", _syntax_location(text, e.lineno or 1, e.offset)) from None
    try:
        tree = parse_python("(\n" + text + "\n)", mode)
    except SyntaxError as e:
        line = min(max(1, (e.lineno or 2) - 1), text.count("\n") + 1)
        raise ParseError(f"syntax error: {e.msg}", _syntax_location(text, line, e.offset)) from None
    ast.increment_lineno(tree, -1)
    return tree


_DERIVATIVE_OPERATORS = frozenset(("grad", "value_and_grad", "jvp", "vjp", "jacfwd", "jacrev", "hessian"))


class _NeedsFunctions(Exception):
    """Raised by the plain expression lowerer at a lambda, a derivative operator or a call of something other than
    a name (`grad(f)(x)`): the expression needs the program's functions (`lower_expression` lowers it again, as a
    program's). Found while lowering, so an expression that needs none (nearly all) is not walked for them first."""


class ExprLowerer:
    form = "expr"

    def __init__(self, builder: Builder, env: dict, max_depth: int):
        self.b = builder
        self.env = env
        self._locs: dict = {}
        self.depth, self.max_depth = 0, max_depth
        self._visitors: dict = {}  # node type -> this class's visit_ function (looked up once per lowering)

    def deeper(self, node):
        """Count one more level of nesting (undone by `shallower`); refuse past the limit, where it is crossed."""
        self.depth += 1
        if self.depth > self.max_depth:
            raise LimitError(f"the {self.form} is nested more than {self.max_depth} levels deep (the limit)",
                             loc_of(node), code="too_deep")

    def shallower(self):
        self.depth -= 1

    # -- helpers ----------------------------------------------------------
    def emit(self, prim, *args, **params):
        return self.b.emit(prim, [a if type(a) is V else as_value(self.b, a) for a in args], params)

    def value(self, x, node=None) -> V:
        if type(x) is V:  # the common case: no location needed
            return x
        return as_value(self.b, x, loc_of(node) if node is not None else self.b.loc)

    def fail(self, msg, node, code="unsupported"):
        raise DefinitionError(msg, loc_of(node), code=code)

    # -- dispatch ---------------------------------------------------------
    def expr(self, node):
        kind = type(node)
        method = self._visitors.get(kind)
        if method is None:
            method = getattr(type(self), "visit_" + kind.__name__, None)
            if method is None:
                self.fail(f"{_describe(kind.__name__)} is not supported here", node)
            self._visitors[kind] = method
        self.depth += 1
        if self.depth > self.max_depth:
            self.depth -= 1
            self.deeper(node)  # raises, with the location
        b = self.b
        outer = b.loc
        try:
            line = getattr(node, "lineno", None)
            if line is not None:
                # one location record per source position, shared by every equation made there
                where = (line, node.col_offset)
                loc = self._locs.get(where)
                if loc is None:
                    loc = self._locs[where] = {"line": line, "column": node.col_offset + 1}
                b.loc = loc
            out = method(self, node)
            if type(out) is int and not INT64_MIN <= out <= INT64_MAX:  # sizes and bounds are int64 downstream
                self.fail(f"an integer of {out.bit_length()} bits is beyond int64", node, "integer_overflow")
            return out
        finally:
            b.loc = outer
            self.depth -= 1

    def visit_Expression(self, node):
        return self.expr(node.body)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"constant {v!r} is not a number", node, "bad_constant")
        if isinstance(v, float) and not math.isfinite(v):
            self.fail("non-finite constant", node, "bad_constant")
        return v

    def visit_Name(self, node):
        if node.id not in self.env:
            self.fail(f"name '{clip(node.id)}' is not defined", node, "undefined_name")
        v = self.env[node.id]
        if isinstance(v, Undefined):
            self.fail(v.reason, node, "undefined_name")
        return v

    def visit_UnaryOp(self, node):
        x = self.expr(node.operand)
        if isinstance(node.op, ast.UAdd):
            return x
        if isinstance(node.op, ast.USub):
            if isinstance(x, (int, Index)):
                return -x
            if isinstance(x, float):
                return -x
            return self.emit("neg", x)
        if isinstance(node.op, ast.Not):
            if isinstance(x, bool):
                return not x
            return self.emit("eq", self.value(x), 0.0)
        self.fail("operator ~ is not supported", node)

    def visit_BinOp(self, node):
        a, b = self.expr(node.left), self.expr(node.right)
        if isinstance(node.op, ast.MatMult):
            return functions.matmul(self, self.value(a, node.left), self.value(b, node.right))
        static = static_binop(node.op, a, b)
        if static is not None:
            return static
        prim = _BINOPS.get(type(node.op))
        if prim is None:
            sym = {ast.FloorDiv: "//", ast.Mod: "%"}.get(type(node.op), type(node.op).__name__)
            self.fail(f"operator {sym} is only supported on static integers", node)
        return self.emit(prim, self.value(a, node.left), self.value(b, node.right))

    def visit_Compare(self, node):
        left, parts = self.expr(node.left), []
        for cmp, right_node in zip(node.ops, node.comparators):
            right = self.expr(right_node)
            if type(cmp) not in _CMPOPS:
                self.fail("only < <= > >= == != comparisons are supported", node)
            if isinstance(left, int) and isinstance(right, int) and not isinstance(left, bool):
                parts.append(_STATIC_CMP[type(cmp)](left, right))
            else:
                parts.append(self.emit(_CMPOPS[type(cmp)], self.value(left, node.left), self.value(right, right_node)))
            left = right
        return self._all(parts)

    def _all(self, parts):
        if all(isinstance(p, bool) for p in parts):
            return all(parts)
        vals = [p for p in parts if not isinstance(p, bool)]
        if any(p is False for p in parts):
            return False
        out = vals[0]
        for v in vals[1:]:
            out = self.emit("mul", out, v)
        return out

    def visit_BoolOp(self, node):
        vals = [self.expr(v) for v in node.values]
        if all(isinstance(v, bool) for v in vals):
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        truth = [self.emit("ne", self.value(v), 0.0) if not isinstance(v, bool) else float(v) for v in vals]
        out = truth[0]
        for t in truth[1:]:
            out = self.emit("mul" if isinstance(node.op, ast.And) else "maximum", out, t)
        return out

    def visit_IfExp(self, node):
        c = self.expr(node.test)
        if isinstance(c, bool):
            return self.expr(node.body if c else node.orelse)
        return self.emit("where", self.value(c, node.test), self.value(self.expr(node.body), node.body),
                         self.value(self.expr(node.orelse), node.orelse))

    def visit_Tuple(self, node):
        return tuple(self.expr(e) for e in node.elts)

    def visit_List(self, node):
        return [self.expr(e) for e in node.elts]

    def visit_Subscript(self, node):
        base = self.expr(node.value)
        if isinstance(base, tuple):  # x.shape[k]
            k = static_int(self.expr(node.slice), "a shape index", loc_of(node.slice))
            if not -len(base) <= k < len(base):
                self.fail(f"shape index {k} is out of range for {len(base)} axes", node.slice, "index_out_of_range")
            return base[k]
        x = self.value(base, node.value)
        return get_item(self, x, node.slice)

    def visit_Attribute(self, node):
        base = self.expr(node.value)
        if node.attr == "shape" and isinstance(base, V):
            return tuple(base.shape)
        if node.attr == "T" and isinstance(base, V):
            return self.emit("transpose", base, perm=None)
        self.fail(f"attribute '{node.attr}' is not allowed (only x.shape and x.T)", node, "forbidden_attribute")

    # ProgramLowerer's calls and lambdas (functions_def.py) override these two
    def visit_Lambda(self, node):
        raise _NeedsFunctions

    def visit_Call(self, node):
        if not isinstance(node.func, ast.Name) or node.func.id in _DERIVATIVE_OPERATORS:
            raise _NeedsFunctions
        name = node.func.id
        handler = functions.TABLE.get(name)
        if handler is None:
            self.fail(f"unknown function '{clip(name)}'", node.func, "unknown_function")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            self.fail("*args and **kwargs are not supported", node)
        args = [self.expr(a) for a in node.args]
        kwargs = {k.arg: self.expr(k.value) for k in node.keywords}
        return handler(self, node, *args, **kwargs)


def static_binop(op, a, b):
    """Integer and index arithmetic stays static; returns None for runtime arithmetic."""
    ints = (int, Index)
    if isinstance(a, bool) or isinstance(b, bool):
        return None
    if isinstance(a, int) and isinstance(b, int):
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.FloorDiv) and b != 0:
            return a // b
        if isinstance(op, ast.Mod) and b != 0:
            return a % b
        if isinstance(op, ast.Pow) and 0 <= b <= 64 and abs(a) < 2 ** 20:
            return a ** b
        return None
    if isinstance(a, ints) and isinstance(b, ints):
        if isinstance(op, ast.Add):
            return Index.of(a) + b
        if isinstance(op, ast.Sub):
            return Index.of(a) - b
        if isinstance(op, ast.Mult) and (isinstance(a, int) or isinstance(b, int)):
            k, ix = (a, b) if isinstance(a, int) else (b, a)
            return Index.of(ix).scale(k)
    return None


def _describe(node_type: str) -> str:
    return {"Lambda": "lambda", "ListComp": "a list comprehension", "GeneratorExp": "a generator",
            "Dict": "a dict", "Set": "a set", "JoinedStr": "an f-string", "NamedExpr": "the := operator",
            "Await": "await", "Yield": "yield", "Starred": "*unpacking", "Slice": "a slice"}.get(node_type, node_type)


def lower_expression(text: str, inputs, max_depth: int, max_nodes: int) -> "Builder":
    """Parse `text` and return (builder, output value)."""
    tree = parse(text, "eval")
    b = Builder(budget=Budget(max_nodes))
    env = {name: b.input(shape) for name, shape in inputs}
    low = ExprLowerer(b, env, max_depth)
    try:
        out = low.expr(tree)
    except _NeedsFunctions:
        from .program import lower_expression_with_functions
        return lower_expression_with_functions(tree, inputs, max_depth, max_nodes)
    return b, low.value(out, tree.body)
