"""The zoo the shared `zoo` fixture serves: torchvision and toy architectures, small inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file


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
    # torchvision's VisionTransformer, small: tokens [17, 32] (a class token, a 4x4 grid).
    "vit": ("toy_models:tiny_vit", 10, (32, 32)),
    "faulty_vit": ("toy_models:FaultyViT", 4, (32, 32)),
}


def build_oracle_twin(arch: str, num_classes: int) -> torch.nn.Module:
    if ":" in arch:
        import importlib

        mod, _, attr = arch.partition(":")
        return getattr(importlib.import_module(mod), attr)(num_classes=num_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def saved_table(
    root: Path,
    name: str,
    arch: str,
    model: torch.nn.Module,
    num_classes: int,
    size: tuple[int, int],
    **settings: Any,
) -> dict[str, Any]:
    """Saves `model`'s weights under `root` and returns its [[models]] table: name, arch,
    weights, classes and input size, plus `settings` (mean, std, batching, kwargs...)."""
    path = root / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {
        "name": name,
        "arch": arch,
        "weights": str(path),
        "num_classes": num_classes,
        "input_size": list(size),
        **settings,
    }


# Models for the attribution methods that fold or integrate: small inputs, and batch norms
# with random statistics and affine parameters (torchvision initialises them to the identity,
# which would make folding a no-op that proves nothing).
BN_ZOO_SPECS = {
    "resnet18": ("resnet18", 10, (32, 32)),
    "vgg11": ("vgg11", 10, (32, 32)),
    "vgg11_bn": ("vgg11_bn", 10, (32, 32)),
    "densenet121": ("densenet121", 10, (32, 32)),
}


def randomize_batch_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Gives every batch norm random running statistics and affine parameters."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.4 * torch.rand(c, generator=generator) - 0.2)


def digits_table(name: str = "digits", **settings: Any) -> dict[str, Any]:
    """The embedded default model as a [[models]] table named `name`, plus `settings`
    (batching, labels...), for configurations that serve it beside other models."""
    from deepvis_server.config import load_config

    digits = load_config().models[0]
    return {
        "name": name,
        "arch": digits.arch,
        "weights": str(digits.weights),
        "num_classes": digits.num_classes,
        "channels": digits.channels,
        "input_size": list(digits.input_size),
        "mean": list(digits.mean),
        "std": list(digits.std),
        **settings,
    }
