"""The Open Inference Protocol (v2) end to end: `tritonclient.http` and `tritonclient.grpc`, unchanged,
against the real server process (see conftest.py), every test once per client.

Health, server and model metadata, readiness; inference of values, gradients, JVP/VJP, HVP, Jacobians
and Hessians, batched and not, compared with JAX (float64); bad requests answered with the client's
exception and a readable message, never a 500; the REST error form and the JSON (non-binary) tensor path
at the wire.
"""

import gzip

import httpx
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
SCALAR = {"inputs": [{"name": "x", "shape": [3]}, {"name": "s", "shape": []}],
          "expr": "sum(sin(x) * s) + s**2 * x[0]"}
VECTOR = {"inputs": [{"name": "x", "shape": [3]}, {"name": "s", "shape": []}], "expr": "exp(x) * s"}


def scalar_f(x, s):
    return jnp.sum(jnp.sin(x) * s) + s ** 2 * x[0]


def vector_f(x, s):
    return jnp.exp(x) * s


X, S = np.array([0.3, -1.2, 2.0]), np.array(0.7)
XB, SB = np.array([[0.3, -1.2, 2.0], [1.0, 0.5, -0.25]]), np.array([0.7, -1.5])


@pytest.fixture(scope="module")
def ids(client):
    registered = {}
    for key, definition in (("scalar", SCALAR), ("vector", VECTOR)):
        r = client.post("/v1/functions", json=definition)
        assert r.status_code in (200, 201), r.text
        registered[key] = r.json()["id"]
    return registered


@pytest.fixture(scope="module", params=["http", "grpc"])
def triton(request, server):
    """(the tritonclient module, a client of it) for each protocol."""
    if request.param == "http":
        module, url = tritonclient_http, server.url.removeprefix("http://")
    else:
        module, url = tritonclient_grpc, server.grpc
    client = module.InferenceServerClient(url=url)
    yield module, client
    client.close()


def tensor(module, name, a, datatype="FP64"):
    a = np.asarray(a, dtype=np.int64 if datatype == "INT64" else np.float64)
    t = module.InferInput(name, list(a.shape), datatype)
    t.set_data_from_numpy(a)
    return t


def infer(triton, model, inputs: dict, outputs=None, **kwargs):
    module, client = triton
    sent = [tensor(module, n, a) for n, a in inputs.items()]
    asked = None if outputs is None else [module.InferRequestedOutput(n) for n in outputs]
    result = client.infer(model, sent, outputs=asked, **kwargs)
    return {n: result.as_numpy(n) for n in (outputs or ["value"])}


def test_health_and_server_metadata(triton):
    module, client = triton
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(**({} if module is tritonclient_http else {"as_json": True}))
    assert meta["name"] == "adserve" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(triton, ids):
    module, client = triton
    model = ids["scalar"]
    assert client.is_model_ready(model) and client.is_model_ready(model, model_version="1")
    assert not client.is_model_ready("f" * 64) and not client.is_model_ready(model, model_version="2")
    meta = client.get_model_metadata(model, **({} if module is tritonclient_http else {"as_json": True}))
    inputs = {t["name"]: (t["datatype"], [int(d) for d in t.get("shape", [])]) for t in meta["inputs"]}
    assert inputs == {"x": ("FP64", [3]), "s": ("FP64", []), "tangent.x": ("FP64", [3]),
                      "tangent.s": ("FP64", []), "cotangent": ("FP64", [])}
    outputs = {t["name"]: [int(d) for d in t.get("shape", [])] for t in meta["outputs"]}
    assert outputs["value"] == [] and outputs["gradient.x"] == [3] and outputs["hessian.x.s"] == [3]
    assert outputs["jacobian.x"] == [3] and meta["versions"] == ["1"]


def test_value_gradients_and_hessian(triton, ids):
    names = ["value", "gradient.x", "gradient.s", "hessian.x.x", "hessian.x.s", "hessian.s.s"]
    got = infer(triton, ids["scalar"], {"x": X, "s": S}, names)
    hessian = jax.hessian(scalar_f, argnums=(0, 1))(X, S)
    want = {"value": scalar_f(X, S), "gradient.x": jax.grad(scalar_f, 0)(X, S),
            "gradient.s": jax.grad(scalar_f, 1)(X, S), "hessian.x.x": hessian[0][0],
            "hessian.x.s": hessian[0][1], "hessian.s.s": hessian[1][1]}
    for name in names:
        np.testing.assert_allclose(got[name], want[name], **TOL, err_msg=name)
        assert got[name].shape == np.shape(want[name]), name


def test_value_is_the_default_output_and_a_scalar_may_be_shape_1(triton, ids):
    got = infer(triton, ids["scalar"], {"x": X, "s": S.reshape(1)})
    np.testing.assert_allclose(got["value"], scalar_f(X, S), **TOL)


