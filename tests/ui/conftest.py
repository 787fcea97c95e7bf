"""Fixtures of the explorer's tests: a `deepvis ui` process over a real server, a browser."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("aiohttp", reason="the explorer needs the ui extra (aiohttp)")

from .ui_process import Explorer  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def explorer(digits_server) -> Iterator[Explorer]:
    """The explorer over the default model's server, offering its packaged samples."""
    ui = Explorer("--server", digits_server.bound_address)
    try:
        yield ui
    finally:
        ui.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary (make install installs Debian's chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()
