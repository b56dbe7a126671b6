"""`python -m bench`: run every benchmark in one process and write docs/benchmarks.md (+ .png)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

from . import gradbench, harness, isolation, latency, problems, report, sections, service
from .gradbench import cpp as gradbench_cpp

METHOD = """\
How it is measured (`make bench`, {took} here):

- One process times every contender of a case in the same run, interleaved: each round times every
  contender, in a rotating order, as the fastest of three blocks of back-to-back calls (a block lasts about
  1 ms; other processes only ever add time). Ratios are taken per round and summarised as the median and
  interquartile range over the rounds, so drift of the machine hits both sides of a ratio alike.
- **ours** is `Engine.evaluate` in process on the tiered backend, after `Tiered.wait()` says the plan's numba
  kernel is loaded and the backend has chosen the plan's tier by timing (a batch long enough for threads gets
  its parallel variant compiled and awaited first); the primal and the derivative are timed the same way.
  After timing, each case checks from the backend's run counts that ours ran on the tier it claims, apart
  from the backend's probes (now and then it re-times another tier, at growing intervals); a case whose tier
  changed while it was timed is flagged below the tables, as are tiers other than `numba`. **kernel** calls
  the generated kernel ours runs (serial or parallel) directly with preallocated outputs, so `kernel/ours` is
  the share of a request spent in generated code. **interpreter** is `Engine.evaluate` on the NumPy interpreter
  tier.
- **JAX** is `jax.jit` of the same function in float64 (`jax_enable_x64`), warmed up, with
  `block_until_ready`: `value_and_grad` for gradients, `jvp(grad)` for the HVP, `vmap(value_and_grad)` for
  the batch. **autograd** is `value_and_grad` / `hessian_vector_product` on NumPy (no batch form).
- Before timing, ours and JAX must agree (relative 1e-7).
- Data that is not differentiated (the Helmholtz `b` and `A`, the GMM sample points, the llsq design) is
  sent as inputs, as a client would; every contender differentiates the same inputs (ours with `wrt`,
  JAX with `argnums`).
- Wall-clock numbers are never asserted in tests; `tests/test_bench_smoke.py` runs this harness on tiny
  sizes on the interpreter so it cannot rot.
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for checking the harness")
    ap.add_argument("--interpreter-only", action="store_true", help="no numba kernels (ours = interpreter)")
    ap.add_argument("--no-server", action="store_true", help="skip the REST latency probe")
    ap.add_argument("--serial", action="store_true", help="no parallel batch kernels (ours: serial kernels only)")
    ap.add_argument("--budget", type=float, default=12.0, help="seconds of timing per case (default 12)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="only the cases whose benchmark name (or 'name label') contains NAME (repeatable); "
                         "prints the tables and writes files only where --out/--plot say")
    ap.add_argument("--out", default=None, help="default docs/benchmarks.md (none with --only)")
    ap.add_argument("--plot", default=None, help="default docs/benchmarks.png (none with --only)")
    args = ap.parse_args(argv)
    if not args.only:
        args.out = args.out or "docs/benchmarks.md"
        args.plot = args.plot or "docs/benchmarks.png"

    t0, load0 = time.perf_counter(), os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("cases:", flush=True)
    with tempfile.TemporaryDirectory(prefix="adserve-bench-") as cache:
        cases = problems.cases(quick=args.quick)
        if args.only:
            cases = [c for c in cases if any(n in c.bench or n in f"{c.bench} {c.label}" for n in args.only)]
            if not cases:
                ap.error(f"no case matches {args.only}")
        results = harness.run_all(cases, None if args.interpreter_only else cache, budget_s=args.budget,
                                  log=lambda m: print(m, flush=True), parallel=not args.serial)
    load_mid = os.getloadavg()
    sv = None
    if not args.no_server and not args.only:
        print("REST server:", flush=True)
        sv = service.probe(compile_kernels=not args.interpreter_only,
                           log=lambda m: print(m, flush=True), **({"sizes": ((20, "20 terms"),), "fresh": 2}
                                                                   if args.quick else {}))
    load1, minutes = os.getloadavg(), (time.perf_counter() - t0) / 60
    have_plot = report.plot(results, args.plot) if args.plot else False
    facts = report.machine()
    text = [
        "# Benchmarks", "",
        "Generated by `make bench` (`python -m bench`); do not edit by hand. Targets from the benchmark issue: "
        "ratios, measured side by side in one run on one machine.", "",
        METHOD.format(took=f"{minutes:.1f} min" if minutes < 2 else f"about {minutes:.0f} minutes"), "## Machine", "",
        "| fact | value |", "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in facts.items()),
        f"| run | {started}, {minutes:.1f} min |",
        f"| load average (1 min) | {load0[0]:.1f} at start, {load_mid[0]:.1f} after the in-process cases, "
        f"{load1[0]:.1f} at the end |", "",
    ]
    if max(load0[0], load_mid[0], load1[0]) > (os.cpu_count() or 1):
        text += [f"The machine was busy during this run (load average above its {os.cpu_count()} cores): absolute "
                 "times are inflated and wander, most for calls of a few microseconds. Ratios are paired per round; "
                 "read their interquartile ranges as the noise.", ""]
    if have_plot:
        text += [f"![Helmholtz times and target ratios]({os.path.relpath(args.plot, os.path.dirname(args.out))})", ""]
    text.append(report.tables(results, sv))
    if not args.out:
        print(report.tables(results, sv))
        print(f"load average (1 min) {load0[0]:.1f} at start, {load1[0]:.1f} at the end; {minutes:.1f} min")
        return 0
    # written by `python -m bench.gradbench`, `bench.gradbench.cpp`, `bench.isolation --write`, `bench.latency
    # --write` and by hand, not by this run
    kept = "\n".join(k for k in (gradbench.kept_section(args.out), gradbench_cpp.kept_section(args.out),
                                isolation.kept_section(args.out), latency.kept_section(args.out),
                                sections.kept_notes(args.out)) if k)
    with open(args.out, "w") as f:
        f.write("\n".join(text) + ("\n\n" + kept if kept else ""))
    print(f"wrote {args.out}" + (f" and {args.plot}" if have_plot else "") + f" in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
