"""The client's public result and argument types: plain values, no protobuf."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
from PIL import Image

__all__ = [
    "Dream",
    "DreamProgress",
    "Explanation",
    "InputLike",
    "Layer",
    "LayerInfo",
    "LayersLike",
    "ModelDescription",
    "ModelInfo",
    "Neuron",
    "ObjectiveLike",
    "Prediction",
    "Progress",
    "Rollout",
    "TargetLike",
    "Visualization",
]


@dataclass(frozen=True)
class Prediction:
    """A class the model predicts for the input.

    Attributes:
        index: Class index.
        label: Class label, or the index as text when the model has no labels.
        score: Softmax probability.
    """

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Neuron:
    """A unit inside the network to explain instead of a class.

    Attributes:
        layer: Layer name as in the model's `named_modules()`.
        channel: Channel index of the layer's output (feature index for [N, F] outputs).
        y: Row in the layer's output map; with `x`, selects one element. None: the whole
            channel (its sum).
        x: Column in the layer's output map; set together with `y`.
    """

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def __post_init__(self) -> None:
        if (self.y is None) != (self.x is None):
            raise ValueError("Neuron: set y and x together, or neither (the whole channel)")


@dataclass(frozen=True)
class Layer:
    """A whole layer as a feature-visualization objective (DeepDream: the mean of its squares).

    Attributes:
        name: Layer name as in the model's `named_modules()`.
    """

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Layer: name must be a non-empty layer name, not {self.name!r}")


@dataclass(frozen=True)
class Rollout:
    """Attention rollout's options (`explain(..., method="attention_rollout", rollout=...)`).

    Attributes:
        head_fusion: How each block's attention heads are fused: "mean" (the default, as in
            Abnar & Zuidema 2020), "max" or "min".
        discard_ratio: Fraction in [0, 1) of each fused attention matrix's smallest entries
            set to 0 before the identity is added (jacobgil/vit-explain's discard_ratio, whose
            default there is 0.9); 0 discards nothing.
    """

    head_fusion: str = "mean"
    discard_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.head_fusion not in ("mean", "max", "min"):
            raise ValueError(
                f"Rollout: head_fusion must be 'mean', 'max' or 'min', not {self.head_fusion!r}"
            )
        ratio = self.discard_ratio
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not 0.0 <= float(ratio) < 1.0
        ):
            raise ValueError(f"Rollout: discard_ratio must be a number in [0, 1), not {ratio!r}")


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves, with what a client needs to feed it.

    Attributes:
        name: The name requests use.
        arch: Architecture it was built from.
        num_classes: Number of output classes.
        channels: Input channels (C of [C, H, W]).
        height: Input height in pixels.
        width: Input width in pixels.
        mean: Per-channel normalisation mean applied to images and pixels.
        std: Per-channel normalisation std applied to images and pixels.
        labels: Class labels in index order; empty when the model has none.
        methods: Names of the methods the model serves, as in `methods()`.
        resize: Images and pixel arrays not already at the input size are resized so that
            their shorter side is this many pixels, then centre-cropped to height x width
            (torchvision's evaluation transforms); 0: resized straight to height x width.
    """

    name: str
    arch: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    methods: tuple[str, ...]
    resize: int = 0

    def __repr__(self) -> str:
        # Spelling out a thousand labels would drown the useful fields.
        return (
            f"ModelInfo(name={self.name!r}, arch={self.arch!r}, num_classes={self.num_classes}, "
            f"input={self.channels}x{self.height}x{self.width}, methods={self.methods!r})"
        )


