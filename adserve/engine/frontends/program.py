"""Lowering of `def f(...): ...` programs: the contract's Python subset.

Loops become one `loop` equation (never unrolled): names assigned in the body
that exist before it are the loop-carried values; values read from outside are
captured as loop constants. `if` on a run-time condition becomes a `cond`
equation whose outputs are the names either branch assigns; a condition on
static integers is decided while lowering, as Python would. Element
assignment `y[i] = e` is a functional update (see indexing.py).

`while` becomes one `while` equation (condition and body sub-graphs, bounded by
the engine's `max_while_iterations`). `break` and `continue` become carried
flags: the statements a jump may skip are guarded by an `if` on them, and a
`for` loop with a `break` runs its remaining iterations masked (a flag test).
"""

from __future__ import annotations

import ast

from ..builder import Budget, Builder, V
from ..control import WHILE_LIMIT
from ..errors import DefinitionError
from ..ir import Graph, Var
from .expr import ExprLowerer, loc_of, parse, static_binop
from .functions_def import RET, Callable, FunctionsMixin, check_signature
from .indexing import set_item
from .values import Counter, Index, Undefined, as_value, static_int
_AUG = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}


class _Returned(Exception):
    pass


def _assigned_names(stmts) -> set:
    names = set()
    for node in ast.walk(ast.Module(body=list(stmts), type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name):
            names.add(node.value.id)
        elif isinstance(node, ast.Return):
            names.add(RET)
    return names


class ProgramLowerer(FunctionsMixin, ExprLowerer):
    form = "program"

    def block(self, stmts):
        """Lower statements; returns True when the block ends in a return."""
        for i, s in enumerate(stmts):
            early = _early_return(s, stmts[i + 1:])
            if early is not None:  # `if c: return a` then more: the more is the if's else
                with self.b.at(loc_of(s)):
                    return self.stmt(early)
            with self.b.at(loc_of(s)):
                ended = self.stmt(s)
            if ended:
                if i != len(stmts) - 1:
                    self.fail("code after return is not allowed", stmts[i + 1])
                return True
        return False

    def stmt(self, s) -> bool:
        self.deeper(s)
        try:
            return self._stmt(s)
        finally:
            self.shallower()

    def _stmt(self, s) -> bool:
        method = getattr(self, "stmt_" + type(s).__name__, None)
        if method is None:
            what = {"FunctionDef": "nested functions",
                    "Import": "import", "ImportFrom": "import", "Global": "global", "Nonlocal": "nonlocal",
                    "With": "with", "Try": "try", "Raise": "raise", "Delete": "del", "ClassDef": "classes",
                    "Assert": "assert", "Break": "break outside a loop", "Continue": "continue outside a loop",
                    "AnnAssign": "annotated assignment"}.get(type(s).__name__, type(s).__name__)
            self.fail(f"{what} is not supported", s)
        return bool(method(s))

    def stmt_Pass(self, s):
        return False

    def stmt_Expr(self, s):
        if isinstance(s.value, ast.Constant) and isinstance(s.value.value, str):
            return False  # a docstring
        self.fail("an expression statement has no effect; assign it or return it", s)

    def stmt_Return(self, s):
        if s.value is None:
            self.fail("return needs a value", s)
        value = self.result(self.expr(s.value), s.value)
        if isinstance(value, tuple) and self.tuple_return_in_branch() and not all(_usable(v) for v in value):
            self.fail("a tuple returned inside an if must hold arrays (not functions or tuples); assign its "
                      "parts in each branch and return the tuple after the if", s)
        self.env[RET] = value
        return True

    def stmt_Assign(self, s):
        if len(s.targets) != 1:
            self.fail("chained assignment (a = b = ...) is not supported", s)
        self.assign(s.targets[0], s.value, self.expr(s.value))

    def stmt_AugAssign(self, s):
        prim = _AUG.get(type(s.op))
        if prim is None:
            self.fail("only += -= *= /= are supported", s)
        target = s.target
        load = ast.Subscript(value=ast.Name(id=target.value.id, ctx=ast.Load()), slice=target.slice, ctx=ast.Load()) \
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) else \
            ast.Name(id=getattr(target, "id", "?"), ctx=ast.Load())
        ast.copy_location(load, target)
        ast.fix_missing_locations(load)
        old = self.expr(load)
        rhs = self.expr(s.value)
        new = None
        if isinstance(old, (int, Index)) and isinstance(rhs, (int, Index)) and prim in ("add", "sub", "mul"):
            new = static_binop({"add": ast.Add(), "sub": ast.Sub(), "mul": ast.Mult()}[prim], old, rhs)
        if new is None:
            new = self.emit(prim, self.value(old, target), self.value(rhs, s.value))
        self.assign(target, s.value, new)

    def assign(self, target, value_node, value):
        if isinstance(target, ast.Name):
            self.env[target.id] = value
        elif isinstance(target, ast.Tuple):
            if not isinstance(value, tuple) or len(value) != len(target.elts):
                self.fail("tuple assignment needs a tuple of the same length on the right", target)
            for t, v in zip(target.elts, value):
                self.assign(t, value_node, v)
        elif isinstance(target, ast.Subscript):
            if not isinstance(target.value, ast.Name):
                self.fail("element assignment must be to a name, e.g. y[i] = e", target)
            y = self.expr(target.value)
            if not isinstance(y, V) or not y.shape:
                self.fail(f"'{target.value.id}' is not an array", target)
            self.env[target.value.id] = set_item(self, y, target.slice, self.value(value, value_node))
        else:
            self.fail("unsupported assignment target", target)

    # -- loops --------------------------------------------------------------
    def stmt_For(self, s):
        if s.orelse:
            self.fail("for ... else is not supported", s)
        if not isinstance(s.target, ast.Name):
            self.fail("the loop variable must be a plain name", s.target)
        it = s.iter
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range") or it.keywords:
            self.fail("only `for i in range(...)` loops are supported", it)
        if not 1 <= len(it.args) <= 3:
            self.fail("range() takes 1 to 3 arguments", it)
        bounds = [static_int(self.expr(a), "a range() bound", loc_of(a)) for a in it.args]
        if len(bounds) == 3 and bounds[2] == 0:
            self.fail("range() step must not be zero", it)
        r = range(*bounds)
        if RET in _assigned_names(s.body):
            self.fail("return inside a loop is not supported; assign a variable and return after the loop", s)
        if len(r) == 0:
            return False
        if _has_jump(s.body):
            s = self._masked_for(s)
        self._trace_loop(s, r)
        return False

    def _masked_for(self, s):
        """`for` with break/continue as a masked loop: a carried flag skips the iterations after a break."""
        brk, cont = _flags(s)
        self.env[brk] = 0.0
        guarded = _at(ast.If(test=_none_set(s, brk), body=_jumps(s.body, brk, cont), orelse=[]), s)
        return _at(ast.For(target=s.target, iter=s.iter, body=[_set_flag(s, cont, 0.0), guarded], orelse=[]), s)

    # -- while --------------------------------------------------------------
    def stmt_While(self, s):
        if s.orelse:
            self.fail("while ... else is not supported", s)
        if RET in _assigned_names(s.body):
            self.fail("return inside a loop is not supported; assign a variable and return after the loop", s)
        test, body = s.test, s.body
        if isinstance(test, ast.Constant) and test.value is True:  # `while True:` (ends with a break, or the limit)
            test = _at(ast.Constant(1), test)
        if _has_jump(body):
            brk, cont = _flags(s)
            self.env[brk] = 0.0
            test = _at(ast.BoolOp(op=ast.And(), values=[_none_set(s, brk), test]), s)
            body = [_set_flag(s, cont, 0.0), *_jumps(body, brk, cont)]
        assigned = _assigned_names(body)
        carried = sorted(n for n in assigned if n in self.env and _usable(self.env[n]))
        outer_b, outer_env = self.b, self.env
        inits = [self.value(outer_env[n], s) for n in carried]
        parts = []
        for what in ("cond", "body"):
            nb = Builder(parent=outer_b)
            env = dict(outer_env)
            ins = [nb.input(v.shape) for v in inits]
            env.update(zip(carried, ins))
            self.b, self.env = nb, env
            try:
                if what == "cond":
                    c = self.expr(test)
                    if isinstance(c, bool) or type(c) is int:
                        if not c:  # statically false: the loop never runs
                            return False
                        c = nb.lit(1.0)
                    pred = self.value(c, test)
                    if pred.shape != ():
                        self.fail(f"a while condition must be a scalar, got shape {list(pred.shape)}", test,
                                  "shape_mismatch")
                    outs = [pred]
                else:
                    self.block(body)
                    outs = []
                    for name, init in zip(carried, inits):
                        new = self.value(self.env[name], s)
                        if new.shape != init.shape:
                            self.fail(f"'{name}' changes shape inside the loop: {list(init.shape)} -> "
                                      f"{list(new.shape)}", s, "shape_mismatch")
                        outs.append(new)
                parts.append((nb, ins, nb.build(outs)))
            finally:
                self.b, self.env = outer_b, outer_env
        consts = list(dict.fromkeys([*parts[0][0].captured, *parts[1][0].captured]))
        graphs = [Graph((*[nb._capture_map.get(a) or Var(a.shape) for a in consts], *[v.atom for v in ins]),
                        g.eqns, g.outputs) for nb, ins, g in parts]
        if not carried:
            self.fail("this while loop changes no variable that exists before it, so it either never runs or "
                      "never stops", s)
        results = self.b.emit("while", [*[V(self.b, a) for a in consts], *inits],
                              {"cond": graphs[0], "body": graphs[1], "n_consts": len(consts),
                               "max_iter": WHILE_LIMIT.get(), "tape": False})
        for name, v in zip(carried, results):
            self.env[name] = v
        for name in assigned - set(carried):
            self.env[name] = Undefined(f"'{name}' is first assigned inside the loop at line {s.lineno}; "
                                       f"give it a value before the loop to use it after")
        return False

    def _trace_loop(self, s, r):
        assigned = _assigned_names(s.body) - {s.target.id}
        carried = sorted(n for n in assigned if n in self.env and not isinstance(self.env[n], Undefined))
        outer_b, outer_env = self.b, self.env
        body = Builder(parent=outer_b)
        k = body.input(())
        counter = Counter(k, len(r))
        inits, carry_vars = [], []
        env = dict(outer_env)
        for name in carried:
            init = self.value(outer_env[name], s)
            inits.append(init)
            var = body.input(init.shape)
            carry_vars.append(var.atom)
            env[name] = var
        env[s.target.id] = Index(r.start, ((counter, r.step),)).simplify()
        self.b, self.env = body, env
        try:
            self.block(s.body)
            outs = []
            for name, init in zip(carried, inits):
                new = self.value(self.env[name], s)
                if new.shape != init.shape:
                    self.fail(f"'{name}' changes shape inside the loop: {list(init.shape)} -> {list(new.shape)}", s,
                              "shape_mismatch")
                outs.append(new)
            graph = body.build(outs)
        finally:
            self.b, self.env = outer_b, outer_env
        consts = list(body.captured)
        inner = [body._capture_map[a] for a in consts]
        graph = Graph((k.atom, *inner, *carry_vars), graph.eqns, graph.outputs)
        results = self.b.emit("loop", [*[V(self.b, a) for a in consts], *inits],
                              {"body": graph, "length": len(r), "n_consts": len(consts), "n_carry": len(carried),
                               "reverse": False})
        for name, v in zip(carried, results):
            self.env[name] = v
        line = s.lineno
        for name in assigned - set(carried):
            self.env[name] = Undefined(f"'{name}' is first assigned inside the loop at line {line}; "
                                       f"give it a value before the loop to use it after")
        self.env[s.target.id] = Undefined(f"the loop variable '{s.target.id}' is not available after its loop")

    # -- branches -----------------------------------------------------------
    def stmt_If(self, s):
        c = self.expr(s.test)
        if isinstance(c, bool) or (isinstance(c, int) and not isinstance(c, Index)):
            return self.block(s.body if c else s.orelse)
        pred = self.value(c, s.test)
        if pred.shape != ():
            self.fail(f"an if condition must be a scalar, got shape {list(pred.shape)}; use where() for arrays",
                      s.test, "shape_mismatch")
        outer_b, outer_env = self.b, self.env
        branches = []
        for stmts in (s.body, s.orelse):
            nb = Builder(parent=outer_b)
            self.b, self.env = nb, dict(outer_env)
            try:
                ended = self.block(stmts)
                branches.append((nb, self.env, ended))
            finally:
                self.b, self.env = outer_b, outer_env
        (tb, tenv, tret), (fb, fenv, fret) = branches
        if tret != fret:
            self.fail("return inside an if needs a return in every branch (or one return at the end)", s)
        parts = self._tuple_return_parts(s, tenv, fenv) if tret else []
        names = sorted(n for n in (_assigned_names(s.body) | _assigned_names(s.orelse))
                       if _usable(tenv.get(n)) and _usable(fenv.get(n))) + parts
        for n in names:
            tv, fv = _as_branch_value(tb, tenv[n]), _as_branch_value(fb, fenv[n])
            if tv.shape != fv.shape:
                self.fail(f"'{n if n != RET else 'the return value'}' has shape {list(tv.shape)} in one branch and "
                          f"{list(fv.shape)} in the other", s, "shape_mismatch")
            tenv[n], fenv[n] = tv, fv
        tg, fg = tb.build([tenv[n] for n in names]), fb.build([fenv[n] for n in names])
        operands = list(dict.fromkeys([*tb.captured, *fb.captured]))
        graphs = [Graph(tuple(b._capture_map.get(a) or Var(a.shape) for a in operands), g.eqns, g.outputs)
                  for b, g in ((tb, tg), (fb, fg))]
        results = self.b.emit("cond", [pred, *[V(self.b, a) for a in operands]],
                              {"true_body": graphs[0], "false_body": graphs[1]}) if names else ()
        for n, v in zip(names, results):
            self.env[n] = v
        for n in (_assigned_names(s.body) | _assigned_names(s.orelse)) - set(names):
            self.env[n] = Undefined(f"'{n}' is assigned in only one branch of the if at line {s.lineno}; "
                                    f"give it a value before the if or in both branches")
        if parts:  # the returned tuple, put back together from its merged parts
            self.env[RET] = tuple(self.env.pop(n) for n in parts)
        return tret

    def _tuple_return_parts(self, s, tenv, fenv) -> list:
        """Both branches return: where they return tuples, the names under which each part is merged (a
        value per part, as a variable assigned in both branches is); [] when they return arrays."""
        tr, fr = tenv.get(RET), fenv.get(RET)
        if not isinstance(tr, tuple) and not isinstance(fr, tuple):
            return []
        if not (isinstance(tr, tuple) and isinstance(fr, tuple) and len(tr) == len(fr)):
            sizes = [f"a tuple of {len(r)}" if isinstance(r, tuple) else "one array" for r in (tr, fr)]
            self.fail(f"the branches of this if return {sizes[0]} and {sizes[1]}: they must return alike", s,
                      "shape_mismatch")
        parts = [f"{RET}[{i}]" for i in range(len(tr))]
        for n, tv, fv in zip(parts, tr, fr):
            tenv[n], fenv[n] = tv, fv
        return parts


