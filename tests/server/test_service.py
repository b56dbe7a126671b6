"""The service layer on a stand-in engine: registry, result cache, validation, error kinds."""

import contextlib

import numpy as np
import pytest

from adserve.engine import COMPUTE_KINDS, Engine
from adserve.engine.errors import DefinitionError, EvaluationError, LimitError
from adserve.server.cache import LRU, result_nbytes
from adserve.server.service import Service, ServiceError

class FakeFunction:
    def __init__(self, expr):
        self.id = f"id-{expr}"
        self.expr = expr

    def info(self):
        return {"id": self.id, "inputs": [{"name": "x", "shape": []}], "output_shape": [], "n_nodes": 1}

    def export(self):
        return {"inputs": [{"name": "x", "shape": []}], "graph": {"expr": self.expr}}


class FakeEngine:
    """Doubles `x`; refuses the expressions "bad" and "huge" the way the engine would."""

    COMPUTE_KINDS = COMPUTE_KINDS
    RESULTS_ARE_OWNED = False

    def __init__(self):
        self.compiles = self.evaluations = 0

    def compile_definition(self, defn, max_depth=None):
        self.compiles += 1
        if defn.get("expr") == "bad":
            raise DefinitionError("unknown function 'frob'", location={"line": 1, "column": 1}, code="unknown_op")
        if defn.get("expr") == "huge":
            raise LimitError("too many nodes", code="too_many_nodes")
        return FakeFunction(defn.get("expr"))

    def evaluate(self, fn, inputs, compute, tangent, cotangent, batch, meta=None, deadline=None):
        self.evaluations += 1
        if meta is not None:
            meta["backend"] = "interpreter"
        if "x" not in inputs:
            raise EvaluationError("inputs: missing input 'x'", code="missing_input")
        out = {k: inputs["x"] * 2 for k in compute}
        if "trace" in out:
            out["trace"] = [{"name": "x", "expr": "x", "shape": [], "value": inputs["x"]}]
        return out

    def graph_schema(self):
        return {"type": "object"}

    def busy(self):
        return contextlib.nullcontext()

    def stats(self):
        return Engine().stats()

    def close(self):
        pass


DEF = {"inputs": [{"name": "x", "shape": []}], "expr": "2*x"}


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def service(engine):
    return Service(engine=engine, result_cache_bytes=1 << 20)


def error_of(call, *args) -> ServiceError:
    with pytest.raises(ServiceError) as e:
        call(*args)
    return e.value


def test_register_is_idempotent_and_compiles_once(service, engine):
    info, created = service.register(DEF)
    assert created and info["id"] == "id-2*x"
    again, created = service.register({"expr": "2*x", "inputs": [{"shape": [], "name": "x"}]})
    assert not created and again == info
    assert engine.compiles == 1
    assert service.info(info["id"]) == info
    assert service.graph(info["id"])["graph"] == {"expr": "2*x"}


def test_same_id_from_a_different_definition_is_not_new(service, engine):
    service.register(DEF)
    _, created = service.register({**DEF, "comment": "same function"})
    assert not created and engine.compiles == 2


def test_results_are_cached_by_content(service, engine):
    info, _ = service.register(DEF)
    first = service.evaluate(info["id"], {"inputs": {"x": 3.0}})
    assert first["cached"] is False and float(first["value"]) == 6.0
    second = service.evaluate(DEF, {"inputs": {"x": 3}, "compute": ["value"]})
    assert second["cached"] is True and float(second["value"]) == 6.0
    assert engine.evaluations == 1
    assert service.evaluate(DEF, {"inputs": {"x": 4.0}})["cached"] is False
    assert service.evaluate(DEF, {"inputs": {"x": 3.0}, "batch": False, "compute": ["value", "value"]})["cached"]
    both = service.evaluate(DEF, {"inputs": {"x": 3.0}, "compute": ["gradient", "value"]})
    assert not both["cached"]
    assert service.evaluate(DEF, {"inputs": {"x": 3.0}, "compute": ["value", "gradient"]})["cached"]
    stats = service.stats()
    assert stats["functions"] == 1 and stats["cache_hits"] == 3 and stats["cache_entries"] == 3


def test_cached_results_cannot_be_changed_by_a_caller(service):
    first = service.evaluate(DEF, {"inputs": {"x": [1.0, 2.0]}})
    with pytest.raises(ValueError):
        first["value"][0] = 99.0
    assert service.evaluate(DEF, {"inputs": {"x": [1.0, 2.0]}})["value"].tolist() == [2.0, 4.0]


def test_owned_engine_results_are_frozen_in_place_and_inputs_left_alone():
    service = Service(engine=Engine(), result_cache_bytes=1 << 20)
    x = np.array([1.0, 2.0])
    body = {"inputs": {"x": x}, "compute": ["value", "gradient", "trace"]}
    first = service.evaluate({"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(x)"}, body)
    arrays = [first["value"], first["gradient"]["x"], *(row["value"] for row in first["trace"])]
    assert not any(a.flags.writeable for a in arrays)
    assert x.flags.writeable and not any(np.shares_memory(a, x) for a in arrays)
    x[0] = 5.0  # the caller's input changes; the cached answer does not
    again = service.evaluate({"inputs": [{"name": "x", "shape": [2]}], "expr": "sum(x)"},
                             {"inputs": {"x": [1.0, 2.0]}, "compute": ["value", "gradient", "trace"]})
    assert again["cached"] and float(again["value"]) == 3.0 and again["trace"][0]["value"].tolist() == [1.0, 2.0]


