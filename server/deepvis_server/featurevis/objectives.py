"""Feature-visualization objectives: per-row scores to maximise, vectorised over a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..methods.targets import ClassTarget, NeuronTarget, Target, check_layer, check_target
from ..models import ServedModel

__all__ = [
    "Channel",
    "ClassLogit",
    "Layer",
    "Neuron",
    "Objective",
    "ObjectivePlan",
    "diversity_layer",
    "diversity_penalty",
    "explain_target",
    "last_spatial_layer",
]

# Where ClassLogit and friends read from: the model's output, not a hooked layer.
LOGITS = ""


class Objective(ABC):
    """A quantity of the model's response to an image; the renderer maximises it per row.

    Subclasses are frozen dataclasses with a `negate` field (minimise instead). `value` is
    the named quantity itself, before negation, so reports read in the model's own units.
    Rows with equal `group_key` are scored in one vectorised gather.
    """

    negate: bool
    kind: ClassVar[str]

    @property
    @abstractmethod
    def source(self) -> str:
        """The layer whose output the objective reads; LOGITS ("") for the model's output."""

    def layers(self) -> frozenset[str]:
        """Layers the runner must capture with forward hooks for this objective."""
        return frozenset({self.source}) if self.source != LOGITS else frozenset()

    @abstractmethod
    def validate(self, model: ServedModel) -> None:
        """Raises InvalidArgument when the objective does not fit `model`."""

    def group_key(self) -> tuple[str, str]:
        return (self.kind, self.source)

    @classmethod
    @abstractmethod
    def plan(
        cls, objectives: Sequence[Objective], shape: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        """Index tensors for `values`, built once per batch composition, not per step."""

    @staticmethod
    def values(source: torch.Tensor, *index: torch.Tensor) -> torch.Tensor:
        """The objective of each row of `source` [G, ...] (a group's rows), shape [G]: here
        what `plan`'s index tensors pick in the row, averaged when that is more than one
        element (a channel's map)."""
        rows = torch.arange(source.shape[0], device=source.device)
        key = (rows, *index)  # not source[rows, *index]: Python 3.11 syntax
        picked = source[key]
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked


def _long(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long, device=device)


class _RowIndexed(Objective):
    """An objective that picks one index of its source in each row (a channel, a class)."""

    @abstractmethod
    def row_index(self) -> int:
        """The index this objective picks."""

    @classmethod
    def plan(
        cls, objectives: Sequence[Objective], shape: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        return (_long([o.row_index() for o in objectives if isinstance(o, _RowIndexed)], device),)


@dataclass(frozen=True)
class _LayerObjective(Objective):
    """An objective read off a layer's output (its `source`)."""

    layer: str

    @property
    def source(self) -> str:
        return self.layer


@dataclass(frozen=True)
class Neuron(_LayerObjective):
    """One element of a layer's output: channel at (y, x); the centre when y and x are None."""

    channel: int
    y: int | None = None
    x: int | None = None
    negate: bool = False
    kind: ClassVar[str] = "neuron"

    def validate(self, model: ServedModel) -> None:
        check_target(model, NeuronTarget(self.layer, self.channel, self.y, self.x), "objective")

    @classmethod
    def plan(
        cls, objectives: Sequence[Objective], shape: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        objs = [o for o in objectives if isinstance(o, Neuron)]
        channels = _long([o.channel for o in objs], device)
        if len(shape) < 3:  # no spatial dims: the channel is the neuron
            return (channels,)
        # Lucid's neuron objective reads the centre: the position whose receptive field is
        # most inside the image, away from the padding.
        ys = _long([shape[1] // 2 if o.y is None else o.y for o in objs], device)
        xs = _long([shape[2] // 2 if o.x is None else o.x for o in objs], device)
        return (channels, ys, xs)


@dataclass(frozen=True)
class Channel(_LayerObjective, _RowIndexed):
    """The mean of one channel's feature map."""

    channel: int
    negate: bool = False
    kind: ClassVar[str] = "channel"

    def validate(self, model: ServedModel) -> None:
        check_target(model, NeuronTarget(self.layer, self.channel), "objective")

    def row_index(self) -> int:
        return self.channel


@dataclass(frozen=True)
class ClassLogit(_RowIndexed):
    """The pre-softmax logit of a class (Simonyan et al.'s class model visualization)."""

    index: int
    negate: bool = False
    kind: ClassVar[str] = "class_logit"

    @property
    def source(self) -> str:
        return LOGITS

    def validate(self, model: ServedModel) -> None:
        check_target(model, ClassTarget(self.index), "objective")

    def row_index(self) -> int:
        return self.index


@dataclass(frozen=True)
class Layer(_LayerObjective):
    """DeepDream: the mean of the squared activations of a whole layer (of its map, for a
    channels-last or token layer: a token layer's class tokens are left out)."""

    negate: bool = False
    kind: ClassVar[str] = "layer"

    def validate(self, model: ServedModel) -> None:
        check_layer(model, self.layer, "objective.layer")

    @classmethod
    def plan(
        cls, objectives: Sequence[Objective], shape: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        return ()

    @staticmethod
    def values(source: torch.Tensor, *index: torch.Tensor) -> torch.Tensor:
        return source.flatten(1).pow(2).mean(1)


def last_spatial_layer(model: ServedModel) -> str | None:
    """The model's Grad-CAM default layer (its last feature map in any layout, read as
    [C, h, w]), or else its last channels-first feature map; None when it has neither."""
    return model.default_cam_layer or model.channels_first_layer or None


def diversity_layer(objective: Objective, model: ServedModel) -> str | None:
    """The layer whose gram matrices the diversity term compares.

    The objective's own layer; for ClassLogit, which has none, the model's last spatial
    layer (logits of one class differ little between images, while the last feature maps
    show the different ways an image can reach that class). None when the model has none.
    """
    if objective.source != LOGITS:
        return objective.source
    return last_spatial_layer(model)


def explain_target(objective: Objective) -> Target | None:
    """The Explain target of an objective's neuron, channel or class (None for a whole layer)."""
    if isinstance(objective, ClassLogit):
        return ClassTarget(objective.index)
    if isinstance(objective, Neuron):
        return NeuronTarget(objective.layer, objective.channel, objective.y, objective.x)
    if isinstance(objective, Channel):
        return NeuronTarget(objective.layer, objective.channel)
    return None


def diversity_penalty(act: torch.Tensor) -> torch.Tensor:
    """Per image of one job [B], the summed cosine similarity of its gram matrix to the others'.

    Lucid's `diversity` objective: gram matrices of the layer's channels (the style of each
    image), L2-normalised, compared pairwise; Lucid returns the sum over ordered pairs over B,
    which is this vector's sum over B. Subtracting it pushes the images of one job apart.
    """
    b = act.shape[0]
    if b < 2:
        return act.new_zeros(b)
    flat = act.reshape(b, act.shape[1], -1)
    grams = torch.bmm(flat, flat.transpose(1, 2))
    grams = F.normalize(grams.reshape(b, -1), p=2, dim=1, eps=1e-10)
    sims = grams @ grams.T
    return sims.sum(1) - sims.diagonal()


class ObjectivePlan:
    """Scores every row of a batch: rows grouped by (kind, layer), one gather per group.

    Built when the batch's rows change, so a step spends no Python per row on scoring.
    """

    def __init__(
        self, row_objectives: Sequence[Objective], model: ServedModel, device: torch.device
    ) -> None:
        groups: dict[tuple[str, str], list[int]] = {}
        for row, obj in enumerate(row_objectives):
            groups.setdefault(obj.group_key(), []).append(row)
        self.n = len(row_objectives)
        self._groups: list[
            tuple[str, torch.Tensor, Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]
        ] = []
        order: list[int] = []
        for (_kind, source), rows in groups.items():
            objs = [row_objectives[r] for r in rows]
            cls = type(objs[0])
            shape = (model.view_shape(source) or ()) if source != LOGITS else ()
            index = cls.plan(objs, shape, device)
            self._groups.append((source, _long(rows, device), cls.values, index))
            order.extend(rows)
        # values come out grouped; this gather puts them back in row order.
        self._inverse = torch.argsort(_long(order, device)) if order else _long([], device)
        self.layers = frozenset(o.source for o in row_objectives if o.source != LOGITS)

    def values(self, outputs: Mapping[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Each row's objective value [N] (before negation), differentiable."""
        if self.n == 0:
            return logits.new_zeros(0)
        parts = []
        for source, rows, values, index in self._groups:
            src = logits if source == LOGITS else outputs[source]
            parts.append(values(src[rows], *index))
        return torch.cat(parts)[self._inverse]
