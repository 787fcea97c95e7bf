"""Guided backpropagation and the deconvnet rule, applied to every ReLU however it is called."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from ..models import ServedModel
from .base import BatchOutput, Method, MethodRequest
from .gradients import input_gradient
from .relu_rules import relu_rule_warnings


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al. 2014): result [C, H, W], the input's space."""

    name: ClassVar[str] = "guided_backprop"
    rule: ClassVar[str] = "guided"
    smoothable: ClassVar[bool] = True

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        logits, grad, targets = input_gradient(model, x, requests, self.rule)
        return BatchOutput(
            logits=logits,
            arrays=grad,
            targets=targets,
            warnings=relu_rule_warnings(model, self.name),
        )


class Deconvolution(GuidedBackprop):
    """The deconvnet rule (Zeiler & Fergus 2014): result [C, H, W], the input's space."""

    name: ClassVar[str] = "deconvolution"
    rule: ClassVar[str] = "deconv"
