"""Independent oracles shared by the tests: Captum's guided backprop, Zennit's LRP on models
whose batch norms are folded by hand, pytorch-grad-cam's Grad-CAM with its reshape transforms
for token and channels-last layers, the digits' preprocessing, and the error measure every
comparison uses."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import cast

import numpy as np
import torch
from captum.attr import GuidedBackprop
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from deepvis_server.config import load_config

TOL = 1e-5


def captum_gbp(model: torch.nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    out = GuidedBackprop(model).attribute(torch.from_numpy(x)[None].clone(), target=target)
    return out[0].detach().numpy()


def preprocess_digit(path: str | Path) -> np.ndarray:
    """The default model's preprocessing, written out by hand: pixels / 255, then mean and std."""
    spec = load_config().models[0]
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    return ((pixels - spec.mean[0]) / spec.std[0])[None].astype(np.float32)


def relative_error(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Max abs difference over the largest magnitude of the reference, `b`. (None, what an
    Explanation holds without its array, fails.)"""
    assert a is not None and b is not None, "no array to compare"
    scale = float(np.abs(b).max())
    assert scale > 0, "the oracle's result is all zeros: the comparison would prove nothing"
    return float(np.abs(a - b).max()) / scale


def bn_pairs(model: torch.nn.Module, arch: str) -> list[tuple[str, str]]:
    """The (conv, batch norm) pairs to fold, written out per architecture from torchvision's
    code: what the server must find on the traced graph by itself."""
    names = {n for n, _ in model.named_modules()}
    if arch == "resnet18":
        pairs = [("conv1", "bn1")]
        for n in sorted(names):
            if re.fullmatch(r"layer\d\.\d", n):
                pairs += [(f"{n}.conv1", f"{n}.bn1"), (f"{n}.conv2", f"{n}.bn2")]
                if f"{n}.downsample" in names:
                    pairs.append((f"{n}.downsample.0", f"{n}.downsample.1"))
        return pairs
    if arch == "vgg11_bn":
        convs = [
            n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
        ]  # features.<i>, each followed by its batch norm features.<i+1>
        return [(c, f"features.{int(c.split('.')[1]) + 1}") for c in convs]
    if arch == "densenet121":
        layers = sorted(
            n for n in names if re.fullmatch(r"features\.denseblock\d\.denselayer\d+", n)
        )
        return [("features.conv0", "features.norm0")] + [
            (f"{n}.conv1", f"{n}.norm2") for n in layers
        ]
    return []


def folded_copy(model: torch.nn.Module, pairs: list[tuple[str, str]]) -> torch.nn.Module:
    """A copy of `model` with each pair's batch norm folded into its conv by
    torch.nn.utils.fusion.fuse_conv_bn_eval, the batch norm replaced by an identity."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()

    def put(name: str, module: torch.nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, module)

    for conv, bn in pairs:
        c, b = folded.get_submodule(conv), folded.get_submodule(bn)
        assert isinstance(c, torch.nn.Conv2d), conv
        assert isinstance(b, torch.nn.modules.batchnorm._BatchNorm), bn
        put(conv, fuse_conv_bn_eval(c, b))
        put(bn, torch.nn.Identity())
    return folded


class DenseNetModulePool(torch.nn.Module):
    """torchvision's DenseNet forward with its functional final ReLU and average pooling as
    modules: Zennit's rules attach to modules only, and the server applies them to functional
    calls too."""

    def __init__(self, densenet: torch.nn.Module) -> None:
        super().__init__()
        self.features = cast(torch.nn.Module, densenet.features)
        self.final_relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = cast(torch.nn.Module, densenet.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.final_relu(self.features(x))), 1))


def zennit_composite(
    name: str,
    low: torch.Tensor,
    high: torch.Tensor,
    resnet: bool,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
):
    """Zennit's composite of that name (deep_taylor and epsilon built from its rules), with
    the ResNet block canonizers only: batch norms are folded beforehand."""
    from zennit import composites as zc
    from zennit.rules import Epsilon, ZBox, ZPlus
    from zennit.torchvision import ResNetBasicBlockCanonizer
    from zennit.types import Convolution, Linear

    canon = [ResNetBasicBlockCanonizer()] if resnet else []
    if name == "deep_taylor":
        return zc.SpecialFirstLayerMapComposite(
            layer_map=zc.layer_map_base()
            + [
                (Convolution, ZPlus(zero_params="bias")),
                (torch.nn.Linear, ZPlus(zero_params="bias")),
            ],
            first_map=[(Linear, ZBox(low, high))],
            canonizers=canon,
        )
    if name == "epsilon":
        return zc.LayerMapComposite(
            layer_map=zc.layer_map_base()
            + [(Convolution, Epsilon(epsilon)), (torch.nn.Linear, Epsilon(epsilon))],
            canonizers=canon,
        )
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, canonizers=canon
        )
    cls = {
        "epsilon_plus_flat": zc.EpsilonPlusFlat,
        "epsilon_plus": zc.EpsilonPlus,
        "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
        "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
    }[name]
    return cls(epsilon=epsilon, canonizers=canon)


def zennit_lrp(
    model: torch.nn.Module,
    x: torch.Tensor,
    targets: list[int],
    composite,
) -> np.ndarray:
    """Zennit's relevance, started at each item's logit at its target, on a copy of `model`."""
    from zennit.attribution import Gradient

    twin = copy.deepcopy(model)
    onehot = torch.eye(twin(x[:1]).shape[1])[targets]
    with Gradient(model=twin, composite=composite) as attributor:
        _, relevance = attributor(x.clone(), lambda out: out * onehot)
    return relevance.detach().numpy()


def vit_reshape_transform(height: int, width: int, class_tokens: int = 1):
    """pytorch-grad-cam's documented ViT reshape (tutorials/vision_transformers.md): drop the
    class token, lay the patch tokens out [B, h, w, C], then transpose to [B, C, h, w]."""

    def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, class_tokens:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return reshape_transform


def swin_reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
    """torchvision's Swin stages are [B, h, w, C] already: only the transposes of the recipe."""
    return tensor.transpose(2, 3).transpose(1, 2)


def pytorch_grad_cam(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    targets: list[int],
    reshape_transform=None,
) -> np.ndarray:
    """pytorch-grad-cam's GradCAM map at the layer's own size, [N, h, w], before its min-max
    scaling and resize: ReLU of get_cam_image on the activations and gradients it recorded."""
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        classes = [ClassifierOutputTarget(t) for t in targets]
        # An input that needs its gradient: the twins' parameters need none.
        cam(input_tensor=x.clone().requires_grad_(True), targets=classes)
        acts = cam.activations_and_grads.activations[0]
        grads = cam.activations_and_grads.gradients[0]
        raw = cam.get_cam_image(x, layer, classes, acts.numpy(), grads.numpy())
    return np.maximum(raw, 0.0).astype(np.float32)
