"""Integer data: definition validation (dtype, unknown keys), int64 inputs, gathers and scatters.

Derivatives are checked against JAX (x64) at 1e-10; every refusal is a 422 naming where it went wrong.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from adserve.engine import Engine
from adserve.server.service import Service, ServiceError
from adserve.server.status import http

jax.config.update("jax_enable_x64", True)
TOL = dict(rtol=1e-10, atol=1e-10)


def refused(service, definition, body=None):
    """The ServiceError registering `definition` (and evaluating `body` on it, if given) raises."""
    with pytest.raises(ServiceError) as e:
        fid = service.register(definition)[0]["id"]
        if body is not None:
            service.evaluate(fid, body)
    return e.value


@pytest.fixture(scope="module")
def service():
    s = Service(Engine())
    yield s
    s.close()


# -- (1) definition validation ------------------------------------------------------------------------
@pytest.mark.parametrize("definition, code, words", [
    ({"inputs": [{"name": "x", "shape": []}], "expr": "x", "colour": "red"}, "unknown_key", "'colour'"),
    ({"inputs": [{"name": "x", "shape": [], "kind": 1}], "expr": "x"}, "unknown_key", "inputs[0]"),
    ({"inputs": [{"name": "x", "shape": [], "dtype": "float32"}], "expr": "x"}, "bad_dtype", "inputs[0].dtype"),
    ({"inputs": [{"name": "x", "shape": [], "dtype": 64}], "expr": "x"}, "bad_dtype", "int64"),
])
def test_bad_definitions_are_422_naming_the_key_and_where(service, definition, code, words):
    e = refused(service, definition)
    assert http(e) == 422 and e.code == code and words in e.message


def test_name_entry_and_dtypes_are_accepted_and_kept(service):
    d = {"name": "gather-demo", "inputs": [{"name": "x", "shape": [3]}, {"name": "i", "shape": [], "dtype": "int64"}],
         "expr": "sum(x) * i"}
    info, _ = service.register(d)
    assert info["inputs"][1] == {"name": "i", "shape": [], "dtype": "int64"}
    assert info["inputs"][0] == {"name": "x", "shape": [3]}
    again, _ = service.register(service.graph(info["id"]))
    assert again["id"] == info["id"]
    as_float = {**d, "inputs": [d["inputs"][0], {"name": "i", "shape": []}]}
    assert service.register(as_float)[0]["id"] != info["id"]  # the dtype is part of the function
