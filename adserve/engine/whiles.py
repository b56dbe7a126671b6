"""The `while` primitive: a loop that runs per point until its condition fails, and its derivatives.

while(consts..., init carries...; cond, body, n_consts, max_iter, tape, every, trips)
    cond: (consts, carries) -> scalar (nonzero: run the body again); body: (consts, carries) -> new carries.
    Runs per point until cond is 0; past `max_iter` iterations the evaluation stops with `while_limit`.
    With `tape`, it also returns the number of iterations each point ran and, per carry, the carries that
    every `every`-th iteration started from (iterations 0, every, 2·every, ...), stacked (declared
    (ceil(max_iter / every), ...) rows; only the rows of iterations that ran are ever read). That is the forward
    half of reverse mode: the tape's length is known only at run time, so the interpreter grows it (a list of
    rows) and its declared size is what the limits check up front. `trips`, when nonzero, is the number of
    iterations it will run (a `for` loop differentiated as a while): a stop reports how far of it it got; a
    while without a tape but with `trips` and `every` is a reverse sweep over segments of `every` iterations of
    such a loop, and a stop reports its iterations times `every`.

Reverse mode is binomial-free two-level checkpointing (limits.checkpoint_every picks the stride): a loop whose
bound × carried elements fits `limits.TAPE_BUDGET` keeps every iteration's carries and runs the body's VJP
backwards over them. A larger one keeps the carries of every k-th iteration (k = ceil(sqrt(bound))); the
reverse sweep is a while over those segments, last first, whose body recomputes the segment's carries from its
checkpoint (a taped while of at most k iterations) and runs the body's VJP backwards through them. Memory is
(bound/k + k) × carries instead of bound × carries; time is one extra forward pass. All of it is IR (nested
`while` equations), so the interpreter, the python tier and numba run the same schedule, under the same
deadline and stop checks as any loop. The interpreter runs those of its loops whose trip count it can read
from their inputs (counted.py: the forward loop of a `for`, each recompute, each reverse sweep) as the body
alone, without their condition, active mask or fixed-point check; the others run in whileloop.py.
"""

from __future__ import annotations

import contextvars
import math

import numpy as np

from .activity import graph_activity
from .builder import Builder, Prim, emit, inline, op, register, zeros
from .counted import trip_count
from .deadline import Stopped
from .errors import ShapeError
from .interpreter import program, run_program
from .limits import checkpoint_every, tape_rows
from .whileloop import every_point, hand_over, limit_error, some_points

WHILE_LIMIT = contextvars.ContextVar("adserve_while_limit", default=100_000)  # max_iter of loops lowered now


def _while_split(seq, n_consts):
    return list(seq[:n_consts]), list(seq[n_consts:])


def _while_normalize(shapes, params):
    if params.get("every", 1) == 1 or not (params.get("tape") or params.get("trips")):  # one spelling per loop
        params.pop("every", None)
    if not params.get("trips"):
        params.pop("trips", None)
    return params


def _while_shape(*shapes, cond, body, n_consts, max_iter, tape, every=1, trips=0):
    consts, carries = _while_split(shapes, n_consts)
    for name, g in (("condition", cond), ("body", body)):
        if [v.shape for v in g.inputs] != list(shapes):
            raise ShapeError(f"while {name} takes {[list(v.shape) for v in g.inputs]}, given {[list(s) for s in shapes]}")
    if [a.shape for a in cond.outputs] != [()]:
        raise ShapeError("a while condition must be one scalar")
    if every < 1:
        raise ShapeError(f"a while loop's tape keeps every k-th iteration, k >= 1, not {every}")
    outs = [a.shape for a in body.outputs]
    if outs != carries:
        raise ShapeError(f"while-carried values change shape: {[list(s) for s in carries]} -> {[list(s) for s in outs]}")
    rows = tape_rows(max_iter, every)
    return carries + ([()] + [(rows, *s) for s in carries] if tape else [])


def _while_impl(*args, cond, body, n_consts, max_iter, tape, every=1, trips=0, deadline=None):
    done = [0]  # iterations run, for a stop's report
    try:
        return _while_run(args, cond, body, n_consts, max_iter, tape, every, deadline, done)
    except Stopped as err:
        raise err.inside("loop", _reported(done[0], tape, every, trips), trips or None, None) from None


def _reported(done, tape, every, trips):
    """The iterations a stop reports done: a while's own (its length is known only as it runs, unless `trips`
    says it), or, for a reverse sweep over segments of `every` iterations of a loop of `trips`, the loop's."""
    return min(done * every, trips) if trips and not tape else done


