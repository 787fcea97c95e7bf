"""Input gradients (plain, or under a ReLU rule), saliency maps and integrated gradients."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch

from ..models import ServedModel
from .base import BatchOutput, Method, MethodRequest
from .relu_rules import relu_rule
from .targets import ClassTarget, NeuronTarget, Target, forward_and_score, resolve_class_targets


def input_gradient(
    model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest], rule: str | None
) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    """Input gradient of each item's target, under the ReLU rule `rule` (None: the plain
    gradient); also the logits and the resolved targets."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, score, resolved, _ = forward_and_score(model, x, [r.target for r in requests])
        with relu_rule(score, rule) if rule is not None else nullcontext():
            (grad,) = torch.autograd.grad(score, x)
    return logits.detach(), grad, resolved


# Integrated gradients' quadrature: Captum's default, 50 Gauss-Legendre points on [0, 1].
INTEGRATED_GRADIENTS_STEPS = 50


class Saliency(Method):
    """Saliency map (Simonyan et al. 2014): |d score / d input|, [C, H, W] in the input's
    space; the picture is its maximum over channels, as in the paper."""

    name: ClassVar[str] = "saliency"

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        logits, grad, targets = input_gradient(model, x, requests, None)
        return BatchOutput(logits=logits, arrays=grad.abs(), targets=targets)


def gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    """Points and weights of n-point Gauss-Legendre quadrature on [0, 1]."""
    points, weights = np.polynomial.legendre.leggauss(n)
    return [float(a) for a in 0.5 * (points + 1.0)], [float(w) for w in 0.5 * weights]


class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al. 2017) from the all-zero model input:
    (x - 0) * the integral over a in [0, 1] of d score / d input at a * x, by 50-point
    Gauss-Legendre quadrature (Captum's default), [C, H, W] in the input's space. Attributions
    sum to about score(x) - score(0) (completeness).

    Each quadrature point is one forward and backward pass of the batch, so the batch costs
    50 times a saliency map; the target (the predicted class when none is given) is taken
    from the input itself, not from the scaled copies.
    """

    name: ClassVar[str] = "integrated_gradients"
    steps: ClassVar[int] = INTEGRATED_GRADIENTS_STEPS

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        x = x.detach()
        with torch.no_grad():
            logits = model.module(x)
        if not isinstance(requests[0].target, NeuronTarget):
            classes = resolve_class_targets(logits, [r.target for r in requests])
            requests = [
                replace(r, target=ClassTarget(int(c)))
                for r, c in zip(requests, classes.tolist(), strict=True)
            ]
        total = torch.zeros_like(x)
        targets: list = []
        for alpha, weight in zip(*gauss_legendre(self.steps), strict=True):
            _, grad, targets = input_gradient(model, alpha * x, requests, None)
            total.add_(grad, alpha=weight)
        return BatchOutput(logits=logits, arrays=x * total, targets=targets)
