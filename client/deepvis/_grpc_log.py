"""gRPC's own log lines: off by default in the `deepvis` and `deepvis-server` commands."""

from __future__ import annotations

import os

__all__ = ["default_grpc_verbosity"]


def default_grpc_verbosity() -> None:
    """Sets GRPC_VERBOSITY=NONE unless the user set GRPC_VERBOSITY or GRPC_TRACE.

    gRPC's C core prints its own lines (`I1201 ... ssl_transport_security.cc:2563] Handshake
    failed ...`) straight to stderr, past Python's logging: before the CLI's one-line error,
    and between a server's JSON log lines. It reads GRPC_VERBOSITY once, when grpc is first
    imported (setting it any later changes nothing), so a command's entry point calls this
    before it imports anything that imports grpc; the library itself never does. GRPC_TRACE
    output goes through the same log, so asking for traces keeps gRPC's default.
    """
    if "GRPC_VERBOSITY" not in os.environ and "GRPC_TRACE" not in os.environ:
        os.environ["GRPC_VERBOSITY"] = "NONE"
