"""Shared fixtures: real deepvis servers, serving real (small) models, and their oracles' twins."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deepvis_server.config import DEFAULT_CONFIG, load_config, parse_config
from deepvis_server.server import DeepvisServer, serve_in_thread
from zoo import (
    BN_ZOO_SPECS,
    TOY_SPECS,
    ZOO_SPECS,
    ZooModel,
    build_oracle_twin,
    digits_table,
    randomize_batch_norms,
    saved_table,
)

torch.set_num_threads(2)


# How the zoos serve their torchvision-style models: ImageNet's statistics, small batches.
SERVED: dict[str, Any] = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "max_batch_size": 16,
    "max_delay_ms": 2.0,
}


@pytest.fixture(scope="session")
def digits_server() -> Iterator[DeepvisServer]:
    """The embedded default model, as `deepvis-server` serves it without --config."""
    with serve_in_thread(load_config(), "127.0.0.1:0") as server:
        yield server


@pytest.fixture(scope="session")
def zoo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DeepvisServer, dict[str, ZooModel]]]:
    """torchvision and toy models with random weights saved to weights files, then served."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    tables: list[dict[str, Any]] = []
    twins: dict[str, ZooModel] = {}
    for name, (arch, k, size) in {**ZOO_SPECS, **TOY_SPECS}.items():
        twin = build_oracle_twin(arch, k).eval()
        weights_from = twins["module_relu"].module if name == "functional_relu" else twin
        if weights_from is not twin:
            twin.load_state_dict(weights_from.state_dict())
        tables.append(saved_table(root, name, arch, twin, k, size, **SERVED))
        twins[name] = ZooModel(name, twin, (3, *size))
    # The gated twin of the digits model: a batch runs only when 8 compatible requests are in
    # (or after 10 s), so a batching test is deterministic, not a race.
    tables.append(digits_table("digits_gated", max_batch_size=8, max_delay_ms=10_000.0))
    config = parse_config({"models": tables}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server, twins


@pytest.fixture(scope="session")
def bn_zoo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DeepvisServer, dict[str, ZooModel]]]:
    """torchvision models at 32x32 whose batch norms have random statistics, served, with
    their twins: for the methods that fold batch norms (LRP) or run many rows (SmoothGrad,
    integrated gradients)."""
    root = tmp_path_factory.mktemp("bn_zoo")
    generator = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    tables, twins = [], {}
    for name, (arch, k, size) in BN_ZOO_SPECS.items():
        twin = build_oracle_twin(arch, k).eval()
        randomize_batch_norms(twin, generator)
        for p in twin.parameters():
            p.requires_grad_(False)
        tables.append(saved_table(root, name, arch, twin, k, size, **SERVED))
        twins[name] = ZooModel(name, twin, (3, *size))
    config = parse_config({"models": tables}, root)
    with serve_in_thread(config, "127.0.0.1:0") as server:
        yield server, twins


@pytest.fixture(scope="session")
def digits_twin() -> torch.nn.Module:
    """The default model built and loaded here, independently of the server, for oracles."""
    from safetensors.torch import load_file

    from deepvis_server.default_model import DigitsNet

    spec = load_config().models[0]
    net = DigitsNet(10)
    net.load_state_dict(load_file(str(spec.weights)))
    return net.eval()


@pytest.fixture(scope="session")
def sample_paths() -> list[Path]:
    return sorted((DEFAULT_CONFIG.parent / "samples").glob("digit_*.png"))


# Debian's chromium, which `make install` installs (tools/install_chromium.sh): Playwright
# drives it, as `playwright install` would download a browser of its own.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the tests of the report and the explorer."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary (make install installs Debian's chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
