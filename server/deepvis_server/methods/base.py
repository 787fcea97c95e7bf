"""The method base class, target types and the hook helpers every method shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from ..models import ServedModel
from ..pictures import to_png


@dataclass(frozen=True)
class ClassTarget:
    """A class logit."""

    index: int


@dataclass(frozen=True)
class NeuronTarget:
    """A channel of a layer's output (its sum), or one element of it when y and x are set."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None


Target = ClassTarget | NeuronTarget


@dataclass(frozen=True)
class MethodRequest:
    """What a method needs of one request besides its input tensor."""

    target: Target | None  # None: the predicted class
    layers: tuple[str, ...] = ()
    top_k_channels: int = 0  # activations: keep the k channels of largest mean; 0 keeps all


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


@dataclass
class Output:
    """One item's finished result: arrays to send and, when asked, encoded pictures."""

    array: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    png: bytes | None = None
    pngs: dict[str, bytes] = field(default_factory=dict)


def check_layer(model: ServedModel, name: str, field_name: str) -> tuple[int, ...]:
    """The output shape of a layer a request names; INVALID_ARGUMENT naming valid ones if none."""
    shape = model.layer_shapes.get(name)
    if shape is None:
        raise InvalidArgument(
            f"{field_name} '{name[:200]}' is not a layer of model '{model.name}' with a tensor "
            f"output; valid names are those DescribeModel lists, e.g. {model.example_layers()}",
            field=field_name,
        )
    return shape


def channels_first_hint(model: ServedModel) -> str:
    """Which channels-first layer to use when one of another layout is refused, in words."""
    if model.default_cam_layer:
        name = model.default_cam_layer
        shape = list(model.layer_shapes[name])
        return f"use '{name}' instead, the model's last feature map, channels-first {shape}"
    if model.channels_first_layer:
        name = model.channels_first_layer
        shape = list(model.layer_shapes[name])
        last = model.layer_layouts.get(model.last_feature_layer)
        later = "token" if last is not None and last.kind == "tokens" else "channels-last"
        return (
            f"the model's last channels-first feature map is '{name}' {shape}, which runs "
            f"before its {later} layers"
        )
    return "the model has no channels-first feature map [C, h, w]"


def layout_problem(model: ServedModel, name: str, lead: str) -> str | None:
    """Why a request part that reads channels on the first axis cannot read layer `name`
    (channels-last or token layers), or None. `lead` says what reads them, e.g. "a neuron's
    channel indexes"."""
    layout = model.layer_layouts.get(name)
    if layout is None or layout.kind not in ("nhwc", "tokens"):
        return None
    return (
        f"{lead} the first axis of a channels-first layer [C, h, w] or a vector [F]; layer "
        f"'{name[:200]}' gives {list(layout.shape)}, {layout.describe()}, whose first axis is "
        f"not its channels; {channels_first_hint(model)}"
    )


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
        f"{list(last.shape)}), not channels-first [C, h, w]; name a layer in `layers` "
        f"({channels_first_hint(model)})"
    )


def check_target(model: ServedModel, target: Target | None, field: str = "target") -> None:
    """Refuses targets outside the model before they can reach a batch.

    Args:
        model: the model the request names.
        target: the class or neuron to check; None (the predicted class) always passes.
        field: the request field that holds the target, as the request names it: "target"
            for Explain, "objective" for Visualize's objective. Every error names
            `<field>.class_index`, `<field>.neuron.layer`, ... accordingly.
    """
    if target is None:
        return
    if isinstance(target, ClassTarget):
        if not 0 <= target.index < model.spec.num_classes:
            raise InvalidArgument(
                f"{field}.class_index must be in [0, {model.spec.num_classes}) for model "
                f"'{model.name}', got {target.index}",
                field=f"{field}.class_index",
            )
        return
    neuron = f"{field}.neuron"
    shape = model.layer_shapes.get(target.layer)
    if shape is None:
        raise InvalidArgument(
            f"{neuron}.layer '{target.layer[:200]}' is not a layer of model '{model.name}' "
            f"(layer names are those of ListModels/DescribeModel, e.g. {model.example_layers()})",
            field=f"{neuron}.layer",
        )
    if len(shape) == 0:
        raise InvalidArgument(
            f"{neuron}.layer '{target.layer}' has no channel dimension", field=f"{neuron}.layer"
        )
    if problem := layout_problem(model, target.layer, "a neuron's channel indexes"):
        raise InvalidArgument(problem, field=f"{neuron}.layer")
    if not 0 <= target.channel < shape[0]:
        raise InvalidArgument(
            f"{neuron}.channel must be in [0, {shape[0]}) for layer '{target.layer}', "
            f"got {target.channel}",
            field=f"{neuron}.channel",
        )
    if (target.y is None) != (target.x is None):
        raise InvalidArgument(f"{neuron}: set both y and x, or neither", field=neuron)
    if target.y is not None and target.x is not None:
        if len(shape) != 3:
            raise InvalidArgument(
                f"{neuron}: layer '{target.layer}' output is {list(shape)}, it has no y, x",
                field=neuron,
            )
        if not (0 <= target.y < shape[1] and 0 <= target.x < shape[2]):
            raise InvalidArgument(
                f"{neuron} y, x must be in [0, {shape[1]}) x [0, {shape[2]}) for layer "
                f"'{target.layer}', got ({target.y}, {target.x})",
                field=neuron,
            )


