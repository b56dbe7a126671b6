"""A request's limit checks run once per request form, batch size and limits (evaluation._check_limits): a repeated
call checks nothing again (a few microseconds of a small function's call), and other limits check afresh."""

import dataclasses

import numpy as np
import pytest

from adserve.engine import Engine, evaluation
from adserve.engine.errors import LimitError
from adserve.engine.limits import DEFAULT_LIMITS

DEFN = {"inputs": [{"name": "x", "shape": [4]}], "expr": "sum(x * x)"}
X = {"x": np.arange(4.0)}


def test_a_repeated_call_checks_nothing_again(monkeypatch):
    engine = Engine()
    fn = engine.compile_definition(DEFN)
    engine.evaluate(fn, X, ["value", "gradient"])
    calls = []
    monkeypatch.setattr(evaluation, "check_request", lambda *a, **k: calls.append(a))
    meta = {}
    out = engine.evaluate(fn, X, ["value", "gradient"], meta=meta)
    assert not calls and meta["estimated_bytes"] > 0 and meta["steps"] > 0
    np.testing.assert_array_equal(out["gradient"]["x"], 2 * X["x"])
    engine.evaluate(fn, {"x": np.ones((3, 4))}, ["value", "gradient"], batch=True)  # another batch size
    assert calls


def test_other_limits_check_afresh():
    fn = Engine().compile_definition(DEFN)
    Engine().evaluate(fn, X, ["value"])
    tight = Engine(limits=dataclasses.replace(DEFAULT_LIMITS, max_request_bytes=16))
    with pytest.raises(LimitError):
        tight.evaluate(fn, X, ["value"])
