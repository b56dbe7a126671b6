"""Tensors held by the server: uploaded as JSON or raw bytes, named by a content address (the ref), and
standing for inputs, tangents, cotangents and x0; an unknown or evicted ref is 404 `unknown_tensor`."""

import asyncio
import base64
import hashlib

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from adserve.server import evaluation
from adserve.server.app import build
from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from adserve.server.service import Service
from adserve.server.settings import Settings
from server_process import free_port

SQUARES = {"inputs": [{"name": "x", "shape": [3]}], "expr": "x * x"}
OCTETS = {"Content-Type": "application/octet-stream"}


def app(max_body_bytes=1 << 20, tensor_cache_bytes=1 << 20):
    service = Service(result_cache_bytes=1 << 20, tensor_cache_bytes=tensor_cache_bytes)
    return TestClient(build(Settings(grpc_port=0, max_body_bytes=max_body_bytes), service=service).http), service


def documented_ref(dtype: str, shape, data: bytes) -> str:
    """The ref as docs/rest.md tells clients to compute it."""
    return hashlib.sha256(f"{dtype}\n{','.join(map(str, shape))}\n".encode() + data).hexdigest()


def test_json_and_raw_uploads_of_the_same_bytes_give_the_same_documented_ref():
    c, _ = app()
    a = np.arange(12.0).reshape(3, 4)
    raw = c.post("/v1/tensors", params={"shape": "3,4", "dtype": "float64"}, content=a.tobytes(), headers=OCTETS)
    assert raw.status_code == 201
    held = raw.json()
    assert held == {"ref": documented_ref("float64", [3, 4], a.tobytes()), "shape": [3, 4], "dtype": "float64",
                    "nbytes": 96}
    assert c.post("/v1/tensors", json=a.tolist()).json() == held
    b64 = {"dtype": "float64", "shape": [3, 4], "b64": base64.b64encode(a.tobytes()).decode()}
    assert c.post("/v1/tensors", json=b64).json() == held
    # same bytes, other shape: another ref; a scalar's shape is empty
    assert c.post("/v1/tensors", params={"shape": "12"}, content=a.tobytes(), headers=OCTETS).json()["ref"] != held["ref"]
    scalar = c.post("/v1/tensors", json=2.5).json()
    assert scalar == {"ref": documented_ref("float64", [], np.float64(2.5).tobytes()), "shape": [], "dtype": "float64",
                      "nbytes": 8}
    ints = c.post("/v1/tensors?shape=2&dtype=int64", content=np.array([1, 2]).tobytes(), headers=OCTETS).json()
    assert ints["dtype"] == "int64" and ints["ref"] == documented_ref("int64", [2], np.array([1, 2]).tobytes())


@pytest.mark.parametrize("query, body, code", [
    ("shape=3", b"\0" * 16, "invalid_tensor"),        # 16 bytes for 24
    ("shape=3&dtype=float32", b"\0" * 12, "invalid_tensor"),
    ("shape=a,b", b"", "invalid_parameter"),
])
def test_bad_raw_uploads_are_422(query, body, code):
    c, _ = app()
    r = c.post(f"/v1/tensors?{query}", content=body, headers=OCTETS)
    assert r.status_code == 422 and r.json()["error"]["code"] == code


