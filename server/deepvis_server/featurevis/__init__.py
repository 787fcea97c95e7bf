"""Feature visualization (Olah et al. 2017) with continuous batching of render jobs; pure torch."""

from __future__ import annotations

from .objectives import Channel, ClassLogit, Layer, Neuron, Objective
from .optimization import (
    RenderBatch,
    RenderEvent,
    RenderImages,
    RenderJob,
    RenderResult,
    render,
)
from .param import params_to_image
from .transforms import LUCID_TRANSFORMS, TransformConfig

__all__ = [
    "LUCID_TRANSFORMS",
    "Channel",
    "ClassLogit",
    "Layer",
    "Neuron",
    "Objective",
    "RenderBatch",
    "RenderEvent",
    "RenderImages",
    "RenderJob",
    "RenderResult",
    "TransformConfig",
    "params_to_image",
    "render",
]
