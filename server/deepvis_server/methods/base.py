"""The method base class, target types and the hook helpers every method shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from ..models import ServedModel


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
    layer: str = ""


@dataclass
class BatchOutput:
    """What a method computed for a batch, still on the device."""

    logits: torch.Tensor  # [N, num_classes]
    arrays: torch.Tensor  # [N, ...] one raw result per item
    targets: list[Target]  # the targets explained, resolved per item
    warnings: tuple[str, ...] = ()


def check_target(model: ServedModel, target: Target | None) -> None:
    """Refuses targets outside the model before they can reach a batch."""
    if target is None:
        return
    if isinstance(target, ClassTarget):
        if not 0 <= target.index < model.spec.num_classes:
            raise InvalidArgument(
                f"target.class_index must be in [0, {model.spec.num_classes}) for model "
                f"'{model.name}', got {target.index}",
                field="target.class_index",
            )
        return
    shape = model.layer_shapes.get(target.layer)
    if shape is None:
        raise InvalidArgument(
            f"target.neuron.layer '{target.layer[:200]}' is not a layer of model '{model.name}' "
            f"(layer names are those of ListModels/DescribeModel, e.g. {model.example_layers()})",
            field="target.neuron.layer",
        )
    if len(shape) == 0:
        raise InvalidArgument(
            f"layer '{target.layer}' has no channel dimension", field="target.neuron.layer"
        )
    if not 0 <= target.channel < shape[0]:
        raise InvalidArgument(
            f"target.neuron.channel must be in [0, {shape[0]}) for layer '{target.layer}', "
            f"got {target.channel}",
            field="target.neuron.channel",
        )
    if (target.y is None) != (target.x is None):
        raise InvalidArgument("target.neuron: set both y and x, or neither", field="target.neuron")
    if target.y is not None and target.x is not None:
        if len(shape) != 3:
            raise InvalidArgument(
                f"target.neuron: layer '{target.layer}' output is {list(shape)}, it has no y, x",
                field="target.neuron",
            )
        if not (0 <= target.y < shape[1] and 0 <= target.x < shape[2]):
            raise InvalidArgument(
                f"target.neuron y, x must be in [0, {shape[1]}) x [0, {shape[2]}) for layer "
                f"'{target.layer}', got ({target.y}, {target.x})",
                field="target.neuron",
            )


@contextmanager
def capture_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Records `module`'s output (the last call's, for a reused module) while the block runs.

    The hook is removed on every exit path. The output is cloned because a later in-place
    op (ReLU(inplace=True) after a conv) would otherwise rewrite it and its graph.
    """
    saved: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            saved[:] = [out.clone()]

    handle = module.register_forward_hook(hook)
    try:
        yield saved
    finally:
        handle.remove()


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
    `run`. Everything a request can get wrong is checked in `validate`, before batching,
    so a bad request never fails its batch-mates.
    """

    name: ClassVar[str]

    def validate(self, model: ServedModel, request: MethodRequest) -> None:
        """Raises InvalidArgument for anything in `request` this method cannot serve.

        Args:
            model: the model the request names.
            request: target and layer of the request.
        """
        check_target(model, request.target)

    def batch_key(self, request: MethodRequest) -> Hashable:
        """Requests with equal keys can share a batch: everything that changes the graph."""
        neuron_layer = request.target.layer if isinstance(request.target, NeuronTarget) else None
        return (self.name, request.layer, neuron_layer)

    @abstractmethod
    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        """Runs the method on a batch.

        Args:
            model: the served model (never mutated: no hooks left, no modules swapped).
            x: the batch of inputs [N, C, H, W] on the model's device.
            requests: per-item targets and layer, all with the same batch key.

        Returns:
            the logits, one raw result per item and the targets explained.
        """

    def render(self, array: np.ndarray, model: ServedModel) -> Image.Image:
        """A picture of one item's raw result."""
        raise NotImplementedError
