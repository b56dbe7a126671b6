"""Run the cases: build every contender, check they agree, time them interleaved, form the ratios.

Contenders of a case (those that apply and are installed):

* `ours:*`   `Engine.evaluate` in process on the tiered backend once its kernels are ready and it has chosen
             its tier by timing (`numba`; `numba-parallel` when the batch is long enough for the parallel
             variant, which is compiled and awaited first; `interpreter` if that timed faster);
* `kernel:*` the generated kernel `ours` runs (serial or parallel) called directly with preallocated
             outputs (what `ours` pays beyond it is the engine's request handling);
* `interp:*` `Engine.evaluate` on the NumPy interpreter tier;
* `jax:*`    `jax.jit` of the same function, float64, warmed up, `block_until_ready`;
* `autograd:*` autograd on NumPy.

`primal` is the value alone; `deriv` is the case's derivative (value and
gradient, or the HVP). With `tier=None` ours runs on the interpreter only.
After timing, a case checks that ours ran on the tiers it claims (the backend's
run counts), apart from the backend's occasional probes of another tier.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from adserve.engine import Engine, backend, main_plan
from adserve.engine.allocator import keep_freed_memory
from adserve.engine.deadline import FLAG_SLOTS

from .problems import Case
from .timing import measure

RATIOS = [  # (label, numerator, denominator); "{kind}" is the case's derivative
    ("{kind}/primal", "ours:deriv", "ours:primal"),
    ("ours/jax", "ours:deriv", "jax:deriv"),
    ("ours/autograd", "ours:deriv", "autograd:deriv"),
    ("interpreter/ours", "interp:deriv", "ours:deriv"),
    ("kernel {kind}/primal", "kernel:deriv", "kernel:primal"),
    ("kernel/ours", "kernel:deriv", "ours:deriv"),
    ("jax {kind}/primal", "jax:deriv", "jax:primal"),
]


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Ours:
    """Our contenders for one case, on the interpreter and (when `tier` is given) on compiled kernels."""

    def __init__(self, case: Case, tier, interp):
        self.case, self.tier = case, tier
        self.interpreted, self.compiled = Engine(interp), None if tier is None else Engine(tier)
        self.fn = self.interpreted.compile_definition(case.definition)
        self.tiers: dict = {}  # part -> the tier ours runs it on (see `contenders`)
        self.plans = {"primal": main_plan(self.fn, {"value"}, case.wrt)[0],
                      "deriv": main_plan(self.fn, case.deriv_compute, case.wrt)[0]}

    def request(self, part, engine=None):
        """A call running `part` on `engine` (default: the interpreter)."""
        engine = engine or self.interpreted
        c = self.case
        compute = ["value"] if part == "primal" else c.deriv_compute
        tangent = c.tangent if part == "deriv" else None
        return lambda: engine.evaluate(self.fn, c.inputs, compute, tangent=tangent, batch=c.batch, wrt=c.wrt)

    def start_compiles(self):
        for g in self.plans.values():
            self.tier.kernel(g)

    @property
    def points(self) -> int:
        c = self.case
        return len(next(iter(c.inputs.values()))) if c.batch else 1

    def settle(self, part, graph, runs=300, seconds=5.0, timeout=600.0) -> str:
        """Run a part until the backend has chosen its tier with nothing left compiling for its plan (a long batch
        asks for its parallel variant, awaited here: nothing may compile while anything is timed), then `runs`
        runs more or `seconds` (the backend's first looks at the other tiers come within them); the tier."""
        call = self.request(part, self.compiled)
        deadline = time.monotonic() + timeout
        since = None  # (time, runs) when the current choice was first seen
        n = 0
        while time.monotonic() < deadline:
            call()
            n += 1
            if self.tier.pending(graph):
                self.tier.wait(graph, max(1.0, deadline - time.monotonic()), parallel=True)
                since = None
                continue
            if self.tier.choice(graph, self.points) is None:
                since = None
                continue
            since = since or (time.monotonic(), n)
            if n - since[1] >= runs or time.monotonic() - since[0] >= seconds:
                return self.tier.choice(graph, self.points)
        raise RuntimeError(f"{self.case.bench} {self.case.label}: no tier chosen for {part} in {timeout:.0f} s")

    def contenders(self) -> dict:
        out = {f"interp:{p}": self.request(p) for p in self.plans}
        if self.tier is None:
            self.tiers = {p: "interpreter" for p in self.plans}
            return {f"ours:{p}": out.pop(f"interp:{p}") for p in self.plans}
        self.tiers = {}
        for part, g in self.plans.items():
            if not self.tier.wait(g):
                raise RuntimeError(f"{self.case.bench} {self.case.label}: the {part} kernel failed to compile")
            if self.case.batch and self.tier.parallel_kernel(g) is None:
                # the backend asks for it once the serial kernel's runs are long; that may happen while timed
                self.tier.wait(g, parallel=True)
            for _ in range(3):  # the choice may be reopened (a probe found another tier faster): settle again
                self.tiers[part] = tier = self.settle(part, g)
                if self._runs_on(part, tier):
                    break
            else:
                raise RuntimeError(f"{self.case.bench} {self.case.label}: {part} chose {tier} but does not run on it")
            out[f"ours:{part}"] = self.request(part, self.compiled)
            out[f"kernel:{part}"] = self._kernel_call(part, g, tier)
        return out

    def _runs_on(self, part, tier) -> bool:
        """Does a run of `part` land on `tier`? (Three tries: a run may be one of the backend's probes.)"""
        for _ in range(3):
            meta = {}
            self.compiled.evaluate(self.fn, self.case.inputs,
                                   ["value"] if part == "primal" else self.case.deriv_compute,
                                   tangent=self.case.tangent if part == "deriv" else None, batch=self.case.batch,
                                   meta=meta, wrt=self.case.wrt)
            if meta.get("backend") == tier:
                return True
        return False

    def _kernel_call(self, part, graph, tier):
        c = self.case
        mod = self.tier.module(graph, tier) or self.tier.kernel(graph)  # the interpreter's: the serial kernel
        args = [c.inputs[n] for n in self.fn.input_names]
        if part == "deriv" and c.kind == "hvp":
            args += [c.tangent[n] for n in self.fn.input_names if n in c.wrt]
        ins = [np.ascontiguousarray(a if c.batch else a[None], dtype=np.float64) for a in args]
        B = max(a.shape[0] for a in ins)
        outs = [np.empty((B, *o.shape)) for o in graph.outputs]
        stop = np.zeros(FLAG_SLOTS, np.int64)  # never set: the kernel as a run without a deadline calls it
        return lambda: mod.kernel(B, stop, *ins, *outs)


def _jax_contenders(case: Case) -> tuple[dict, dict]:
    """JAX contenders and the derivative they compute (for the agreement check)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    names = list(case.inputs)
    args = [jax.device_put(np.asarray(case.inputs[n], dtype=np.float64)) for n in names]

    def f(*a):
        return case.xp_fn(jax.numpy, **dict(zip(names, a)))

    def ready(g, *a):
        return lambda: jax.block_until_ready(g(*a))

    out, first = {}, {}
    if case.batch:
        out["jax:primal"] = ready(jax.jit(jax.vmap(f)), *args)
        out["jax:deriv"] = ready(jax.jit(jax.vmap(jax.value_and_grad(f))), *args)
    elif case.kind == "hvp":
        v = jax.device_put(case.tangent["x"])
        out["jax:primal"] = ready(jax.jit(f), *args)
        out["jax:deriv"] = ready(jax.jit(lambda x, t: jax.jvp(jax.grad(f), (x,), (t,))), args[0], v)
    else:
        out["jax:primal"] = ready(jax.jit(f), *args)
        wrt = tuple(names.index(n) for n in case.wrt)
        out["jax:deriv"] = ready(jax.jit(jax.value_and_grad(f, argnums=wrt)), *args)
    for k, call in out.items():
        t = time.perf_counter()
        first[k] = (call(), time.perf_counter() - t)
    return out, first


def _autograd_contenders(case: Case) -> dict:
    if case.batch:
        return {}
    import autograd
    import autograd.numpy as anp
    names = list(case.inputs)
    if case.kind == "hvp":
        hvp = autograd.hessian_vector_product(lambda x: case.xp_fn(anp, x=x))
        return {"autograd:deriv": lambda: hvp(case.inputs["x"], case.tangent["x"])}
    fixed = {n: case.inputs[n] for n in names if n not in case.wrt}
    vg = autograd.value_and_grad(lambda w: case.xp_fn(anp, **dict(zip(case.wrt, w)), **fixed))
    w = tuple(case.inputs[n] for n in case.wrt)
    return {"autograd:deriv": lambda: vg(w)}


def _check(case: Case, ours, first: dict):
    """Our derivative must match JAX's before any of it is timed."""
    got = ours()
    if "jax:deriv" not in first:
        return
    ref = first["jax:deriv"][0]
    if case.kind == "hvp":
        pairs = [(got["hvp"]["x"], ref[1])]
    else:
        value, grads = ref
        grads = grads if isinstance(grads, tuple) else (grads,)
        names = case.wrt if not case.batch else ("x",)
        pairs = [(got["value"], value)] + [(got["gradient"][n], g) for n, g in zip(names, grads)]
    for a, b in pairs:
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * max(1.0, float(np.max(np.abs(b)))),
                                   err_msg=f"{case.bench} {case.label}: ours and JAX disagree")


