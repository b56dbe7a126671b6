"""Splitting a sweep's plan where its rows stop sharing work: an IR -> IR transform.

A Jacobian or a Hessian runs one plan on many rows per point: a JVP per basis vector, a VJP per output
component, an HVP per basis vector. The rows of one point differ only in their tangent or cotangent, so
everything computed from the point's inputs alone (the primal, a reverse pass's forward sweep and its tape, the
gradient under an HVP) is the same on every row. Run as one plan, it is computed again on every row.

`split(graph, varying, keep)` cuts the plan in two, as JAX's `vmap` leaves unbatched values unbatched:

* `shared`: the equations that read no varying input and that the rest needs, run once per point on the
  point's inputs; its outputs are the values the rows read;
* `per_row`: the equations that read a varying input (directly or through another), run on every row; its
  inputs are the point's inputs it reads, then `shared`'s outputs, then the varying inputs.

Each equation of the plan is in exactly one part and computes what it computed before on the same operands, so
the answers are the same, bit for bit. A structured equation (a loop, a branch) goes whole into the part its
inputs decide. When no equation is shared, there is nothing to split (None).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Graph, Var


@dataclass(frozen=True, eq=False)
class Split:
    shared: Graph  # the invariant inputs (all of them, in order) -> the values the rows read
    per_row: Graph  # (the invariant inputs it reads, `shared`'s outputs, every varying input) -> the kept outputs
    reads: tuple  # positions, among the invariant inputs, of those `per_row` reads


def split(graph: Graph, varying, keep) -> Split | None:
    """`graph` cut where its values start to depend on the inputs `varying` marks (a bool per input); `per_row`
    computes the outputs at the positions `keep`. None when nothing but inputs would be shared."""
    varies = {v for v, m in zip(graph.inputs, varying) if m}
    row_eqn = []
    for e in graph.eqns:
        moving = any(type(a) is Var and a in varies for a in e.inputs)
        if moving:
            varies.update(e.outputs)
        row_eqn.append(moving)

    outputs = tuple(graph.outputs[i] for i in keep)
    needed = {a for a in outputs if type(a) is Var}
    rows = []
    for e, moving in zip(reversed(graph.eqns), reversed(row_eqn)):
        if moving and any(o in needed for o in e.outputs):
            rows.append(e)
            needed.update(a for a in e.inputs if type(a) is Var)
    rows.reverse()

    invariant = [v for v, m in zip(graph.inputs, varying) if not m]
    reads = tuple(i for i, v in enumerate(invariant) if v in needed)
    inputs = set(graph.inputs)
    # the shared values the rows read, in the order they are defined
    boundary = [o for e, moving in zip(graph.eqns, row_eqn) if not moving for o in e.outputs
                if o in needed and o not in inputs]
    if not boundary:
        return None
    wanted, shared = set(boundary), []
    for e, moving in zip(reversed(graph.eqns), reversed(row_eqn)):
        if not moving and any(o in wanted for o in e.outputs):
            shared.append(e)
            wanted.update(a for a in e.inputs if type(a) is Var)
    shared.reverse()
    moving_inputs = [v for v, m in zip(graph.inputs, varying) if m]
    return Split(shared=Graph(tuple(invariant), tuple(shared), tuple(boundary)),
                 per_row=Graph(tuple(invariant[i] for i in reads) + tuple(boundary) + tuple(moving_inputs),
                               tuple(rows), outputs),
                 reads=reads)
