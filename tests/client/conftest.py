"""The client folder's own fixture: an in-process fake server (see fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from deepvis.v1 import deepvis_pb2_grpc

from .fakes import FakeExplainer


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeExplainer]]:
    """A gRPC server on a free port answering like deepvis in shape only; yields its address
    and the servicer, which records what it was sent."""
    servicer = FakeExplainer()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    deepvis_pb2_grpc.add_ExplainerServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((servicer.health.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)