def run_case(ours: Ours, rivals=("jax", "autograd"), budget_s=12.0, rounds=21) -> dict:
    case = ours.case
    contenders = ours.contenders()
    first = {}
    if "jax" in rivals and available("jax"):
        jc, first = _jax_contenders(case)
        contenders.update(jc)
    if "autograd" in rivals and available("autograd"):
        contenders.update(_autograd_contenders(case))
    _check(case, contenders["ours:deriv"], first)
    before = (dict(ours.tier.stats.runs), ours.tier.stats.probes) if ours.tier is not None else None
    t = measure(contenders, rounds=rounds, budget_s=budget_s)
    runs, check = _tier_check(ours, before)
    switched = ""
    if check and set(runs) - {"probes"} <= KERNEL_TIERS and set(ours.tiers.values()) <= KERNEL_TIERS:
        # the backend's timing moved it between its serial and parallel kernels: a choice, not a wrong tier
        switched, check = check, ""
    ratios = {}
    for label, num, den in RATIOS:
        if num in t.per_call and den in t.per_call:
            ratios[label.format(kind=case.kind)] = t.ratio(num, den)
    return {"bench": case.bench, "label": case.label, "kind": case.kind, "n_nodes": ours.fn.n_nodes,
            "median_s": {k: t.median(k) for k in t.per_call}, "rounds": len(next(iter(t.per_call.values()))),
            "ratios": ratios, "targets": {k.replace("{kind}", case.kind): v for k, v in case.targets.items()},
            "jax_first_call_s": {k: v[1] for k, v in first.items()},
            "tiers": dict(ours.tiers), "tier_runs": runs, "tier_check": check, "tier_switched": switched,
            "tier_estimates_s": {p: ours.tier.estimates(g, ours.points) for p, g in ours.plans.items()}
            if ours.tier is not None else {}}


