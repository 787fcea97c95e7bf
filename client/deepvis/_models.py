"""The client's public result and argument types: plain values, no protobuf."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypedDict, TypeVar, overload

import numpy as np
from PIL import Image

from deepvis import render
from deepvis._compat import Unpack
from deepvis._display import bundle, load_image

T = TypeVar("T")

__all__ = [
    "Comparison",
    "Completeness",
    "Dream",
    "DreamProgress",
    "Evaluation",
    "EvaluationProgress",
    "Explanation",
    "InputLike",
    "IntegratedGradients",
    "Layer",
    "LayerInfo",
    "LayersLike",
    "MapOptions",
    "MethodEvaluation",
    "ModelDescription",
    "ModelInfo",
    "Neuron",
    "ObjectiveLike",
    "OverlayOptions",
    "PerturbationCurve",
    "Prediction",
    "Progress",
    "Randomization",
    "Rollout",
    "Smooth",
    "TargetLike",
    "Visualization",
]


class MapOptions(TypedDict, total=False):
    """The drawing options `Explanation.heatmap` and `overlay` (and `Comparison`'s) hand on to
    `Explanation.picture`, which documents them and states their defaults."""

    size: tuple[int, int] | None
    sign: str | None
    colorbar: bool
    caption: bool


class OverlayOptions(MapOptions, total=False):
    """`Explanation.overlay`'s options for `Explanation.picture`, beside the image and alpha."""

    cmap: str | None
    clip: float | None
    scale: render.Scale | None
    base: str


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
class Smooth:
    """SmoothGrad / VarGrad: the method runs on noisy copies of the input and the results are
    aggregated per element (`explain(..., smooth=deepvis.Smooth(...))`). The server runs the
    copies as rows of its batches; the target is the request's, or the class predicted for the
    input itself.

    Attributes:
        samples: Noisy copies, 1 to 256 (each costs one run of the method); 0 means 25.
        noise: The noise's standard deviation as a fraction of the input's range (its maximum
            minus its minimum over the model input), in [0, 1]; 0 gives copies equal to the
            input.
        kind: "smoothgrad" (the mean), "smoothgrad_sq" (the mean of the squares) or
            "vargrad" (the variance over the copies, divided by their number).
        seed: Seed of the noise in [0, 2**64): the same seed gives the same result.
    """

    samples: int = 25
    noise: float = 0.15
    kind: str = "smoothgrad"
    seed: int = 0


@dataclass(frozen=True, eq=False)
class IntegratedGradients:
    """Integrated gradients' options (`explain(..., method="integrated_gradients",
    integrated_gradients=deepvis.IntegratedGradients(...))`).

    Attributes:
        steps: Points of the quadrature, or draws of expected gradients: 1 to 1024 (at least
            2 for the Riemann sums); 0 means 50. Each baseline takes `steps` points.
        method: "gausslegendre" (the default), "riemann_left", "riemann_right",
            "riemann_middle", "riemann_trapezoid" (Captum's names, points and weights), or
            "expected_gradients" (Captum's GradientShap without input noise: `steps` draws of
            a baseline and a point on the path).
        baseline: Where the path starts: "zero" (the all-zero model input, Captum's default),
            "black" (black pixels, normalised), "blur" (the input blurred by a Gaussian of
            `blur_sigma` pixels), "uniform" (`samples` images of uniform noise, drawn from
            `seed`) or "images" (`images`); None: "images" when `images` are given, else
            "zero".
        blur_sigma: "blur": the Gaussian's standard deviation in pixels, up to 100; 0 means a
            tenth of the input's shorter side.
        samples: "uniform": how many noise images, 1 to 16.
        images: "images": 1 to 16 baselines, each anything `explain` takes as its input.
        seed: Seed of the uniform baselines and of expected gradients' draws.
    """

    steps: int = 50
    method: str = "gausslegendre"
    baseline: str | None = None
    blur_sigma: float = 0.0
    samples: int = 1
    images: Sequence[InputLike] = ()
    seed: int = 0


@dataclass(frozen=True)
class Completeness:
    """How much of the explained score a result accounts for (LRP's conservation, integrated
    gradients' completeness): a result that explains the whole score sums to it.

    Attributes:
        attribution_sum: The sum of every element of the result array.
        score: The target's score at the input (its logit, or the neuron's value).
        baseline_score: Integrated gradients: the score at the baseline (the mean over the
            baselines or draws); LRP: 0.
        delta: attribution_sum - (score - baseline_score): integrated gradients' convergence
            delta (Captum's sign); for LRP the relevance the rules lost or created.
    """

    attribution_sum: float
    score: float
    baseline_score: float
    delta: float


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
        return _fields_repr(
            self,
            "name arch num_classes input methods",
            input=f"{self.channels}x{self.height}x{self.width}",
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
        image: The rendered result (a PNG, its pixels decoded on first use), or None when
            rendering was not asked for.
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
        cached: The server answered from its response cache (an identical earlier request's
            answer; the timings are then 0).
        layer: The layer a layer method read (activations: the one whose maps are `array`);
            "" for the other methods.
        source: The input `explain` was given (a path, bytes, a PIL image or uint8 pixels),
            kept for overlays (`overlay()` with no image); None for a preprocessed tensor.
        completeness: For LRP and integrated gradients, how much of the explained score the
            result accounts for (with SmoothGrad: the mean over the noisy copies); else None.

    Pictures are drawn locally from `array` by `deepvis.render`, as the server draws them:
    `heatmap()` draws the map alone, `overlay(image)` over the image as sent, `grid()` an
    activation layer's maps; with the same options as the request's, the pixels are the
    server's `image` (for a float32 array). In Jupyter an `Explanation` shows itself.
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
    cached: bool = False
    layer: str = ""
    source: Any = field(default=None, repr=False)
    completeness: Completeness | None = None

    def __repr__(self) -> str:
        top = self.predictions[0] if self.predictions else None
        return _fields_repr(
            self,
            "model method array image top target batch_size arrays images",
            top=repr(top),
            arrays=repr(list(self.arrays)),
            images=repr(list(self.images)),
        )

    def caption(self) -> str:
        """The pictures' caption: method · target (label and probability) · layer."""
        if self.method == "activations":
            return f"{render.caption(self.method, layer=self.layer)} · mean"
        return render.caption(self.method, self.target, self.predictions, self.layer)

    def picture(
        self,
        image: InputLike | None = None,
        *,
        overlay: bool | None = None,
        size: tuple[int, int] | None = None,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
        scale: render.Scale | None = None,
        sign: str | None = None,
        alpha: float = render.DEFAULT_ALPHA,
        base: str = "gray",
        colorbar: bool = False,
        caption: bool = False,
    ) -> render.Picture:
        """Draws the result's map locally, as the server draws it with the same options.

        Args:
            image: The image as sent, for an overlay; None: `source`.
            overlay: Over the image (True), alone (False), or the method's default (None:
                Grad-CAM and activations over the image).
            size: (width, height) of the picture, as PIL's `Image.size`; None: an overlay
                at the image's size, a map alone at its own (the model's input size).
            cmap: A colormap of `deepvis.render.colormaps()`; None: inferno for unsigned
                maps, RdBu_r for signed ones.
            clip: The percentile of |a| drawn at the colormap's end; None or 100: no clipping.
            scale: Draw on this `render.Scale` (e.g. one shared with other maps) instead.
            sign: "signed" or "unsigned" to override the method's family; None keeps it.
            alpha: How much of the map's colour an overlay shows, 0 to 1.
            base: An overlay's base: "gray" (a grayscale copy of the image) or "color".
            colorbar: Draw the colorbar with the scale's real values beside the picture.
            caption: Draw the caption (`caption()`) above the picture.

        Returns:
            The `render.Picture`: its image, scale, map and note.

        Raises:
            ValueError: The array was left out (`array=False`), an overlay has no image, or
                an option is invalid.
            OSError: The image cannot be read.
        """
        if self.array is None:
            raise ValueError(
                "the result array was left out (array=False): draw pictures from an explanation "
                "that has it, or use the server's `image`"
            )
        options = render.Options(
            size=size,
            cmap=cmap,
            clip=clip,
            sign=sign,
            overlay=overlay,
            alpha=alpha,
            base=base,
            colorbar=colorbar,
            caption=caption,
            scale=scale,
        )
        on_image = render.style_of(self.method).overlay if overlay is None else overlay
        picture_on = None
        if on_image:
            source = image if image is not None else self.source
            if source is None:
                raise ValueError(
                    "an overlay is drawn on the image as sent: pass it, e.g. "
                    "explanation.overlay('cat.jpg')"
                )
            picture_on = load_image(source)
        return render.draw(
            self.method,
            self.array,
            options,
            image=picture_on,
            region=self.input_region,
            title=self.caption(),
        )

    def heatmap(
        self,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
        scale: render.Scale | None = None,
        **options: Unpack[MapOptions],
    ) -> Image.Image:
        """The map alone, in the model's input space, as an RGB picture.

        Unsigned maps (Grad-CAM, saliency, activations' mean) go from 0 in a sequential
        colormap up; signed ones (gradients, integrated gradients) are symmetric about zero in
        a diverging one. A map that is zero everywhere is drawn neutral, with a
        `render.FlatMapWarning`. Arguments as for `picture()`.
        """
        _check_options(options, MapOptions.__optional_keys__, "heatmap")
        pic = self.picture(overlay=False, cmap=cmap, clip=clip, scale=scale, **options)
        return _warned(pic)

    def overlay(
        self,
        image: InputLike | None = None,
        alpha: float = render.DEFAULT_ALPHA,
        **options: Unpack[OverlayOptions],
    ) -> Image.Image:
        """The map laid over the image as sent, at that image's size (or `size`).

        The map covers the part of the image the model saw (`input_region`: after the
        model's resize and centre crop), resampled with correct pixel centres; the rest of the
        image is shown at half brightness. Arguments as for `picture()`; `image` defaults to
        the input `explain` was given.
        """
        _check_options(options, OverlayOptions.__optional_keys__, "overlay")
        pic = self.picture(image, overlay=True, alpha=alpha, **options)
        return _warned(pic)

    def grid(
        self,
        layer: str | None = None,
        *,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
        colorbar: bool = False,
        caption: bool = False,
    ) -> Image.Image:
        """An activation layer's feature maps as a grid of tiles labelled with their channel
        indices, ordered by mean activation, on one scale (the server's "<layer>.grid").

        Args:
            layer: The layer; None: the first one (`layer`).
            cmap, clip, colorbar, caption: As for `picture()`.

        Raises:
            ValueError: Not an activations result, or the layer's maps were not sent.
        """
        name = layer or self.layer
        maps = self.arrays.get(name)
        if self.method != "activations" or maps is None or maps.ndim != 3:
            raise ValueError(
                f"no feature maps of layer {name!r} here: a grid is drawn from an activations "
                f"result's [C, h, w] maps (arrays: {', '.join(self.arrays) or 'none'})"
            )
        pic = render.grid(maps, self.arrays.get(f"{name}.channels"), cmap=cmap, clip=clip)
        title = f"{render.caption(self.method, layer=name)} · {pic.caption}"
        return render.figure(
            pic.image,
            title=title if caption else None,
            scale=pic.scale if colorbar else None,
        )

    def _panels(self) -> tuple[list[tuple[str, Image.Image]], list[str]]:
        """The pictures a notebook shows: the input, the map with its colorbar (over the
        input when that is the method's way and the input is at hand), an activation grid."""
        panels: list[tuple[str, Image.Image]] = []
        notes: list[str] = []
        source = None
        if self.source is not None:
            try:
                source = load_image(self.source)
            except (OSError, ValueError):
                source = None
        if source is not None:
            panels.append(_panel("input", source.convert("RGB")))
        if self.array is not None:
            try:
                overlay = render.style_of(self.method).overlay and source is not None
                pic = self.picture(source, overlay=overlay)
                panels.append(_panel(self.caption(), pic.image, pic.scale))
                if pic.note:
                    notes.append(pic.note)
                if self.method == "activations" and self.layer in self.arrays:
                    panels.append((f"{self.layer} maps", self.grid(colorbar=True)))
            except ValueError as e:
                notes.append(f"not drawn: {e}")
        elif self.image is not None:
            panels.append(_panel(self.caption(), self.image.convert("RGB")))
        return panels, notes

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        panels, notes = self._panels()
        top = ", ".join(f"{p.label} ({p.score:.3f})" for p in self.predictions[:5]) or "-"
        rows = [
            ("model", self.model),
            ("method", self.method),
            ("target", render.caption("", self.target, self.predictions).lstrip(" ·") or "-"),
            ("top predictions", top),
            (
                "server",
                f"batch of {self.batch_size}, queued {self.queue_ms:.1f} ms, "
                f"computed {self.compute_ms:.1f} ms",
            ),
        ]
        if self.layer:
            rows.insert(2, ("layer", self.layer))
        return bundle(
            f"{self.caption()} on {self.model}",
            panels,
            rows=rows,
            notes=[*self.warnings, *notes],
            include=include,
            exclude=exclude,
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
        return _fields_repr(
            self,
            "model layers default_cam_layer non_relu_activations",
            model=repr(self.model.name),
            layers=f"<{len(self.layers)}>",
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
        return _fields_repr(self, "step steps objective image")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        summary = f"step {self.step}/{self.steps}, objective {self.objective:.4g}"
        panels = [] if self.image is None else [_panel(summary, self.image.convert("RGB"))]
        return bundle(summary, panels, include=include, exclude=exclude)


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
        return _fields_repr(
            self, "array images objective steps attribution max_batch_jobs", images=len(self.images)
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        panels = [_panel(f"image {i}", img.convert("RGB")) for i, img in enumerate(self.images)]
        notes: list[str] = []
        if self.attribution is not None:
            pic = render.draw("guided_backprop", self.attribution)
            panels.append(_panel("guided_backprop of the objective", pic.image, pic.scale))
            if pic.note:
                notes.append(pic.note)
        rows = [
            ("objective", f"{self.objective:.6g}"),
            ("steps", str(self.steps)),
            (
                "server",
                f"queued {self.queue_ms:.1f} ms, ran {self.compute_ms:.1f} ms, "
                f"batch shared by up to {self.max_batch_jobs} jobs",
            ),
        ]
        summary = (
            f"feature visualization: {len(self.images)} image(s), objective {self.objective:.4g}"
        )
        return bundle(summary, panels, rows=rows, notes=notes, include=include, exclude=exclude)


def _panel(
    title: str, image: Image.Image, scale: render.Scale | None = None
) -> tuple[str, Image.Image]:
    """A picture as a notebook or report shows it: small ones enlarged (nearest, said in the
    title), with its colorbar."""
    big, factor = render.zoom(image)
    return render.shown(title, factor), render.figure(big, scale=scale)


def _check_options(options: Mapping[str, object], allowed: frozenset[str], call: str) -> None:
    """Refuses the options of `picture` that `call` does not hand on (it sets them itself)."""
    if unknown := sorted(options.keys() - allowed):
        raise TypeError(f"{call}() got an unexpected keyword argument {unknown[0]!r}")


def _warned(picture: render.Picture) -> Image.Image:
    if picture.note is not None:
        warnings.warn(picture.note, render.FlatMapWarning, stacklevel=3)
    return picture.image


ScaleLike: TypeAlias = Literal["shared"] | None


@dataclass(eq=False)
class Comparison:
    """Several methods' explanations of one input, from one call (`Client.compare`).

    Attributes:
        explanations: One `Explanation` per method, by method name, in the order asked.
        source: The input `compare` was given, kept for overlays.

    `heatmaps()` and `overlays()` draw every method's map; with scale="shared" (the default)
    maps of one family share one scale: every signed map one symmetric bound, every unsigned
    map one bound, so that equal colours mean equal values. `composite()` puts them side by
    side; in Jupyter a `Comparison` shows itself so.
    """

    explanations: dict[str, Explanation]
    source: Any = field(default=None, repr=False)

    @property
    def methods(self) -> list[str]:
        """The methods, in the order asked."""
        return list(self.explanations)

    def __getitem__(self, method: str) -> Explanation:
        return self.explanations[method.replace("-", "_")]

    def __iter__(self) -> Any:
        return iter(self.explanations.values())

    def __len__(self) -> int:
        return len(self.explanations)

    @property
    def predictions(self) -> list[Prediction]:
        """The model's top predictions for the input (the same for every method)."""
        first = next(iter(self.explanations.values()))
        return first.predictions

    def __repr__(self) -> str:
        first = next(iter(self.explanations.values()))
        return (
            f"Comparison(model={first.model!r}, methods={self.methods!r}, target={first.target!r})"
        )

    def scales(
        self,
        scale: ScaleLike = "shared",
        *,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
        sign: str | None = None,
    ) -> dict[str, render.Scale]:
        """Each method's scale: its own (scale=None), or shared within its family.

        Raises:
            ValueError: `scale` is neither "shared" nor None, or an array was left out.
        """
        if scale not in ("shared", None):
            raise ValueError(f"scale must be 'shared' or None, not {scale!r}")
        own: dict[str, render.Scale] = {}
        for method, exp in self.explanations.items():
            if exp.array is None:
                raise ValueError(f"{method}: the result array was left out; nothing to draw")
            m = render.map_of(method, exp.array, sign)
            own[method] = render.scale_of(m.values, signed=m.signed, clip=clip, cmap=cmap)
        if scale is None:
            return own
        out = {}
        for signed in (True, False):
            family = {k: s for k, s in own.items() if s.signed == signed}
            if family:
                shared = render.shared_scale(list(family.values()))
                out.update({k: shared.with_cmap(s.cmap) for k, s in family.items()})
        return {k: out[k] for k in own}

    def heatmaps(
        self,
        scale: ScaleLike = "shared",
        *,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
        **options: Unpack[MapOptions],
    ) -> dict[str, Image.Image]:
        """Every method's map alone, by method (see `Explanation.heatmap`)."""
        scales = self.scales(scale, cmap=cmap, clip=clip, sign=options.get("sign"))
        return {m: exp.heatmap(scale=scales[m], **options) for m, exp in self.explanations.items()}

    def overlays(
        self,
        image: InputLike | None = None,
        scale: ScaleLike = "shared",
        *,
        alpha: float = render.DEFAULT_ALPHA,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
        base: str = "gray",
        **options: Unpack[MapOptions],
    ) -> dict[str, Image.Image]:
        """Every method's map over the image as sent, by method (see `Explanation.overlay`)."""
        source = load_image(image if image is not None else self._source())
        scales = self.scales(scale, cmap=cmap, clip=clip, sign=options.get("sign"))
        return {
            m: exp.overlay(source, alpha, scale=scales[m], base=base, **options)
            for m, exp in self.explanations.items()
        }

    def _source(self) -> Any:
        if self.source is None:
            raise ValueError("an overlay is drawn on the image as sent: pass it")
        return self.source

    def composite(
        self,
        image: InputLike | None = None,
        scale: ScaleLike = "shared",
        *,
        overlay: bool | None = None,
        cmap: str | None = None,
        clip: float | None = render.DEFAULT_CLIP,
    ) -> Image.Image:
        """The input and every method's map side by side, each titled and with its colorbar.

        Args:
            image: The image as sent; None: `source` (without one, maps are drawn alone).
            scale: "shared" (one scale per family) or None (each map its own).
            overlay: Maps over the image (True), alone (False), or each method's way (None).
            cmap, clip: As for `Explanation.picture`.
        """
        return render.composite(self._panels(image, scale, overlay, cmap, clip))

    def _panels(
        self,
        image: InputLike | None,
        scale: ScaleLike,
        overlay: bool | None,
        cmap: str | None,
        clip: float | None,
    ) -> list[tuple[str, Image.Image]]:
        src = image if image is not None else self.source
        source = load_image(src) if src is not None else None
        scales = self.scales(scale, cmap=cmap, clip=clip)
        panels = [] if source is None else [_panel("input", source.convert("RGB"))]
        for m, exp in self.explanations.items():
            on = render.style_of(m).overlay if overlay is None else overlay
            pic = exp.picture(source, overlay=on and source is not None, scale=scales[m])
            panels.append(_panel(exp.caption(), pic.image, pic.scale))
        return panels

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        first = next(iter(self.explanations.values()))
        notes = [w for exp in self for w in exp.warnings]
        try:
            panels = self._panels(None, "shared", None, None, render.DEFAULT_CLIP)
        except ValueError as e:
            panels, notes = [], [*notes, f"not drawn: {e}"]
        top = ", ".join(f"{p.label} ({p.score:.3f})" for p in first.predictions[:5]) or "-"
        rows = [
            ("model", first.model),
            ("target", render.caption("", first.target, first.predictions).lstrip(" ·") or "-"),
            ("top predictions", top),
            ("scale", "shared within each family (signed, unsigned)"),
        ]
        summary = f"{', '.join(self.methods)} on {first.model}"
        return bundle(summary, panels, rows=rows, notes=notes, include=include, exclude=exclude)


@dataclass(eq=False)
class EvaluationProgress:
    """Progress of a running evaluation.

    Attributes:
        done: Work done, in rows: one input through a forward pass or an explanation
            (integrated gradients: one per quadrature point).
        total: Work in all, in the same rows.
        stage: What the last piece of work done was part of, e.g. "deletion grad_cam".
    """

    done: int
    total: int
    stage: str = ""


@dataclass(eq=False)
class PerturbationCurve:
    """Deletion or insertion of one method on every input (Petsiuk et al. 2018).

    Attributes:
        curve: float32 [N, steps + 1]: the explained class's probability at each step, the
            unchanged (deletion) or blurred (insertion) input first.
        auc: float32 [N]: the normalised trapezoid area under each curve, in [0, 1]. Deletion:
            lower is better; insertion: higher is better.
    """

    curve: np.ndarray
    auc: np.ndarray

    def plot(self, title: str = "", size: tuple[int, int] = (320, 200)) -> Image.Image:
        """The curves as a line plot (mean over inputs bold, each input thin)."""
        from deepvis._curves import curve_plot

        x = np.linspace(0.0, 1.0, self.curve.shape[1])
        return curve_plot(
            {f"AUC {float(np.mean(self.auc)):.3f}": self.curve},
            x=x,
            title=title,
            x_label="fraction of pixels",
            y_label="probability",
            size=size,
        )


@dataclass(eq=False)
class Randomization:
    """Model-parameter randomization of one method (Adebayo et al. 2018): how its map on
    every input changes as the model's layers are re-initialized, top-down.

    Attributes:
        layers: The re-initialized layers, top-down: the curves' columns.
        spearman: float32 [N, L] cascading: Spearman rank correlation of |map| with the
            trained model's once layers 1..k are re-initialized (the last column: all of
            them); None when not asked for. NaN where a map is constant.
        ssim: float32 [N, L] cascading: SSIM of the max-normalised 2-D maps.
        independent_spearman: float32 [N, L]: with layer k alone re-initialized.
        independent_ssim: float32 [N, L]: the same by SSIM.
    """

    layers: tuple[str, ...]
    spearman: np.ndarray | None = None
    ssim: np.ndarray | None = None
    independent_spearman: np.ndarray | None = None
    independent_ssim: np.ndarray | None = None

    @property
    def final_spearman(self) -> np.ndarray | None:
        """float32 [N]: the cascading Spearman once every layer is re-initialized."""
        return None if self.spearman is None else self.spearman[:, -1]

    @property
    def final_ssim(self) -> np.ndarray | None:
        """float32 [N]: the cascading SSIM once every layer is re-initialized."""
        return None if self.ssim is None else self.ssim[:, -1]

    def plot(self, title: str = "", size: tuple[int, int] = (320, 200)) -> Image.Image:
        """The cascading curves (Spearman and SSIM, mean over inputs bold) against the
        number of layers re-initialized; the independent ones when only those were asked."""
        from deepvis._curves import curve_plot

        cascading = self.spearman is not None
        rho = self.spearman if cascading else self.independent_spearman
        ssim = self.ssim if cascading else self.independent_ssim
        series = {"Spearman": rho, "SSIM": ssim}
        return curve_plot(
            {k: v for k, v in series.items() if v is not None},
            x=np.arange(1, len(self.layers) + 1, dtype=np.float64),
            title=title,
            x_label="layers re-initialized" if cascading else "layer re-initialized",
            y_label="similarity",
            size=size,
        )


@dataclass(eq=False)
class MethodEvaluation:
    """One method's sanity checks and faithfulness metrics on every input of an evaluation;
    each is None when it was not asked for.

    Attributes:
        method: The method, as in `methods()`.
        layer: The layer a layer method read; None for the other methods.
        deletion: Deletion curves and areas.
        insertion: Insertion curves and areas.
        randomization: Model-parameter randomization curves.
        infidelity: float32 [N]: infidelity (Captum's `infidelity`); lower is better.
        sensitivity: float32 [N]: max-sensitivity (Captum's `sensitivity_max`); lower is
            better.
        maps: float32 [N, ...]: with `return_maps`, the method's result on each input (as
            `explain` gives it), the one every metric was computed from.
    """

    method: str
    layer: str | None = None
    deletion: PerturbationCurve | None = None
    insertion: PerturbationCurve | None = None
    randomization: Randomization | None = None
    infidelity: np.ndarray | None = None
    sensitivity: np.ndarray | None = None
    maps: np.ndarray | None = None


class _OfTheOnlyMethod(Generic[T]):
    """An `Evaluation` attribute that is its only method's attribute of the same name (an
    AttributeError that says how to index it when it has several)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _OfTheOnlyMethod[T]: ...
    @overload
    def __get__(self, obj: Evaluation, owner: type | None = None) -> T: ...
    def __get__(self, obj: Evaluation | None, owner: type | None = None) -> T | _OfTheOnlyMethod[T]:
        if obj is None:
            return self
        value: T = getattr(obj._only(), self.name)
        return value


@dataclass(eq=False)
class Evaluation:
    """The result of one evaluate call: per method, its metrics on every input.

    With one method, its metrics are also this object's own attributes (`deletion`,
    `insertion`, `randomization`, `infidelity`, `sensitivity`, `layer`); with several, index
    it by method name: `evaluation["grad_cam"].deletion.auc` (also `maps`, with
    `return_maps`).

    Attributes:
        model: The model evaluated.
        classes: The class explained, per input.
        steps: Deletion and insertion steps.
        methods: Each method's `MethodEvaluation`, in the order asked for.
        layers: The re-initialized layers, top-down (empty without randomization).
        work: Device work done, in `EvaluationProgress` rows.
        queue_ms: Milliseconds from arrival to the first piece of work.
        compute_ms: Milliseconds from the first piece of work to the last.
        warnings: Caveats the server attached.
        max_batch_jobs: The most evaluations (this one included) whose work shared a batch.
    """

    model: str
    classes: list[int]
    steps: int
    methods: dict[str, MethodEvaluation]
    layers: tuple[str, ...] = ()
    work: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)
    max_batch_jobs: int = 0

    def __getitem__(self, method: str) -> MethodEvaluation:
        key = method.replace("-", "_")
        if key not in self.methods:
            raise KeyError(f"{method!r} was not evaluated; evaluated: {', '.join(self.methods)}")
        return self.methods[key]

    def _only(self) -> MethodEvaluation:
        if len(self.methods) != 1:
            raise AttributeError(
                f"this evaluation has {len(self.methods)} methods; index it by name: "
                + ", ".join(f"evaluation[{m!r}]" for m in self.methods)
            )
        return next(iter(self.methods.values()))

    # With one method, its metrics read as the evaluation's own (see the class docstring);
    # not annotated, so that the dataclass does not take them for fields.
    method = _OfTheOnlyMethod[str]()
    layer = _OfTheOnlyMethod[str | None]()
    deletion = _OfTheOnlyMethod[PerturbationCurve | None]()
    insertion = _OfTheOnlyMethod[PerturbationCurve | None]()
    randomization = _OfTheOnlyMethod[Randomization | None]()
    infidelity = _OfTheOnlyMethod[np.ndarray | None]()
    sensitivity = _OfTheOnlyMethod[np.ndarray | None]()
    maps = _OfTheOnlyMethod[np.ndarray | None]()

    def __repr__(self) -> str:
        return _fields_repr(
            self,
            "model methods inputs steps layers",
            methods=repr(list(self.methods)),
            inputs=len(self.classes),
            layers=f"<{len(self.layers)}>",
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
        return _fields_repr(
            self, "step steps octave objective image", octave=f"{self.octave}/{self.octaves}"
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
        return _fields_repr(
            self,
            "array octaves octave_objectives steps max_batch_jobs",
            octaves=self.octave_sizes,
            octave_objectives=[round(v, 6) for v in self.octave_objectives],
        )


def _fields_repr(obj: object, names: str, **shown: object) -> str:
    """`Type(name=value, ...)` for the space-separated `names`: a value in `shown` is written
    as it is (str()); any other is the attribute of that name, an array or a picture described
    (dtype and shape, mode and size), a float to 6 significant digits, anything else as repr."""
    fields = (f"{n}={shown[n] if n in shown else _show(getattr(obj, n))}" for n in names.split())
    return f"{type(obj).__name__}({', '.join(fields)})"


def _show(value: object) -> str:
    if isinstance(value, np.ndarray):
        return str(_describe_array(value))
    if isinstance(value, Image.Image):
        return str(_describe_image(value))
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


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
