"""Hostile programs against a real server: the time from request to its 4xx, and that the server answers a
normal request right after.

`python -m bench.hostile [--repeat N]` starts a server process (`python -m adserve.server.cli`, fresh cache)
and POSTs to `/v1/evaluate`, for each case, a new definition (its constants changed every time, so no cache
answers) `--repeat` times; it prints the status, the error code, whether the message names the line, the
fastest and slowest time, and the time of a normal evaluation asked right after. Each case is asked for a
value and for a gradient (the while loop's reverse pass is another code path). A new definition is always
answered by the interpreter (and the python tier's code for a long scalar loop): its numba kernel compiles in
the background. With --compiled, the never-ending loops are timed instead in process once their numba
kernels are loaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
from server_process import running_server  # noqa: E402


def cases(k: int) -> dict:
    """name -> (definition, inputs, the line the message should name). `k` varies the constants."""
    c = 1.0 + k * 1e-9
    return {
        "recursion": ({"inputs": [{"name": "x", "shape": []}], "entry": "f",
                       "program": f"def f(x):\n    return g(x)\n\ndef g(y):\n    return {c!r} * f(y)"},
                      {"x": 1.0}, 5),
        "while that never stops": ({"inputs": [{"name": "x", "shape": []}],
                                    "program": f"def f(x):\n    y = x\n    while y > -1.0:\n        y = y * {c!r}"
                                               f"\n    return y"}, {"x": 1.0}, 3),
        "while that never stops, changing": (
            {"inputs": [{"name": "x", "shape": []}],
             "program": f"def f(x):\n    y = x\n    while y > -1.0:\n        y = y + {c!r}\n    return y"},
            {"x": 1.0}, 3),
        "while stuck at a fixed point": ({"inputs": [{"name": "a", "shape": []}],
                                          "program": "def f(a):\n    x = a\n    while abs(x * x - a) > 0:\n"
                                                     f"        x = 0.5 * (x + a / x) * {c!r}\n    return x"},
                                         {"a": 2.0}, 3),
        "while that never stops, 1000-element state": (
            {"inputs": [{"name": "x", "shape": [1000]}],
             "program": f"def f(x):\n    y = x\n    while y[0] > -1.0:\n        y = y + {c!r}\n    return sum(y)"},
            {"x": [0.0] * 1000}, 3),
        "gather out of range": ({"inputs": [{"name": "x", "shape": [4]}, {"name": "i", "shape": [2],
                                                                          "dtype": "int64"}],
                                 "program": f"def f(x, i):\n    y = {c!r} * x\n    return sum(y[i])"},
                                {"x": [1.0, 2.0, 3.0, 4.0], "i": [1, 7]}, 3),
        "huge int64": ({"inputs": [{"name": "x", "shape": [4]}, {"name": "i", "shape": [], "dtype": "int64"}],
                        "program": f"def f(x, i):\n    return {c!r} * x[i]"},
                       {"x": [1.0, 2.0, 3.0, 4.0], "i": 2 ** 62}, None),
        "deep nesting": ({"inputs": [{"name": "x", "shape": []}],
                          "expr": "(" * 2000 + f"x * {c!r}" + ")" * 2000}, {"x": 1.0}, None),
    }


NORMAL = {"function": {"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(sin(x) * x)"},
          "inputs": {"x": [0.1, 0.2, 0.3]}, "compute": ["value", "gradient"]}


def probe(client: httpx.Client, repeat: int, compute: list, log=print) -> list:
    rows = []
    for name in cases(0):
        times, after = [], []
        for k in range(repeat):
            defn, inputs, line = cases(k + 1000 * len(compute))[name]
            t = time.perf_counter()
            r = client.post("/v1/evaluate", json={"function": defn, "inputs": inputs, "compute": compute})
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            ok = client.post("/v1/evaluate", json=NORMAL)
            after.append(time.perf_counter() - t)
            assert ok.status_code == 200, ok.text
        err = r.json().get("error", {})
        names_line = line is None or f"line {line}" in err.get("message", "")
        rows.append({"case": name, "compute": "+".join(compute), "status": r.status_code,
                     "code": err.get("code"), "names_line": names_line, "min_s": min(times),
                     "max_s": max(times), "normal_after_s": max(after), "message": err.get("message", "")[:160]})
        row = rows[-1]
        log(f"{name:34s} {row['compute']:14s} {row['status']} {row['code']:22s} line:{'yes' if names_line else 'NO'}"
            f"  {row['min_s'] * 1e3:8.1f} .. {row['max_s'] * 1e3:8.1f} ms   normal after: "
            f"{row['normal_after_s'] * 1e3:.1f} ms")
    return rows


def compiled(names=("while that never stops", "while that never stops, 1000-element state"), log=print) -> list:
    """In process on the tiered backend: each never-ending loop once its numba kernel is loaded (the first
    call compiles it in the background; `settle` waits for it), then the time to its while_limit."""
    import numpy as np

    from adserve.engine import Engine, backend
    from adserve.engine.errors import EvaluationError
    rows = []
    with tempfile.TemporaryDirectory(prefix="adserve-hostile-kernels-") as cache:
        tier = backend.Tiered(cache, workers=2)
        try:
            engine = Engine(tier)
            for name in names:
                defn, inputs, _ = cases(7)[name]
                fn = engine.compile_definition(defn)
                arrays = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()}
                for compute in (["value"], ["value", "gradient"]):
                    for _ in range(2):  # the first run asks for the kernel; settle waits until it is loaded
                        try:
                            engine.evaluate(fn, arrays, compute)
                        except Exception:  # noqa: BLE001  (the while_limit, or a limit refused up front)
                            pass
                        engine.settle()
                    meta, t = {}, time.perf_counter()
                    try:
                        engine.evaluate(fn, arrays, compute, meta=meta)
                        code = "answered"
                    except EvaluationError as err:
                        code = err.code
                    except Exception as err:  # noqa: BLE001
                        code = getattr(err, "code", type(err).__name__)
                    # an error leaves `meta` empty: the kernels loaded say whether numba could have answered
                    tier_name = meta.get("backend") or f"{len(tier.store.ready)} numba kernels loaded"
                    rows.append({"case": name, "compute": "+".join(compute), "tier": tier_name,
                                 "code": code, "s": time.perf_counter() - t})
                    log(f"{name:44s} {rows[-1]['compute']:14s} ({rows[-1]['tier']})  {code:16s} "
                        f"{rows[-1]['s'] * 1e3:8.1f} ms")
        finally:
            tier.shutdown()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compiled", action="store_true",
                    help="instead: the never-ending loops in process once their numba kernels are loaded")
    args = ap.parse_args(argv)
    if args.compiled:
        compiled()
        return 0
    with tempfile.TemporaryDirectory(prefix="adserve-hostile-") as home:
        env = {"ADSERVE_CACHE_DIR": f"{home}/cache", "ADSERVE_LOG_LEVEL": "warning",
               "ADSERVE_COMPILE": "true" if args.compiled else "false"}
        with running_server(Path(home) / "server.log", env=env, ready_within=120) as s:
            with httpx.Client(base_url=s.url, timeout=300) as client:
                client.post("/v1/evaluate", json=NORMAL)  # warm the connection and the normal function
                for compute in (["value"], ["value", "gradient"]):
                    probe(client, args.repeat, compute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