KERNEL_TIERS = {backend.NUMBA, backend.PARALLEL}


def _tier_check(ours: Ours, before) -> tuple[dict, str]:
    """Runs of ours by tier while timed, and "" if they ran on the tiers claimed, apart from the backend's probes
    of other tiers (else what went wrong)."""
    if ours.tier is None:
        return {}, ""
    runs0, probes0 = before
    runs = {k: n - runs0.get(k, 0) for k, n in ours.tier.stats.runs.items() if n - runs0.get(k, 0)}
    runs["probes"] = probes = ours.tier.stats.probes - probes0
    off = sum(n for k, n in runs.items() if k != "probes" and k not in ours.tiers.values())
    problems = []
    if off > probes:
        problems.append(f"{off} timed runs on tiers it does not claim, {probes} of them probes ({runs})")
    for part, g in ours.plans.items():
        now = ours.tier.choice(g, ours.points)
        if now != ours.tiers[part]:
            problems.append(f"{part}: the tier changed from {ours.tiers[part]} to {now} while timed")
    return runs, "; ".join(problems)


def run_all(cases, cache_dir=None, rivals=("jax", "autograd"), budget_s=12.0, rounds=21, log=print,
            parallel=True) -> dict:
    """Time every case; kernels for all of them compile in the background first (two workers); a case's own
    parallel variant, if its batch asks for one, is compiled and awaited before that case is timed."""
    keep_freed_memory()  # this process's allocator as the server's (engine/allocator.py)
    interp = backend.Interpreter()
    tier = backend.Tiered(cache_dir, workers=2, parallel=parallel) if cache_dir else None
    t0 = time.perf_counter()
    ours = [Ours(c, tier, interp) for c in cases]
    if tier is not None:
        for o in ours:
            o.start_compiles()
        log(f"  compiling {2 * len(ours)} kernels")
        for o in ours:  # no compile may run while anything is timed
            for g in o.plans.values():
                tier.wait(g)
        log(f"  kernels ready after {time.perf_counter() - t0:.0f} s")
    results = []
    try:
        for o in ours:
            log(f"  {o.case.bench} {o.case.label}")
            results.append(r := run_case(o, rivals, budget_s, rounds))
            if tier is not None:
                est = {p: ", ".join(f"{t} {s * 1e6:,.0f} us" for t, s in e.items())
                       for p, e in r["tier_estimates_s"].items()}
                log(f"    ours on {r['tiers']} (median recent runs: {est}; timed runs {r['tier_runs']})"
                    + (f"; CHECK FAILED: {r['tier_check']}" if r["tier_check"] else "")
                    + (f"; switched kernels: {r['tier_switched']}" if r.get("tier_switched") else ""))
    finally:
        if tier is not None:
            tier.shutdown()
    stats = tier.stats if tier is not None else None
    return {"cases": results, "seconds": time.perf_counter() - t0,
            "compiles": None if stats is None else {"kernels": stats.compiles, "seconds": stats.compile_seconds,
                                                    "failures": stats.compile_failures + stats.compile_timeouts,
                                                    "parallel": stats.parallel_compiles,
                                                    "parallel_seconds": stats.parallel_compile_seconds,
                                                    "parallel_disabled": stats.parallel_disabled}}
