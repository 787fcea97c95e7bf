"""Guided backpropagation and the deconvnet rule, applied to every ReLU however it is called."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from ..models import ServedModel
from ..render import render_gradient
from .base import BatchOutput, Method, MethodRequest, forward_and_score

_aten = torch.ops.aten


class ModifiedReLUGradient(TorchDispatchMode):
    """Rewrites the backward of every ReLU while a backward pass runs under it.

    Autograd computes each ReLU's backward as `threshold_backward(grad, result, 0)`,
    whether the forward was nn.ReLU, F.relu, torch.relu, Tensor.relu or their in-place
    forms, and however often one module is reused. Intercepting that one op at dispatch
    makes the rule exact for all of them, without hooks on (or changes to) the model:
    - guided: pass back only positive gradient at positive inputs;
    - deconv: pass back the positive part of the gradient, ignoring the forward mask.
    """

    def __init__(self, rule: str) -> None:
        super().__init__()
        if rule not in ("guided", "deconv"):
            raise ValueError(f"rule must be 'guided' or 'deconv', got {rule!r}")
        self.rule = rule

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is _aten.threshold_backward.default:
            grad, result, threshold = args
            if self.rule == "deconv":
                return grad.clamp(min=0)
            return func(grad.clamp(min=0), result, threshold)
        return func(*args, **(kwargs or {}))


def relu_rule_warnings(model: ServedModel, method: str) -> tuple[str, ...]:
    """Says so when the model has activations the ReLU rule does not cover."""
    if not model.non_relu_activations:
        return ()
    acts = ", ".join(model.non_relu_activations)
    return (
        f"{method}: model '{model.name}' also uses {acts}; the rule modifies only ReLU "
        "gradients, so those activations pass plain gradients",
    )


def modified_relu_gradient(
    model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest], rule: str
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Input gradient of each item's target under the ReLU rule `rule`; also the logits."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, score, resolved, _ = forward_and_score(model, x, requests)
        with ModifiedReLUGradient(rule):
            (grad,) = torch.autograd.grad(score, x)
    return logits.detach(), grad, resolved


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al. 2014): result [C, H, W], the input's space."""

    name: ClassVar[str] = "guided_backprop"
    rule: ClassVar[str] = "guided"

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        logits, grad, targets = modified_relu_gradient(model, x, requests, self.rule)
        return BatchOutput(
            logits=logits,
            arrays=grad,
            targets=targets,
            warnings=relu_rule_warnings(model, self.name),
        )

    def render(self, array: np.ndarray, model: ServedModel) -> Image.Image:
        return render_gradient(array)


class Deconvolution(GuidedBackprop):
    """The deconvnet rule (Zeiler & Fergus 2014): result [C, H, W], the input's space."""

    name: ClassVar[str] = "deconvolution"
    rule: ClassVar[str] = "deconv"
