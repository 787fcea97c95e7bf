"""Writes grpc_health/v1/health.proto, as grpcio-health-checking ships it, as a descriptor set.

`make proto` generates client/deepvis/v1/health_pb2.py from it (grpcio-health-checking, a
server extra, ships the compiled module but not the .proto); the stub then holds the very
same descriptor. Usage: python tools/health_descriptor_set.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    health = descriptor_pb2.FileDescriptorProto.FromString(health_pb2.DESCRIPTOR.serialized_pb)
    Path(argv[0]).write_bytes(descriptor_pb2.FileDescriptorSet(file=[health]).SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
