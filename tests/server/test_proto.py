"""The generated stubs in client/deepvis/v1 match deepvis.proto and grpc_health's health.proto."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from deepvis.v1 import deepvis_pb2

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_match_the_proto(tmp_path) -> None:
    pytest.importorskip("grpc_tools")  # a dev dependency; absent on bare GPU hosts
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--descriptor_set_out={out}",
            "deepvis/v1/deepvis.proto",
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(deepvis_pb2.DESCRIPTOR.serialized_pb)
    _drop_json_names(fresh.message_type)  # the descriptor set spells out json_name; stubs do not
    assert committed == fresh, "stubs are stale: run `make proto`"


def test_descriptor_set_matches_the_proto(tmp_path) -> None:
    """deepvis.binpb (what reflection serves, comments included) is the .proto's, as protoc
    writes it with --include_source_info, and the stubs' file once its comments are gone."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "set.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            "deepvis/v1/deepvis.proto",
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "client/deepvis/v1/deepvis.binpb").read_bytes()
    )
    assert committed == fresh, "client/deepvis/v1/deepvis.binpb is stale: run `make proto`"
    (file,) = committed.file
    assert file.source_code_info.location, "the descriptor set lost the comments"
    file.ClearField("source_code_info")
    _drop_json_names(file.message_type)
    stubs = descriptor_pb2.FileDescriptorProto.FromString(deepvis_pb2.DESCRIPTOR.serialized_pb)
    assert file == stubs, "stubs and descriptor set disagree: run `make proto`"


def test_descriptor_set_is_packaged(tmp_path) -> None:
    """The wheel carries deepvis.binpb beside the stubs, where reflection reads it."""
    # The build backend pyproject.toml names; 70.1 builds wheels without the wheel package.
    pytest.importorskip("setuptools", minversion="70.1")
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("client", "server"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("deepvis-*.whl")
    with zipfile.ZipFile(wheel) as z:
        packaged = z.read("deepvis/v1/deepvis.binpb")
    assert packaged == (ROOT / "client/deepvis/v1/deepvis.binpb").read_bytes()


def _drop_json_names(messages) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def test_every_rpc_and_field_is_documented() -> None:
    text = (ROOT / "protos/deepvis/v1/deepvis.proto").read_text().splitlines()
    for i, line in enumerate(text):
        stripped = line.strip()
        is_field = (
            stripped.endswith(";")
            and "=" in stripped
            and not stripped.startswith(("//", "syntax", "package", "option"))
        )
        if stripped.startswith("rpc ") or is_field:
            assert text[i - 1].strip().startswith("//"), f"line {i + 1} has no comment: {stripped}"


def _serialized_file(stub: Path) -> bytes:
    """The descriptor a generated stub registers, read without importing it."""
    for node in ast.walk(ast.parse(stub.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"{stub} registers no descriptor")


def test_health_stub_matches_grpc_health() -> None:
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")  # the server's extra
    stub = ROOT / "client/deepvis/v1/health_pb2.py"
    committed = descriptor_pb2.FileDescriptorProto.FromString(_serialized_file(stub))
    installed = descriptor_pb2.FileDescriptorProto.FromString(health_pb2.DESCRIPTOR.serialized_pb)
    assert committed == installed, "health stub is stale: run `make proto`"
    assert (ROOT / "client/deepvis/v1/health_pb2.pyi").exists()


def test_health_stub_shares_grpc_health_descriptors() -> None:
    # The same bytes: the stub imports beside grpc_health's module, and both name one message.
    grpc_health = pytest.importorskip("grpc_health.v1.health_pb2")
    from deepvis.v1 import health_pb2

    assert health_pb2.DESCRIPTOR is grpc_health.DESCRIPTOR
    for name in ("HealthCheckRequest", "HealthCheckResponse"):
        assert getattr(health_pb2, name).DESCRIPTOR is getattr(grpc_health, name).DESCRIPTOR
