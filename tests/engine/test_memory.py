"""A request's peak memory is estimated before it runs, refused over `max_request_bytes` (413
`request_too_large`), and the estimate bounds the peak measured (tracemalloc: NumPy's allocations included).

The cases: each compute kind, batches, a Jacobian and a Hessian (their sweeps), a `for` loop's tape under
reverse mode, a `while` loop's, a branch; and the issue's: the Hessian of x[20000] (a 3.2 GB array) is refused
up front, the Hessian of x[4000] too (it peaked at 1.8 GB), and the gradient of a 100,000-step loop over 1,000
elements (a 0.8 GB tape, 1.9 GB measured) is refused at the default 512 MiB, while a smaller one runs
within its estimate.
"""

import tracemalloc

import numpy as np
import pytest

from adserve.engine import Engine
from adserve.engine.errors import LimitError
from adserve.engine.limits import Limits
from adserve.server.tensors import dumps, encode_tree

MiB = 1 << 20
WIDE = Limits(max_request_bytes=1 << 40, max_while_iterations=4000)


def _vec(n):
    return [{"name": "x", "shape": [n]}]


LOOP = "def f(x):\n    y = x\n    for i in range({n}):\n        y = sin(y) * 0.5 + x\n    return sum(y)\n"
WHILE = ("def f(x):\n    y = x\n    s = 0.0\n    while s < {n}:\n        y = cos(y) * 0.9 + x\n        s = s + 1.0\n"
         "    return sum(y * y)\n")
BRANCH = "def f(x, c):\n    if c > 0:\n        y = exp(x) * x\n    else:\n        y = sin(x)\n    return sum(y * y)\n"
CASES = {
    "value": (_vec(100_000), "sum(exp(sin(x)) * x + x ** 2)", ["value"], None),
    "gradient": (_vec(100_000), "sum(exp(sin(x)) * x + x ** 2)", ["value", "gradient"], None),
    "hvp": (_vec(50_000), "sum(exp(sin(x)) * x + x ** 2)", ["hvp"], "tangent"),
    "jvp and vjp": (_vec(50_000), "exp(sin(x)) * x", ["jvp", "vjp"], "both"),
    "batch gradient": (_vec(1000), "sum(tanh(x) * x) + logsumexp(x)", ["gradient"], None, 300),
    "jacobian": (_vec(300), "sin(x) * sum(x)", ["jacobian"], None),
    "batch jacobian": (_vec(60), "exp(x) * x[0] + x ** 2", ["jacobian"], None, 20),
    "hessian": (_vec(1200), "sum(sin(x) * x) + sum(x) ** 2", ["hessian"], None),
    "matmul hessian": ([{"name": "a", "shape": [30, 30]}], "sum(matmul(a, a) ** 2)", ["hessian"], None),
    "for loop tape": (_vec(1000), {"program": LOOP.format(n=5000)}, ["gradient"], None),
    "while loop tape": (_vec(500), {"program": WHILE.format(n=3000)}, ["gradient", "hvp"], "tangent"),
    "branch batch": ([{"name": "x", "shape": [500]}, {"name": "c", "shape": []}], {"program": BRANCH},
                     ["gradient"], None, 64),
}


def _definition(inputs, body):
    return {"inputs": inputs, **(body if isinstance(body, dict) else {"expr": body})}