def test_hvp_with_a_tangent_not_sent_as_zero(triton, ids):
    v = np.array([0.5, -1.0, 2.0])
    got = infer(triton, ids["scalar"], {"x": X, "s": S, "tangent.x": v}, ["hvp.x", "hvp.s"])
    _, (hx, hs) = jax.jvp(jax.grad(scalar_f, argnums=(0, 1)), (X, S), (v, 0.0))
    np.testing.assert_allclose(got["hvp.x"], hx, **TOL)
    np.testing.assert_allclose(got["hvp.s"], hs, **TOL)


def test_jacobian_jvp_and_vjp_of_a_vector_function(triton, ids):
    tx, ts, w = np.array([1.0, 0.0, -2.0]), np.array(0.5), np.array([0.1, 0.2, 0.3])
    got = infer(triton, ids["vector"], {"x": X, "s": S, "tangent.x": tx, "tangent.s": ts, "cotangent": w},
                ["value", "jacobian.x", "jacobian.s", "jvp", "vjp.x", "vjp.s"])
    jx, js = jax.jacobian(vector_f, argnums=(0, 1))(X, S)
    _, jvp = jax.jvp(vector_f, (X, S), (tx, ts))
    _, pullback = jax.vjp(vector_f, X, S)
    vx, vs = pullback(w)
    for name, want in (("value", vector_f(X, S)), ("jacobian.x", jx), ("jacobian.s", js), ("jvp", jvp),
                       ("vjp.x", vx), ("vjp.s", vs)):
        np.testing.assert_allclose(got[name], want, **TOL, err_msg=name)
        assert got[name].shape == np.shape(want), name


def test_batched_inference(triton, ids):
    got = infer(triton, ids["scalar"], {"x": XB, "s": SB}, ["value", "gradient.x", "hessian.s.s"],
                parameters={"batch": True})
    value = jax.vmap(scalar_f)(XB, SB)
    np.testing.assert_allclose(got["value"], value, **TOL)
    np.testing.assert_allclose(got["gradient.x"], jax.vmap(jax.grad(scalar_f))(XB, SB), **TOL)
    np.testing.assert_allclose(got["hessian.s.s"], jax.vmap(jax.hessian(scalar_f, 1))(XB, SB), **TOL)
    assert got["value"].shape == (2,) and got["gradient.x"].shape == (2, 3)


def test_batched_jacobian(triton, ids):
    got = infer(triton, ids["vector"], {"x": XB, "s": SB}, ["jacobian.x"], parameters={"batch": True})
    np.testing.assert_allclose(got["jacobian.x"], jax.vmap(jax.jacobian(vector_f))(XB, SB), **TOL)


@pytest.mark.parametrize("inputs, outputs, parameters, words", [
    ({"x": X}, None, None, "missing input 's'"),
    ({"x": X, "s": S, "y": S}, None, None, "no input 'y'"),
    ({"x": X[:2], "s": S}, None, None, "shape [2]"),
    ({"x": XB, "s": SB}, None, None, "batch=true"),
    ({"x": X, "s": S}, ["gradient.y"], None, "no output 'gradient.y'"),
    ({"x": X, "s": S}, ["hvp.x"], None, "tangent"),
    ({"x": X, "s": S}, ["vjp.x"], None, "cotangent"),
    ({"x": X, "s": S}, None, {"batch": "yes"}, "batch must be a boolean"),
    ({"x": XB, "s": SB[:1]}, None, {"batch": True}, "batch axis"),
])
def test_bad_requests_raise_the_clients_exception_with_a_readable_message(triton, ids, inputs, outputs,
                                                                          parameters, words):
    with pytest.raises(InferenceServerException) as raised:
        infer(triton, ids["scalar"], inputs, outputs, **({"parameters": parameters} if parameters else {}))
    assert words in raised.value.message(), raised.value.message()
    assert str(raised.value)  # the client's printer works on the protocol's error body
    status = raised.value.status()
    assert status in ("400", "422") if triton[0] is tritonclient_http else status == "StatusCode.INVALID_ARGUMENT"


def test_gradient_of_a_vector_output_is_refused(triton, ids):
    with pytest.raises(InferenceServerException) as raised:
        infer(triton, ids["vector"], {"x": X, "s": S}, ["gradient.x"])
    assert "needs a scalar value" in raised.value.message()


def test_an_unknown_model_or_version_is_not_found(triton, ids):
    module, client = triton
    for model, version in (("f" * 64, ""), (ids["scalar"], "7")):
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, [tensor(module, "x", X), tensor(module, "s", S)], model_version=version)
        assert raised.value.status() in ("404", "StatusCode.NOT_FOUND"), raised.value.status()
        assert "no function" in raised.value.message() or "version" in raised.value.message()


