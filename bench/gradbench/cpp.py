"""`python -m bench.gradbench.cpp --gradbench DIR`: ours beside GradBench's C++ reference, on the same inputs.

GradBench checks every tool's output against its `manual` tool: C++ differentiated by hand (tools/manual/),
single-threaded, built -O3 -march=native. Nothing of GradBench is in this repository: DIR is a GradBench checkout
(`git clone https://github.com/gradbench/gradbench`), whose `tools/manual/<eval>.cpp` programs are built here
with the flags of its cpp/common.mk into `--build` (kept between runs). Their JSON header is DIR/cpp/json.hpp when
GradBench's `make -C cpp` has fetched it, else the system's nlohmann/json.hpp (Debian: nlohmann-json3-dev).

For every part of the evals the manual tool has and bench/gradbench writes (hello, lse, llsq, det, kmeans, ode,
gmm, lstm, ht, and ba in GradBench's repeated form), at bench.gradbench's sizes: the part's inputs are
written as GradBench's input JSON; the program runs the function for at least `--seconds` (GradBench's
`min_seconds`) and reports each run's nanoseconds; its output must equal ours (relative 1e-9, as bench.gradbench
holds ours to JAX). Ours: warm, as bench.gradbench's warm column settles it (`runner.settled`), each call timed.
The two take turns, ROUNDS each, for `--seconds` in all. Reported: each side's median call and the ratio; writes
its section of docs/benchmarks.md unless --only or --no-write.

    python -m bench.gradbench.cpp --gradbench DIR [--only EVAL ...] [--seconds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import sections
from .ht import gradbench_input as ht_input
from .runner import _close, settled, timed_runs

BEGIN, END = "<!-- BEGIN GRADBENCH CPP (python -m bench.gradbench.cpp) -->", "<!-- END GRADBENCH CPP -->"
ROUNDS = 3  # each side's timing is taken in this many turns
FLAGS = ["-std=c++17", "-O3", "-march=native", "-Wall", "-Wno-unknown-pragmas"]  # cpp/common.mk, one thread


def kept_section(path) -> str:
    """The section of an existing docs/benchmarks.md ('' if none), which `make bench` keeps."""
    return sections.kept_section(path, BEGIN, END)


def _rows(a) -> list:
    return np.asarray(a).tolist()


# GradBench's input JSON of each eval (cpp/gradbench/evals/<eval>.hpp, from_json), from our part's inputs and the
# eval's generator parameters
INPUTS = {
    "hello": lambda i, p: float(i["x"]),
    "lse": lambda i, p: {"x": _rows(i["x"])},
    "llsq": lambda i, p: {"x": _rows(i["x"]), "n": p["n"]},
    "det": lambda i, p: {"A": _rows(i["A"]), "ell": p["ell"]},
    "kmeans": lambda i, p: {"points": _rows(i["points"]), "centroids": _rows(i["centroids"])},
    "ode": lambda i, p: {"x": _rows(i["x"]), "s": p["s"]},
    # GradBench's ba files hold one camera, point, weight and feature, repeated (a seeded eval's are not)
    "ba": lambda i, p: {"n": p["n"], "m": p["m"], "p": p["p"], "cam": _rows(i["cams"][0]), "x": _rows(i["X"][0]),
                        "w": float(i["w"][0]), "feat": _rows(i["obs"][0])},
    "lstm": lambda i, p: {"main_params": _rows(i["main"]), "extra_params": _rows(i["extra"]),
                          "state": _rows(i["state"]), "sequence": _rows(i["seq"])},
    "gmm": lambda i, p: {"d": p["d"], "k": p["k"], "n": p["n"], "alpha": _rows(i["alpha"]), "mu": _rows(i["mu"]),
                         "q": _rows(i["q"]), "l": _rows(i["l"]), "x": _rows(i["x"]), "gamma": p["gamma"],
                         "m": p["m"]},
    "ht": lambda i, p: ht_input(i),
}


# the manual tool's function of a part, where the names differ; a part not here by its own name is skipped when
# the reference has no such function (ba's dense `jacobian`: GradBench's is the sparse one, `jacobian (blocks)`)
FUNCTIONS = {("ba", "jacobian (blocks)"): "jacobian", ("ba", "jacobian"): None}


def _output(eval_name: str, function: str, out):
    """The manual tool's output (its JSON) as `_ours` gives ours."""
    if eval_name == "gmm" and function == "jacobian":
        return tuple(np.asarray(out[w]) for w in ("alpha", "mu", "q", "l"))
    if eval_name == "ba" and function == "objective":  # the first observation's errors, each repeated p times
        e, w = out["reproj_error"], out["w_err"]
        return np.asarray(e["elements"]), np.asarray(w["element"]), e["repeated"], w["repeated"]
    if eval_name == "ba":  # its sparse Jacobian's first observation (two rows: 11 camera, 3 point, 1 weight
        return np.asarray(out["vals"])  # entries), then the last weight's derivative
    return np.asarray(out)


