"""Seconds to compiled code: numba's cold compile of generated kernels, split into typing, LLVM and the rest.

    python -m bench.compile_time [--only NAME ...] [--repeats R] [--json OUT] [--timeout S] [--backend B]

The kernels: random straight-line functions of about 100, 1,000 and 10,000 IR nodes (seeded: the same on every
run), and real ones: the survey example, Helmholtz n=200 and n=1000, GradBench's gmm (d=2, k=5; d=10, k=25),
lstm (l=2, c=4), ode, kmeans (k=100, n=10,000, d=16; gradient in the centroids) and llsq (n=4,096, m=128); each is
the value-and-gradient plan the server compiles for a `compute: [value, gradient]` request. Each
kernel's module is written to a fresh directory and imported by a fresh process set up as the compile worker
is (`worker.compile_settings`; NUMBA_OPT in the environment reaches it, to compare LLVM levels); numba's cache of
the kernel is cold, the runtime helpers' cache is as the machine has it, as in production. That process reports:

* `wall`: seconds from the process's spawn to the kernel compiled;
* `total`: the process's CPU seconds until then (interpreter and numba start-up included: what a compile worker
  costs). CPU time, not wall time, is what the other columns count: the machine may be shared;
* `load`: the module's import alone (the compile), split into `typing` (numba's type inference passes), `llvm`
  (time holding llvmlite's lock: parsing, optimising and emitting machine code) and `rest` (numba's other
  passes and its lowering to LLVM IR in Python), each CPU second counted once, in the innermost (typing may
  compile a function it calls, and so run LLVM);
* `rss_mb`: the process's peak resident memory;
* `run_us`: the kernel's CPU time for one point (median of batches of calls);
* `write`: the server's seconds writing the kernel's code (numba source or LLVM IR) before the worker starts.

A large LLVM kernel (llvm_kernel.QUICK_LINES) is compiled as the store does it: its quick kernel first (`wall`,
`llvm` and `total` are until that one is compiled and loaded; its run time is `run_us_quick`), then its optimised
kernel (`optimise`: that compile's CPU seconds; `run_us` and `rss_mb` are the optimised kernel's).

`--backend auto` (the default) compiles each kernel as the server would: by the direct-LLVM back end when the plan
is in its scope (codegen/llvm_ir.py), else numba; `numba` or `llvm` force one (llvm: in-scope plans only). The
`backend` column says which compiled it. The LLVM worker runs llvmlite alone (no numba): its `llvm` column is its
whole compile (parsing, optimising, machine code); `typing` and `rest` are numba's.

With `--repeats R` every kernel is compiled R times, interleaved (kernel 1..n, then again), and medians are shown
with their spread (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

UNARY = ["sin({0})", "cos({0})", "tanh({0})", "exp(sin({0}))", "log1p({0} * {0})", "sqrt(1.0 + {0} * {0})",
         "sigmoid({0})"]
BINARY = ["{0} + {1}", "{0} - {1}", "{0} * {1}", "maximum({0}, {1})", "{0} / (1.0 + {1} * {1})"]
REDUCE = ["sum({})", "logsumexp({})", "max({})"]
N_X = 8


def random_definition(n_nodes: int, seed: int = 0) -> dict:
    """A straight-line program over x:[8], y:[8], s:[] of about `n_nodes` IR nodes: element-wise unary and binary
    ops (vectors broadcast against scalars) and reductions, each reading earlier values; the result sums every
    value, so none is dead."""
    rng = np.random.default_rng(seed)
    pool, lines, nodes = ["x", "y", "s"], [], 0

    def pick():
        if rng.random() < 0.5:  # any earlier value, or one of the last few (long chains)
            return pool[int(rng.integers(len(pool)))]
        return pool[-1 - int(rng.integers(min(8, len(pool))))]

    while nodes < n_nodes:
        r, name = rng.random(), f"v{len(pool)}"
        if r < 0.45:
            t = UNARY[int(rng.integers(len(UNARY)))]
            expr, nodes = t.format(pick()), nodes + t.count("(") + t.count("*") + t.count("+")
        elif r < 0.9:
            t = BINARY[int(rng.integers(len(BINARY)))]
            expr, nodes = t.format(pick(), pick()), nodes + 1 + t.count("*") + t.count("/") + t.count("+")
        else:
            expr, nodes = REDUCE[int(rng.integers(len(REDUCE)))].format(pick()), nodes + 1
        lines.append(f"    {name} = {expr}")
        pool.append(name)
        nodes += 2  # its share of the final sum
    body = "\n".join(lines)
    terms = "\n".join(f"    acc = acc + sum({v}) * {1.0 / (i + 1)!r}" for i, v in enumerate(pool[3:]))
    program = f"def f(x, y, s):\n{body}\n    acc = 0.0\n{terms}\n    return acc\n"
    return {"inputs": [{"name": "x", "shape": [N_X]}, {"name": "y", "shape": [N_X]}, {"name": "s", "shape": []}],
            "program": program}


def _random(n):
    d = random_definition(n, seed=n)
    x = np.linspace(0.1, 0.9, N_X)
    return d, {"x": x, "y": x[::-1].copy(), "s": np.array(0.3)}, None


def _survey():
    return ({"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
             "expr": "log(x1) + x1*x2 - sin(x2)"}, {"x1": np.array(2.0), "x2": np.array(5.0)}, None)


def _helmholtz(n):
    def make():
        from bench.problems import helmholtz
        c = helmholtz(n, np.random.default_rng(0))
        return c.definition, c.inputs, c.wrt
    return make


def _gradbench(name, *args):
    def make():
        from bench.gradbench import evals
        part = next(p for p in getattr(evals, name)(*args).parts if "gradient" in p.compute)
        return part.definition, part.inputs, part.wrt
    return make


KERNELS = {
    "random-100": lambda: _random(100),
    "random-1000": lambda: _random(1000),
    "random-10000": lambda: _random(10_000),
    "survey": _survey,
    "helmholtz-200": _helmholtz(200),
    "helmholtz-1000": _helmholtz(1000),
    "gmm-d2-k5": _gradbench("gmm", 2, 5, 100),
    # contractions (einsum): BLAS products, loop nests
    "gmm-d10-k25": _gradbench("gmm", 10, 25, 1000),
    "kmeans-k100-n10000-d16": _gradbench("kmeans", 100, 10_000, 16),
    "llsq-n4096-m128": _gradbench("llsq", 4096, 128),
    "lstm-l2-c4": _gradbench("lstm", 2, 4),
    # a loop: GradBench's ode (a for loop of Runge-Kutta steps; its gradient the reverse loop over the tape)
    "ode-n1000-s10": _gradbench("ode", 1000, 10),
}


def kernel_source(name, backend="auto"):
    """(module text, fn IR nodes, plan IR nodes, input arrays in the kernel's order, output shapes, the back end,
    seconds writing the text) of kernel `name`."""
    from adserve.engine import Engine, main_plan
    from adserve.engine.codegen import llvm_ir, llvm_kernel
    from adserve.engine.codegen.module import kernel_module
    defn, inputs, wrt = KERNELS[name]()
    fn = Engine().compile_definition(defn)
    graph, _ = main_plan(fn, frozenset({"value", "gradient"}), wrt)
    args = [np.asarray(inputs[n], dtype=np.float64) for n in fn.input_names]
    declined = llvm_ir.declined(graph)
    if backend == "auto":
        backend = "numba" if declined else "llvm"
    elif backend == "llvm" and declined:
        raise SystemExit(f"{name}: outside the LLVM back end's scope ({', '.join(sorted(declined))})")
    t = time.process_time()
    src = llvm_kernel.module_text(graph, "ct", name) if backend == "llvm" else kernel_module(graph, name)
    write = time.process_time() - t
    return src, fn.n_nodes, graph.n_nodes(), args, [tuple(a.shape) for a in graph.outputs], backend, write


# -- the child: one cold compile ---------------------------------------------------------------------
def spec_spawned(spec_path):
    with open(spec_path) as f:
        return json.load(f)["spawned"]


def child(path, spec_path):
    """Compile the module at `path` and print its measurements (CPU seconds: the machine may be shared)."""
    import resource

    if path.endswith(".ll"):
        return child_llvm(path, spec_path)
    from adserve.engine.codegen.worker import compile_settings
    compile_settings()  # as the compile worker does, before numba is imported
    import numba  # noqa: F401
    from numba.core import event

    # CPU time goes to the innermost span open: typing may compile (and so run LLVM on) a function it calls
    spans, stack, clock = {"typing": 0.0, "llvm": 0.0, "other": 0.0}, ["other"], [time.process_time()]

    def switch(push=None):
        now = time.process_time()
        spans[stack[-1]] += now - clock[0]
        clock[0] = now
        if push:
            stack.append(push)
        else:
            stack.pop()

    def kind(ev):
        if ev.kind == "numba:llvm_lock":
            return "llvm"
        return "typing" if ev.data["name"].startswith("nopython_type_inference") else None

    class Listener(event.Listener):
        def on_start(self, ev):
            k = kind(ev)
            if k:
                switch(k)

        def on_end(self, ev):
            if kind(ev):
                switch()

    from adserve.engine.codegen.worker import load
    import adserve.engine.codegen.runtime  # noqa: F401  (its helpers' cache loads before the timer)
    listener = Listener()
    event.register("numba:run_pass", listener)
    event.register("numba:llvm_lock", listener)
    t1 = clock[0] = time.process_time()
    name = os.path.basename(path)[:-3]
    mod = load(path, name)
    t2 = time.process_time()
    wall = time.time() - spec_spawned(spec_path)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_compiled = ru.ru_utime + ru.ru_stime  # the process's CPU seconds, start-up included
    event.unregister("numba:run_pass", listener)
    event.unregister("numba:llvm_lock", listener)
    spec = json.load(open(spec_path))
    run_us = _run_time(mod, spec)
    out = {"wall": wall, "total": cpu_compiled, "load": t2 - t1, "typing": spans["typing"], "llvm": spans["llvm"],
           "rest": t2 - t1 - spans["typing"] - spans["llvm"],
           "rss_mb": ru.ru_maxrss / 1024, "run_us": run_us}
    print("RESULT " + json.dumps(out), flush=True)


def child_llvm(path, spec_path):
    """The LLVM back end's compile, as its worker does it (llvmlite alone), and the load the server does: a large
    kernel's quick compile first (llvm_kernel.QUICK_LINES), then its optimised one, as the store does."""
    import resource

    from adserve.engine.codegen import llvm_kernel
    quick = llvm_kernel.quick_object(path) if llvm_kernel.header(path).get("quick") else None
    t1 = time.process_time()
    llvm_kernel.compile_file(path, quick)
    t2 = time.process_time()
    mod = llvm_kernel.LlvmModule(path, quick)
    wall = time.time() - spec_spawned(spec_path)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    spec = json.load(open(spec_path))
    out = {"wall": wall, "total": ru.ru_utime + ru.ru_stime, "load": t2 - t1, "typing": 0.0, "llvm": t2 - t1,
           "rest": 0.0, "rss_mb": ru.ru_maxrss / 1024}
    if quick is not None:
        t3 = time.process_time()
        llvm_kernel.compile_file(path)
        out["optimise"] = time.process_time() - t3
        out["run_us_quick"] = _run_time(mod, spec)
        mod = llvm_kernel.LlvmModule(path)
        out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["run_us"] = _run_time(mod, spec)
    print("RESULT " + json.dumps(out), flush=True)


