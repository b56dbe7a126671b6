"""The interpreter's run of a `while` whose trip count depends on its data (whiles.py has the primitive).

`every_point` runs the loop while every point of the batch still runs it (always, for a single point): the
condition, the body, nothing else, except at the iterations where something is due: a tape row (every
`every`-th iteration), the fixed-point check (every FIXED_POINT_EVERY-th), a look at handing the loop to
generated code, the iteration limit. The next of those is one number compared per iteration. Its carries
are the body's own arrays, not copied back into the loop's (a copy of the whole state per iteration),
wherever the body's are what the copy would have been: arrays of their own (not views), of the same shape,
float64 and C-ordered, so the next iteration computes on the same bits laid out the same way. The condition
and body run as the straight-line code straight.py makes once they have run a few times (a condition that
ends in a comparison: the variant answering booleans, which are tested as its 1.0 and 0.0 would be).

When some points stop and others go on, `some_points` takes over from the top of that iteration (running
its condition again: it is a function of the carries) with the loop's own arrays: a mask of the points
still running, their rows gathered each iteration and scattered back. Both count iterations, keep the tape
and check the deadline, the limit and fixed points at the same iterations as each other, so the answers,
errors and messages are the same whichever runs.
"""

from __future__ import annotations

import numpy as np

from . import straight
from .errors import EvaluationError
from .interpreter import run_program

FIXED_POINT_EVERY = 16  # iterations between checks that the carries still change
F64 = np.dtype(np.float64)


def limit_error(max_iter):
    return EvaluationError(f"a while loop ran past {max_iter:,} iterations, the limit "
                           "(ADSERVE_MAX_WHILE_ITERATIONS); does its condition ever become false?",
                           code="while_limit", cite_line=True)


def fixed_point_error(iterations, max_iter):
    return EvaluationError(f"a while loop can never end: after {iterations + 1:,} iterations its variables "
                           "stopped changing while its condition still holds (it would run past "
                           f"{max_iter:,} iterations, the limit, ADSERVE_MAX_WHILE_ITERATIONS)",
                           code="while_limit", cite_line=True)


def stuck(cur, new, n):
    """Per active point: whether the body left every carry as it was, bit for bit (so -0.0 is not 0.0, and a
    NaN is the same NaN)."""
    same = np.ones(n, dtype=bool)
    for old, v in zip(cur, new):
        v = np.asarray(v, dtype=np.float64)
        if v.shape != old.shape:
            v = np.broadcast_to(v, old.shape)
        same &= (np.asarray(old, dtype=np.float64).view(np.int64) == v.view(np.int64)).reshape(n, -1).all(axis=1)
    return same


def _stuck_all(cur, new, B):
    """`stuck(cur, new, B).any()`, for one point without its mask: the first carry that changed answers."""
    if B != 1:
        return stuck(cur, new, B).any()
    for old, v in zip(cur, new):
        if v.shape != old.shape or v.dtype != F64:
            return stuck(cur, new, B).any()
        if not (old.view(np.int64) == v.view(np.int64)).all():
            return False
    return True


def hand_over(B, consts, carry, count, rows, cond, body, n_consts, max_iter, iterations, tape, every, deadline):
    """A look for generated code in a long loop (at a tape row, so its rows continue the stride): (when to look
    next, None for never; the loop's outputs from generated code, or None: the interpreter goes on)."""
    from .codegen import while_kernel

    if not while_kernel.generator_loaded():  # still loading (in a thread): look again later
        return iterations + while_kernel.ESCALATE_AFTER, None
    if not while_kernel.pays(cond, body, n_consts, max_iter - iterations, B):
        return None, None
    return None, finish(consts, carry, count, rows, cond, body, n_consts, max_iter, iterations, tape, every,
                        deadline)


