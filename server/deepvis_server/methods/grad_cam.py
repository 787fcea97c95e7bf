"""Grad-CAM and Guided Grad-CAM, batched with per-item targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NoReturn

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..models import ServedModel
from .base import BatchOutput, Method, MethodRequest
from .relu_rules import relu_rule, relu_rule_warnings
from .targets import Target, channels_first_hint, forward_and_score


def grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """ReLU of the activations weighted by their spatially averaged gradients: [N, 1, h, w]."""
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts).sum(dim=1, keepdim=True))


def upsample(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)


class _CamMethod(Method):
    uses_layers: ClassVar[bool] = True

    def check_layer_shape(self, model: ServedModel, name: str, shape: tuple[int, ...]) -> None:
        # Grad-CAM weighs channels and up-samples a map over the input: channels-last and
        # token layers are read as their maps [C, h, w] (LayerLayout.to_maps), never with
        # their first axis taken for channels; what has no map of the input is refused.
        layout = model.layer_layouts.get(name)
        if layout is not None and layout.map_shape is not None:
            return
        if layout is not None and layout.kind == "tokens":
            self._refuse(model, name, shape, layout.describe())
        if len(shape) != 3:
            default = f"'{model.default_cam_layer}'" if model.default_cam_layer else "none"
            raise InvalidArgument(
                f"method {self.name} needs a layer with a spatial output [C, h, w], [h, w, C] "
                f"or tokens on a patch grid; '{name}' gives {list(shape)} (default: {default})",
                field="layers",
            )
        if layout is not None:
            h, w = model.spec.input_size
            fits = "neither [C, h, w] nor [h, w, C] fits it"
            self._refuse(model, name, shape, f"not a feature map of the {h}x{w} input ({fits})")

    @staticmethod
    def _forward(
        model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest], *, guided: bool
    ) -> tuple[torch.Tensor, list[Target], torch.Tensor, torch.Tensor | None]:
        """One forward pass and the gradient of each item's target at the layer: the logits,
        the targets, the Grad-CAM map [N, 1, h, w] at the layer's size and, with `guided`,
        the guided input gradient from a second backward pass of the same graph."""
        layer = requests[0].layers[0]
        # Parameters never require grad, so the input must for the layer to join the graph.
        x = x.detach().requires_grad_(True)
        guided_grad = None
        with torch.enable_grad():
            logits, score, targets, acts = forward_and_score(
                model, x, [r.target for r in requests], (layer,)
            )
            (grads,) = torch.autograd.grad(score, acts[layer], retain_graph=guided)
            if guided:
                with relu_rule(score, "guided"):
                    (guided_grad,) = torch.autograd.grad(score, x)
        # The layer's maps [N, C, h, w] in any layout; the gradient is laid out the same way
        # (a permute and a selection, whose gradient is the same permute and selection).
        maps = model.view(layer, acts[layer].detach())
        cam = grad_cam(maps, model.view(layer, grads))
        return logits.detach(), targets, cam, guided_grad

    def _refuse(self, model: ServedModel, name: str, shape: tuple[int, ...], what: str) -> NoReturn:
        raise InvalidArgument(
            f"method {self.name} needs a feature map of the input (channels-first "
            f"[C, h, w], channels-last [h, w, C] or tokens on a patch grid); layer '{name}' "
            f"gives {list(shape)}, {what}; {channels_first_hint(model)}",
            field="layers",
        )


class GradCam(_CamMethod):
    """Grad-CAM (Selvaraju et al. 2017): result [H, W] up-sampled; extras["cam"] at the
    layer's map size [h, w] (a token layer's patch grid)."""

    name: ClassVar[str] = "grad_cam"

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        logits, targets, cam, _ = self._forward(model, x, requests, guided=False)
        up = upsample(cam, x.shape[2:])
        return BatchOutput(
            logits=logits, arrays=up[:, 0], targets=targets, extras={"cam": cam[:, 0]}
        )


class GuidedGradCam(_CamMethod):
    """Guided Grad-CAM: guided backprop times the up-sampled Grad-CAM map; result [C, H, W]."""

    name: ClassVar[str] = "guided_grad_cam"

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        logits, targets, layer_cam, guided = self._forward(model, x, requests, guided=True)
        assert guided is not None
        cam = upsample(layer_cam, x.shape[2:])
        return BatchOutput(
            logits=logits,
            arrays=guided * cam,
            targets=targets,
            warnings=relu_rule_warnings(model, self.name),
            extras={"cam": cam[:, 0]},
        )
