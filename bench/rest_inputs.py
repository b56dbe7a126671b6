"""`python -m bench.rest_inputs`: what large inputs cost over REST beside the kernel they feed.

Helmholtz at n=1000 (an 8 MB matrix `A`) is POSTed to a real server, a new `x` each time (so the result cache
never answers), in two forms taken in turn: every input in base64 (`base64`), and `A` held by the server,
uploaded once and named by its ref, with `x` and `b` in base64 (`held A`). Once the server answers from its
numba kernel, ROUNDS more of each. The server's `Server-Timing` gives `compute` (the engine's evaluation: input
checks, any copies, the kernel), `kernel` (of compute, the kernel call itself, inside the server) and `total`
(parsing, decoding, the result cache's hash of the inputs, encoding too); beside them, the same kernel called
in this process on the same arrays, twice a round (right after the requests, and again back to back: `kernel`,
the ratios' reference). What the engine's Python adds to the kernel is the server's compute minus its kernel
call; the server's kernel call minus the kernel back to back here is what the server's surroundings (caches,
fresh buffers, other threads) cost the kernel itself.

`--tree DIR` (repeatable) runs one more server from another source tree (another branch's checkout, e.g.
`git archive main | tar -x -C DIR`), its requests taken in turn with this tree's, so that old and new code are
measured on the same machine at the same time. Prints medians and interquartile ranges.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from .problems import helmholtz

_HERE = Path(__file__).resolve().parent.parent
_TESTS = str(_HERE / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
from server_process import running_server  # noqa: E402

FORMS = ("base64", "held A")


def _b64(a) -> dict:
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "float64", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _spread(xs) -> str:
    xs = sorted(xs)
    q = lambda f: xs[int(f * (len(xs) - 1))]  # noqa: E731
    return f"{statistics.median(xs):.3f} ms ({q(0.25):.3f}-{q(0.75):.3f})"


def _timing(response, name) -> float | None:
    """A `Server-Timing` figure (ms); None when the server does not give it (`kernel` before it was given)."""
    found = re.search(rf"{name};dur=([0-9.]+)", response.headers["Server-Timing"])
    return None if found is None else float(found.group(1))


@contextlib.contextmanager
def kernel_timer(case):
    """A function timing one call (ms) of the gradient plan's numba kernel on the case's inputs, called directly
    (compiled here, in a temp cache): taken in turn with the requests, so load on the machine hits both alike."""
    from adserve.engine import Engine, backend, main_plan
    from adserve.engine.deadline import FLAG_SLOTS
    with tempfile.TemporaryDirectory() as cache:
        tier = backend.Tiered(cache)
        try:
            fn = Engine(tier).compile_definition(case.definition)
            graph, _ = main_plan(fn, frozenset({"value", "gradient"}), case.wrt)
            tier.store.kernel(graph)
            assert tier.store.wait(graph), "no kernel"
            mod = tier.store.kernel(graph)
            args = [np.asarray(case.inputs[n], dtype=np.float64)[None] for n in fn.input_names]
            outs = [np.empty((1, *a.shape)) for a in graph.outputs]
            stop = np.zeros(FLAG_SLOTS, np.int64)

            def once():
                t = time.perf_counter()
                assert mod.kernel(1, stop, *args, *outs) == 0
                return (time.perf_counter() - t) * 1e3
            once()
            yield once
        finally:
            tier.shutdown()


class Target:
    """One server (from one source tree) and the request bodies of each form."""

    def __init__(self, name, client, case):
        self.name, self.client, self.case = name, client, case
        body = {"function": case.definition, "compute": ["value", "gradient"], "wrt": list(case.wrt)}
        A = np.ascontiguousarray(case.inputs["A"], dtype="<f8")
        r = client.post("/v1/tensors", params={"shape": ",".join(map(str, A.shape))}, content=A.tobytes(),
                        headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
        self.bodies = {"base64": {**body, "inputs": {k: _b64(v) for k, v in case.inputs.items()}},
                       "held A": {**body, "inputs": {"b": _b64(case.inputs["b"]), "A": {"ref": r.json()["ref"]}}}}
        self.compute = {f: [] for f in FORMS}
        self.kernel = {f: [] for f in FORMS}  # Server-Timing's `kernel`: the kernel call inside `compute`
        self.total = {f: [] for f in FORMS}
        self.tiers = {f: {} for f in FORMS}  # the tier that answered, and how often

    def post(self, form, x):
        body = self.bodies[form]
        body["inputs"]["x"] = _b64(x)
        r = self.client.post("/v1/evaluate", json=body)
        r.raise_for_status()
        return r

    def warm(self, rng, seconds=600):
        """Requests until both forms are answered from the numba kernel."""
        t_end, on = time.perf_counter() + seconds, set()
        while on != set(FORMS) and time.perf_counter() < t_end:
            for form in FORMS:
                if self.post(form, self.x(rng)).headers.get("x-adserve-backend") == "numba":
                    on.add(form)
            time.sleep(0.2)
        assert on == set(FORMS), f"{self.name}: the server never answered from its kernel"

    def x(self, rng):
        return self.case.inputs["x"] * rng.uniform(0.99, 1.01)

    def measure(self, form, rng):
        r = self.post(form, self.x(rng))
        tier = r.headers.get("x-adserve-backend")
        self.tiers[form][tier] = self.tiers[form].get(tier, 0) + 1
        if tier == "numba":
            self.compute[form].append(_timing(r, "compute"))
            self.kernel[form].append(_timing(r, "kernel"))
            self.total[form].append(_timing(r, "total"))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.rest_inputs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--tree", action="append", default=[], help="another source tree to run a server from")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    case = helmholtz(args.n, rng)
    trees = [("this tree", _HERE), *((str(t), Path(t).resolve()) for t in args.tree)]
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        targets = []
        for i, (name, tree) in enumerate(trees):
            env = {"ADSERVE_CACHE_DIR": f"{home}/cache{i}", "ADSERVE_MAX_BODY_BYTES": str(64 << 20)}
            server = stack.enter_context(running_server(Path(home) / f"server{i}.log", env=env, cwd=tree))
            client = stack.enter_context(httpx.Client(base_url=server.url, timeout=600))
            targets.append(Target(name, client, case))
        for t in targets:
            t.warm(rng)
        once, after, kernel = stack.enter_context(kernel_timer(case)), [], []
        for i in range(args.rounds):  # servers, forms and the kernel alone in turn, the order turned every round
            order = [(t, f) for t in targets for f in FORMS]
            for t, form in order if i % 2 == 0 else order[::-1]:
                t.measure(form, rng)
            after.append(once())  # right after the requests, as a server's kernel runs
            kernel.append(once())  # again, back to back: the kernel's own time, the ratios' reference
    print(f"Helmholtz n={args.n}, value and gradient over REST, {args.rounds} rounds (requests on numba only):")
    for t in targets:
        for form in FORMS:
            others = {k: v for k, v in t.tiers[form].items() if k != "numba"}
            tiers = f"; not on numba: {others}" if others else ""
            if not t.compute[form]:  # the server's timing policy chose another tier for the plan
                print(f"  {t.name}, {form}: no request on numba{tiers}")
                continue
            ratio = statistics.median(t.compute[form]) / statistics.median(kernel)
            split = ""
            if None not in t.kernel[form]:
                around = [c - k for c, k in zip(t.compute[form], t.kernel[form])]
                split = f"; of it the kernel call {_spread(t.kernel[form])}, the Python around it {_spread(around)}"
            print(f"  {t.name}, {form} ({len(t.compute[form])} on numba): compute {_spread(t.compute[form])}, "
                  f"{ratio:.2f}x the kernel{split}; total {_spread(t.total[form])}{tiers}")
    print(f"  kernel alone, in process (this tree): {_spread(kernel)} back to back; {_spread(after)} right "
          "after the requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