def _early_return(s, rest):
    """`if c: ... return a` (an `elif` chain whose every branch returns, no `else`) followed by `rest`: the
    same `if` with `rest` as its final `else`; None for any other statement, or when nothing follows."""
    if not rest or not isinstance(s, ast.If) or not s.body or not isinstance(s.body[-1], ast.Return):
        return None
    if not s.orelse:
        orelse = rest
    elif len(s.orelse) == 1 and isinstance(s.orelse[0], ast.If):
        inner = _early_return(s.orelse[0], rest)
        if inner is None:
            return None
        orelse = [inner]
    else:
        return None
    return ast.copy_location(ast.If(test=s.test, body=s.body, orelse=orelse), s)


# -- break and continue: flags the loop carries, and guards on the statements a jump skips ----------------
def _at(node, where):
    return ast.fix_missing_locations(ast.copy_location(node, where))


def _flags(s):
    """Names no program can spell ('$' is not Python), distinct per loop, so loops nest."""
    return f"$break@{s.lineno}:{s.col_offset}", f"$continue@{s.lineno}:{s.col_offset}"


def _set_flag(where, name, value):
    return _at(ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Constant(value)), where)


def _none_set(where, *names):
    """`flag1 == 0` times `flag2 == 0` ...: a flag never set in this loop is the literal 0.0, whose test folds to
    1.0 and drops out of the product (a sum of the flags would leave `x + 0.0`, which the builder keeps)."""
    tests = [ast.Compare(left=ast.Name(id=n, ctx=ast.Load()), ops=[ast.Eq()], comparators=[ast.Constant(0.0)])
             for n in names]
    total = tests[0]
    for t in tests[1:]:
        total = ast.BinOp(left=total, op=ast.Mult(), right=t)
    return _at(total, where)


