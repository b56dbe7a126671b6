"""Structured control flow: `loop` and `cond` (branches) as primitives.

loop(consts..., init carries..., xs...; body, length, n_consts, n_carry, reverse)
    body: (k, consts, carries, x slices) -> (new carries, y slices); k counts
    0..length-1 (backwards when `reverse`). Returns (final carries, stacked ys),
    each y stacked along a new leading axis of `length`. A loop stays one
    equation however many times it runs.
cond(pred, operands...; true_body, false_body)
    Runs one branch per point (pred != 0 picks `true_body`); both bodies take
    the operands and return outputs of the same shapes.

`while` is in whiles.py. Derivatives follow JAX's design: the JVP of a loop is a loop over primal and
tangent carries; the VJP saves each iteration's carries on a tape (a stacked
output of the forward loop) and runs a reverse loop of the body's VJP. Branch
derivatives are branches of derivatives.
"""

from __future__ import annotations

import math

import numpy as np

from .activity import graph_activity
from .builder import Builder, Prim, inline, op, register, zeros
from .deadline import Stopped
from .errors import ShapeError
from .interpreter import TAKES_DEADLINE, program, run_nested, run_program
from .limits import checkpoint_every


# -- loop ------------------------------------------------------------------------
def _split(seq, n_consts, n_carry):
    return list(seq[:n_consts]), list(seq[n_consts:n_consts + n_carry]), list(seq[n_consts + n_carry:])


def _loop_shape(*shapes, body, length, n_consts, n_carry, reverse):
    if n_consts + n_carry > len(shapes) or n_carry > len(body.outputs):
        raise ShapeError(f"a loop of {len(shapes)} arguments and {len(body.outputs)} body outputs cannot have "
                         f"{n_consts} constants and {n_carry} carried values")
    consts, carries, xs = _split(shapes, n_consts, n_carry)
    want = [()] + consts + carries + [s[1:] for s in xs]
    got = [v.shape for v in body.inputs]
    if any(s[:1] != (length,) for s in xs):
        raise ShapeError(f"stacked inputs (xs) must have a leading axis of {length}: {[list(s) for s in xs]}")
    if want != got:
        raise ShapeError(f"loop body takes {[list(s) for s in got]} but is given {[list(s) for s in want]}")
    outs = [a.shape for a in body.outputs]
    if outs[:n_carry] != carries:
        raise ShapeError(f"loop-carried values change shape: {[list(s) for s in carries]} -> "
                         f"{[list(s) for s in outs[:n_carry]]}")
    return carries + [(length, *s) for s in outs[n_carry:]]


def _loop_impl(*args, body, length, n_consts, n_carry, reverse, deadline=None):
    consts, carry, xs = _split(args, n_consts, n_carry)
    y_avals = body.outputs[n_carry:]
    # each stacked output is one array, filled in place: a loop's tape costs its data and nothing per iteration
    stacked = [np.zeros((1, length, *a.shape)) for a in y_avals] if not length else None
    done = 0
    prog = program(body)
    try:
        for k in (range(length - 1, -1, -1) if reverse else range(length)):
            if deadline is not None and deadline.stopped:  # also between iterations of a body with no equations
                raise deadline.error()
            outs = run_program(prog, [np.array([float(k)]), *consts, *carry, *[x[:, k] for x in xs]], deadline)
            carry, ys = outs[:n_carry], outs[n_carry:]
            if stacked is None:
                stacked = [np.empty((y.shape[0], length, *a.shape)) for y, a in zip(ys, y_avals)]
            for j, y in enumerate(ys):
                if y.shape[0] > stacked[j].shape[0]:  # a row shared so far becomes one per point
                    stacked[j] = np.array(np.broadcast_to(stacked[j], (y.shape[0], *stacked[j].shape[1:])))
                stacked[j][:, k] = y
            done += 1
    except Stopped as err:
        raise err.inside("loop", done, length, None) from None
    return [*carry, *stacked]


def _loop_activity(in_active, body, length, n_consts, n_carry, reverse):
    c, carry, x = _split(in_active, n_consts, n_carry)
    while True:
        out = graph_activity(body, [False] + c + carry + x)
        new = [a or b for a, b in zip(carry, out[:n_carry])]
        if new == carry:
            return new + out[n_carry:]
        carry = new


