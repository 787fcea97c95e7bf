"""The zoo the shared `zoo` fixture serves: torchvision and toy architectures, small inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision


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
