"""Fixtures of the explorer's tests: a `deepvis ui` process over a real server, a browser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("aiohttp", reason="the explorer needs the ui extra (aiohttp)")

from .ui_process import Explorer  # noqa: E402


@pytest.fixture(scope="module")
def explorer(digits_server) -> Iterator[Explorer]:
    """The explorer over the default model's server, offering its packaged samples."""
    ui = Explorer("--server", digits_server.bound_address)
    try:
        yield ui
    finally:
        ui.close()
