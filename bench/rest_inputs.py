"""`python -m bench.rest_inputs`: what a large input costs over REST beside the kernel it feeds.

Helmholtz at n=1000 (an 8 MB matrix `A`) is POSTed to a real server with base64 inputs, a new `x` each time
(so the result cache never answers), until the server answers from its numba kernel; then ROUNDS more. The
server's own `Server-Timing: compute` (decoding done, the engine's evaluation: input checks, any copies,
the kernel) is set beside the same kernel called in this process on the same arrays (`kernel`): what the
engine adds to the kernel is the difference. Prints medians and interquartile ranges.
"""

from __future__ import annotations

import argparse
import base64
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from .problems import helmholtz

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
from server_process import running_server  # noqa: E402


def _b64(a) -> dict:
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "float64", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _spread(xs) -> str:
    xs = sorted(xs)
    q = lambda f: xs[int(f * (len(xs) - 1))]  # noqa: E731
    return f"{statistics.median(xs):.3f} ms ({q(0.25):.3f}-{q(0.75):.3f})"


def kernel_ms(case, rounds) -> list:
    """The gradient plan's numba kernel on the case's inputs, called directly (compiled here, in a temp cache)."""
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
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                assert mod.kernel(1, stop, *args, *outs) == 0
                times.append((time.perf_counter() - t) * 1e3)
            return times
        finally:
            tier.shutdown()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.rest_inputs", description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    case = helmholtz(args.n, rng)
    inputs = {k: _b64(v) for k, v in case.inputs.items()}
    body = {"function": case.definition, "compute": ["value", "gradient"], "wrt": list(case.wrt)}
    compute, backend = [], None
    with tempfile.TemporaryDirectory() as home:
        env = {"ADSERVE_CACHE_DIR": f"{home}/cache", "ADSERVE_MAX_BODY_BYTES": str(64 << 20)}
        with running_server(Path(home) / "server.log", env=env) as server, \
                httpx.Client(base_url=server.url, timeout=600) as client:
            t_end = time.perf_counter() + 600
            while backend != "numba" and time.perf_counter() < t_end:
                inputs["x"] = _b64(case.inputs["x"] * rng.uniform(0.99, 1.01))
                r = client.post("/v1/evaluate", json={**body, "inputs": inputs})
                r.raise_for_status()
                backend = r.headers.get("x-adserve-backend")
                if backend != "numba":
                    time.sleep(0.2)
            assert backend == "numba", "the server never answered from its kernel"
            for _ in range(args.rounds):
                inputs["x"] = _b64(case.inputs["x"] * rng.uniform(0.99, 1.01))
                r = client.post("/v1/evaluate", json={**body, "inputs": inputs})
                r.raise_for_status()
                if r.headers.get("x-adserve-backend") == "numba":
                    compute.append(float(re.search(r"compute;dur=([0-9.]+)", r.headers["Server-Timing"]).group(1)))
    kernel = kernel_ms(case, args.rounds)
    print(f"Helmholtz n={args.n}, value and gradient, base64 inputs over REST ({len(compute)} requests on numba):")
    print(f"  server compute (Server-Timing): {_spread(compute)}")
    print(f"  kernel alone, in process:       {_spread(kernel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
