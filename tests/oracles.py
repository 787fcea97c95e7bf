"""Independent oracles shared by the tests: Captum's guided backprop, pytorch-grad-cam's
Grad-CAM with its reshape transforms for token and channels-last layers, the digits'
preprocessing, and the error measure every comparison uses."""

from __future__ import annotations

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


def preprocess_digit(path) -> np.ndarray:
    """The default model's preprocessing, written out by hand: pixels / 255, then mean and std."""
    spec = load_config().models[0]
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    return ((pixels - spec.mean[0]) / spec.std[0])[None].astype(np.float32)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference over the largest magnitude of the reference."""
    scale = float(np.abs(b).max())
    assert scale > 0, "the oracle's result is all zeros: the comparison would prove nothing"
    return float(np.abs(a - b).max()) / scale


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
