"""Layer activations: raw feature maps, optionally the top-k channels, a grid and a heatmap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from deepvis import render

from ..errors import InvalidArgument
from ..models import LayerLayout, ServedModel
from ..pictures import Drawn, Scene, to_png
from .base import MAX_LAYERS_PER_REQUEST, BatchOutput, ItemShare, Method, MethodRequest, Output
from .hooks import forward_capturing
from .targets import ClassTarget, layout_problem


def top_channels(act: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k channels with the largest mean activation, best first (stable)."""
    means = act.reshape(act.shape[0], -1).mean(axis=1)
    return np.argsort(-means, kind="stable")[:k].astype(np.int64)


def _unmapped(model: ServedModel, name: str) -> LayerLayout | None:
    """The layout of a layer that is neither a map of the input nor a vector, else None."""
    layout = model.layer_layouts.get(name)
    if layout is None or layout.map_shape is not None or layout.kind == "vector":
        return None
    return layout


def layout_warnings(model: ServedModel, layers: Sequence[str]) -> tuple[str, ...]:
    """One warning per layer that is neither a map of the input nor a vector."""
    out = []
    for name in layers:
        layout = _unmapped(model, name)
        if layout is not None:
            out.append(
                f"activations: layer '{name}' gives {list(layout.shape)}, {layout.describe()}; "
                "it is returned as the layer gives it, without a grid or heatmap picture"
            )
    return tuple(out)


class Activations(Method):
    """The outputs of one or more named layers for the input (no gradients).

    Maps of the input come back channels-first [C, h, w] whatever their layout: a
    channels-last layer permuted, a token layer's patch tokens laid out on their grid (its
    class tokens apart, as "<layer>.class_tokens" [k, C]); vectors as [F]; anything else as
    the layer gives it, with a warning. Pictures (a grid of the channels, a heatmap of their
    mean over the input) are drawn for the maps; top_k_channels ranks the feature axis, and
    is refused for layers that have none known.
    """

    name: ClassVar[str] = "activations"
    uses_layers: ClassVar[bool] = True
    max_layers: ClassVar[int] = MAX_LAYERS_PER_REQUEST
    half_on_device: ClassVar[bool] = False  # finish ranks the first layer's channels

    def prepare(self, model: ServedModel, request: MethodRequest) -> MethodRequest:
        request = super().prepare(model, request)
        if request.top_k_channels:
            for name in request.layers:
                problem = layout_problem(model, name, "top_k_channels ranks")
                if problem:
                    raise InvalidArgument(
                        f"{problem}; or leave top_k_channels 0 for the whole array",
                        field="top_k_channels",
                    )
        return request

    def run(
        self, model: ServedModel, x: torch.Tensor, requests: Sequence[MethodRequest]
    ) -> BatchOutput:
        layers = requests[0].layers
        with torch.no_grad():
            logits, acts = forward_capturing(model, x, layers)
        predicted = logits.argmax(dim=1).tolist()
        # The first layer is the main array; extras hold the others: each layer leaves the
        # device once, as the methods read it (maps channels-first in any layout).
        extras = {f"layer:{n}": model.view(n, acts[n]).contiguous() for n in layers[1:]}
        for n in layers:
            layout = model.layer_layouts.get(n)
            if layout is not None and layout.map_shape is not None and layout.class_tokens:
                extras[f"class_tokens:{n}"] = acts[n][:, : layout.class_tokens, :]
        return BatchOutput(
            logits=logits,
            arrays=model.view(layers[0], acts[layers[0]]).contiguous(),
            targets=[ClassTarget(int(c)) for c in predicted],
            warnings=layout_warnings(model, layers),
            extras=extras,
        )

    def finish(self, model: ServedModel, share: ItemShare) -> Output:
        # The first layer's maps are the main array only; each further layer is arrays[name].
        array, extras, request = share.array, share.extras, share.request
        arrays: dict[str, np.ndarray] = {}
        main: np.ndarray | None = None
        for name in request.layers:
            act = array if main is None else extras[f"layer:{name}"]
            if request.top_k_channels and act.ndim >= 1:
                idx = top_channels(act, min(request.top_k_channels, act.shape[0]))
                arrays[f"{name}.channels"] = idx
                act = act[idx]
            if main is None:
                main = act
            else:
                arrays[name] = act
            if f"class_tokens:{name}" in extras:
                arrays[f"{name}.class_tokens"] = extras[f"class_tokens:{name}"]
        assert main is not None
        return Output(array=main, arrays=arrays)

    def draw(self, model: ServedModel, share: ItemShare, output: Output, scene: Scene) -> Drawn:
        """Per layer read as maps: "<layer>.grid", its maps (those sent) labelled with their
        channel indices, and "<layer>.heatmap", the mean of all its channels; the main picture
        is the first layer's grid."""
        pngs: dict[str, bytes] = {}
        layers = share.request.layers
        for i, name in enumerate(layers):
            full = share.array if i == 0 else share.extras[f"layer:{name}"]
            if full.ndim != 3 or _unmapped(model, name) is not None:
                continue
            sent = output.array if i == 0 else output.arrays[name]
            channels = output.arrays.get(f"{name}.channels")
            grid = render.grid(sent, channels, cmap=scene.options.cmap, clip=scene.options.clip)
            opts, caption = scene.options, render.caption(self.name, layer=name)
            image = render.figure(
                grid.image,
                title=f"{caption} · {grid.caption}" if opts.caption else None,
                scale=grid.scale if opts.colorbar else None,
            )
            pngs[f"{name}.grid"] = to_png(image)
            pngs[f"{name}.heatmap"] = scene.draw(self.name, full, title=f"{caption} · mean")
        return Drawn(png=pngs.get(f"{layers[0]}.grid"), pngs=pngs)