@contextmanager
def capture_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Records `module`'s output (the last call's, for a reused module) while the block runs.

    The hook is removed on every exit path. The rest of the network runs on a clone of the
    output (as Captum does), so a later in-place op (ReLU(inplace=True) after a conv) cannot
    rewrite the saved tensor, and gradients with respect to it are those of the layer.
    """
    saved: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _inp: object, out: object) -> object:
        if isinstance(out, torch.Tensor):
            saved[:] = [out]
            return out.clone()  # downstream gets the clone, so in-place ops leave `out` alone
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield saved
    finally:
        handle.remove()


def forward_capturing(
    model: ServedModel, x: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass returning the logits and the outputs of the named layers; every hook
    is gone afterwards, whatever happened."""
    with ExitStack() as stack:
        saved = {n: stack.enter_context(capture_output(model.layers[n])) for n in names}
        logits = model.module(x)
    return logits, {n: s[0] for n, s in saved.items()}


def forward_and_score(
    model: ServedModel,
    x: torch.Tensor,
    requests: Sequence[MethodRequest],
    layers: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor, list[Target], dict[str, torch.Tensor]]:
    """One forward pass (grad enabled) capturing `layers`; returns the logits, the sum over
    items of each item's target score, the resolved targets and the captured outputs.

    All requests share a batch key, so either all target classes or all target neurons of
    one layer.
    """
    first = requests[0].target
    names = list(
        dict.fromkeys([*layers, *([first.layer] if isinstance(first, NeuronTarget) else [])])
    )
    logits, acts = forward_capturing(model, x, names)
    if isinstance(first, NeuronTarget):
        resolved: list[Target] = [r.target for r in requests if r.target is not None]
        score = select_neurons(acts[first.layer], resolved)
    else:
        classes = resolve_class_targets(logits, [r.target for r in requests])
        score = logits.gather(1, classes[:, None]).sum()
        resolved = [ClassTarget(int(c)) for c in classes.tolist()]
    return logits, score, resolved, acts


def select_neurons(act: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Sum over items of each item's selected neuron (one element or a whole channel)."""
    total = act.new_zeros(())
    for i, t in enumerate(targets):
        assert isinstance(t, NeuronTarget)
        if t.y is not None and t.x is not None:
            total = total + act[i, t.channel, t.y, t.x]
        else:
            total = total + act[i, t.channel].sum()
    return total


def resolve_class_targets(logits: torch.Tensor, targets: Sequence[Target | None]) -> torch.Tensor:
    """Class index per item: the requested one, or the predicted class where none was given."""
    predicted = logits.argmax(dim=1)
    given = [t.index if isinstance(t, ClassTarget) else -1 for t in targets]
    idx = torch.tensor(given, device=logits.device)
    return torch.where(idx >= 0, idx, predicted)


class Method(ABC):
    """One interpretability method, run once per batch on the device-owning thread.

    Subclasses set `name` (the proto enum name without METHOD_, lowercase) and implement
    `run`. Everything a request can get wrong is checked in `prepare`, before batching,
    so a bad request never fails its batch-mates. `finish` turns one item's share of the
    batch into what is sent back; it runs on a CPU thread, off the device.
    """

    name: ClassVar[str]
    # Layer methods work on `MethodRequest.layers` (default: the model's Grad-CAM layer).
    uses_layers: ClassVar[bool] = False
    max_layers: ClassVar[int] = 1

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

    def check_layer_shape(  # noqa: B027 - a hook with nothing to do by default
        self, model: ServedModel, name: str, shape: tuple[int, ...]
    ) -> None:
        """Layer methods that need a spatial map refuse other layers here."""

    def batch_key(self, request: MethodRequest) -> Hashable:
        """Requests with equal keys can share a batch: everything that changes the graph."""
        neuron_layer = request.target.layer if isinstance(request.target, NeuronTarget) else None
        return (self.name, request.layers, neuron_layer)

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

    def finish(
        self,
        model: ServedModel,
        array: np.ndarray,
        extras: dict[str, np.ndarray],
        request: MethodRequest,
        x: torch.Tensor,
        render: bool,
    ) -> Output:
        """One item's output from its share of the batch (CPU thread).

        Args:
            model: the served model.
            array: the item's raw result.
            extras: the item's further results, by name.
            request: the item's prepared request.
            x: the item's model input [C, H, W] (for pictures over the input).
            render: whether pictures are wanted.

        Returns:
            the arrays to send and, when `render`, the encoded pictures.
        """
        return Output(
            array=array,
            arrays=dict(extras),
            png=to_png(self.picture(array, model)) if render else None,
        )

    def picture(self, array: np.ndarray, model: ServedModel) -> Image.Image:
        """A picture of one item's main result."""
        raise NotImplementedError