def _while_run(args, cond, body, n_consts, max_iter, tape, every, deadline, done):
    consts, carry = _while_split(args, n_consts)
    B = max([a.shape[0] for a in args], default=1)
    carry = [np.array(np.broadcast_to(c, (B, *c.shape[1:]))) for c in carry]
    trips_now = trip_count(cond, body, n_consts, consts, carry)
    if trips_now is not None:
        return _counted_run(consts, carry, trips_now, cond, body, n_consts, max_iter, tape, every, deadline, done)
    rows = [[] for _ in carry] if tape else None
    progs = program(cond), program(body)
    out = every_point(consts, carry, B, rows, *progs, cond, body, n_consts, max_iter, tape, every, deadline, done)
    if out[0] == "done":
        return out[1]
    _, carry, iterations, next_look = out
    return some_points(consts, carry, B, rows, iterations, next_look, *progs, cond, body, n_consts, max_iter, tape,
                       every, deadline, done)


def _counted_run(consts, carry, n, cond, body, n_consts, max_iter, tape, every, deadline, done):
    """`_while_run` for a loop every point of which runs `n` iterations (counted.py): the body alone, with no
    condition to run, no points to mask and no fixed-point check (its counter changes every iteration); the
    same deadline checks, iteration limit, tape rows and hand-over to generated code."""
    from .codegen import while_kernel

    B = carry[0].shape[0]
    shapes = [c.shape for c in carry]
    rows = [[] for _ in carry] if tape else None
    # a loop too short to be handed over writes its tape into arrays of the rows it will keep
    tapes = None
    if tape and n <= while_kernel.ESCALATE_AFTER:
        tapes = [np.empty((B, -(-min(n, max_iter) // every), *s[1:])) for s in shapes]
    next_look = while_kernel.ESCALATE_AFTER
    iterations = 0
    body_prog = program(body)
    while True:
        if deadline is not None and deadline.stopped:
            raise deadline.error()
        if iterations >= n:
            break
        if iterations >= max_iter:
            raise limit_error(max_iter)
        if next_look is not None and iterations >= next_look and iterations % every == 0:
            next_look, rest = hand_over(B, consts, carry, np.full(B, float(iterations)), rows, cond, body, n_consts,
                                        max_iter, iterations, tape, every, deadline)
            if rest is not None:
                return rest
        if tape and iterations % every == 0:
            if tapes is not None:
                for t, c in zip(tapes, carry):
                    t[:, iterations // every] = c
            else:
                for r, c in zip(rows, carry):
                    r.append(c.copy())
        new = run_program(body_prog, [*consts, *carry], deadline)
        carry = [v if v.shape == s else np.array(np.broadcast_to(v, s)) for v, s in zip(new, shapes)]
        iterations += 1
        done[0] = iterations
    carry = [np.array(c) for c in carry]  # the loop's own arrays, as `_while_run`'s (a body may pass on its inputs)
    if not tape:
        return carry
    if tapes is None:
        tapes = [np.stack(r, axis=1) if r else np.zeros((B, 0, *c.shape[1:])) for r, c in zip(rows, carry)]
    return [*carry, np.full(B, float(iterations)), *tapes]


def _while_activity(in_active, cond, body, n_consts, max_iter, tape, every=1, trips=0):
    c, carry = _while_split(in_active, n_consts)
    while True:
        new = [a or b for a, b in zip(carry, graph_activity(body, c + carry))]
        if new == carry:
            return carry + ([False] + carry if tape else [])
        carry = new


def _while_node(consts, carries, cond, body, max_iter, tape, every=1, trips=0):
    return emit("while", *consts, *carries, cond=cond, body=body, n_consts=len(consts), max_iter=max_iter,
                tape=tape, every=every, trips=trips)


def _while_jvp(ts, primals, ans, cond, body, n_consts, max_iter, tape, every=1, trips=0):
    from .jvp import jvp_graph

    consts, init = _while_split(primals, n_consts)
    t_c, t_init = _while_split(ts, n_consts)
    nz_c, nz_carry = [t is not None for t in t_c], [t is not None for t in t_init]
    while True:  # a carry's tangent is nonzero if it starts so or the body makes it so
        jbody, nz_out = jvp_graph(body, nz_c + nz_carry)
        new = [a or b for a, b in zip(nz_carry, nz_out)]
        if new == nz_carry:
            break
        nz_carry = new
    n = len(init)
    nb, nc = Builder(), Builder()
    graphs = []
    for b in (nb, nc):
        c = [b.input(v.shape) for v in consts]
        tc = [b.input(v.shape) for v, nz in zip(consts, nz_c) if nz]
        car = [b.input(v.shape) for v in init]
        tcar = [b.input(v.shape) for v, nz in zip(init, nz_carry) if nz]
        if b is nc:
            graphs.append(b.build(inline(b, cond, [*c, *car])))
            continue
        res = inline(b, jbody, [*c, *car, *tc, *tcar])
        touts = iter(res[n:])
        t_all = [next(touts) if nz else None for nz in nz_out]
        graphs.insert(0, b.build([*res[:n], *[zeros(v.shape) if t is None else t
                                             for t, v, nz in zip(t_all, init, nz_carry) if nz]]))
    new_body, new_cond = graphs
    t_init_full = [zeros(v.shape) if t is None else t for t, v in zip(t_init, init)]
    res = _while_node([*consts, *[t for t in t_c if t is not None]],
                      [*init, *[t for t, nz in zip(t_init_full, nz_carry) if nz]], new_cond, new_body, max_iter, tape,
                      every, trips)
    k = sum(nz_carry)
    t_carry = iter(res[n:n + k])
    tangents = [next(t_carry) if nz else None for nz in nz_carry]
    if not tape:
        return list(res[:n]), tangents
    tapes = res[n + k + 1:]
    t_tapes = iter(tapes[n:])
    return ([*res[:n], res[n + k], *tapes[:n]],
            tangents + [None] + [next(t_tapes) if nz else None for nz in nz_carry])


def _while_vjp_fwd(primals, cond, body, n_consts, max_iter, tape, every=1, trips=0):
    """The forward loop, keeping the carries of every k-th iteration (a loop that keeps a tape already is its
    own forward pass: its tape is the residual)."""
    consts, init = _while_split(primals, n_consts)
    n = len(init)
    if not tape:
        every = checkpoint_every(max_iter, sum(math.prod(v.shape) for v in init))
    res = _while_node(consts, init, cond, body, max_iter, True, every, trips)
    ans = tuple(res) if tape else tuple(res[:n])
    return ans, (res[n], list(res[n + 1:]), every)


def _counts_down(body, at):
    """The condition of a reverse sweep's while: its counter (input `at` of `body`, the first carry) >= 0."""
    cb = Builder()
    ins = [cb.input(v.shape) for v in body.inputs]
    return cb.build([op.ge(ins[at], 0.0)])


def _reverse_sweep(consts, tapes, ct_tapes, j0, seeds, accs, bvjp, n_ct_consts, max_iter, trips=0):
    """Emit a while that runs the body's VJP (`bvjp`) backwards from iteration `j0` down to 0 over `tapes`
    (every iteration's carries). `seeds`: the cotangents of the active carries after iteration j0; `accs`:
    accumulators of the active consts' cotangents; `ct_tapes`: per active carry, a cotangent of its tape rows
    (added to the carry's cotangent at the iteration the row is from) or None. Returns (carry cotangents,
    accumulators)."""
    n = len(tapes)
    ctt = [t for t in ct_tapes if t is not None]
    nb = Builder()
    c = [nb.input(v.shape) for v in consts]
    tp = [nb.input(t.shape) for t in tapes]
    ctp = iter([nb.input(t.shape) for t in ctt])
    j = nb.input(())
    ct_car = [nb.input(v.shape) for v in seeds]
    acc = [nb.input(v.shape) for v in accs]
    start = [op.dyn_slice(t, j, axis=0, size=None) for t in tp]
    res = inline(nb, bvjp, [*c, *start, *ct_car])[n:]
    ct_prev = [ct if t is None else ct + op.dyn_slice(next(ctp), j, axis=0, size=None)
               for ct, t in zip(res[n_ct_consts:], ct_tapes)]
    body = nb.build([j - 1.0, *ct_prev, *[a + g for a, g in zip(acc, res[:n_ct_consts])]])
    cond = _counts_down(body, len(consts) + n + len(ctt))
    out = _while_node([*consts, *tapes, *ctt], [j0, *seeds, *accs], cond, body, max_iter, False, 1, trips)
    return list(out[1:1 + len(seeds)]), list(out[1 + len(seeds):])


def _recompute(consts, start, length, cond_graph, body, k):
    """Emit a taped while that runs `body` `length` (<= k) times from the carries `start`; returns its tapes
    (the carries each of those iterations started from)."""
    n = len(start)
    graphs = []
    for is_body in (True, False):
        b = Builder()
        c = [b.input(v.shape) for v in consts]
        limit, i = b.input(()), b.input(())
        car = [b.input(v.shape) for v in start]
        graphs.append(b.build([i + 1.0, *inline(b, body, [*c, *car])] if is_body else [op.lt(i, limit)]))
    res = _while_node([*consts, length], [zeros(()), *start], graphs[1], graphs[0], k, True, 1)
    return list(res[n + 3:])  # after: the counter, the carries, the count and the counter's tape


def _while_vjp(gs, primals, ans, active, residuals, cond, body, n_consts, max_iter, tape, every=1, trips=0):
    from .vjp import vjp_graph

    consts, init = _while_split(primals, n_consts)
    n = len(init)
    act_c, act_init = _while_split(active, n_consts)
    act_carry = _while_activity(active, cond, body, n_consts, max_iter, False)
    count, tapes, k = residuals
    bvjp = vjp_graph(body, act_c + act_carry, act_carry)
    n_ac = sum(act_c)
    ct_tapes = [g for g, a in zip(gs[n + 1:], act_carry) if a] if tape else [None] * sum(act_carry)
    seeds = [g if g is not None else zeros(v.shape) for g, v, a in zip(gs[:n], init, act_carry) if a]
    accs = [zeros(v.shape) for v, a in zip(consts, act_c) if a]
    if k == 1:
        ct_init, ct_acc = _reverse_sweep(consts, tapes, ct_tapes, count - 1.0, seeds, accs, bvjp, n_ac, max_iter,
                                         trips)
    else:
        ct_init, ct_acc = _segments(consts, tapes, ct_tapes, count, k, seeds, accs, cond, body, bvjp, n_ac, max_iter,
                                    trips)
    it_init, it_c = iter(ct_init), iter(ct_acc)
    ct_init = [next(it_init) if a else None for a in act_carry]
    ct_c = [next(it_c) if a else None for a in act_c]
    return ct_c + [ct if a else None for ct, a in zip(ct_init, act_init)]


def _segments(consts, cps, ct_cps, count, k, seeds, accs, cond, body, bvjp, n_ct_consts, max_iter, trips=0):
    """The checkpointed reverse sweep: a while over the segments of k iterations, last first; each recomputes
    its carries from its checkpoint and runs the body's VJP backwards through them."""
    ctt = [t for t in ct_cps if t is not None]
    nb = Builder()
    c = [nb.input(v.shape) for v in consts]
    cp = [nb.input(t.shape) for t in cps]
    ctp = iter([nb.input(t.shape) for t in ctt])
    cnt = nb.input(())
    s = nb.input(())
    ct_car = [nb.input(v.shape) for v in seeds]
    acc = [nb.input(v.shape) for v in accs]
    start = [op.dyn_slice(t, s, axis=0, size=None) for t in cp]
    length = op.minimum(cnt - s * float(k), float(k))
    seg = _recompute(c, start, length, cond, body, k)
    ct, acc2 = _reverse_sweep(c, seg, [None] * len(seeds), length - 1.0, ct_car, acc, bvjp, n_ct_consts, k)
    ct = [g if t is None else g + op.dyn_slice(next(ctp), s, axis=0, size=None) for g, t in zip(ct, ct_cps)]
    seg_body = nb.build([s - 1.0, *ct, *acc2])
    seg_cond = _counts_down(seg_body, len(consts) + len(cps) + len(ctt) + 1)
    last = op.floor((count - 1.0) / float(k))  # the last segment's number; -1 when the loop never ran
    out = _while_node([*consts, *cps, *ctt, count], [last, *seeds, *accs], seg_cond, seg_body,
                      tape_rows(max_iter, k), False, k if trips else 1, trips)
    return list(out[1:1 + len(seeds)]), list(out[1 + len(seeds):])


register(Prim("while", _while_shape, _while_impl, _while_jvp, _while_vjp, multiple_results=True,
              normalize=_while_normalize, extra={"activity": _while_activity, "vjp_fwd": _while_vjp_fwd},
              params=(("n_consts", "count"), ("max_iter", "count"), ("tape", "flag"), ("every", "count"),
                      ("trips", "count")),
              doc="a loop that runs while its condition holds, at most `max_iter` times; with `tape`, also the "
                  "trip count and the carries of every `every`-th iteration (`every` optional, default 1; reverse "
                  "mode); `trips` (optional): its trip count where known, for reports of how far it got (each "
                  "iteration counting as `every` without `tape`)"))
