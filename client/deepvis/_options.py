"""The keyword options each family of calls shares, declared once for their signatures.

A call takes its family's options as `**options: Unpack[...]` and hands them on to the
`_convert` function that builds its request, which states each option's default; the
options are documented in the family's first call (`explain`, `visualize_stream`,
`dream_stream`, `evaluate_stream`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from deepvis._models import (
    InputLike,
    IntegratedGradients,
    LayersLike,
    Rollout,
    Smooth,
    TargetLike,
)

__all__ = [
    "CompareOptions",
    "DreamOptions",
    "EvaluateOptions",
    "ExplainOptions",
    "VisualizeOptions",
]


class CompareOptions(TypedDict, total=False):
    """What `compare` shares with `explain` and `explain_batch`."""

    model: str | None
    layer: LayersLike
    array_dtype: str
    top_k: int
    top_k_channels: int


class ExplainOptions(CompareOptions, total=False):
    """What `explain` and `explain_batch` share (the same for every input of a batch)."""

    method: str
    render: bool
    array: bool
    picture_size: tuple[int, int] | None
    cmap: str | None
    clip: float | None
    sign: str | None
    overlay: bool | None
    colorbar: bool
    caption: bool
    composite: str | None
    epsilon: float | None
    gamma: float | None
    smooth: Smooth | None
    integrated_gradients: IntegratedGradients | None
    rollout: Rollout | None


class VisualizeOptions(TypedDict, total=False):
    """What `visualize_stream` and `visualize` share."""

    model: str | None
    negate: bool
    steps: int
    learning_rate: float | None
    size: tuple[int, int] | None
    batch: int
    diversity: float
    seed: int
    progress_every: int
    parameterization: str | None
    transforms: bool
    input: InputLike | None
    array_dtype: str
    preset: str
    l2_penalty: float | None


class DreamOptions(TypedDict, total=False):
    """What `dream_stream` and `dream` share."""

    model: str | None
    negate: bool
    octaves: int
    octave_scale: float
    steps_per_octave: int
    step_size: float | None
    jitter: int | None
    seed: int
    progress_every: int
    array_dtype: str


class EvaluateOptions(TypedDict, total=False):
    """What `evaluate_stream` and `evaluate` share."""

    model: str | None
    method: str | Sequence[str]
    metrics: str | Sequence[str] | None
    classes: TargetLike | Sequence[TargetLike]
    layer: str | None
    steps: int
    seed: int
    randomization: str
    perturbations: int
    noise_std: float
    sensitivity_radius: float
    return_maps: bool