def _run_time(mod, spec, budget=0.3):
    from adserve.engine.deadline import FLAG_SLOTS
    data = np.load(spec["args"])
    args = [data[f"a{j}"][None] for j in range(len(data.files))]
    outs = [np.empty((1, *s)) for s in spec["outs"]]
    stop = np.zeros(FLAG_SLOTS, np.int64)
    status = mod.kernel(1, stop, *args, *outs)
    assert status == 0, mod.ERRORS[status - 1]
    n, t = 1, 0.0
    while t < 0.02:  # calls per batch: a batch of at least 20 ms
        n *= 4
        t0 = time.process_time()
        for _ in range(n):
            mod.kernel(1, stop, *args, *outs)
        t = time.process_time() - t0
    times, end = [], time.process_time() + budget
    while time.process_time() < end or len(times) < 5:
        t0 = time.process_time()
        for _ in range(n):
            mod.kernel(1, stop, *args, *outs)
        times.append((time.process_time() - t0) / n)
    return 1e6 * float(np.median(times))


# -- the parent ----------------------------------------------------------------------------------------
def compile_cold(src, args, outs, timeout):
    """One fresh process compiling `src` in a fresh directory: the child's measurements."""
    with tempfile.TemporaryDirectory(prefix="adserve-ct-") as d:
        ext = ".llvm.ll" if src.startswith("; adserve") else ".py"
        path = os.path.join(d, f"gen_ct_{os.getpid()}_{time.monotonic_ns()}{ext}")
        with open(path, "w") as f:
            f.write(src)
        np.savez(os.path.join(d, "args.npz"), **{f"a{j}": a for j, a in enumerate(args)})
        spec = os.path.join(d, "spec.json")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")])}
        t0 = time.perf_counter()
        with open(spec, "w") as f:
            json.dump({"args": os.path.join(d, "args.npz"), "outs": outs, "spawned": time.time()}, f)
        try:
            p = subprocess.run([sys.executable, "-m", "bench.compile_time", "--child", path, spec], env=env,
                               capture_output=True, text=True, timeout=timeout, cwd=_ROOT)
        except subprocess.TimeoutExpired:
            return {"timeout": timeout}
        wall = time.perf_counter() - t0
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            raise RuntimeError(f"compile failed ({p.returncode}): {p.stderr[-3000:]}")
        out = json.loads(line[0][7:])
        out["process_wall"] = wall  # includes the run-time measurement (about 0.3 s+)
        return out


