"""Write the results as Markdown tables (and a matplotlib plot) for docs/benchmarks.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import numpy as np

from .timing import Spread

CONTENDERS = [("ours:primal", "ours primal"), ("ours:deriv", "ours deriv"), ("kernel:primal", "kernel primal"),
              ("kernel:deriv", "kernel deriv"), ("interp:deriv", "interpreter deriv"), ("jax:primal", "JAX primal"),
              ("jax:deriv", "JAX deriv"),
              ("autograd:deriv", "autograd deriv")]
RATIO_COLUMNS = ["{kind}/primal", "ours/jax", "ours/autograd", "interpreter/ours",
                 "kernel {kind}/primal", "kernel/ours", "jax {kind}/primal"]


def machine() -> dict:
    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "-"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "usable cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "commit": commit or "?",
            **{pkg: version(pkg) for pkg in ("numpy", "numba", "llvmlite", "jax", "jaxlib", "autograd")}}


def _us(seconds):
    if seconds is None:
        return "-"
    us = seconds * 1e6
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def _cell(s: Spread | None, target=None):
    if s is None:
        return "-"
    mark = "" if target is None else (" ✓" if s.median <= target else " ✗")
    return s.text() + mark


def target_rows(results) -> list:
    """(benchmark, size, ratio, spread, target, met, by how much)."""
    rows = []
    for c in results["cases"]:
        for name, target in c["targets"].items():
            s = c["ratios"].get(name)
            if s is not None:
                rows.append((c["bench"], c["label"], name, s, target, s.median <= target, s.median / target))
    return rows


def tables(results, service=None) -> str:
    out = ["## Targets", "",
           "Median ratio over interleaved rounds (interquartile range in brackets); ✓ met, ✗ not met.", "",
           "| benchmark | size | ratio | measured | target | met | measured / target |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for bench, label, name, s, target, met, rel in target_rows(results):
        out.append(f"| {bench} | {label} | {name} | {s.text()} | <= {target:g} | {'✓' if met else '✗'} | {rel:.2f} |")
    if service:
        out += _service_target_rows(service)
    out += ["", "## All ratios", "",
            "`deriv` is the case's derivative: value and gradient, or the HVP (ours computes value and HVP, "
            "JAX `jvp(grad)` gradient and HVP). `ours` is `Engine.evaluate` on compiled kernels; `kernel` the same "
            "kernel called directly.", ""]
    cols = [c for c in RATIO_COLUMNS if any(c.format(kind=r["kind"]) in r["ratios"] for r in results["cases"])]
    out.append("| benchmark | size | IR nodes | " + " | ".join(c.replace("{kind}", "deriv") for c in cols) + " |")
    out.append("| --- | --- | --- |" + " --- |" * len(cols))
    for c in results["cases"]:
        cells = [_cell(c["ratios"].get(col.format(kind=c["kind"]))) for col in cols]
        out.append(f"| {c['bench']} | {c['label']} | {c['n_nodes']} | " + " | ".join(cells) + " |")
    out += ["", "## Times per call (µs, median)", "",
            "For orientation only: absolute times move with the machine's load; the ratios above are the result.", ""]
    present = [(k, v) for k, v in CONTENDERS if any(k in c["median_s"] for c in results["cases"])]
    out.append("| benchmark | size | rounds | " + " | ".join(v for _, v in present) + " |")
    out.append("| --- | --- | --- |" + " --- |" * len(present))
    for c in results["cases"]:
        out.append(f"| {c['bench']} | {c['label']} | {c['rounds']} | "
                   + " | ".join(_us(c["median_s"].get(k)) for k, _ in present) + " |")
    first = [(c, c["jax_first_call_s"].get("jax:deriv")) for c in results["cases"]]
    if any(t for _, t in first):
        out += ["", "JAX's first call of the derivative (trace and XLA compile), ms: "
                + ", ".join(f"{c['bench']} {c['label']} {1e3 * t:.0f}" for c, t in first if t) + "."]
    out += _tier_notes(results)
    if results.get("compiles"):
        k = results["compiles"]
        out += ["", f"Our kernels: {k['kernels']} compiled in worker processes, {k['seconds']:.0f} s of compile "
                f"time in all ({k['seconds'] / max(k['kernels'], 1):.1f} s each on average, two at a time), "
                f"{k['failures']} failures."]
        if k.get("parallel"):
            out[-1] += (f" Of them {k['parallel']} parallel batch variant(s), {k['parallel_seconds']:.1f} s "
                        "(compiled on demand, when a long batch asked).")
        elif k.get("parallel_disabled"):
            out[-1] += f" Parallel batch variants were off: {k['parallel_disabled']}."
    if service:
        out += ["", service_table(service)]
    return "\n".join(out) + "\n"


def _tier_notes(results) -> list:
    """Which cases ours ran on another tier than `numba`, and any case whose timed runs broke its claimed tier."""
    other = [f"{c['bench']} {c['label']} {part} on `{tier}`" for c in results["cases"]
             for part, tier in c.get("tiers", {}).items() if tier != "numba"]
    failed = [f"{c['bench']} {c['label']}: {c['tier_check']}" for c in results["cases"] if c.get("tier_check")]
    out = []
    if other and any(c.get("tier_runs") for c in results["cases"]):
        out += ["", "Ours ran on `numba` (serial kernels) except: " + "; ".join(other) + "."]
    switched = [f"{c['bench']} {c['label']}: {c['tier_switched']} ({c['tier_runs']})" for c in results["cases"]
                if c.get("tier_switched")]
    if switched:
        out += ["", "Switched between its serial and parallel kernels while timed (the backend's timings of the "
                "two were close and it corrected its choice; ours is the mix): " + "; ".join(switched) + "."]
    if failed:
        out += ["", "**Tier check failed** (ours did not run on the tier it claimed while timed): "
                + "; ".join(failed) + "."]
    return out


def _service_target_rows(sv) -> list:
    """The targets of the REST probe: the first answer of a new 1,000-op function (`service.probe`'s first size;
    the larger ones are reported in the REST section, against no target) and the first compiled answer after
    a restart."""
    rows = []
    for fa in sv["first_answer"][:1]:
        s = Spread.of(np.array(fa["seconds"]) * 1e3)
        rows.append(f"| REST first answer | {fa['name']} ({fa['n_nodes']} IR nodes) | ms, new function | "
                    f"{s.text(0)} | <= 50 | {'✓' if s.median <= 50 else '✗'} | {s.median / 50:.2f} |")
    r = sv.get("restart")
    if r and r.get("to_numba_s") is not None:
        rows.append(f"| REST after restart | {sv['first_answer'][0]['name']} | s, first request to first numba "
                    f"answer | {r['to_numba_s']:.2f} | <= 1 | {'✓' if r['to_numba_s'] <= 1 else '✗'} | "
                    f"{r['to_numba_s']:.2f} |")
    return rows


def service_table(sv) -> str:
    out = ["## Through the REST server", "",
           f"`POST /v1/evaluate` with a definition the server has never seen, compute {sv['compute']}, on a warm "
           "connection; client time from request to response. `Server-Timing` is the server's own account. "
           f"The target (at most 50 ms) is the {sv['first_answer'][0]['name']} function's; the larger ones show how "
           "the first answer grows with the function (its definition, plan and first run are Python).", "",
           "| function | IR nodes | first answers (ms) | answered by | Server-Timing of the last |",
           "| --- | --- | --- | --- | --- |"]
    for fa in sv["first_answer"]:
        ms = ", ".join(f"{1e3 * t:.0f}" for t in fa["seconds"])
        out.append(f"| {fa['name']} ({fa['terms']} terms) | {fa['n_nodes']} | {ms} | "
                   f"{', '.join(sorted(set(fa['tiers'])))} | `{fa['server_timing'][-1]}` |")
    out += ["", "The same kind of request in the bench's own process, on the interpreter, by stage (median ms over "
            "three fresh functions): " + "; ".join(
                f"{fa['name']}: " + ", ".join(f"{k} {v:.0f}" for k, v in fa["in_process_ms"].items())
                for fa in sv["first_answer"] if "in_process_ms" in fa) + ".", ""]
    out.append(f"Server start to ready: {sv['ready_s']:.2f} s.")
    if sv.get("compile_to_numba_s") is not None:
        out.append(f"A new {sv['first_answer'][0]['name']} function was answered by its compiled kernel "
                   f"{sv['compile_to_numba_s']:.1f} s after its first request (compiled in the background while "
                   "the other new functions were asked; each compile queues behind the earlier ones).")
    r = sv.get("restart")
    if r:
        got = "never (60 s)" if r["to_numba_s"] is None else f"{r['to_numba_s']:.2f} s after the first request " \
              f"({r['requests']} requests), {r['from_start_s']:.2f} s after the process was started"
        out.append(f"After a restart on the same `ADSERVE_CACHE_DIR`: ready in {r['ready_s']:.2f} s; first `numba` "
                   f"answer {got}.")
    return "\n".join(out)


def plot(results, path) -> bool:
    """Helmholtz time per call against n, and every target ratio against its bound; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    helm = [c for c in results["cases"] if c["bench"] == "helmholtz"]
    ns = [int(c["label"].split("=")[1]) for c in helm]
    for key, name in CONTENDERS:
        if key.startswith("ours:") or key in ("kernel:deriv", "interp:deriv", "jax:deriv", "autograd:deriv"):
            ys = [c["median_s"].get(key) for c in helm]
            if all(y is not None for y in ys) and ys:
                left.plot(ns, [y * 1e6 for y in ys], marker="o", label=name.replace("deriv", "value+gradient"))
    left.set(xscale="log", yscale="log", xlabel="n", ylabel="µs per call (median)",
             title="Helmholtz free energy (survey Table 4)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    rows = target_rows(results)
    labels = [f"{b} {lab}\n{name}" for b, lab, name, *_ in rows]
    rel = [r[6] for r in rows]
    err = np.array([[r[3].median - r[3].lo, r[3].hi - r[3].median] for r in rows]).T / [r[4] for r in rows]
    y = np.arange(len(rows))
    right.barh(y, rel, xerr=err, color=["tab:green" if r[5] else "tab:red" for r in rows])
    right.axvline(1.0, color="k", lw=1)
    right.set_yticks(y, labels, fontsize=6)
    right.invert_yaxis()
    right.set(xscale="log", xlabel="measured ratio / target (left of the line: met)", title="Targets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
