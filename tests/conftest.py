"""Shared fixtures: real deepvis servers on free ports, serving real (small) models."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from deepvis_server.config import DEFAULT_CONFIG, load_config, parse_config
from deepvis_server.server import DeepvisServer, serve_in_thread

torch.set_num_threads(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ZooModel:
    """A model the zoo server serves, with its own independently built twin for oracles."""

    name: str
    module: torch.nn.Module
    input_shape: tuple[int, int, int]


ZOO_SPECS = {
    # name: (arch, num_classes, input size); random weights, small inputs.
    "resnet18": ("resnet18", 10, (64, 64)),
    "vgg11": ("vgg11", 10, (64, 64)),
    "vgg11_bn": ("vgg11_bn", 10, (64, 64)),
    "densenet121": ("densenet121", 10, (64, 64)),
    "mobilenet_v3_small": ("mobilenet_v3_small", 10, (64, 64)),
    "efficientnet_b0": ("efficientnet_b0", 10, (64, 64)),
}
# The Captum matrix for guided backprop (the Foundation's) and for the other methods.
GUIDED_MODELS = ("resnet18", "vgg11")
METHOD_MODELS = ("resnet18", "vgg11_bn", "densenet121", "mobilenet_v3_small", "efficientnet_b0")
TOY_SPECS = {
    "faulty": ("toy_models:FaultyNet", 4, (16, 16)),
    "module_relu": ("toy_models:ModuleReLUNet", 5, (16, 16)),
    "functional_relu": ("toy_models:FunctionalReLUNet", 5, (16, 16)),
    "oom": ("toy_models:OOMNet", 4, (16, 16)),
}


def build_oracle_twin(arch: str, num_classes: int) -> torch.nn.Module:
    if ":" in arch:
        import importlib

        mod, _, attr = arch.partition(":")
        return getattr(importlib.import_module(mod), attr)(num_classes=num_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


@pytest.fixture(scope="session")
def digits_server() -> Iterator[DeepvisServer]:
    """The embedded default model, as `deepvis-server` serves it without --config."""
    with serve_in_thread(load_config(), f"127.0.0.1:{free_port()}") as server:
        yield server


@pytest.fixture(scope="session")
def zoo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DeepvisServer, dict[str, ZooModel]]]:
    """torchvision and toy models with random weights saved to weights files, then served."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    tables, twins = [], {}
    for name, (arch, k, size) in {**ZOO_SPECS, **TOY_SPECS}.items():
        twin = build_oracle_twin(arch, k).eval()
        path = root / f"{name}.safetensors"
        weights_from = twins["module_relu"].module if name == "functional_relu" else twin
        if weights_from is not twin:
            twin.load_state_dict(weights_from.state_dict())
        save_file({k_: v.contiguous() for k_, v in twin.state_dict().items()}, str(path))
        tables.append(
            {
                "name": name,
                "arch": arch,
                "weights": str(path),
                "num_classes": k,
                "input_size": list(size),
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "max_batch_size": 16,
                "max_delay_ms": 2.0,
            }
        )
        twins[name] = ZooModel(name, twin, (3, *size))
    # The gated twin of the digits model: a batch runs only when 8 compatible requests are in
    # (or after 10 s), so a batching test is deterministic, not a race.
    digits = load_config().models[0]
    tables.append(
        {
            "name": "digits_gated",
            "arch": digits.arch,
            "weights": str(digits.weights),
            "num_classes": 10,
            "channels": 1,
            "input_size": list(digits.input_size),
            "mean": list(digits.mean),
            "std": list(digits.std),
            "max_batch_size": 8,
            "max_delay_ms": 10_000.0,
        }
    )
    config = parse_config({"models": tables}, root)
    with serve_in_thread(config, f"127.0.0.1:{free_port()}") as server:
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


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference over the largest magnitude of the reference."""
    scale = float(np.abs(b).max())
    assert scale > 0, "the oracle's result is all zeros: the comparison would prove nothing"
    return float(np.abs(a - b).max()) / scale
