"""What a request explains (a class or a neuron), checked against the model, and its score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidArgument
from ..models import ServedModel
from .hooks import forward_capturing


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
    """Which layer to use when one that is no map of the input is refused, in words."""
    if model.default_cam_layer:
        name = model.default_cam_layer
        shape = list(model.view_shape(name) or ())
        return f"use '{name}' instead, the model's default layer, read as [C, h, w] = {shape}"
    if model.channels_first_layer:
        name = model.channels_first_layer
        shape = list(model.layer_shapes[name])
        return f"the model's last channels-first feature map is '{name}' {shape}"
    return "the model has no feature map of the input"


def layout_problem(model: ServedModel, name: str, lead: str) -> str | None:
    """Why a request part that reads a layer's channels and places cannot read layer `name`
    (tokens without a patch grid), or None. `lead` says what reads them, e.g. "a neuron's
    channel indexes". Channels-first and channels-last maps, tokens on a patch grid (read
    as [C, h, w], see `LayerLayout.map_shape`) and vectors [F] pass; so does anything else
    (its first axis is read as its channels)."""
    layout = model.layer_layouts.get(name)
    if layout is None or layout.kind != "tokens" or layout.grid is not None:
        return None
    return (
        f"{lead} the feature axis of a layer laid out on the input (channels-first, "
        f"channels-last or tokens on a patch grid) or of a vector [F]; layer '{name[:200]}' "
        f"gives {list(layout.shape)}, {layout.describe()}, which cannot be laid out on the "
        f"input; {channels_first_hint(model)}"
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
    # Channels-last and token layers are read as their maps [C, h, w]: channel indexes the
    # feature axis, y and x the map (the patch grid).
    shape = model.view_shape(target.layer)
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
    read_as = _read_as(model, target.layer)
    if not 0 <= target.channel < shape[0]:
        raise InvalidArgument(
            f"{neuron}.channel must be in [0, {shape[0]}) for layer '{target.layer}'"
            f"{read_as}, got {target.channel}",
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
                f"'{target.layer}'{read_as}, got ({target.y}, {target.x})",
                field=neuron,
            )


def _read_as(model: ServedModel, name: str) -> str:
    """For a layer the methods read in another layout than its own, how, in words."""
    layout = model.layer_layouts.get(name)
    if layout is None or layout.kind == "nchw" or layout.map_shape is None:
        return ""
    return f" (its {layout.describe()} output, read as [C, h, w] = {list(layout.map_shape)})"


def forward_and_score(
    model: ServedModel,
    x: torch.Tensor,
    targets: Sequence[Target | None],
    layers: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor, list[Target], dict[str, torch.Tensor]]:
    """One forward pass (grad enabled) capturing `layers`; returns the logits, the sum over
    items of each item's target score, the resolved targets and the captured outputs.

    `targets` holds one target per item (None: the predicted class). Items that share a
    batch key have either all class targets or all neuron targets of one layer.
    """
    first = targets[0]
    names = list(
        dict.fromkeys([*layers, *([first.layer] if isinstance(first, NeuronTarget) else [])])
    )
    logits, acts = forward_capturing(model, x, names)
    if isinstance(first, NeuronTarget):
        resolved: list[Target] = [t for t in targets if t is not None]
        score = select_neurons(model.view(first.layer, acts[first.layer]), resolved)
    else:
        classes = resolve_class_targets(logits, targets)
        score = logits.gather(1, classes[:, None]).sum()
        resolved = [ClassTarget(int(c)) for c in classes.tolist()]
    return logits, score, resolved, acts


def select_neurons(act: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Sum over items of each item's selected neuron (one element or a whole channel) of
    `act`, the layer's output as the methods read it (`ServedModel.view`)."""
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


def item_scores(act: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Each item's own target score [N]: a class's logit (`act` the logits) or a neuron's value
    (`act` its layer's output), every target resolved."""
    first = targets[0]
    if isinstance(first, ClassTarget):
        idx = torch.tensor(
            [t.index for t in targets if isinstance(t, ClassTarget)], device=act.device
        )
        return act.gather(1, idx[:, None])[:, 0]
    rows = []
    for i, t in enumerate(targets):
        assert isinstance(t, NeuronTarget)
        rows.append(act[i, t.channel, t.y, t.x] if t.y is not None else act[i, t.channel].sum())
    return torch.stack(rows)


def target_scores(model: ServedModel, x: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Each item's target score [N] at `x` (no gradient), the targets resolved."""
    first = targets[0]
    with torch.no_grad():
        if isinstance(first, NeuronTarget):
            _, acts = forward_capturing(model, x, [first.layer])
            return item_scores(acts[first.layer], targets)
        return item_scores(model.module(x), targets)