def _request(fn, compute, extra, B=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if B is None else (B,)
    inputs = {n: rng.standard_normal(lead + s) * 0.5 for n, s in fn.input_shapes.items()}
    if "c" in inputs and B is not None:
        inputs["c"] = np.where(np.arange(B) % 2, 1.0, -1.0)
    kw = {}
    if extra in ("tangent", "both"):
        kw["tangent"] = {n: rng.standard_normal(lead + s) for n, s in fn.input_shapes.items()}
    if extra == "both":
        kw["cotangent"] = rng.standard_normal(lead + fn.output_shape)
    return inputs, kw


def measured(engine, fn, compute, extra, B=None):
    """(estimated, measured) peak bytes of one request, its JSON answer included."""
    inputs, kw = _request(fn, compute, extra, B)
    meta = {}
    # the plans are built first: the estimate is of the evaluation; building a plan (a transform of the graph,
    # checkpointed loops' nested graphs the largest) is bounded by the function's size limits, not by its data
    engine.evaluate(fn, inputs, compute, batch=B is not None, **kw)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = engine.evaluate(fn, inputs, compute, batch=B is not None, meta=meta, **kw)
        body = dumps(encode_tree(out))
        peak = tracemalloc.get_traced_memory()[1] - base
        assert len(body) > 0
    finally:
        tracemalloc.stop()
    return meta["estimated_bytes"], peak


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_estimate_bounds_the_measured_peak(name):
    inputs, body, compute, extra, *batch = CASES[name]
    engine = Engine(limits=WIDE)
    fn = engine.compile_definition(_definition(inputs, body))
    estimated, peak = measured(engine, fn, compute, extra, batch[0] if batch else None)
    assert peak <= estimated, f"{name}: measured {peak / MiB:.1f} MiB, estimated {estimated / MiB:.1f} MiB"
    # and not wildly above it: the limit must not refuse what comfortably fits
    assert estimated <= 8 * peak + 4 * MiB, f"{name}: estimated {estimated / MiB:.1f}, measured {peak / MiB:.1f} MiB"


def _refused(engine, fn, inputs, compute, **kw):
    with pytest.raises(LimitError) as raised:
        engine.evaluate(fn, inputs, compute, **kw)
    assert raised.value.code == "request_too_large"
    return str(raised.value)


def test_the_issues_hessians_are_refused_up_front():
    engine = Engine()
    for n in (4000, 20000):
        fn = engine.compile_definition({"inputs": _vec(n), "expr": "sum(sin(x) * x) + sum(x ** 2)"})
        tracemalloc.start()
        try:
            message = _refused(engine, fn, {"x": np.ones(n)}, ["hessian"])
            assert tracemalloc.get_traced_memory()[1] < 16 * MiB  # refused before any sweep was allocated
        finally:
            tracemalloc.stop()
        assert "ADSERVE_MAX_REQUEST_BYTES" in message and "512 MiB" in message
    # its Hessian-vector product is a few arrays of 4000: admitted
    assert engine.evaluate(fn, {"x": np.ones(20000)}, ["hvp"], tangent={"x": np.ones(20000)})["hvp"]["x"].shape == (20000,)


def test_the_issues_long_loop_tape_is_checkpointed_within_the_limit_and_a_shorter_one_fits_its_estimate():
    """The issue's gradient of a 100,000-step loop over 1,000 elements (its whole tape: 800 MB) is admitted now
    that reverse mode checkpoints it (every 317th iteration's carries): its estimate is within the limit."""
    engine = Engine()
    fn = engine.compile_definition({"inputs": _vec(1000), "program": LOOP.format(n=100_000)})
    estimate_only = Engine(limits=WIDE.updated(max_request_bytes=1))  # refused once estimated: nothing runs
    meta = {}
    with pytest.raises(LimitError):
        estimate_only.evaluate(fn, {"x": np.ones(1000)}, ["gradient"], meta=meta)
    assert 0 < meta["estimated_bytes"] < 64 * MiB  # the whole tape alone would be 763 MiB
    # 2,000 steps of 1,000 numbers: checkpointed too (every 45th iteration)
    short = Engine(limits=WIDE).compile_definition({"inputs": _vec(1000), "program": LOOP.format(n=2_000)})
    estimated, peak = measured(Engine(limits=WIDE), short, ["gradient"], None)
    assert peak <= estimated < 512 * MiB


def test_a_batch_counts_per_point():
    fn = Engine().compile_definition({"inputs": _vec(10_000), "expr": "sum(exp(x) * sin(x))"})
    small = Engine(limits=Limits(max_request_bytes=64 * MiB))
    meta = {}
    small.evaluate(fn, {"x": np.zeros((10, 10_000))}, ["gradient"], batch=True, meta=meta)
    assert meta["estimated_bytes"] < 64 * MiB
    message = _refused(small, fn, {"x": np.zeros((1000, 10_000))}, ["gradient"], batch=True)
    assert "64 MiB" in message


@pytest.mark.parametrize("name", ["batch gradient", "batch jacobian", "branch batch"])
def test_the_estimate_kept_per_request_form_is_the_estimate_at_every_batch_size(name):
    """The engine keeps a request form's estimate as a line in B (from two batch sizes): it is exact."""
    from adserve.engine.evaluation import _arg_elements
    from adserve.engine.memory import request_bytes
    inputs, body, compute, extra, B = CASES[name]
    engine = Engine(limits=WIDE)
    fn = engine.compile_definition(_definition(inputs, body))
    for b in (1, 2, 7, B, 5000):
        args, kw = _request(fn, compute, extra, b if b > 1 else None)
        meta = {}
        engine.limits = WIDE.updated(max_request_bytes=1)  # refused after the estimate: nothing runs
        with pytest.raises(LimitError):
            engine.evaluate(fn, args, compute, batch=b > 1, meta=meta, **kw)
        req = _request_form(fn, compute)
        want = request_bytes(fn, req.plan if req.main else None, req.kinds, req.wrt, b,
                             _arg_elements(fn, req.kinds, req.wrt, req.wrt))
        assert meta["estimated_bytes"] == want, b


def _request_form(fn, compute):
    from adserve.engine.evaluation import _request
    return _request(fn, compute, None)
