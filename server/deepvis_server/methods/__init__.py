"""The registry of interpretability methods, keyed by their schema name."""

from __future__ import annotations

from .base import BatchOutput, ClassTarget, Method, MethodRequest, NeuronTarget, Target
from .guided_backprop import GuidedBackprop

# Keys are the proto Method enum names without METHOD_, lowercased.
REGISTRY: dict[str, Method] = {m.name: m for m in (GuidedBackprop(),)}

__all__ = [
    "REGISTRY",
    "BatchOutput",
    "ClassTarget",
    "GuidedBackprop",
    "Method",
    "MethodRequest",
    "NeuronTarget",
    "Target",
]