def test_results_with_plain_data_leaves_are_cached_intact(service):
    first = service.evaluate(DEF, {"inputs": {"x": 1.5}, "compute": ["trace"]})
    again = service.evaluate(DEF, {"inputs": {"x": 1.5}, "compute": ["trace"]})
    assert again["cached"] and again["trace"] == first["trace"]
    row = again["trace"][0]
    assert (row["name"], row["shape"], float(row["value"])) == ("x", (), 1.5)  # lists come back as tuples
    assert not row["value"].flags.writeable


def test_a_bad_request_does_not_change_what_a_good_one_gets(service):
    good = {"inputs": {"x": 1.5}, "compute": ["value"]}
    before = service.evaluate(DEF, good)
    for bad in ({"inputs": {"y": 1.0}}, {"inputs": {"x": [1, [2]]}}, {"inputs": {"x": 1.5}, "compute": ["nope"]}):
        with pytest.raises(ServiceError):
            service.evaluate(DEF, bad)
    after = service.evaluate(DEF, good)
    assert float(after["value"]) == float(before["value"]) == 3.0


def test_the_cache_can_be_off(engine):
    service = Service(engine=engine, result_cache_bytes=0)
    service.evaluate(DEF, {"inputs": {"x": 1.0}})
    assert service.evaluate(DEF, {"inputs": {"x": 1.0}})["cached"] is False
    assert engine.evaluations == 2


@pytest.mark.parametrize("definition, kind, code", [
    ({"inputs": [], "expr": "bad"}, "unprocessable", "unknown_op"),
    ({"inputs": [], "expr": "huge"}, "too_large", "too_many_nodes"),
    ([1, 2], "unprocessable", "invalid_definition"),
])
def test_engine_and_definition_errors_have_a_kind(service, definition, kind, code):
    err = error_of(service.register, definition)
    assert (err.kind, err.code) == (kind, code) and err.message


def test_engine_location_is_kept(service):
    err = error_of(service.evaluate, {"inputs": [], "expr": "bad"}, {"inputs": {}})
    assert err.location == {"line": 1, "column": 1}
    assert err.body() == {"error": {"code": "unknown_op", "message": "unknown function 'frob'",
                                    "location": {"line": 1, "column": 1}}}


def test_unknown_id_is_not_found(service):
    for call, args in ((service.info, ("nope",)), (service.graph, ("nope",)),
                       (service.evaluate, ("nope", {"inputs": {}}))):
        err = error_of(call, *args)
        assert err.kind == "not_found" and "nope" in err.message


@pytest.mark.parametrize("body, code, words", [
    ([], "invalid_evaluation", "JSON object"),
    ({"inputs": {"x": 1}, "input": {}}, "unknown_field", "'input'"),
    ({"inputs": [1.0]}, "invalid_field", "inputs must be an object"),
    ({"inputs": {"x": 1}, "tangent": [1.0]}, "invalid_field", "tangent must be an object"),
    ({"inputs": {"x": 1}, "compute": "value"}, "invalid_compute", "list"),
    ({"inputs": {"x": 1}, "compute": []}, "invalid_compute", "non-empty"),
    ({"inputs": {"x": 1}, "compute": ["value", "grad"]}, "invalid_compute", "compute[1] is 'grad'"),
    ({"inputs": {"x": 1}, "compute": [["value"]]}, "invalid_compute", "compute[0]"),
    ({"inputs": {"x": 1}, "batch": 1}, "invalid_field", "batch must be true or false"),
    ({"inputs": {"x": [[1, 2], [3]]}}, "invalid_tensor", "inputs.x[1]"),
    ({"inputs": {"x": 1}, "tangent": {"x": [True]}}, "invalid_tensor", "tangent.x[0]"),
    ({"inputs": {"x": 1}, "cotangent": "inf"}, "invalid_tensor", "cotangent"),
])
def test_evaluation_fields_are_checked_by_name(service, body, code, words):
    err = error_of(service.evaluate, DEF, body)
    assert err.kind == "unprocessable" and err.code == code and words in err.message


def test_missing_function_is_named(service):
    err = error_of(service.evaluate, None, {"inputs": {}})
    assert err.code == "missing_field" and '"function"' in err.message


def test_lru_bounds_total_size_and_evicts_oldest():
    lru = LRU(10, size_of=len)
    lru.put("a", "xxxx")
    lru.put("b", "xxxx")
    assert lru.get("a") == "xxxx"  # now "b" is the oldest
    lru.put("c", "xxxx")
    assert lru.get("b") is None and lru.get("a") and lru.get("c") and lru.size == 8
    lru.put("big", "x" * 11)
    assert lru.get("big") is None and len(lru) == 2
    lru.put("a", "xx")
    assert lru.size == 6 and (lru.hits, lru.misses) == (3, 2)


def test_result_nbytes_counts_nested_arrays():
    small = result_nbytes({"value": np.zeros(1)})
    assert result_nbytes({"value": np.zeros(1001)}) - small == 8000
    assert result_nbytes({"hessian": {"a": {"b": np.zeros(10)}}}) > 80
