"""The Open Inference Protocol mapping alone (no server): what a request becomes for the service, for the
cases the end-to-end tests cannot reach yet (integer inputs) or only slowly."""

import numpy as np
import pytest

from adserve.server.errors import ServiceError
from adserve.server.oip_codec import Model, from_bytes, from_values, outputs

INFO = {"id": "abc", "output_shape": [], "n_nodes": 3,
        "inputs": [{"name": "x", "shape": [2]}, {"name": "idx", "shape": [], "dtype": "int64"}]}


class Info:
    def info(self, name):
        return INFO


def test_integer_inputs_are_int64_and_never_differentiated():
    model = Model.of(Info(), "f")
    meta = model.metadata()
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("x", "FP64"), ("idx", "INT64"), ("tangent.x", "FP64"), ("cotangent", "FP64")]
    names = [t["name"] for t in meta["outputs"]]
    assert "gradient.x" in names and not any("idx" in n for n in names)
    body, chosen = model.evaluation([from_values("x", "FP64", [2], [1.0, 2.0]),
                                     from_bytes("idx", "INT64", [1], np.array([1], "<i8").tobytes()),
                                     from_values("tangent.x", "FP64", [2], [1.0, 0.0])],
                                    ["gradient.x", "hvp.x"], {})
    assert body["inputs"]["idx"] == 1 and isinstance(body["inputs"]["idx"], int)  # as JSON integers
    assert body["wrt"] == ["x"] and body["compute"] == ["gradient", "hvp"]
    with pytest.raises(ServiceError, match="no output 'gradient.idx'"):
        model.evaluation([], ["gradient.idx"], {})
    with pytest.raises(ServiceError, match="takes integers"):
        from_values("idx", "INT64", [1], [1.5])


def test_a_tangent_not_sent_is_zero_and_outputs_follow_their_paths():
    model = Model("f", {**INFO, "inputs": [{"name": "a", "shape": []}, {"name": "b", "shape": [2]}]})
    body, chosen = model.evaluation([from_values("a", "FP64", [1], [1.0]), from_values("b", "FP64", [2], [2, 3]),
                                     from_values("tangent.a", "FP64", [], [1.0])], ["hvp.b", "hessian.a.b"], {})
    assert np.array_equal(body["tangent"]["b"], [0.0, 0.0]) and body["tangent"]["a"] == 1.0
    assert body["inputs"]["a"].shape == () and "wrt" not in body
    result = {"hvp": {"b": np.ones(2)}, "hessian": {"a": {"b": np.full(2, 7.0)}}}
    assert [(n, a.tolist()) for n, a in outputs(result, chosen)] == [("hvp.b", [1, 1]), ("hessian.a.b", [7, 7])]


@pytest.mark.parametrize("make, words", [
    (lambda: from_bytes("x", "FP64", [2], b"\0" * 8), "needs 16"),
    (lambda: from_values("x", "FP32", [2], [1, 2]), "not served"),
    (lambda: from_values("x", "FP64", [2, -1], []), "non-negative"),
    (lambda: from_values("x", "FP64", [2], [[1], [2, 3]]), "input 'x'"),
    (lambda: from_values("x", "INT64", [1], [2 ** 70]), "input 'x'"),
])
def test_bad_tensors_are_service_errors(make, words):
    with pytest.raises(ServiceError, match=words):
        make()


def test_versions():
    assert Model.of(Info(), "f", "1").id == "abc"
    with pytest.raises(ServiceError) as raised:
        Model.of(Info(), "f", "2")
    assert raised.value.kind == "not_found"
