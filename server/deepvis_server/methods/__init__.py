"""The registry of interpretability methods, keyed by their schema name."""

from __future__ import annotations

from .activations import Activations
from .attention_rollout import AttentionRollout, RolloutOptions
from .base import BatchOutput, ItemShare, Method, MethodRequest, Output
from .grad_cam import GradCam, GuidedGradCam
from .gradients import InputXGradient, IntegratedGradients, Saliency
from .guided_backprop import Deconvolution, GuidedBackprop
from .lrp import Lrp
from .options import IgOptions, LrpOptions, SmoothOptions
from .targets import ClassTarget, NeuronTarget, Target

# Keys are the proto Method enum names without METHOD_, lowercased; a test checks that
# every enum value has a method here and the other way round.
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        GuidedBackprop(),
        Activations(),
        GradCam(),
        GuidedGradCam(),
        Deconvolution(),
        Saliency(),
        IntegratedGradients(),
        Lrp(),
        InputXGradient(),
        AttentionRollout(),
    )
}

__all__ = [
    "REGISTRY",
    "Activations",
    "AttentionRollout",
    "BatchOutput",
    "ClassTarget",
    "Deconvolution",
    "GradCam",
    "GuidedBackprop",
    "GuidedGradCam",
    "IgOptions",
    "InputXGradient",
    "IntegratedGradients",
    "ItemShare",
    "Lrp",
    "LrpOptions",
    "Method",
    "MethodRequest",
    "NeuronTarget",
    "Output",
    "RolloutOptions",
    "Saliency",
    "SmoothOptions",
    "Target",
]
