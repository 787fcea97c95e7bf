"""The method base class and the plain types a method takes and gives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..errors import InvalidArgument
from ..models import ServedModel
from ..pictures import Drawn, Scene
from .options import IgOptions, LrpOptions, SmoothOptions
from .targets import NeuronTarget, Target, channels_first_hint, check_layer, check_target

if TYPE_CHECKING:
    from .attention_rollout import RolloutOptions


@dataclass(frozen=True)
class MethodRequest:
    """What a method needs of one request besides its input tensor."""

    target: Target | None  # None: the predicted class
    layers: tuple[str, ...] = ()
    top_k_channels: int = 0  # activations: keep the k channels of largest mean; 0 keeps all
    lrp: LrpOptions | None = None  # LRP's rule set (None: the defaults)
    smooth: SmoothOptions | None = None  # aggregate over noisy copies of the input
    ig: IgOptions | None = None  # integrated gradients' options (None: the defaults)
    rollout: RolloutOptions | None = None  # attention rollout's options; None: the defaults


# At most this many layers in one request: each one is a hook and a copy of its activations.
MAX_LAYERS_PER_REQUEST = 16


@dataclass
class BatchOutput:
    """What a method computed for a batch, still on the device."""

    logits: torch.Tensor  # [N, num_classes]
    arrays: torch.Tensor  # [N, ...] one raw result per item
    targets: list[Target]  # the targets explained, resolved per item
    warnings: tuple[str, ...] = ()
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # more [N, ...] results
    # [N, 3] float64 (attribution sum, score, baseline score) for methods whose result should
    # sum to the score's difference (LRP, integrated gradients); None for the others.
    completeness: torch.Tensor | None = None


@dataclass(frozen=True)
class ItemShare:
    """One item's share of its batch's result, on the CPU, with what the item asked for."""

    array: np.ndarray  # the raw result
    extras: dict[str, np.ndarray]  # further results, by name
    request: MethodRequest  # as `prepare` left it
    x: torch.Tensor  # the model input [C, H, W]


@dataclass
class Output:
    """One item's finished result: arrays to send and, when asked, encoded pictures (`draw`)."""

    array: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    png: bytes | None = None
    pngs: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the pictures cannot show


def no_default_layer_message(model: ServedModel, method: str) -> str:
    """Why a layer method has no default layer on `model`, and what to do instead."""
    last = model.layer_layouts.get(model.last_feature_layer)
    if last is None:
        return (
            f"method {method} needs a layer and model '{model.name}' has no spatial layer "
            "to default to; name one in `layers`"
        )
    return (
        f"method {method} needs a layer and model '{model.name}' has none to default to: its "
        f"last feature maps are {last.describe()} ('{model.last_feature_layer}' gives "
        f"{list(last.shape)}), which cannot be laid out on the input; name a layer in "
        f"`layers` ({channels_first_hint(model)})"
    )