def _ours(eval_name: str, function: str, out):
    """Our part's output as the manual tool gives it: lstm's Jacobian is one vector, main_params' then
    extra_params'; ba's objective and Jacobian in GradBench's repeated forms."""
    if eval_name == "lstm" and function == "jacobian":
        return np.concatenate([np.ravel(a) for a in out])
    if eval_name == "ba" and function == "objective":
        p = len(out) // 3
        assert np.all(out[:2 * p].reshape(p, 2) == out[:2]) and np.all(out[2 * p:] == out[2 * p])  # repeated
        return out[:2], np.asarray(out[2 * p]), p, p
    if eval_name == "ba":
        cam, X, w = out  # per observation: (p, 3, 11), (p, 3, 3), (p, 3)
        rows = [np.concatenate([cam[0, r], X[0, r], w[0, r:r + 1]]) for r in (0, 1)]
        return np.concatenate([*rows, w[-1, 2:3]])
    return out


def json_header(gradbench: Path, build: Path) -> Path:
    """A directory whose json.hpp is nlohmann's: GradBench's fetched copy, else the system's."""
    if (gradbench / "cpp" / "json.hpp").exists():
        return gradbench / "cpp"
    for include in ("/usr/include", "/usr/local/include"):
        if Path(include, "nlohmann", "json.hpp").exists():
            shim = build / "include"
            shim.mkdir(parents=True, exist_ok=True)
            (shim / "json.hpp").write_text("#include <nlohmann/json.hpp>\n")
            return shim
    raise SystemExit("no nlohmann json.hpp: run `make -C cpp` in the GradBench checkout (it downloads one), "
                     "or install nlohmann-json3-dev")


def program(gradbench: Path, build: Path, eval_name: str, log=print) -> Path:
    """tools/manual/<eval>.cpp built (again when its source is newer than the binary)."""
    source = gradbench / "tools" / "manual" / f"{eval_name}.cpp"
    binary = build / eval_name
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise SystemExit("no C++ compiler (c++ or g++)")
    log(f"  building {source}")
    build.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([compiler, *FLAGS, f"-I{json_header(gradbench, build)}", f"-I{gradbench / 'cpp'}",
                        "-o", str(binary), str(source), "-lm"], capture_output=True, text=True, cwd=source.parent)
    if r.returncode != 0:
        raise RuntimeError(f"building {source} failed:\n{r.stderr[-3000:]}")
    return binary


def run_reference(binary: Path, function: str, data, seconds: float) -> tuple:
    """(output, seconds of each run) of `binary` on the input `data`, for at least `seconds` (one run when the input
    is not a JSON object: hello's is a number, where GradBench's harness has no room for `min_seconds`)."""
    if isinstance(data, dict):
        data = {**data, "min_runs": 1, "min_seconds": seconds}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="adserve-gradbench-") as f:
        json.dump(data, f)
        f.flush()
        r = subprocess.run([str(binary), f.name, function], capture_output=True, text=True,
                           timeout=max(120, 20 * seconds))
    if r.returncode != 0:
        raise RuntimeError(f"{binary.name} {function} exited {r.returncode}: {r.stderr[-1000:]}")
    lines = r.stdout.splitlines()
    runs = [json.loads(x)["nanoseconds"] * 1e-9 for x in lines[1:] if '"evaluate"' in x]
    return json.loads(lines[0]), runs


def compare(evals, binary_of, cache_dir: str, seconds: float, settle_s: float = 3.0, log=print) -> list:
    """A row per part of the evals the reference has: ours and the reference's median call, or the error (a
    different output, a failed run). `binary_of(eval name)`: the reference's program."""
    from adserve.engine import backend
    from adserve.engine.allocator import keep_freed_memory
    keep_freed_memory()  # as bench.gradbench (and the server)
    tier = backend.Tiered(cache_dir, workers=2)
    rows = []
    try:
        for ev in evals:
            if ev.name not in INPUTS or ev.params.get("seeded"):
                continue
            binary = binary_of(ev.name)
            data = INPUTS[ev.name](ev.parts[0].inputs, ev.params)
            for part in ev.parts:
                function = FUNCTIONS.get((ev.name, part.function), part.function)
                if function is None:
                    continue
                log(f"  {ev.name} {ev.label} {part.function}")
                row = {"eval": ev.name, "label": ev.label, "function": part.function}
                try:
                    out, cpp = run_reference(binary, function, data, seconds / ROUNDS)
                    ours, meta = settled(part, tier, settle_s)
                    _close(_ours(ev.name, part.function, ours()), _output(ev.name, part.function, out))
                    mine = timed_runs(ours, seconds / ROUNDS)
                    for _ in range(ROUNDS - 1):  # in turns, so that a busy moment of the machine hits both
                        cpp += run_reference(binary, function, data, seconds / ROUNDS)[1]
                        mine += timed_runs(ours, seconds / ROUNDS)
                    row.update(ours_s=statistics.median(mine), ours_runs=len(mine), tier=meta.get("backend", "?"),
                               cpp_s=statistics.median(cpp), cpp_runs=len(cpp))
                    log(f"    ours {row['ours_s'] * 1e3:.4g} ms ({row['tier']}), C++ {row['cpp_s'] * 1e3:.4g} ms: "
                        f"{row['ours_s'] / row['cpp_s']:.2f}x")
                except Exception as err:  # a failure is a row of the report, not the end of the run
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    log(f"    FAILED {row['error']}")
                rows.append(row)
    finally:
        tier.shutdown()
    return rows


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}" if s < 1 else f"{s * 1e3:,.0f}"