@dataclass(eq=False)
class Explanation:
    """The result of one explain call.

    Attributes:
        model: The model that ran.
        method: The method that ran, as in `methods()`.
        array: The raw result as float32 (for guided backpropagation [C, H, W] in the model's
            input space), or None when it was left out. A float32 result may be a read-only
            view of the response bytes; copy it before writing to it.
        image: The rendered result, or None when rendering was not asked for.
        predictions: The model's top predictions, best first.
        target: The class index or neuron that was explained.
        batch_size: Number of requests in the server batch this one ran in.
        queue_ms: Milliseconds the request waited on the server before its batch started.
        compute_ms: Milliseconds that batch spent computing.
        warnings: Caveats the server attached to the result.
        arrays: Further raw arrays the method produced, by name (activations: "<layer>" with
            the feature maps [C, h, w] and "<layer>.channels" with their channel indices;
            Grad-CAM: "cam", the layer-size map). Float arrays are float32, index arrays int64.
        images: Further rendered pictures, by name (activations: "<layer>.grid" and
            "<layer>.heatmap"); empty when rendering was not asked for.
        input_region: The part of the input the model saw, in the input's own pixels:
            (x, y, width, height) of a box whose top-left corner is (x, y). All of the input
            unless the model centre-crops (`ModelInfo.resize`); results in the model's input
            space cover this box. None from a server that does not say.
    """

    model: str
    method: str
    array: np.ndarray | None
    image: Image.Image | None
    predictions: list[Prediction] = field(default_factory=list)
    target: int | Neuron | None = None
    batch_size: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, Image.Image] = field(default_factory=dict)
    input_region: tuple[float, float, float, float] | None = None

    def __repr__(self) -> str:
        top = self.predictions[0] if self.predictions else None
        return (
            f"Explanation(model={self.model!r}, method={self.method!r}, "
            f"array={_describe_array(self.array)}, image={_describe_image(self.image)}, "
            f"top={top!r}, target={self.target!r}, batch_size={self.batch_size}, "
            f"arrays={list(self.arrays)!r}, images={list(self.images)!r})"
        )


