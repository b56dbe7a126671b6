"""The walks a user function's definition takes (frontends/functions_def.py) find what `ast`'s own walks find.

`local_names` (the names a function binds, as Python decides) and `_cost` (its body's nodes, the inlining budget's
measure) walk the syntax tree by hand for speed; here they are checked against the same walks written with
`ast.iter_child_nodes` and `ast.walk`, on every function of adserve's own source (over a thousand, of every kind of
statement) and on a function that binds names every way Python allows.
"""

import ast
import glob
import os

from adserve.engine.frontends import functions_def

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BINDINGS = '''def f(x, y=2.0, *, z=3):
    global g
    a, (b, c) = x, (y, z)
    def inner(q=(w := 5)):
        r = q
        return lambda s=(t := 1): s + r
    for i in range(3):
        d = [e for e in x if e > 0]
    with open(x) as fh:
        pass
    try:
        k = {1: x, **{}}
    except Exception as err:
        del k
    x[0] += 1
    m.attr: float = 2
    return a
'''


def local_names_by_ast(fn) -> frozenset:
    names = {a.arg for a in fn.args.args}
    todo = list(fn.body)
    while todo:
        n = todo.pop()
        if isinstance(n, ast.FunctionDef):
            names.add(n.name)
            todo.extend(n.args.defaults)
            continue
        if isinstance(n, ast.Lambda):
            todo.extend(n.args.defaults)
            continue
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        todo.extend(ast.iter_child_nodes(n))
    return frozenset(names)


def cost_by_ast(fn) -> int:
    return sum(1 for _ in ast.walk(ast.Module(body=list(fn.body), type_ignores=[])))


def test_the_walks_find_what_asts_walks_find():
    functions = [ast.parse(BINDINGS).body[0]]
    for path in glob.glob(os.path.join(ROOT, "adserve", "**", "*.py"), recursive=True):
        with open(path) as f:
            tree = ast.parse(f.read())
        functions += [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert len(functions) > 1000
    for fn in functions:
        assert functions_def.local_names(fn) == local_names_by_ast(fn), fn.name
        assert functions_def._cost(fn) == cost_by_ast(fn), fn.name
    assert {"x", "y", "a", "b", "c", "inner", "w", "i", "d", "fh", "k"} <= functions_def.local_names(functions[0])
