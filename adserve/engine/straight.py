"""A loop body's `Program` as one straight-line Python function: what `run_program` does, without its dispatch.

`run_program` walks a Program's steps: per equation it unpacks a tuple of six, reads the deadline, picks a
calling convention and indexes a list of slots (a microsecond or so of Python, more than the NumPy work of a
small equation). A loop's condition and body run that walk every iteration, up to the 100,000 of
ADSERVE_MAX_WHILE_ITERATIONS. `compiled(prog, checked)` writes the walk out once as Python source, one
statement per equation over local variables, and compiles it: a function `run(args, deadline)` that returns
the same arrays and raises the same errors as `run_program(prog, args, deadline)` (an EngineError is
located at its equation, a stop says at which operation it was), with the same deadline checks (before
every equation). Runs with a deadline and runs without get a function each (the latter reads none), each
made when needed; a while loop's condition, tested only for being nonzero, may also get one that answers a
final comparison as booleans (`truth`: NumPy's comparison without its conversion to 1.0 and 0.0).
Implementations, literals, parameters and locations reach the code as closure variables, never as text: the
source holds only generated names and numbers, so nothing a client sends is compiled.

A Program is compiled after it has run `COMPILE_AFTER` times that way (Program.runs). Compiling one costs
about as much as 30 walks of it where dispatch is what a walk costs (measured: about 50 us an equation,
against 1 to 2 us an equation walked and half that compiled), which a loop body run thousands of times
repays at once; a program run only as often as the threshold spends at most about half again. Programs of
more than MAX_STEPS equations stay on the walk (compiling one takes tens of milliseconds, all of it in the
request that happens to make the threshold).
"""

from __future__ import annotations

from .deadline import Stopped
from .errors import EngineError

COMPILE_AFTER = 64  # runs of a Program (of one variant) before it is compiled (None: never: the walk, for tests)
MAX_STEPS = 500


def _truth_step(prog):
    """The step whose comparison is the program's one output and read by no other step, if any, made with
    the comparison's `same_rank` implementation: its booleans can stand in for its 1.0s and 0.0s where the
    output is only tested for being nonzero (a while loop's condition)."""
    from .builder import PRIMS

    if len(prog.outputs) != 1 or prog.outputs[0][0] is None or not prog.steps:
        return None
    out = prog.outputs[0][0]
    for i, (impl, ins, outs, params, takes_deadline, e) in enumerate(prog.steps):
        if outs == out:
            p = PRIMS[e.prim]
            if "truth" not in p.extra or impl is not p.extra["same_rank"] or params:
                return None
            if any(out in later[1] for later in prog.steps[i + 1:]):
                return None
            return i
    return None


def _source(prog, checked, truth=False):
    """The factory's source and its closure values (name -> object), or None when the walk must stay.
    `checked`: the variant for a deadline (read before every equation, handed to the loops and branches);
    `truth`: the variant whose one output, a comparison, is booleans (None when the output is no such)."""
    from .builder import PRIMS

    tested = _truth_step(prog) if truth else None
    if truth and tested is None:
        return None
    from .interpreter import _frozen, lit_array  # noqa: F401  (named in the source through `env`)

    env = {"Stopped": Stopped, "EngineError": EngineError, "_frozen": _frozen, "lit_array": lit_array,
           "ARITY": f"a graph of {prog.n_in} inputs given {{}} arguments"}
    written = set()
    head = [f"    if len(args) != {prog.n_in}:", "        raise ValueError(ARITY.format(len(args)))"]
    if prog.in_slots is None:
        names = "".join(f"v{s}, " for s in range(prog.n_in))
        if names:
            head.append(f"    {names} = args")
        written.update(range(prog.n_in))
    else:
        for k, s in enumerate(prog.in_slots):  # an input listed twice: the last argument given wins
            head.append(f"    v{s} = args[{k}]")
            written.add(s)
    for s, value in enumerate(prog.init):
        if value is not None:
            env[f"v{s}"] = value  # a kept literal: read-only, one per literal object
            written.add(s)
    for s, lit in prog.per_run:
        env[f"L{s}"] = lit
        head.append(f"    v{s} = _frozen(lit_array(L{s}))")
        written.add(s)
    lines = []
    locs = []
    for i, (impl, ins, outs, params, takes_deadline, e) in enumerate(prog.steps):
        if any(s not in written for s in ins):
            return None  # a slot read before any value is put in it: the walk's behaviour (None) stays
        env[f"F{i}"] = PRIMS[e.prim].extra["truth"] if i == tested else impl
        locs.append(e.loc)
        if params:
            env[f"P{i}"] = params
        args = ", ".join(f"v{s}" for s in ins)
        target = f"v{outs}" if type(outs) is int else "".join(f"v{s}, " for s in outs) + "*_"
        if type(outs) is int:
            written.add(outs)
        else:
            written.update(outs)
        extra = [", deadline=dl"] if takes_deadline and checked else []
        if params:
            extra.append(f", **P{i}")
        lines.append(f"        i = {i}")
        if checked:
            lines.append("        if dl.stopped:")
            lines.append("            raise dl.error()")
        lines.append(f"        {target} = F{i}({args}{''.join(extra)})")
    for s, lit in prog.outputs:
        if lit is None and s not in written:
            return None
    env["LOC"] = locs
    outputs = ", ".join(f"v{s}" if lit is None else f"lit_array(O{k})" for k, (s, lit) in enumerate(prog.outputs))
    for k, (s, lit) in enumerate(prog.outputs):
        if lit is not None:
            env[f"O{k}"] = lit
    n = len(prog.steps)  # a Stopped comes only from a step, so LOC[i] exists when one is caught
    src = ["def factory(" + ", ".join(env) + "):", "    def run(args, dl):"]
    src.extend("    " + line for line in head)
    src.append("        i = 0")
    src.append("        try:")
    src.extend("    " + line for line in lines or ["        pass"])
    src.append("        except Stopped as err:")
    src.append(f"            raise err.placed(LOC[i]).inside('plan', i, {n}) from None")
    src.append("        except EngineError as err:")
    src.append("            raise err.at(LOC[i])")
    src.append(f"        return [{outputs}]")
    src.append("    return run")
    return "\n".join(src), env


def compiled(prog, checked: bool, truth: bool = False):
    """`run(args, deadline)` for runs with a deadline (`checked`) or without, with its one output a comparison's
    booleans (`truth`); None when `prog` stays on the walk (or has no such output)."""
    if len(prog.steps) > MAX_STEPS:
        return None
    made = _source(prog, checked, truth)
    if made is None:
        return None
    src, env = made
    scope: dict = {}
    try:
        exec(compile(src, f"<program of {len(prog.steps)} steps>", "exec"), scope)  # noqa: S102  (generated names)
    except Exception:  # noqa: BLE001  (whatever Python refuses to compile, the walk still runs)
        return None
    return scope["factory"](**env)
