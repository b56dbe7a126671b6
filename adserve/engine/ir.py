"""The intermediate representation every front end lowers to.

Three records, in the style of JAX's jaxprs:
  * `Var`: a value with a static per-point shape (all values are float64).
  * `Lit`: a constant, either one number filling a shape or explicit row-major data.
  * `Eqn`: `outputs = prim(inputs; params)`. Structured control flow is an
    equation whose params hold sub-graphs (`loop` for loops, `cond` for branches).
  * `Graph`: inputs, equations in topological single-assignment order, outputs.
    Sub-graphs are closed: everything a body reads arrives as a body input.

`canonical_text` prints a graph with variables renumbered in definition order,
so the text (and its hash, the function id) depends on structure only.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, Union

_ids = itertools.count()


class Var:
    """Compared by identity. Treated as immutable (a plain slotted class: graphs make thousands)."""

    __slots__ = ("shape", "id")

    def __init__(self, shape: tuple):
        self.shape = shape
        self.id = next(_ids)

    def __repr__(self):
        return f"%{self.id}"


@dataclass(frozen=True)
class Lit:
    """A constant. `data` is a tuple of floats: length 1 fills `shape`, else row-major values."""

    shape: tuple
    data: tuple

    @staticmethod
    def scalar(value: float, shape=()) -> "Lit":
        return Lit(tuple(shape), (float(value),))

    @property
    def fill(self):
        """The single value this literal is filled with, or None for explicit data."""
        return self.data[0] if len(self.data) == 1 else None

    def __repr__(self):
        if self.fill is not None:
            v = _num(self.fill)
            return v if not self.shape else f"full({v}, {list(self.shape)})"
        return f"const({list(self.shape)})"


Atom = Union[Var, Lit]


class Eqn:
    """`outputs = prim(inputs; params)`; `loc` is the source location for error messages, not structure."""

    __slots__ = ("prim", "inputs", "outputs", "params", "loc")

    def __init__(self, prim: str, inputs: tuple, outputs: tuple, params: dict, loc: Any = None):
        self.prim, self.inputs, self.outputs, self.params, self.loc = prim, inputs, outputs, params, loc

    @property
    def out(self) -> Var:
        return self.outputs[0]

    def __repr__(self):
        return f"Eqn({self.prim}, {self.inputs} -> {self.outputs})"


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple
    eqns: tuple
    outputs: tuple

    def n_nodes(self) -> int:
        """Equations, counting those inside loop and branch bodies."""
        return sum(1 + sum(g.n_nodes() for g in sub_graphs(e)) for e in self.eqns)

    def __str__(self):
        return pretty(self)


def sub_graphs(eqn: Eqn):
    return [v for _, v in sorted(eqn.params.items()) if isinstance(v, Graph)]


def _num(x: float) -> str:
    return repr(float(x))


def _param_text(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_param_text(x) for x in v) + ")"
    return str(v)


class _Namer:
    """Gives variables names in order of first definition (the canonical numbering)."""

    def __init__(self):
        self.names = {}

    def define(self, var: Var) -> str:
        name = f"v{len(self.names)}"
        self.names[var] = name
        return name

    def ref(self, atom) -> str:
        if isinstance(atom, Lit):
            if atom.fill is not None:
                return _num(atom.fill) if not atom.shape else f"full({_num(atom.fill)},{list(atom.shape)})"
            return f"const({list(atom.shape)};{','.join(_num(x) for x in atom.data)})"
        return self.names[atom]


def _lines(graph: Graph, namer: _Namer, indent: str, show_shapes: bool):
    names, ref, define = namer.names, namer.ref, namer.define
    ins = ", ".join(f"{define(v)}:{list(v.shape)}" for v in graph.inputs)
    yield f"{indent}in ({ins})"
    for e in graph.eqns:
        args = ", ".join([names[a] if type(a) is Var else ref(a) for a in e.inputs])
        ptxt, subs = "", ()
        if e.params:
            items = sorted(e.params.items())
            ptxt = "".join(f" {k}={_param_text(v)}" for k, v in items if not isinstance(v, Graph))
            subs = [(k, v) for k, v in items if isinstance(v, Graph)]
        if show_shapes:
            outs = ", ".join(define(v) + f":{list(v.shape)}" for v in e.outputs)
        else:
            outs = ", ".join([define(v) for v in e.outputs])
        yield f"{indent}{outs} = {e.prim}({args}){ptxt}" + (" {" if subs else "")
        for k, sub in subs:
            yield f"{indent}  {k}:"
            yield from _lines(sub, namer, indent + "    ", show_shapes)
        if subs:
            yield f"{indent}}}"
    yield f"{indent}out ({', '.join(namer.ref(a) for a in graph.outputs)})"


def pretty(graph: Graph) -> str:
    """One equation per line, with shapes: for people."""
    return "\n".join(_lines(graph, _Namer(), "", True))


def canonical_text(graph: Graph, input_names=()) -> str:
    """Structure-only text: renumbered variables, no locations. Input names are part of the API."""
    head = "inputs " + ",".join(input_names) + "\n"
    return head + "\n".join(_lines(graph, _Namer(), "", False))


def structural_hash(graph: Graph, input_names=()) -> str:
    return hashlib.sha256(canonical_text(graph, input_names).encode()).hexdigest()[:24]
