"""Functions a program defines: helpers, closures, calls inlined at build time.

A program is one or more top-level `def`s; the entry point is the definition's
`entry` name, else the last one. A `def` inside a function makes a closure: its
body reads names of the enclosing functions as Python does (late binding: the
value the name holds when the closure is called). Every call is lowered again
at its call site, into the caller's builder, so hash-consing makes a repeated
call with the same arguments free, and loops and branches inside the callee are
ordinary structured equations. Values are passed as values: a callee that
assigns into an argument's elements changes its own copy.

Each call gets a `Frame` (its environment and its lexical parent), so reading a
name walks local -> enclosing functions -> the program's functions -> the
built-in functions. A closure is only ever called while its defining function
is being lowered (functions are not values that can be returned or carried by a
loop), so the enclosing frame it reads is always live, and the values it reads
belong to an enclosing builder: reading one from a loop, branch or derivative
body captures it as a body input, which is what makes derivatives of closures
correct (see derivatives.py).

Recursion, direct or mutual, is refused where the call is made: calls are
inlined, so it would not end.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional

from ..builder import V
from ..errors import DefinitionError, LimitError
from . import functions
from .values import Undefined

RET = "$return"


class Callable:
    """A function value inside a program: something `f(...)` may call and `grad(f)` may take."""

    name = "function"

    def call(self, low, args, kwargs, node):
        raise NotImplementedError


@dataclass(eq=False)
class UserFn(Callable):
    node: ast.FunctionDef
    parent: Optional["Frame"]  # the frame it was defined in (None: a top-level function)
    defaults: tuple = ()
    local_names: frozenset = frozenset()
    cost: int = 1  # AST nodes of the body: what lowering one call of it costs

    @property
    def name(self):
        return self.node.name

    def call(self, low, args, kwargs, node):
        if kwargs:
            low.fail(f"{self.name}() is called with keyword argument '{next(iter(kwargs))}'; "
                     f"functions of the program take positional arguments only", node, "bad_arguments")
        return low.call_user(self, list(args), node)


@dataclass(eq=False)
class Builtin(Callable):
    """A built-in function used as a value, as in `grad(sin)`."""

    name: str

    def call(self, low, args, kwargs, node):
        return functions.TABLE[self.name](low, node, *args, **kwargs)


@dataclass(eq=False)
class Frame:
    fn: Optional[UserFn]
    env: dict  # up to date whenever this frame is not the one being lowered (saved at each call it makes)
    parent: Optional["Frame"]
    builder: object = None  # the builder the call started in (a return made in a branch is in another)


def local_names(fn) -> frozenset:
    """Names local to a function, as Python decides: its parameters and every name it binds."""
    names = {a.arg for a in fn.args.args}
    todo = list(fn.body)
    while todo:
        n = todo.pop()
        t = type(n)
        if t is ast.FunctionDef:
            names.add(n.name)
            todo.extend(n.args.defaults)
            continue
        if t is ast.Lambda:
            todo.extend(n.args.defaults)
            continue
        if t is ast.Name:  # (its one child, the context, binds nothing)
            if type(n.ctx) is ast.Store:
                names.add(n.id)
            continue
        _children(n, todo)
    return frozenset(names)


def _cost(fn) -> int:
    """The nodes of a function's body, as ast.walk counts them (a module around the body included)."""
    count, todo = 1, list(fn.body)
    while todo:
        count += 1
        _children(todo.pop(), todo)
    return count


def _children(node, into: list) -> None:
    """Append `node`'s child nodes to `into`: ast.iter_child_nodes without its generators (a 10,000-line
    program's two walks took 0.15 s through them, 0.05 s so)."""
    for field in node._fields:
        v = getattr(node, field, None)
        if type(v) is list:
            into.extend([x for x in v if isinstance(x, ast.AST)])
        elif isinstance(v, ast.AST):
            into.append(v)


def check_signature(fn, what="a function"):
    a = fn.args
    if fn.decorator_list:
        raise DefinitionError("decorators are not supported", _loc(fn.decorator_list[0]), code="unsupported")
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
        raise DefinitionError(f"{what} takes plain positional arguments only (no *args, **kwargs, keyword-only "
                              f"or positional-only markers)", _loc(fn), code="bad_program")


def _loc(node):
    return {"line": node.lineno, "column": node.col_offset + 1} if hasattr(node, "lineno") else None