@dataclass(frozen=True)
class LayerInfo:
    """One layer (module) of a model.

    Attributes:
        name: Name as in `named_modules()`: what requests use.
        type: The module's class name, e.g. "Conv2d".
        output_shape: Output shape for one input at the model's input size, without the batch
            dimension; empty when the output is not a single tensor.
        calls: How often the module runs in one forward pass (methods see its last call).
        layout: How `output_shape` is laid out: "channels_first" [C, h, w],
            "channels_last" [h, w, C] (Swin's stages), "tokens" [T, C] (a vision
            transformer's), "vector" [F], "other", or "" for no tensor output.
        map_shape: The map [C, h, w] the methods read the layer as (Grad-CAM, activations,
            neuron targets and objectives): channels-last maps permuted, tokens without
            their class tokens laid out on their patch grid; () when it is no map of the
            input.
        class_tokens: For tokens, how many leading class (or distillation, register) tokens
            precede the patch tokens.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    calls: int
    layout: str = ""
    map_shape: tuple[int, ...] = ()
    class_tokens: int = 0


@dataclass(frozen=True)
class ModelDescription:
    """A model's layers, as `describe()` returns them.

    Attributes:
        model: The model, as `models()` describes it.
        layers: Every named module, in `named_modules()` order.
        default_cam_layer: The layer Grad-CAM and activations use when a request names none.
        non_relu_activations: Activation functions in the model other than ReLU (e.g. "silu"),
            which guided backpropagation and deconvolution pass through unmodified.
        default_cam_layer_note: Why `default_cam_layer` is the layer it is and how the
            methods read it, in words.
        attention_layers: The self-attention layers attention rollout chains, in call
            order; empty when the model has none (and refuses attention rollout).
    """

    model: ModelInfo
    layers: list[LayerInfo]
    default_cam_layer: str
    non_relu_activations: tuple[str, ...]
    default_cam_layer_note: str = ""
    attention_layers: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"ModelDescription(model={self.model.name!r}, layers=<{len(self.layers)}>, "
            f"default_cam_layer={self.default_cam_layer!r}, "
            f"non_relu_activations={self.non_relu_activations!r})"
        )


@dataclass(eq=False)
class Progress:
    """Progress of a running feature visualization.

    Attributes:
        step: Steps done.
        steps: Steps in all.
        objective: The objective's value now (mean over the batch's images).
        image: The current images side by side, or None in messages without a picture.
    """

    step: int
    steps: int
    objective: float
    image: Image.Image | None = None

    def __repr__(self) -> str:
        return (
            f"Progress(step={self.step}, steps={self.steps}, objective={self.objective:.6g}, "
            f"image={_describe_image(self.image)})"
        )


@dataclass(eq=False)
class Visualization:
    """The result of one feature visualization.

    Attributes:
        array: The synthesized images as float32 [N, C, H, W], pixels in [0, 1].
        images: One picture per synthesized image.
        objective: The final objective value (mean over the images).
        steps: Optimization steps run.
        attribution: With an input and a neuron or class objective, guided backpropagation of
            the objective on that input as float32 [C, H, W] in the model input space; else None.
        attribution_image: The attribution rendered, or None.
        attribution_region: The part of the input the attribution covers, (x, y, width,
            height) in the input's own pixels (see `Explanation.input_region`), or None.
        queue_ms: Milliseconds from the job's arrival to its first step.
        compute_ms: Milliseconds from its first step to its last.
        max_batch_jobs: The most jobs that shared an optimization batch with this one.
    """

    array: np.ndarray
    images: list[Image.Image] = field(default_factory=list)
    objective: float = 0.0
    steps: int = 0
    attribution: np.ndarray | None = None
    attribution_image: Image.Image | None = None
    attribution_region: tuple[float, float, float, float] | None = None
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    max_batch_jobs: int = 0

    def __repr__(self) -> str:
        return (
            f"Visualization(array={_describe_array(self.array)}, images={len(self.images)}, "
            f"objective={self.objective:.6g}, steps={self.steps}, "
            f"attribution={_describe_array(self.attribution)}, "
            f"max_batch_jobs={self.max_batch_jobs})"
        )


@dataclass(frozen=True, repr=False)
class DreamProgress:
    """Progress of a running DeepDream.

    Attributes:
        step: Steps done, over all octaves.
        steps: Steps in all (octaves * steps_per_octave).
        octave: The octave the last step ran in, from 1 (the smallest) to `octaves`.
        octaves: Octaves in all.
        objective: The objective at the last step (on the randomly shifted picture).
        image: The current picture, at its octave's size (enlarged when small), or None.
    """

    step: int
    steps: int
    octave: int
    octaves: int
    objective: float
    image: Image.Image | None = None

    def __repr__(self) -> str:
        return (
            f"DreamProgress(step={self.step}, steps={self.steps}, octave={self.octave}/"
            f"{self.octaves}, objective={self.objective:.6g}, "
            f"image={_describe_image(self.image)})"
        )


@dataclass(eq=False)
class Dream:
    """The result of one DeepDream.

    Attributes:
        array: The dreamt picture as float32 [1, C, H, W], pixels in [0, 1], at the input's
            own size.
        image: The dreamt picture, at the input's own size.
        octave_objectives: The objective of each octave's result, smallest octave first.
        octave_sizes: Each octave's (height, width), smallest first.
        steps: Steps run.
        queue_ms: Milliseconds from the job's arrival to its first step.
        compute_ms: Milliseconds from its first step to its last.
        max_batch_jobs: The most jobs that shared a DeepDream batch with this one.
    """

    array: np.ndarray
    image: Image.Image
    octave_objectives: list[float] = field(default_factory=list)
    octave_sizes: list[tuple[int, int]] = field(default_factory=list)
    steps: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    max_batch_jobs: int = 0

    def __repr__(self) -> str:
        return (
            f"Dream(array={_describe_array(self.array)}, octaves={self.octave_sizes}, "
            f"octave_objectives={[round(v, 6) for v in self.octave_objectives]}, "
            f"steps={self.steps}, max_batch_jobs={self.max_batch_jobs})"
        )


def _describe_array(arr: np.ndarray | None) -> str | None:
    return None if arr is None else f"<{arr.dtype} {list(arr.shape)}>"


def _describe_image(img: Image.Image | None) -> str | None:
    return None if img is None else f"<{img.mode} {img.size}>"


InputLike: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
)
TargetLike: TypeAlias = int | np.integer | Neuron | None
LayersLike: TypeAlias = str | Sequence[str] | None
ObjectiveLike: TypeAlias = int | np.integer | Neuron | Layer