def table(rows) -> str:
    out = ["| eval | size | function | ours (ms) | tier | C++ manual (ms) | ours / C++ |",
           "| --- | --- | --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        head = f"| {r['eval']} | {r['label']} | {r['function']} "
        if "error" in r:
            out.append(head + f"| failed: {r['error']} | | | |")
        else:
            ratio, runs = r["ours_s"] / r["cpp_s"], r["cpp_runs"]
            ratio_text = f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.1e}"
            out.append(head + f"| {_ms(r['ours_s'])} | {r['tier']} | {_ms(r['cpp_s'])} ({runs} run"
                              f"{'s' if runs > 1 else ''}) | **{ratio_text}** |")
    return "\n".join(out)


def section(rows, facts: dict, seconds: float) -> str:
    return f"""{BEGIN}
## GradBench's C++ reference

GradBench validates every tool against its `manual` tool: each eval's functions in C++, differentiated by hand
(`tools/manual/`, single-threaded, `-O3 -march=native`). `python -m bench.gradbench.cpp --gradbench DIR` builds
those programs from a GradBench checkout and runs them on the same inputs as bench.gradbench's evals, written as
GradBench's input JSON; before any timing, ours must equal the reference's output (relative 1e-9). Each side is
called back to back for {seconds:g} s in all, in {ROUNDS} turns each (the reference through GradBench's own
harness, `min_seconds`); the medians of the calls and their ratio. Run {facts['run']}, commit {facts['commit']},
on {facts['cpu']} ({facts['cores']} cores, load average {facts['load']}). The manual tool has no particle or
saddle; ba is compared in GradBench's repeated form (one camera, point, weight and feature for all, the first
observation's errors and Jacobian rows), so its dense `jacobian` is left out (as is a seeded ba, whose entries
differ). ht's Jacobian is GradBench's: in theta (simple), or each correspondence's two `us` then theta
(complicated).

{table(rows)}

Where the two are not the same computation:

- **hello**: the reference's time is one call (its input, a bare number, has no room for `min_seconds`) of a
  multiplication; ours is a call of `Engine.evaluate`, nearly all of it the Python around a one-line kernel.
- **det**: the reference recurses over all ell! products; ours (and JAX in the GradBench section) computes each
  sub-minor once, 2^ell·ell products. The same terms in the same order, a different algorithm.
- **ode gradient**: the reference differentiates the ODE's exact solution by hand (the last entry at t=2 is a
  product over x, so its gradient is one pass over n), not the Runge-Kutta steps that the primal, ours and
  JAX's run. At these sizes the last entry and its gradient are 0 in both (the steps reach 4s entries; the
  product underflows).
- **ht jacobian**: ours computes the dense Jacobian (a JVP per column: 26 in theta for simple, 200 in `us` and
  26 in theta for complicated, each input's columns by a JVP plan of its own, so the `us` columns' tangents go
  through the last interpolation only) and keeps GradBench's columns, as GradBench's PyTorch tool does and
  bench.gradbench's JAX does; the reference's derivatives are written by hand, theta's bone by bone. What ours
  still computes per theta column is the tangent through every bone's skinning product (22x3x4 by 4x544).
{END}
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gradbench.cpp", description=__doc__.splitlines()[0])
    ap.add_argument("--gradbench", required=True, type=Path, help="a GradBench checkout")
    ap.add_argument("--build", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                    / "adserve-bench" / "gradbench-manual", help="where the programs are built (kept)")
    ap.add_argument("--only", action="append", metavar="EVAL", help="only these evals (repeatable)")
    ap.add_argument("--seconds", type=float, default=3.0, help="each side's timing, per part (default 3)")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from .__main__ import default_evals, run_facts
    evs = [e for e in default_evals() if e.name in INPUTS and (not args.only or e.name in args.only)]
    load0 = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="adserve-gradbench-cpp-") as cache:
        log = lambda m: print(m, flush=True)  # noqa: E731
        rows = compare(evs, lambda name: program(args.gradbench.resolve(), args.build, name, log), cache,
                       args.seconds, log=log)
    print(table(rows))
    if args.only or args.no_write:
        return 0
    sections.write_section(args.out, BEGIN, END, section(rows, run_facts(started, load0), args.seconds))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
