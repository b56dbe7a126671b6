"""Protocol parity: an evaluation has the same fields everywhere a user can send one, and the compute kinds
are the engine's, listed once.

The fields the REST parser takes (`evaluation.FIELDS`) are compared with the OpenAPI model, the proto's
`EvaluateRequest` (less `id` and `function`, how it names its function), the Python clients' `evaluate`
parameters (REST and gRPC, blocking, asyncio and streams) and the JS client's `Evaluation` typedef. A field
added to one and not the others fails here."""

import inspect
import re
from pathlib import Path

import pytest
from adserve_client import AsyncClient, AsyncGrpcClient, Client, GrpcClient
from adserve_client.rpc import AsyncEvaluationStream, EvaluationStream

from adserve.engine import COMPUTE_KINDS
from adserve.engine.definition import DEFINITION_KEYS, INPUT_KEYS
from adserve.server import evaluation, schemas
from adserve.server.grpc_gen import ad_pb2

ROOT = Path(__file__).resolve().parents[2]
FIELDS = set(evaluation.FIELDS)
TARGET = {"id", "function"}  # how an EvaluateRequest names its function; REST has the path or "function"


def test_openapi_model_has_the_fields():
    assert set(schemas.Evaluation.model_fields) == FIELDS | {"function"}  # POST /v1/evaluate's only


def test_proto_has_the_fields():
    assert {f.name for f in ad_pb2.EvaluateRequest.DESCRIPTOR.fields} - TARGET == FIELDS


@pytest.mark.parametrize("method", [Client.evaluate, AsyncClient.evaluate, GrpcClient.evaluate,
                                    AsyncGrpcClient.evaluate, EvaluationStream.evaluate,
                                    AsyncEvaluationStream.evaluate], ids=lambda m: m.__qualname__)
def test_python_clients_take_the_fields(method):
    assert set(inspect.signature(method).parameters) - {"self", "function"} == FIELDS


def test_js_client_documents_the_fields():
    source = (ROOT / "clients/js/adserve.js").read_text(encoding="utf-8")
    typedef = re.search(r"@typedef \{Object\} Evaluation\n(.*?)\*/", source, re.DOTALL)
    assert typedef, "clients/js/adserve.js has no Evaluation typedef"
    assert set(re.findall(r"@property \{[^}]+\} \[?(\w+)", typedef[1])) == FIELDS


def test_compute_kinds_come_from_the_engine():
    schema = schemas.Evaluation.model_json_schema()
    items = schema["properties"]["compute"]["items"]  # a reference to the named ComputeKind enum
    kinds = schema["$defs"][items["$ref"].rsplit("/", 1)[1]]
    assert tuple(kinds["allOf"][0]["enum"]) == COMPUTE_KINDS


def test_definitions_have_the_same_keys_everywhere():
    """A definition's keys (the engine's, which REST takes as JSON) are the OpenAPI model's and the proto's:
    `entry` and an input's `dtype` can be declared over gRPC as over REST."""
    assert set(schemas.Definition.model_fields) == set(DEFINITION_KEYS)
    assert {f.name for f in ad_pb2.Definition.DESCRIPTOR.fields} == set(DEFINITION_KEYS)
    assert set(schemas.InputSpec.model_fields) == set(INPUT_KEYS)
    assert {f.name for f in ad_pb2.InputSpec.DESCRIPTOR.fields} == set(INPUT_KEYS)


def test_python_grpc_client_carries_entry_and_dtype():
    from adserve_client import rpc
    from adserve.server import rpc_codec
    d = {"inputs": [{"name": "x", "shape": [2]}, {"name": "i", "shape": [], "dtype": "int64"}],
         "program": "def f(x, i):\n    return x[i]\n\ndef g(y):\n    return y", "entry": "f", "name": "pick"}
    message = rpc.definition(d)
    assert message.entry == "f" and [s.dtype for s in message.inputs] == ["", "int64"]
    # the server reads the client's message back into the same JSON definition
    back = rpc_codec.definition_in(ad_pb2.Definition.FromString(message.SerializeToString()))
    assert back == d
