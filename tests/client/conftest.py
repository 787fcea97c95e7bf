"""The client folder's own fixture: an in-process fake server (see fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fakes import FakeExplainer, serving


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeExplainer]]:
    """A gRPC server on port 0 answering like deepvis in shape only; yields its address
    and the servicer, which records what it was sent."""
    servicer = FakeExplainer()
    with serving(servicer, servicer.health.handler()) as address:
        yield address, servicer
