"""The client's grpc.health.v1 messages: encoded and decoded as grpcio-health-checking does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepvis import _convert

from .fakes import (
    HIDE_GRPC_HEALTH,
    run_python,
)

pytestmark = pytest.mark.fast  # in the inner loop, `make test-fast`


def test_health_request_encoding() -> None:
    assert _convert.health_request_to_bytes("") == b""
    assert _convert.health_request_to_bytes("deepvis.v1.Explainer") == (
        b"\x0a\x14deepvis.v1.Explainer"
    )
    long = "s" * 300  # length 300 = varint 0xAC 0x02
    assert _convert.health_request_to_bytes(long) == b"\x0a\xac\x02" + long.encode()
    assert _convert.health_request_to_bytes("é") == b"\x0a\x02\xc3\xa9"
    with pytest.raises(TypeError, match="service"):
        _convert.health_request_to_bytes(b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "UNKNOWN"),
        (b"\x08\x00", "UNKNOWN"),
        (b"\x08\x01", "SERVING"),
        (b"\x08\x02", "NOT_SERVING"),
        (b"\x08\x03", "SERVICE_UNKNOWN"),
        (b"\x08\x07", "STATUS_7"),
        (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "STATUS_-1"),
        # Unknown fields of every wire type are skipped; the last status wins.
        (b"\x10\x05\x1a\x03abc\x21" + b"\0" * 8 + b"\x2d\0\0\0\0\x08\x02\x08\x01", "SERVING"),
        # A status of another wire type is an unknown field to protobuf, as to grpc_health.
        (b"\x0a\x01x", "UNKNOWN"),
    ],
)
def test_health_response_decoding(data: bytes, status: str) -> None:
    assert _convert.health_status_from_bytes(data) == status


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # truncated inside a varint
        b"\x08\x80",
        b"\x1a\x05ab",  # truncated inside a length-delimited field
        b"\x0b",  # a group start (wire type 3)
        b"\x00\x01",  # field number 0
        b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
    ],
)
def test_health_response_rejected(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a health response"):
        _convert.health_status_from_bytes(data)


def test_health_codec_matches_grpc_health_checking(tmp_path: Path) -> None:
    # The thin client has no grpcio-health-checking: its own stub must encode and decode as
    # grpc_health does.
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    services = ["", "deepvis.v1.Explainer", "x" * 200, "ünï"]
    statuses = {
        name: health_pb2.HealthCheckResponse(status=number).SerializeToString().hex()
        for name, number in health_pb2.HealthCheckResponse.ServingStatus.items()
    }
    code = (
        "import json, sys; from deepvis import _convert; "
        f"requests = [_convert.health_request_to_bytes(s).hex() for s in {services!r}]; "
        f"names = {{n: _convert.health_status_from_bytes(bytes.fromhex(d)) for n, d in {statuses!r}.items()}}; "
        "stub = [m for m in sys.modules if m.endswith('health_pb2')]; "
        "print(json.dumps([requests, names, stub]))"
    )
    proc = run_python("-c", code, **HIDE_GRPC_HEALTH)
    assert proc.returncode == 0, proc.stderr
    requests, names, stub = json.loads(proc.stdout)
    assert requests == [
        health_pb2.HealthCheckRequest(service=s).SerializeToString().hex() for s in services
    ]
    assert names == {name: name for name in statuses}
    assert stub == ["deepvis.v1.health_pb2"]
