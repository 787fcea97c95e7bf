"""The generated stubs in client/deepvis/v1 match protos/deepvis/v1/deepvis.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from deepvis.v1 import deepvis_pb2

ROOT = Path(__file__).resolve().parents[1]


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
