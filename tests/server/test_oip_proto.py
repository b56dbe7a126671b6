"""proto/inference/grpc_service.proto is the Open Inference Protocol's: the committed stubs are its
descriptor, in a pool of their own, and on the wire it is the service `tritonclient.grpc` calls.

(That the committed stub files are what scripts/gen_proto.sh writes is test_proto.py's check, over every
file the script writes, these included.)"""

import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from adserve.server.grpc_gen import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
SERVED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


def test_stub_descriptor_is_the_proto(tmp_path):
    out = tmp_path / "inference.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
                    f"--descriptor_set_out={out}", "inference/grpc_service.proto"], check=True)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(fresh.message_type)  # protoc fills them in; the embedded descriptor leaves them out
    assert fresh == descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)


def _drop_json_names(messages) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def test_the_messages_keep_out_of_the_default_pool():
    """tritonclient (or any other copy of the protocol) may share the process."""
    assert pb.DESCRIPTOR.pool is pb.POOL and pb.POOL is not descriptor_pool.Default()
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName("inference/grpc_service.proto")


def _fields(message) -> dict:
    """Everything of a message that reaches the wire: field numbers, types and labels, nested messages too."""
    out = {f.number: (f.name, f.type, f.is_repeated, f.message_type and f.message_type.full_name)
           for f in message.fields}
    for nested in message.nested_types:
        out[nested.name] = _fields(nested)
    return out


def test_the_wire_is_tritonclients():
    theirs = pytest.importorskip("tritonclient.grpc.service_pb2").DESCRIPTOR
    ours_service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their_service = theirs.services_by_name["GRPCInferenceService"]
    assert ours_service.full_name == their_service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in ours_service.methods] == list(SERVED)
    for method in ours_service.methods:
        their = their_service.methods_by_name[method.name]
        for ours_type, their_type in ((method.input_type, their.input_type), (method.output_type, their.output_type)):
            assert ours_type.full_name == their_type.full_name
            assert _fields(ours_type) == _fields(their_type), ours_type.full_name
