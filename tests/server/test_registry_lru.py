"""The function registry is an LRU bounded by count and estimated bytes: 10,000 distinct registrations
keep memory bounded, and an evicted function still answers (compiled again from its kept definition)."""

import gc
import tracemalloc

import numpy as np
import pytest

from adserve.server.service import Service, ServiceError


def defn(i):
    return {"inputs": [{"name": "x", "shape": []}], "expr": f"sin(x) * {i}.5 + x"}


def test_ten_thousand_registrations_stay_bounded_and_evicted_ids_still_answer():
    s = Service(result_cache_bytes=1 << 20, max_functions=256, definition_bytes=4 << 20)
    ids = [s.register(defn(i))[0]["id"] for i in range(1000)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ids += [s.register(defn(i))[0]["id"] for i in range(1000, 10_000)]
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    stats = s.stats()
    assert len(set(ids)) == 10_000
    assert stats["functions"] == 256 and stats["function_evictions"] == 10_000 - 256
    # 9,000 more registrations hold no more compiled functions, only their definitions (~65 bytes each)
    assert grown < 8 << 20, grown
    assert s._definitions.size <= 4 << 20
    # the oldest id was evicted long ago: compiled again from its definition, same answer
    r = s.evaluate(ids[0], {"inputs": {"x": 2.0}, "compute": ["value", "gradient"]})
    assert np.isclose(r["value"], np.sin(2.0) * 0.5 + 2.0) and np.isclose(r["gradient"]["x"], np.cos(2.0) * 0.5 + 1)
    assert s.register(defn(1))[1] is False  # a registration seen before is still not new


def test_bounded_by_estimated_bytes_and_forgotten_definitions_are_404():
    s = Service(result_cache_bytes=1 << 20, max_functions=10_000, max_function_bytes=1 << 20, definition_bytes=2000)
    ids = [s.register(defn(i))[0]["id"] for i in range(200)]
    assert s.stats()["functions"] < 200
    with pytest.raises(ServiceError) as e:
        s.info(ids[0])
    assert e.value.kind == "not_found"
    assert s.info(ids[-1])["id"] == ids[-1]