def finish(consts, carry, count, rows, cond, body, n_consts, max_iter, iterations, tape, every, deadline):
    """The rest of a long loop in generated code (codegen/while_kernel.py), from the carries reached after
    `iterations` (a multiple of `every`), merged with what the interpreter has (counts, tape rows); None: the
    interpreter goes on."""
    from .codegen import while_kernel

    try:
        out = while_kernel.finish([*consts, *carry], cond, body, n_consts, max_iter - iterations, tape, deadline,
                                  every)
    except EvaluationError as err:
        if err.code == "while_limit":  # its budget was what is left of this loop's: the limit is the loop's
            raise limit_error(max_iter) from None
        raise
    if out is None:
        return None
    n = len(carry)
    if not tape:
        return out[:n]
    more = out[n]
    kept = -(-int(more.max(initial=0)) // every)  # the rows the kernel wrote: iterations 0, every, ... it ran
    stacked = [np.concatenate([np.stack(r, axis=1), k[:, :kept]], axis=1) for r, k in zip(rows, out[n + 1:])]
    return [*out[:n], count + more, *stacked]


def _runner(prog, deadline, truth=False):
    """What runs `prog` here: its straight-line code once made (see interpreter.run_program), else the walk;
    for a condition (`truth`), the code whose final comparison answers booleans, where there is one."""
    plain = deadline is None
    fast = prog.fast[plain]
    if not fast:
        return lambda args, dl: run_program(prog, args, dl)
    if truth:
        tested = prog.fast[2 + plain]
        if tested is None:
            tested = prog.fast[2 + plain] = straight.compiled(prog, not plain, truth=True) or False
        if tested:
            return tested
    return fast


def _next_due(it, tape, every, next_look, max_iter):
    """The first iteration after `it` at which `every_point` has more to do than run the condition and body."""
    due = min(it + 1 + (FIXED_POINT_EVERY - 2 - it) % FIXED_POINT_EVERY, max_iter)  # k % 16 == 15; the limit
    if tape or next_look is not None:
        row = -(-(it + 1) // every) * every
        if tape:
            due = min(due, row)
        if next_look is not None:
            due = min(due, max(row, -(-next_look // every) * every))
    return due


def every_point(consts, carry, B, rows, cond_prog, body_prog, cond, body, n_consts, max_iter, tape, every, deadline,
                done):
    """Run the loop while all of its B points run: ("done", outputs) when it ends or generated code finished
    it, else ("some", carries, iterations, next look) at the top of the iteration where some points stop."""
    from .codegen import while_kernel

    shapes = [c.shape for c in carry]
    c_strides = [np.empty(s).strides for s in shapes]  # a C-ordered array's (a view's flags cost more to read)
    next_look = while_kernel.ESCALATE_AFTER  # when to look at handing the loop to generated code (None: done)
    iterations = due = 0
    run_cond, run_body = _runner(cond_prog, deadline, True), _runner(body_prog, deadline)
    args = [*consts, *carry]
    while True:
        if deadline is not None and deadline.stopped:
            raise deadline.error()
        pred = run_cond(args, deadline)[0]
        if pred.size == 1:  # one point, or one answer for all
            if pred.item() == 0:
                break
        elif not (pred.reshape(-1) != 0).all():
            return "some", carry, iterations, next_look
        if iterations < due:
            new = run_body(args, deadline)
        else:
            if iterations >= max_iter:
                raise limit_error(max_iter)
            # a long loop of scalar work goes on in generated code; at a tape row, so its rows continue the stride
            if next_look is not None and iterations >= next_look and iterations % every == 0:
                next_look, rest = hand_over(B, consts, carry, np.zeros(B) + iterations, rows, cond, body, n_consts,
                                            max_iter, iterations, tape, every, deadline)
                if rest is not None:
                    return "done", rest
            if tape and iterations % every == 0:
                for r, c in zip(rows, carry):
                    r.append(c.copy())
            new = run_body(args, deadline)
            if iterations % FIXED_POINT_EVERY == FIXED_POINT_EVERY - 1 and _stuck_all(carry, new, B):
                # the body is a function of the carries: unchanged carries whose condition holds never change again
                raise fixed_point_error(iterations, max_iter)
            due = _next_due(iterations, tape, every, next_look, max_iter)
            run_cond, run_body = _runner(cond_prog, deadline, True), _runner(body_prog, deadline)
        for j, v in enumerate(new):  # `new` is the run's own list
            if v.base is not None or v.shape != shapes[j] or v.strides != c_strides[j] or v.dtype is not F64:
                new[j] = np.array(np.broadcast_to(v, shapes[j]), dtype=np.float64, order="C")  # as `c[...] = v`
        carry = new
        args = [*consts, *new]
        iterations += 1
        done[0] = iterations
    carry = [np.array(c) for c in carry]  # the loop's own arrays (a body may pass on its inputs, or a literal)
    if not tape:
        return "done", carry
    return "done", [*carry, np.zeros(B) + iterations, *_stacked(rows, carry, B)]


def _stacked(rows, carry, B):
    return [np.stack(r, axis=1) if r else np.zeros((B, 0, *c.shape[1:])) for r, c in zip(rows, carry)]


def some_points(consts, carry, B, rows, iterations, next_look, cond_prog, body_prog, cond, body, n_consts, max_iter,
                tape, every, deadline, done):
    """Run the loop on from the top of iteration `iterations` (all points ran it so far), masking the points
    whose condition fails; the loop's outputs."""
    carry = [np.array(c) for c in carry]  # written per point from here on: the loop's own arrays
    count = np.zeros(B)  # iterations run since a point stopped (those before: `full`, as a Python int)
    full = iterations
    active = np.arange(B)
    while True:
        every_point = len(active) == B
        sub = consts if every_point else [c if c.shape[0] != B else c[active] for c in consts]
        cur = carry if every_point else [c[active] for c in carry]
        if deadline is not None and deadline.stopped:
            raise deadline.error()
        pred = run_program(cond_prog, [*sub, *cur], deadline)[0]
        if pred.size == 1:  # one point, or one answer for all
            if pred.item() == 0:
                break
        elif not (pred := pred.reshape(-1) != 0).all():
            active = active[np.broadcast_to(pred, (len(active),))]
            if not len(active):
                break
            sub = [c if c.shape[0] != B else c[active] for c in consts]
            cur = [c[active] for c in carry]
            every_point = False
        if iterations >= max_iter:
            raise limit_error(max_iter)
        if next_look is not None and iterations >= next_look and iterations % every == 0:
            next_look, rest = hand_over(B, consts, carry, count + full, rows, cond, body, n_consts, max_iter,
                                        iterations, tape, every, deadline)
            if rest is not None:
                return rest
        if tape and iterations % every == 0:
            for r, c in zip(rows, carry):
                r.append(c.copy())
        new = run_program(body_prog, [*sub, *cur], deadline)
        if iterations % FIXED_POINT_EVERY == FIXED_POINT_EVERY - 1 and stuck(cur, new, len(active)).any():
            raise fixed_point_error(iterations, max_iter)
        if every_point:  # new arrays: a body's output may be a carry, or a view of one (a swap, `y = w[::-1]`)
            carry = [np.array(np.broadcast_to(v, c.shape), dtype=np.float64, order="C") for c, v in zip(carry, new)]
            full += 1
        else:  # `cur` holds copies of the active rows: no output is a view of a carry
            for c, v in zip(carry, new):
                c[active] = v
            count[active] += 1
        iterations += 1
        done[0] = iterations
    if not tape:
        return carry
    return [*carry, count + full, *_stacked(rows, carry, B)]