def test_bad_json_uploads_and_bodies_over_the_limit():
    c, _ = app(max_body_bytes=1000)
    assert c.post("/v1/tensors", json=[[1, 2], [3]]).json()["error"]["code"] == "invalid_tensor"
    assert c.post("/v1/tensors", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    r = c.post("/v1/tensors?shape=200", content=b"\0" * 1600, headers=OCTETS)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_refs_stand_for_inputs_tangents_cotangents_and_x0():
    c, _ = app()
    ref = lambda v: {"ref": c.post("/v1/tensors", json=v).json()["ref"]}  # noqa: E731
    fid = c.post("/v1/functions", json=SQUARES).json()["id"]
    x, t, w = [1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, 1.0, 2.0]
    body = {"inputs": {"x": ref(x)}, "tangent": {"x": ref(t)}, "cotangent": ref(w), "compute": ["value", "jvp", "vjp"]}
    by_ref = c.post(f"/v1/functions/{fid}/evaluate", json=body)
    assert by_ref.status_code == 200
    plain = c.post(f"/v1/functions/{fid}/evaluate", json={**body, "inputs": {"x": x}, "tangent": {"x": t},
                                                           "cotangent": w}).json()
    got = by_ref.json()
    assert got["value"]["b64"]  # a request with refs is answered in base64, as for base64 tensors
    decode = lambda b: np.frombuffer(base64.b64decode(b["b64"]), "<f8").reshape(b["shape"])  # noqa: E731
    for kind in ("value", "jvp"):
        assert np.array_equal(decode(got[kind]), plain[kind])
    assert np.array_equal(decode(got["vjp"]["x"]), plain["vjp"]["x"]) and plain["vjp"]["x"] == [2.0, 4.0, 12.0]
    scalar = {"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(x * x)"}
    lines = c.post(f"/v1/functions/{c.post('/v1/functions', json=scalar).json()['id']}/minimize",
                   json={"x0": {"x": ref(x)}}).text.splitlines()
    assert '"done":true' in lines[-1]
    assert c.post("/v1/evaluate", json={"function": SQUARES, "inputs": {"x": ref(x)}}).status_code == 200


def test_an_unknown_ref_is_404_and_a_malformed_one_422():
    c, _ = app()
    fid = c.post("/v1/functions", json=SQUARES).json()["id"]
    r = c.post(f"/v1/functions/{fid}/evaluate", json={"inputs": {"x": {"ref": "0" * 64}}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_tensor"
    assert "inputs.x" in r.json()["error"]["message"] and "POST /v1/tensors" in r.json()["error"]["message"]
    for bad in ({"ref": "xyz"}, {"ref": "0" * 64, "shape": [3]}, {"ref": 7}):
        r = c.post(f"/v1/functions/{fid}/evaluate", json={"inputs": {"x": bad}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_tensor", bad


def test_held_tensors_are_an_lru_bounded_by_bytes_and_not_copied():
    c, service = app(tensor_cache_bytes=3 * (800 + 112))
    refs = [c.post("/v1/tensors?shape=100", content=np.full(100, float(i)).tobytes(), headers=OCTETS).json()["ref"]
            for i in range(4)]
    fid = c.post("/v1/functions", json={"inputs": [{"name": "x", "shape": [100]}], "expr": "sum(x)"}).json()["id"]
    first = c.post(f"/v1/functions/{fid}/evaluate", json={"inputs": {"x": {"ref": refs[0]}}})
    assert first.status_code == 404 and first.json()["error"]["code"] == "unknown_tensor"  # evicted: send it again
    value = c.post(f"/v1/functions/{fid}/evaluate", json={"inputs": {"x": {"ref": refs[3]}}}).json()["value"]
    assert np.frombuffer(base64.b64decode(value["b64"]), "<f8")[0] == 300.0
    held = service.held_tensor(refs[3])
    assert not held.flags.writeable and not held.flags.owndata  # a read-only view of the uploaded bytes
    assert service.stats()["held_tensor_bytes"] <= 3 * (800 + 112)


def test_held_and_base64_inputs_reach_the_engine_without_a_copy(monkeypatch):
    """What the engine gets is the held tensor's array itself and a view of a base64 tensor's decoded bytes (its
    compiled kernels take both as they are: tests/engine/test_tiered.py)."""
    c, service = app()
    seen = []
    evaluate = service.engine.evaluate

    def recording(fn, inputs, *args, **kwargs):
        seen.append(inputs)
        return evaluate(fn, inputs, *args, **kwargs)

    monkeypatch.setattr(service.engine, "evaluate", recording)
    A, x = np.arange(9.0).reshape(3, 3), np.array([1.0, 2.0, 3.0])
    ref = c.post("/v1/tensors?shape=3,3", content=A.tobytes(), headers=OCTETS).json()["ref"]
    fn = {"inputs": [{"name": "x", "shape": [3]}, {"name": "A", "shape": [3, 3]}], "expr": "sum(x * (A @ x))"}
    x64 = {"dtype": "float64", "shape": [3], "b64": base64.b64encode(x.tobytes()).decode()}
    r = c.post("/v1/evaluate", json={"function": fn, "inputs": {"x": x64, "A": {"ref": ref}}})
    assert r.status_code == 200 and np.frombuffer(base64.b64decode(r.json()["value"]["b64"]), "<f8")[0] == x @ A @ x
    (inputs,) = seen
    assert inputs["A"] is service.held_tensor(ref)
    assert not inputs["x"].flags.owndata and isinstance(inputs["x"].base.base, bytes)


def test_a_held_tensor_enters_the_result_cache_key_by_its_ref_not_its_bytes():
    """A ref is a content address: the cache key takes it instead of hashing the held bytes again."""
    kinds = ("value", "jvp")
    arrays = iter([np.zeros(3), np.ones(3)])  # the key never reads what the ref stands for

    def key(body, refs=lambda ref, where: np.zeros(3)):
        return evaluation.parse(body, kinds, refs=refs).cache_key("f")

    by_ref = [key({"inputs": {"x": {"ref": "a" * 64}}}, lambda ref, where: next(arrays)) for _ in range(2)]
    assert by_ref[0] == by_ref[1]
    assert key({"inputs": {"x": {"ref": "b" * 64}}}) != by_ref[0]
    assert key({"inputs": {"x": [0.0, 0.0, 0.0]}}) != by_ref[0]
    tangent = {"inputs": {"x": [0.0, 0.0, 0.0]}, "compute": ["jvp"]}
    held_a = key({**tangent, "tangent": {"x": {"ref": "a" * 64}}})
    assert held_a != key({**tangent, "tangent": {"x": {"ref": "b" * 64}}})
    assert held_a != key({**tangent, "cotangent": {"ref": "a" * 64}})

    c, _ = app()  # through the server: the same ref again is a cache hit, other content a miss
    fid = c.post("/v1/functions", json=SQUARES).json()["id"]
    ref = lambda v: {"ref": c.post("/v1/tensors", json=v).json()["ref"]}  # noqa: E731
    answer = lambda x: c.post(f"/v1/functions/{fid}/evaluate", json={"inputs": {"x": x}}).json()  # noqa: E731
    first, again, other = answer(ref([1.0, 2.0, 3.0])), answer(ref([1.0, 2.0, 3.0])), answer(ref([1.0, 2.0, 4.0]))
    assert not first["cached"] and again["cached"] and again["value"] == first["value"]
    assert not other["cached"] and other["value"] != first["value"]


def test_grpc_put_tensor_and_refs_in_tensors():
    async def scenario():
        port = free_port()
        server = build(Settings(grpc_port=port), service=Service(result_cache_bytes=1 << 20))
        await server.start()
        await server.serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ad_pb2_grpc.DifferentiatorStub(channel)
                held = await stub.PutTensor(pb.Tensor(shape=[3], data=[1.0, 2.0, 3.0]))
                definition = pb.Definition(inputs=[pb.InputSpec(name="x", shape=[3])], expr="x * x")
                r = await stub.Evaluate(pb.EvaluateRequest(function=definition, inputs={"x": pb.Tensor(ref=held.ref)},
                                                           compute=["value", "vjp"], cotangent=pb.Tensor(ref=held.ref)))
                try:
                    await stub.Evaluate(pb.EvaluateRequest(function=definition, inputs={"x": pb.Tensor(ref="1" * 64)}))
                except grpc.aio.AioRpcError as e:
                    unknown = (e.code(), dict(e.trailing_metadata())["adserve-error-code"])
                return held, r, unknown
        finally:
            await server.stop(0)

    held, r, unknown = asyncio.run(scenario())
    data = np.array([1.0, 2.0, 3.0])
    assert (held.ref, list(held.shape), held.dtype, held.nbytes) == (documented_ref("float64", [3], data.tobytes()),
                                                                    [3], "float64", 24)
    assert list(r.value.data) == [1.0, 4.0, 9.0] and list(r.vjp["x"].data) == [2.0, 8.0, 18.0]
    assert unknown == (grpc.StatusCode.NOT_FOUND, "unknown_tensor")