def _has_jump(stmts) -> bool:
    """A break or continue of this loop (not of a loop nested in it)."""
    for s in stmts:
        if isinstance(s, (ast.Break, ast.Continue)):
            return True
        if isinstance(s, ast.If) and _has_jump(s.body + s.orelse):
            return True
    return False


def _jumps(stmts, brk, cont):
    """The statements with break/continue as flag assignments, and what follows a possible jump guarded."""
    out = []
    for i, s in enumerate(stmts):
        if isinstance(s, (ast.Break, ast.Continue)):
            out.append(_set_flag(s, brk if isinstance(s, ast.Break) else cont, 1.0))
            return out  # the rest of the block never runs
        if isinstance(s, ast.If) and _has_jump([s]):
            out.append(_at(ast.If(test=s.test, body=_jumps(s.body, brk, cont) or [ast.Pass()],
                                  orelse=_jumps(s.orelse, brk, cont)), s))
            rest = stmts[i + 1:]
            if rest:
                out.append(_at(ast.If(test=_none_set(rest[0], brk, cont), body=_jumps(rest, brk, cont),
                                      orelse=[]), rest[0]))
            return out
        out.append(s)
    return out


def _usable(v):
    return v is not None and not isinstance(v, (Undefined, tuple, list, Callable))


def _as_branch_value(b, v):
    return as_value(b, v)