class FunctionsMixin:
    """What ProgramLowerer adds to the expression lowerer for functions: frames, name lookup through
    enclosing functions, calls, `def` and `lambda`. Set up by `enter_program`."""

    frame: Optional[Frame] = None
    program_functions: dict = {}
    # (function, the functions passed to it) being lowered. Recursion is a call of a function already on it
    # with the same function arguments: a solver may call a function that runs the solver again on another
    # function (a saddle point's inner and outer argmin), and that ends.
    stack: list = []
    work_left: int = 0

    def enter_program(self, functions_by_name, entry: UserFn, max_work: int):
        self.program_functions = functions_by_name
        self.frame = Frame(entry, self.env, None, self.b)
        self.stack = [(entry, ())]
        self.work_left = max_work

    # -- names --------------------------------------------------------------
    def lookup(self, name):
        """The value `name` holds here, or raise; for names not in the current environment."""
        frame = self.frame
        if frame is not None and frame.fn is not None and name in frame.fn.local_names:
            raise _unbound(name, frame.fn)
        f = frame.parent if frame is not None else None
        while f is not None:
            if name in f.env:
                return f.env[name]
            if f.fn is not None and name in f.fn.local_names:
                raise _unbound(name, f.fn)
            f = f.parent
        fn = self.program_functions.get(name)
        if fn is not None:
            return fn
        if name in functions.TABLE:
            return Builtin(name)
        from .derivatives import OPERATORS
        if name in OPERATORS:
            return OPERATORS[name]
        return None

    def visit_Name(self, node):
        env = self.env
        if node.id in env:
            v = env[node.id]
        else:
            try:
                v = self.lookup(node.id)
            except _Unbound as e:
                self.fail(str(e), node, "undefined_name")
            if v is None:
                self.fail(f"name '{node.id}' is not defined", node, "undefined_name")
        if isinstance(v, Undefined):
            self.fail(v.reason, node, "undefined_name")
        return v

    def value(self, x, node=None) -> V:
        if type(x) is V:
            return x
        if isinstance(x, Callable):
            self.fail(f"the function '{x.name}' is not a value here: call it, or pass it to grad, jvp, ...",
                      node, "bad_value")
        return super().value(x, node)

    def result(self, x, node):
        """A value a function may return: an array, or a tuple of them (nested)."""
        if isinstance(x, tuple):
            return tuple(self.result(e, node) for e in x)
        if isinstance(x, list):
            self.fail("a function returns an array or a tuple of arrays, not a list", node, "bad_value")
        return self.value(x, node)

    # -- calls --------------------------------------------------------------
    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Name):
            target = self._callable_name(f)
            if target is None:
                return super().visit_Call(node)  # the built-in functions (and their errors)
        else:
            target = self.expr(f)
            if not isinstance(target, Callable):
                self.fail("only functions can be called", f, "unknown_function")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            self.fail("*args and **kwargs are not supported", node)
        args = [self.expr(a) for a in node.args]
        # True/False are no numbers, but has_aux=True is how a flag is passed
        kwargs = {k.arg: k.value.value if isinstance(k.value, ast.Constant) and isinstance(k.value.value, bool)
                  else self.expr(k.value) for k in node.keywords}
        return target.call(self, args, kwargs, node)

    def _callable_name(self, f):
        """The program's function (or derivative operator) a call by name means; None for the built-ins.
        A name holding an array does not hide a built-in function of that name (as it always was)."""
        name = f.id
        if name in self.env:
            v = self.env[name]
        else:
            try:
                v = self.lookup(name)
            except _Unbound as e:
                self.fail(str(e), f, "undefined_name")
        if isinstance(v, Builtin) or not isinstance(v, Callable):
            return None
        return v

    def call_user(self, fn: UserFn, args, node):
        key = (fn, tuple(a for a in args if isinstance(a, Callable)))
        for depth, (other, passed) in enumerate(self.stack):
            if other is fn and len(passed) == len(key[1]) and all(a is b for a, b in zip(passed, key[1])):
                chain = " -> ".join(g.name for g, _ in self.stack[depth:])
                self.fail(f"recursion at line {node.lineno}: '{fn.name}' is called while it is still running "
                          f"({chain} -> {fn.name}); calls are inlined, so a function may not call itself, "
                          f"directly or through others", node, "recursion")
        params = [a.arg for a in fn.node.args.args]
        needed = len(params) - len(fn.defaults)
        if not needed <= len(args) <= len(params):
            want = str(len(params)) if not fn.defaults else f"{needed} to {len(params)}"
            self.fail(f"{fn.name}() takes {want} argument(s), got {len(args)}", node, "bad_arguments")
        self.work_left -= fn.cost
        if self.work_left < 0:
            raise LimitError("the program inlines too many function calls (each call is lowered again where it "
                             "is made); call fewer functions, or use a loop", _loc(node), code="limit_exceeded")
        env = dict(zip(params, [*args, *fn.defaults[len(args) - needed:]]))
        caller_env, caller = self.env, self.frame
        if caller is not None:
            caller.env = caller_env
        self.frame, self.env = Frame(fn, env, fn.parent, self.b), env
        self.stack.append(key)
        try:
            if not self.block(fn.node.body):
                self.fail(f"'{fn.name}' must end with `return <expression>`", fn.node.body[-1], "bad_program")
            return self.env[RET]
        finally:
            self.stack.pop()
            self.frame, self.env = caller, caller_env

    def tuple_return_in_branch(self) -> bool:
        """True when a `return` now would be inside a run-time branch (where tuples cannot be merged)."""
        return self.frame is not None and self.b is not self.frame.builder

    # -- definitions --------------------------------------------------------
    def define(self, node) -> UserFn:
        check_signature(node)
        defaults = tuple(self.expr(d) for d in node.args.defaults)
        return UserFn(node, self.frame, defaults, local_names(node), _cost(node))

    def stmt_FunctionDef(self, s):
        self.env[s.name] = self.define(s)

    def visit_Lambda(self, node):
        fn = ast.FunctionDef(name="<lambda>", args=node.args, body=[ast.Return(value=node.body)], decorator_list=[],
                             returns=None)
        ast.copy_location(fn, node)
        ast.copy_location(fn.body[0], node.body)
        return self.define(fn)


class _Unbound(Exception):
    pass


def _unbound(name, fn):
    return _Unbound(f"'{name}' is used before it is assigned in '{fn.name}' (it is a local name of '{fn.name}', "
                    f"because '{fn.name}' assigns it)")