class Method(ABC):
    """One interpretability method, run once per batch on the device-owning thread.

    Subclasses set `name` (the proto enum name without METHOD_, lowercase) and implement
    `run`. Everything a request can get wrong is checked in `prepare`, before batching,
    so a bad request never fails its batch-mates. `finish` turns one item's share of the
    batch into the arrays sent back, and `draw` into its pictures, with deepvis.render (the
    client's renderer, so that a client redraws the arrays alike); both run off the device.
    """

    name: ClassVar[str]
    # Layer methods work on `MethodRequest.layers` (default: the model's Grad-CAM layer).
    uses_layers: ClassVar[bool] = False
    max_layers: ClassVar[int] = 1
    # The main array may leave the device as float16 when every item of the batch wants
    # float16 and no picture; False for a method whose `finish` computes on it.
    half_on_device: ClassVar[bool] = True
    # Whether SmoothGrad / VarGrad (MethodRequest.smooth) can wrap the method: an input-space
    # attribution of the input alone, [C, H, W].
    smoothable: ClassVar[bool] = False
    # The request fields of method options this method takes ("lrp", "integrated_gradients");
    # the others are refused.
    option_fields: ClassVar[frozenset[str]] = frozenset()

    def serves(self, model: ServedModel) -> bool:
        """Whether the method can run on `model` at all (ListModels lists it for the model);
        a method made for some architectures refuses the others in `prepare`."""
        return True

    def prepare(self, model: ServedModel, request: MethodRequest) -> MethodRequest:
        """Checks `request` against `model` and fills in defaults.

        Args:
            model: the model the request names.
            request: target, layers and options of the request.

        Returns:
            the request to batch, with defaults filled in.

        Raises:
            InvalidArgument: for anything this method cannot serve.
        """
        check_target(model, request.target)
        self._check_options(request)
        if not self.uses_layers:
            return replace(request, layers=())
        layers = request.layers or ((model.default_cam_layer,) if model.default_cam_layer else ())
        if not layers:
            raise InvalidArgument(no_default_layer_message(model, self.name), field="layers")
        if len(layers) > self.max_layers:
            raise InvalidArgument(
                f"method {self.name} takes at most {self.max_layers} layer(s), got {len(layers)}",
                field="layers",
            )
        if len(set(layers)) != len(layers):
            raise InvalidArgument("layers must not repeat a name", field="layers")
        for name in layers:
            self.check_layer_shape(model, name, check_layer(model, name, "layers"))
        if request.top_k_channels < 0:
            raise InvalidArgument(
                f"top_k_channels must be >= 0, got {request.top_k_channels}", field="top_k_channels"
            )
        return replace(request, layers=tuple(layers))

    def _check_options(self, request: MethodRequest) -> None:
        """Refuses option groups this method does not take, naming those that do."""
        given = {"lrp": request.lrp, "integrated_gradients": request.ig}
        for name, value in given.items():
            if value is not None and name not in self.option_fields:
                owner = "lrp" if name == "lrp" else "integrated_gradients"
                raise InvalidArgument(
                    f"{name} options apply to method {owner} only, not to {self.name}",
                    field=name,
                )
        if request.smooth is not None and not self.smoothable:
            from . import REGISTRY

            takes = ", ".join(n for n, m in REGISTRY.items() if m.smoothable)
            raise InvalidArgument(
                f"smooth (SmoothGrad) applies to the input-space attributions {takes}; "
                f"not to {self.name}",
                field="smooth",
            )

    def check_layer_shape(  # noqa: B027 - a hook with nothing to do by default
        self, model: ServedModel, name: str, shape: tuple[int, ...]
    ) -> None:
        """Layer methods that need a spatial map refuse other layers here."""

    def batch_key(self, request: MethodRequest) -> Hashable:
        """Requests with equal keys can share a batch: everything that changes the graph."""
        neuron_layer = request.target.layer if isinstance(request.target, NeuronTarget) else None
        return (
            self.name,
            request.layers,
            neuron_layer,
            request.lrp,
            None if request.ig is None else request.ig.batch_key(),
            None if request.smooth is None else request.smooth.batch_key(),
        )

    def compute(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        """Runs the batch: `run`, or with SmoothGrad, `run` over the noisy copies' rows."""
        if requests[0].smooth is not None:
            from .smoothing import smooth_run

            return smooth_run(self, model, x, requests)
        return self.run(model, x, requests)

    @abstractmethod
    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        """Runs the method on a batch.

        Args:
            model: the served model (never mutated: no hooks left, no modules swapped).
            x: the batch of inputs [N, C, H, W] on the model's device.
            requests: per-item targets and layers, all with the same batch key.

        Returns:
            the logits, one raw result per item, the targets explained and any extras.
        """

    def finish(self, model: ServedModel, share: ItemShare) -> Output:
        """One item's arrays from its share of the batch (cheap: slicing).

        Args:
            model: the served model.
            share: the item's raw results, prepared request and model input.

        Returns:
            the arrays to send.
        """
        return Output(array=share.array, arrays=dict(share.extras))

    def draw(self, model: ServedModel, share: ItemShare, output: Output, scene: Scene) -> Drawn:
        """One item's pictures, when asked for (CPU thread): by default its main array drawn
        as the method's map (`deepvis.render.style_of(name)` says its family and overlay).

        Args:
            model: the served model.
            share: the item's raw results, prepared request and model input.
            output: what `finish` made of them.
            scene: the drawing options, the input region, the caption and the input image.

        Returns:
            the encoded pictures.
        """
        smooth = share.request.smooth
        # SmoothGrad's squares and VarGrad's variances are magnitudes: drawn from zero up,
        # whatever the method's own family.
        sign = "unsigned" if smooth is not None and smooth.kind != "smoothgrad" else None
        return Drawn(png=scene.draw(self.name, output.array, sign=sign))