QUICK_FIELDS = ("run_us_quick", "optimise")  # a large LLVM kernel's only
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("wall", "total", "typing", "llvm", "rest", "rss_mb", "run_us", "write", "run_us_quick", "optimise")


def _cell(vals, field):
    v = [x[field] for x in vals if field in x]
    if not v:
        return "" if field in QUICK_FIELDS and not any("timeout" in x for x in vals) else "timeout"
    fmt = "{:.0f}" if field == "rss_mb" else ("{:.2f}" if not field.startswith("run_us") else "{:.3g}")
    med = fmt.format(float(np.median(v)))
    return med if len(v) == 1 else f"{med} ({fmt.format(min(v))}-{fmt.format(max(v))})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--json")
    ap.add_argument("--backend", choices=("auto", "numba", "llvm"), default="auto")
    a = ap.parse_args(argv)
    if a.child:
        return child(*a.child)
    np.seterr(all="ignore")
    names = a.only or list(KERNELS)
    sources = {}
    for n in names:
        src, fn_nodes, plan_nodes, args, outs, backend, write = kernel_source(n, a.backend)
        sources[n] = (src, args, outs, backend, write)
        loops = src.count(".l:\n") if backend == "llvm" else src.count(" for ")
        print(f"{n}: function {fn_nodes} IR nodes, plan {plan_nodes}, {backend}: {src.count(chr(10))} lines, "
              f"{loops} loops, written in {write:.2f} s", flush=True)
    results = {n: [] for n in names}
    for r in range(a.repeats):
        for n in names:
            src, args, outs, backend, write = sources[n]
            res = compile_cold(src, args, outs, a.timeout)
            res["write"] = write
            results[n].append(res)
            print(f"  [{r + 1}/{a.repeats}] {n}: " + ", ".join(f"{k} {v:.3g}" for k, v in res.items()), flush=True)
    print("\n| kernel | backend | " + " | ".join(FIELDS) + " |")
    print("|---" * (len(FIELDS) + 2) + "|")
    for n in names:
        print(f"| {n} | {sources[n][3]} | " + " | ".join(_cell(results[n], f) for f in FIELDS) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