def lower_program(text: str, inputs, max_depth: int, max_nodes: int, entry=None):
    """Parse a program of one or more `def`s; returns (builder, output value) of its entry function:
    `entry` if given, else the last top-level `def`."""
    tree = parse(text, "exec")
    defs = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            raise DefinitionError("a program is made of function definitions `def f(...):` only", loc_of(node),
                                  code="bad_program")
        if node.name in defs:
            raise DefinitionError(f"'{node.name}' is defined twice (lines {defs[node.name].lineno} and {node.lineno})",
                                  loc_of(node), code="bad_program")
        defs[node.name] = node
    if not defs:
        raise DefinitionError("a program must define a function `def f(...):`", {"line": 1, "column": 1},
                              code="bad_program")
    if entry is not None and entry not in defs:
        raise DefinitionError(f"the entry '{entry}' is not a function of the program (it defines "
                              f"{', '.join(defs)})", code="bad_program")
    fn = defs[entry] if entry is not None else tree.body[-1]
    check_signature(fn, "the entry function")
    if fn.args.defaults:
        raise DefinitionError("the entry function takes its inputs as plain arguments (no default values)",
                              loc_of(fn), code="bad_program")
    names = [arg.arg for arg in fn.args.args]
    want = [n for n, _ in inputs]
    if names != want:
        raise DefinitionError(f"the function's arguments {names} must be the inputs in order {want}", loc_of(fn),
                              code="bad_program")
    b = Builder(budget=Budget(max_nodes))
    low = ProgramLowerer(b, {}, max_depth)
    functions = {name: low.define(node) for name, node in defs.items()}  # defaults: constants, read now
    low.env = {name: b.input(shape) for name, shape in inputs}
    low.enter_program(functions, functions[fn.name], max_work=_MAX_WORK_PER_NODE * max_nodes)
    if not low.block(fn.body):
        raise DefinitionError("the function must end with `return <expression>`", loc_of(fn.body[-1]),
                              code="bad_program")
    out = low.env[RET]
    if isinstance(out, tuple):
        raise DefinitionError(f"the entry function '{fn.name}' must return one array, not a tuple",
                              loc_of(fn), code="bad_program")
    return b, out


def lower_expression_with_functions(tree: ast.Expression, inputs, max_depth: int, max_nodes: int):
    """An expression that uses a `lambda` or a derivative operator (`grad(sin)(x)`,
    `sum(grad(lambda v: sum(v * v))(x))`), lowered as the body of a function of the inputs, so that it has
    the program's functions; its locations stay the expression's own."""
    args = ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n, _ in inputs], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    ret = ast.copy_location(ast.Return(value=tree.body), tree.body)
    fn = ast.copy_location(ast.FunctionDef(name="<expr>", args=args, body=[ret], decorator_list=[], returns=None),
                           tree.body)
    b = Builder(budget=Budget(max_nodes))
    low = ProgramLowerer(b, {}, max_depth)
    entry = low.define(fn)
    low.env = {name: b.input(shape) for name, shape in inputs}
    low.enter_program({}, entry, max_work=_MAX_WORK_PER_NODE * max_nodes)
    low.block(fn.body)
    out = low.env[RET]
    if isinstance(out, tuple):
        raise DefinitionError("an expression must give one array, not a tuple", loc_of(tree.body), code="bad_program")
    return b, low.value(out, tree.body)


_MAX_WORK_PER_NODE = 10  # AST nodes lowered (calls inlined) per operation a definition may have