def _body_builder(body, n_consts, n_carry):
    """A builder with inputs shaped like `body`'s, split as (k, consts, carries, xs)."""
    nb = Builder()
    ins = [nb.input(v.shape) for v in body.inputs]
    k, rest = ins[0], ins[1:]
    return nb, k, *_split(rest, n_consts, n_carry)


def _loop_jvp(ts, primals, ans, body, length, n_consts, n_carry, reverse):
    from .jvp import jvp_graph

    consts, init, xs = _split(primals, n_consts, n_carry)
    t_c, t_init, t_x = _split(ts, n_consts, n_carry)
    nz_c, nz_x = [t is not None for t in t_c], [t is not None for t in t_x]
    nz_carry = [t is not None for t in t_init]
    while True:  # a carry's tangent is nonzero if it starts so or the body makes it so
        jbody, nz_out = jvp_graph(body, [False] + nz_c + nz_carry + nz_x)
        new = [a or b for a, b in zip(nz_carry, nz_out[:n_carry])]
        if new == nz_carry:
            break
        nz_carry = new
    n_y = len(body.outputs) - n_carry
    nz_y = nz_out[n_carry:]

    nb = Builder()
    k = nb.input(())
    c = [nb.input(v.shape) for v in consts]
    tc = [nb.input(v.shape) for v, nz in zip(consts, nz_c) if nz]
    car = [nb.input(v.shape) for v in init]
    tcar = [nb.input(v.shape) for v, nz in zip(init, nz_carry) if nz]
    x = [nb.input(v.shape[1:]) for v in xs]
    tx = [nb.input(v.shape[1:]) for v, nz in zip(xs, nz_x) if nz]
    res = inline(nb, jbody, [k, *c, *car, *x, *tc, *tcar, *tx])
    outs, touts = res[:n_carry + n_y], iter(res[n_carry + n_y:])
    t_all = [next(touts) if nz else None for nz in nz_out]
    t_carry_out = [zeros(o.shape) if t is None else t
                   for t, o, nz in zip(t_all[:n_carry], outs[:n_carry], nz_carry) if nz]
    new_body = nb.build([*outs[:n_carry], *t_carry_out, *outs[n_carry:], *[t for t in t_all[n_carry:] if t is not None]])

    t_init_full = [t if t is not None else zeros(v.shape) for t, v in zip(t_init, init)]
    res = op.loop(*consts, *[t for t in t_c if t is not None],
                  *init, *[t for t, nz in zip(t_init_full, nz_carry) if nz],
                  *xs, *[t for t in t_x if t is not None],
                  body=new_body, length=length, n_consts=n_consts + sum(nz_c),
                  n_carry=n_carry + sum(nz_carry), reverse=reverse)
    n_tc = sum(nz_carry)  # order of results: carries, their tangents, ys, theirs
    primal_out = [*res[:n_carry], *res[n_carry + n_tc:n_carry + n_tc + n_y]]
    t_carries, t_ys = iter(res[n_carry:n_carry + n_tc]), iter(res[n_carry + n_tc + n_y:])
    return primal_out, [next(t_carries) if nz else None for nz in nz_carry] + [next(t_ys) if nz else None for nz in nz_y]


def _loop_vjp_fwd(primals, body, length, n_consts, n_carry, reverse):
    """Forward loop that also stacks the carries each iteration starts from (the tape). A long loop of carries
    only (no xs, no ys: every `for` loop of a program) is differentiated as the equivalent `while` instead, so
    it checkpoints as a while does (whiles.py); its residuals then say so."""
    consts, init, xs = _split(primals, n_consts, n_carry)
    size = sum(math.prod(v.shape) for v in init) + 1  # + the while's counter
    if not xs and len(body.outputs) == n_carry and checkpoint_every(length, size) > 1:
        return _as_while_fwd(consts, init, body, length, reverse)
    nb, k, c, car, x = _body_builder(body, n_consts, n_carry)
    outs = inline(nb, body, [k, *c, *car, *x])
    tape_body = nb.build([*outs, *car])
    res = op.loop(*primals, body=tape_body, length=length, n_consts=n_consts, n_carry=n_carry, reverse=reverse)
    n_out = len(body.outputs)
    return tuple(res[:n_out]), list(res[n_out:])


