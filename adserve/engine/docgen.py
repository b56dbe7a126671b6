"""The function and operation references, generated from the primitive table.

    python -m adserve.engine.docgen          # rewrite the generated parts of the docs
    python -m adserve.engine.docgen --check  # exit 1 if they differ from what the table says

Each generated part sits between a BEGIN and an END marker in its document
(docs/language.md: the functions and operators; docs/graph.md: the operations
of the graph form); everything outside the markers is written by hand and kept.
"""

from __future__ import annotations

import pathlib
import re
import sys

from .builder import PRIMS
from .frontends import functions, graph_json

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+) .*?-->\n)(.*?)(<!-- END GENERATED -->)", re.S)


def _signature(p) -> str:
    if p.signature:
        return p.signature
    args = {1: "x", 2: "a, b", 3: "x, lo, hi"}[p.arity]
    return f"{p.lang[0]}({args})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def functions_table() -> str:
    """Every function of the expression and program languages, with its derivative convention."""
    rows = [(p.lang[0], _signature(p), p.doc) for p in PRIMS.values() if p.lang]
    rows += [(name, sig, doc) for name, (_, sig, doc) in functions.COMPOSITES.items()]
    out = ["| function | what it computes; its derivative where that is a convention |", "| --- | --- |"]
    out += [f"| `{_cell(sig)}` | {_cell(doc)} |" for _, sig, doc in sorted(rows)]
    return "\n".join(out) + "\n"


def operators_table() -> str:
    rows = [p for p in PRIMS.values() if not p.lang and p.template and p.signature]
    out = ["| operator | meaning |", "| --- | --- |"]
    out += [f"| `{_cell(p.signature)}` | {_cell(p.doc)} |" for p in rows]
    return "\n".join(out) + "\n"


def operations_table() -> str:
    """Every primitive, as a node of the graph form names it."""
    out = ["| op | args | params | meaning |", "| --- | --- | --- | --- |"]
    for name, p in PRIMS.items():
        params = "; ".join(f"`{k}`: {graph_json.KINDS[kind][0]}" for k, kind in p.params)
        args = "any number" if p.arity is None else str(p.arity)
        out.append(f"| `{name}` | {args} | {_cell(params)} | {_cell(p.doc)} |")
    return "\n".join(out) + "\n"


PARTS = {"functions": functions_table, "operators": operators_table, "operations": operations_table}
FILES = ("language.md", "graph.md")


def render(text: str, parts: dict = PARTS) -> str:
    """`text` with every generated part replaced by what the table says now."""
    return _BLOCK.sub(lambda m: m.group(1) + parts[m.group(2)]() + m.group(4), text)


def main(argv, files=FILES, parts: dict = PARTS, source="the primitive table", module="adserve.engine.docgen") -> int:
    stale = []
    for name in files:
        path = DOCS / name
        old = path.read_text()
        new = render(old, parts)
        if new != old:
            stale.append(name)
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print(f"out of date with {source}: {', '.join(stale)} (run python -m {module})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
