"""The .proto is the contract: the committed stubs match it and `buf lint` passes."""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

from adserve.server.grpc_gen import ad_pb2

ROOT = Path(__file__).resolve().parents[2]
STUB_DIRS = ("adserve/server/grpc_gen", "clients/python/adserve_client/grpc_gen")


def test_committed_stubs_are_what_the_script_generates(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    for d in STUB_DIRS:
        fresh, committed = tmp_path / d, ROOT / d
        names = sorted(p.name for p in fresh.iterdir())
        assert names == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
        _, differ, missing = filecmp.cmpfiles(fresh, committed, names, shallow=False)
        assert not differ and not missing, f"{d} drifted from proto/ad/v1/ad.proto: run scripts/gen_proto.sh ({differ})"


def test_stub_descriptor_is_the_proto(tmp_path):
    """Independent of the grpcio-tools version: the message and service definitions themselves."""
    out = tmp_path / "ad.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
                    f"--descriptor_set_out={out}", "ad/v1/ad.proto"], check=True)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(fresh.message_type)  # protoc fills them in; the embedded descriptor leaves them out
    committed = descriptor_pb2.FileDescriptorProto.FromString(ad_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed


def _drop_json_names(messages) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def test_buf_lint():
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    if not Path(buf).exists():
        pytest.fail("buf is not installed (the test extras install buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_proto_is_not_a_python_package():
    assert not (ROOT / "proto" / "__init__.py").exists() and not list((ROOT / "proto").rglob("*.py"))