def _as_while_fwd(consts, init, body, length, reverse):
    graphs = []
    for is_body in (True, False):
        b = Builder()
        c = [b.input(v.shape) for v in consts]
        i = b.input(())
        car = [b.input(v.shape) for v in init]
        if is_body:
            k = op.sub(float(length - 1), i) if reverse else i
            graphs.append(b.build([i + 1.0, *inline(b, body, [k, *c, *car])]))
        else:
            graphs.append(b.build([op.lt(i, float(length))]))
    params = {"cond": graphs[1], "body": graphs[0], "n_consts": len(consts), "max_iter": length, "tape": False,
              "trips": length}
    primals = [*consts, zeros(()), *init]
    ans, residuals = whiles._while_vjp_fwd(primals, **params)
    return tuple(ans[1:]), ("while", primals, ans, residuals, params)


def _loop_vjp(gs, primals, ans, active, residuals, body, length, n_consts, n_carry, reverse):
    from .vjp import vjp_graph

    if isinstance(residuals, tuple):  # differentiated as a while (see _loop_vjp_fwd)
        _, w_primals, w_ans, w_residuals, params = residuals
        act_c, act_init, _ = _split(active, n_consts, n_carry)
        cts = whiles._while_vjp([None, *gs], w_primals, w_ans, [*act_c, False, *act_init], w_residuals, **params)
        return cts[:n_consts] + cts[n_consts + 1:]
    consts, init, xs = _split(primals, n_consts, n_carry)
    act_c, act_init, act_x = _split(active, n_consts, n_carry)
    act_carry = _loop_activity(active, body, length, n_consts, n_carry, reverse)[:n_carry]
    g_carry, g_y = gs[:n_carry], gs[n_carry:]
    nz_y = [g is not None for g in g_y]
    bvjp = vjp_graph(body, [False] + act_c + act_carry + act_x, act_carry + nz_y)
    n_out = len(body.outputs)

    nb = Builder()
    k = nb.input(())
    c = [nb.input(v.shape) for v in consts]
    ct_car = [nb.input(v.shape) for v, a in zip(init, act_carry) if a]
    acc = [nb.input(v.shape) for v, a in zip(consts, act_c) if a]
    tape = [nb.input(v.shape) for v in init]
    x = [nb.input(v.shape[1:]) for v in xs]
    gy = [nb.input(v.shape[1:]) for v, nz in zip(ans[n_carry:], nz_y) if nz]
    res = inline(nb, bvjp, [k, *c, *tape, *x, *ct_car, *gy])[n_out:]
    n_ac = sum(act_c)
    ct_consts, ct_prev, ct_x = res[:n_ac], res[n_ac:n_ac + sum(act_carry)], res[n_ac + sum(act_carry):]
    rev_body = nb.build([*ct_prev, *[a + g for a, g in zip(acc, ct_consts)], *ct_x])

    seeds = [g if g is not None else zeros(v.shape) for g, v, a in zip(g_carry, init, act_carry) if a]
    out = op.loop(*consts, *seeds, *[zeros(v.shape) for v, a in zip(consts, act_c) if a],
                  *residuals, *xs, *[g for g in g_y if g is not None],
                  body=rev_body, length=length, n_consts=n_consts,
                  n_carry=sum(act_carry) + n_ac, reverse=not reverse)
    it = iter(out)
    ct_init = [next(it) if a else None for a in act_carry]
    ct_c = [next(it) if a else None for a in act_c]
    ct_xs = [next(it) if a else None for a in act_x]
    return ct_c + [ct if a else None for ct, a in zip(ct_init, act_init)] + ct_xs


TAKES_DEADLINE.update({"loop", "cond", "while"})
register(Prim("loop", _loop_shape, _loop_impl, _loop_jvp, _loop_vjp, multiple_results=True,
              extra={"activity": _loop_activity, "vjp_fwd": _loop_vjp_fwd},
              params=(("length", "count"), ("n_consts", "count"), ("n_carry", "count"), ("reverse", "flag")),
              doc="a loop with a static trip count; carries and stacked outputs"))


