"""Feature visualization (Olah et al. 2017) with continuous batching of render jobs; pure torch.

The one-job convenience is `featurevis.render.render`: re-exporting it here would shadow the
`featurevis.render` module.
"""

from __future__ import annotations

from .objectives import Channel, ClassLogit, Layer, Neuron, Objective
from .param import params_to_image
from .render import (
    RenderBatch,
    RenderEvent,
    RenderImages,
    RenderJob,
    RenderResult,
)
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
]