def test_a_wrong_datatype_is_refused(triton, ids):
    module, client = triton
    inputs = [tensor(module, "x", X.astype(np.float32).astype(np.float64)), tensor(module, "s", [1], "INT64")]
    with pytest.raises(InferenceServerException) as raised:
        client.infer(ids["scalar"], inputs)
    assert "'s' is FP64, not INT64" in raised.value.message()


def test_rest_json_tensors_and_the_error_form(client, ids):
    """JSON data in and out (no binary extension), gzip bodies, and every /v2 error as {"error": str}."""
    url = f"/v2/models/{ids['vector']}/infer"
    r = client.post(url, json={"id": "7", "inputs": [
        {"name": "x", "datatype": "FP64", "shape": [3], "data": X.tolist()},
        {"name": "s", "datatype": "FP64", "shape": [], "data": [float(S)]}], "outputs": [{"name": "value"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "7" and body["model_version"] == "1"
    (out,) = body["outputs"]
    assert out["name"] == "value" and out["datatype"] == "FP64" and out["shape"] == [3]
    np.testing.assert_allclose(out["data"], vector_f(X, S), **TOL)
    packed = gzip.compress(r.request.content)
    r = client.post(url, content=packed, headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [3]
    for method, path, body, status in (
            ("POST", url, b"{not json", 400),
            ("POST", url, b'{"inputs": 3}', 400),
            ("POST", url, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}', 422),
            ("POST", url, b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2, 3]}]}', 400),
            ("POST", url, b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1], "data": []}]}', 400),
            ("POST", url, b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], "data": ["a", 2, 3]}]}', 400),
            ("POST", "/v2/models/nothing-here/infer", b"{}", 404),
            ("GET", "/v2/models/nothing-here", None, 404),
            ("GET", "/v2/no/such/route", None, 404),
            ("GET", url, None, 405)):
        r = client.request(method, path, content=body)
        assert r.status_code == status, (path, body, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) and error, r.text
        assert r.headers["x-adserve-error-code"]


def test_rest_binary_request_with_a_bad_header_length_is_a_400(client, ids):
    url = f"/v2/models/{ids['scalar']}/infer"
    head = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], "parameters": {"binary_data_size": 24}}]}'
    for length, tail in ((str(len(head) + 100), b"\0" * 24), (str(len(head)), b"\0" * 20),
                         (str(len(head)), b"\0" * 30), ("x", b"")):
        r = client.post(url, content=head + tail, headers={"Inference-Header-Content-Length": length})
        assert r.status_code == 400, r.text
        assert isinstance(r.json()["error"], str)


def test_rest_health_and_metadata_at_the_wire(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "adserve"
    assert httpx.codes.is_success(client.get("/v2/health/ready").status_code)


def test_grpc_typed_contents_raw_mismatch_unimplemented_and_reflection(server, ids):
    """At the wire, with the client library's own stubs: typed contents in give typed contents out; a
    raw_input_contents that does not match the inputs is INVALID_ARGUMENT; Triton's calls beyond the
    protocol's are UNIMPLEMENTED; reflection describes the service."""
    import grpc
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from tritonclient.grpc import service_pb2 as tpb
    from tritonclient.grpc import service_pb2_grpc as tpb_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = tpb_grpc.GRPCInferenceServiceStub(channel)
        request = tpb.ModelInferRequest(model_name=ids["vector"], id="r1",
                                        outputs=[tpb.ModelInferRequest.InferRequestedOutputTensor(name="jacobian.x")])
        request.inputs.add(name="x", datatype="FP64", shape=[3]).contents.fp64_contents.extend(X.tolist())
        request.inputs.add(name="s", datatype="FP64", shape=[]).contents.fp64_contents.append(float(S))
        response = stub.ModelInfer(request, timeout=60)
        assert response.id == "r1" and not response.raw_output_contents
        (out,) = response.outputs
        got = np.array(out.contents.fp64_contents).reshape(tuple(out.shape))
        np.testing.assert_allclose(got, jax.jacobian(vector_f)(X, S), **TOL)

        request.ClearField("outputs")
        request.raw_input_contents.append(X.tobytes())  # one entry for two inputs
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 inputs" in raised.value.details()

        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelConfig(tpb.ModelConfigRequest(name=ids["vector"]), timeout=60)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService")]), timeout=60)
        files = [descriptor_pb2.FileDescriptorProto.FromString(f)
                 for f in answer.file_descriptor_response.file_descriptor_proto]
        methods = {m.name for f in files for s in f.service for m in s.method}
        assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"} <= methods
        (listed,) = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=60)
        names = {s.name for s in listed.list_services_response.service}
        assert {"inference.GRPCInferenceService", "ad.v1.Differentiator", "grpc.health.v1.Health"} <= names