# -- cond ------------------------------------------------------------------------
def _cond_shape(sp, *shapes, true_body, false_body):
    if sp != ():
        raise ShapeError(f"a branch condition must be a scalar, got shape {list(sp)}")
    for name, g in (("if", true_body), ("else", false_body)):
        if [v.shape for v in g.inputs] != list(shapes):
            raise ShapeError(f"{name} branch takes {[list(v.shape) for v in g.inputs]}, given {[list(s) for s in shapes]}")
    t, f = [a.shape for a in true_body.outputs], [a.shape for a in false_body.outputs]
    if t != f:
        raise ShapeError(f"branches give different shapes: {[list(s) for s in t]} vs {[list(s) for s in f]}")
    return t


def _cond_impl(pred, *ops, true_body, false_body, deadline=None):
    if pred.size == 1:  # one point, or one predicate for all: no masks
        return run_nested(true_body if pred.item() != 0 else false_body, list(ops), deadline)
    take = pred.reshape(-1) != 0
    if take.all() or not take.any():
        return run_nested(true_body if take[0] else false_body, list(ops), deadline)
    b = take.shape[0]
    outs = [np.empty((b, *a.shape)) for a in true_body.outputs]
    for body, idx in ((true_body, np.nonzero(take)[0]), (false_body, np.nonzero(~take)[0])):
        res = run_nested(body, [o[idx] if o.shape[0] == b else o for o in ops], deadline)
        for out, r in zip(outs, res):
            out[idx] = np.broadcast_to(r, (len(idx), *r.shape[1:]))
    return outs


def _cond_activity(in_active, true_body, false_body):
    t, f = graph_activity(true_body, in_active[1:]), graph_activity(false_body, in_active[1:])
    return [a or b for a, b in zip(t, f)]


def _cond_jvp(ts, primals, ans, true_body, false_body):
    from .jvp import jvp_graph

    ops, t_ops = primals[1:], ts[1:]
    n_out = len(true_body.outputs)
    nz = [t is not None for t in t_ops]
    branches = [jvp_graph(g, nz) for g in (true_body, false_body)]
    nz_out = [a or b for a, b in zip(branches[0][1], branches[1][1])]
    wrapped = []
    for g, mask in branches:
        nb = Builder()
        ins = [nb.input(v.shape) for v in ops] + [nb.input(v.shape) for v, n in zip(ops, nz) if n]
        res = inline(nb, g, ins)
        outs, touts = res[:n_out], iter(res[n_out:])
        t_full = [next(touts) if m else None for m in mask]
        wrapped.append(nb.build(outs + [t if t is not None else zeros(o.shape)
                                        for t, o, n in zip(t_full, outs, nz_out) if n]))
    res = op.cond(primals[0], *ops, *[t for t in t_ops if t is not None], true_body=wrapped[0], false_body=wrapped[1])
    t_res = iter(res[n_out:])
    return list(res[:n_out]), [next(t_res) if n else None for n in nz_out]


def _cond_vjp(gs, primals, ans, active, residuals, true_body, false_body):
    from .vjp import vjp_graph

    ops, act = primals[1:], active[1:]
    nz = [g is not None for g in gs]
    wrapped = []
    for g in (true_body, false_body):
        bv = vjp_graph(g, act, nz)
        nb = Builder()
        ins = [nb.input(v.shape) for v in ops] + [nb.input(o.shape) for o, n in zip(ans, nz) if n]
        wrapped.append(nb.build(inline(nb, bv, ins)[len(ans):]))
    res = iter(op.cond(primals[0], *ops, *[g for g in gs if g is not None], true_body=wrapped[0], false_body=wrapped[1]))
    return [None] + [next(res) if a else None for a in act]


register(Prim("cond", _cond_shape, _cond_impl, _cond_jvp, _cond_vjp, multiple_results=True,
              extra={"activity": _cond_activity}, doc="if/else: one branch per point"))


# -- while: a module of its own (whiles.py); imported here so its row follows cond's ----------------------
from . import whiles  # noqa: E402
from .whiles import WHILE_LIMIT  # noqa: E402,F401
