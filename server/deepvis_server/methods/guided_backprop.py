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
from .base import (
    BatchOutput,
    ClassTarget,
    Method,
    MethodRequest,
    NeuronTarget,
    Target,
    capture_output,
    resolve_class_targets,
    select_neurons,
)

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


def modified_relu_gradient(
    model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest], rule: str
) -> BatchOutput:
    """Input gradient of each item's target under the ReLU rule `rule`."""
    x = x.detach().requires_grad_(True)
    first = requests[0].target
    with torch.enable_grad():
        if isinstance(first, NeuronTarget):
            with capture_output(model.layers[first.layer]) as saved:
                logits = model.module(x)
            resolved: list[Target] = [r.target for r in requests if r.target is not None]
            score = select_neurons(saved[0], resolved)
        else:
            logits = model.module(x)
            classes = resolve_class_targets(logits, [r.target for r in requests])
            score = logits.gather(1, classes[:, None]).sum()
            resolved = [ClassTarget(int(c)) for c in classes.tolist()]
        with ModifiedReLUGradient(rule):
            (grad,) = torch.autograd.grad(score, x)
    return BatchOutput(logits=logits.detach(), arrays=grad, targets=resolved)


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al. 2014): result [C, H, W], the input's space."""

    name: ClassVar[str] = "guided_backprop"

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        return modified_relu_gradient(model, x, requests, "guided")

    def render(self, array: np.ndarray, model: ServedModel) -> Image.Image:
        return render_gradient(array)
